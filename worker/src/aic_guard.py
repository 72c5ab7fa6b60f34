"""A private deployment's replica guard (written by aic-worker beside the allocation; not the
app's). The app is reachable at its replica's address by anything on the pool's network, so
a private deployment's replica answers only requests that carry the secret its worker chose
and registered for the serving gateway alone (`X-Aic-Replica`); any other gets 403 without
reaching the app. The header is taken off before the app sees the request.

WSGI (uWSGI `--wsgi-file` this file): `application`. ASGI (uvicorn `aic_guard:asgi_app`).
The app's file, folder and module come in AIC_APP_FILE, AIC_APP_DIR and AIC_APP_MODULE.
"""
import hmac
import importlib
import importlib.util
import os
import sys

_SECRET = os.environ.pop("AIC_REPLICA_GUARD", "").encode("latin-1")
_REFUSAL = b'{"error": "this replica answers the pool\'s serving gateway only: call the deployment at its address"}'
if not _SECRET:
    raise SystemExit("aic_guard: no AIC_REPLICA_GUARD set")


def _ok(sent):
    return bool(sent) and hmac.compare_digest(sent, _SECRET)


def _load_wsgi():
    path = os.environ["AIC_APP_FILE"]
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("aic_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["aic_app"] = module
    spec.loader.exec_module(module)
    return module.app


def _load_asgi():
    sys.path.insert(0, os.environ["AIC_APP_DIR"])
    return importlib.import_module(os.environ["AIC_APP_MODULE"]).app


if os.environ.get("AIC_APP_SERVER") == "asgi":
    _app = _load_asgi()

    async def asgi_app(scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = scope.get("headers") or []
            sent = b""
            for k, v in headers:
                if k == b"x-aic-replica":
                    sent = v
            if not _ok(sent):
                if scope["type"] == "http":
                    await send({"type": "http.response.start", "status": 403,
                                "headers": [(b"content-type", b"application/json")]})
                    await send({"type": "http.response.body", "body": _REFUSAL})
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in headers if k != b"x-aic-replica"]
        await _app(scope, receive, send)
else:
    _app = _load_wsgi()

    def application(environ, start_response):
        sent = environ.pop("HTTP_X_AIC_REPLICA", "").encode("latin-1")
        if not _ok(sent):
            start_response("403 Forbidden", [("Content-Type", "application/json")])
            return [_REFUSAL]
        return _app(environ, start_response)
