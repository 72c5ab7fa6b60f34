"""The Keras MNIST model as an HTTP API, as the original tutorial's Flask app served it.

POST /predict  multipart form with an `image` file (a PNG or JPEG of one digit)
               -> {"digit": 7, "confidence": 0.99}
GET  /         a short description (also the health check)

The checkpoint `model.h5` (written by train.py on rank 0) sits beside this file.
"""
import io
import os

import numpy as np
from flask import Flask, jsonify, request
from PIL import Image
from tensorflow.keras.models import load_model

app = Flask(__name__)
model = load_model(os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.h5"))


@app.get("/")
def index():
    return jsonify(model="Keras MNIST (Horovod)", predict="POST /predict with a multipart `image`")


@app.post("/predict")
def predict():
    f = request.files.get("image")
    if f is None:
        return jsonify(error="send a multipart form with an `image` file"), 400
    try:
        img = Image.open(io.BytesIO(f.read())).convert("L").resize((28, 28))
    except Exception as e:  # not an image Pillow reads
        return jsonify(error=f"cannot read the image: {e}"), 400
    x = np.asarray(img, dtype="float32")[None, ..., None] / 255.0
    p = model.predict(x, verbose=0)[0]
    return jsonify(digit=int(p.argmax()), confidence=round(float(p.max()), 4))
