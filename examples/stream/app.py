"""Server-sent events from a deployed app (`aic deploy examples/stream`).

GET  /events  two events: the first at once, the second once a client has called POST /ack
              (or after 30 s), saying whether one had: a gateway that held the answer until
              its end would deliver the first only with the second, too late to acknowledge
POST /ack     acknowledges the first event
GET  /tokens  a token stream: ?n=10 events (at most 600), one every ?every=1 second, the
              first at once
GET  /        a short description (also the health check)
"""
import os
import tempfile
import time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
# Seen by every process of the replica (uWSGI runs several).
ACKED = os.path.join(os.environ.get("AIC_OUTPUT_DIR", tempfile.gettempdir()), "acked")


@app.get("/")
def index():
    return jsonify(events="GET /events", ack="POST /ack", tokens="GET /tokens?n=10&every=1")


@app.post("/ack")
def ack():
    open(ACKED, "w").close()
    return jsonify(acked=True)


@app.get("/tokens")
def tokens():
    n = min(int(request.args.get("n", 10)), 600)
    every = min(float(request.args.get("every", 1)), 60.0)

    def stream():
        for i in range(n):
            if i:
                time.sleep(every)
            yield f"data: token {i}\n\n"

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/events")
def events():
    def stream():
        if os.path.exists(ACKED):
            os.remove(ACKED)
        yield "data: 1\n\n"
        deadline = time.monotonic() + 30
        while not os.path.exists(ACKED) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"data: 2 acked={os.path.exists(ACKED)}\n\n"

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
