"""The digits model as an HTTP API (deployed with `aic deploy`).

POST /predict  {"pixels": [64 numbers, 0-16]}  →  {"digit": 3, "confidence": 0.98}
GET  /         a short description (also the health check)

The checkpoint `model.npz` (written by train.py / train_mpi.py) sits beside this file.
"""
import os

import numpy as np
from flask import Flask, jsonify, request

app = Flask(__name__)
_here = os.path.dirname(os.path.abspath(__file__))
_model = np.load(os.path.join(_here, "model.npz"))
params = {k: _model[k] for k in ("w1", "b1", "w2", "b2")}


def predict(pixels):
    x = np.asarray(pixels, dtype=float).reshape(-1, 64) / 16.0
    h = np.maximum(0, x @ params["w1"] + params["b1"])
    z = h @ params["w2"] + params["b2"]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


@app.get("/")
def index():
    return jsonify(model="digits MLP", replica=os.environ.get("AIC_ALLOC_INDEX", "?"), predict="POST /predict")


@app.post("/predict")
def predict_route():
    body = request.get_json(silent=True) or {}
    pixels = body.get("pixels")
    if not isinstance(pixels, list) or len(pixels) != 64:
        return jsonify(error="send {\"pixels\": [64 numbers from 0 to 16]}"), 400
    p = predict(pixels)[0]
    return jsonify(digit=int(p.argmax()), confidence=round(float(p.max()), 4),
                   replica=os.environ.get("AIC_ALLOC_INDEX", "?"))
