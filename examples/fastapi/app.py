"""A FastAPI app streaming server-sent events (`aic deploy examples/fastapi`): served by
uvicorn, an ASGI server, told from the app's imports (or `--server asgi`).

GET  /events  two events: the first at once, the second once a client has called POST /ack
              (or after 30 s), saying whether one had
POST /ack     acknowledges the first event
GET  /tokens  a token stream: ?n=10 events (at most 600), one every ?every=1 second
POST /echo    counts the request body as it streams in; answers its size
GET  /fail    answers 500 (a server error, as a broken model would)
GET  /        a short description (also the health check)
"""
import asyncio
import os
import tempfile

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

app = FastAPI()
# Seen by every process of the replica (uvicorn runs several with --workers).
ACKED = os.path.join(os.environ.get("AIC_OUTPUT_DIR", tempfile.gettempdir()), "acked")


@app.get("/")
async def index():
    return {"events": "GET /events", "ack": "POST /ack", "tokens": "GET /tokens?n=10&every=1", "server": "asgi"}


@app.post("/ack")
async def ack():
    open(ACKED, "w").close()
    return {"acked": True}


def sse(gen):
    return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/events")
async def events():
    async def stream():
        if os.path.exists(ACKED):
            os.remove(ACKED)
        yield "data: 1\n\n"
        deadline = asyncio.get_running_loop().time() + 30
        while not os.path.exists(ACKED) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        yield f"data: 2 acked={os.path.exists(ACKED)}\n\n"

    return sse(stream())


@app.get("/tokens")
async def tokens(n: int = 10, every: float = 1.0):
    n, every = min(n, 600), min(every, 60.0)

    async def stream():
        for i in range(n):
            if i:
                await asyncio.sleep(every)
            yield f"data: token {i}\n\n"

    return sse(stream())


@app.get("/fail")
async def fail():
    return JSONResponse({"error": "this endpoint always fails"}, status_code=500)


@app.post("/echo")
async def echo(request: Request):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"bytes": size}
