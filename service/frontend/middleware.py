"""ASGI middleware: arrival time and request id on every request, and the body-size limit
(413 before any parsing, whether or not the client sent Content-Length)."""
from __future__ import annotations

import json
import logging
import os
import time

from . import retry_budget
from .errors import error_body
from .validation import body_too_large

access = logging.getLogger("anytime.access")


class ArrivalAndLimits:
    def __init__(self, app, max_body_bytes: int, fast=None):
        self.app = app
        self.max_body = max_body_bytes
        # fast(scope, receive, send) -> bool: serves what it can without the app's inner layers
        # (service/frontend/fast_generate.py); False leaves the request to the app
        self.fast = fast

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        if "arrival" not in state:  # stamped when its bytes were read (http_protocol.py), else now
            state["arrival"] = time.monotonic()
        rid, length, stamp = "", None, None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:64]
            elif name == b"content-length":
                length = value
            elif name == retry_budget.HEADER:
                stamp = value
        rid = rid or os.urandom(8).hex()  # 16 hex digits, as a uuid4's first 16 were
        state["request_id"] = rid
        if stamp is not None:  # a load balancer's retry counts from the first arrival (retry_budget.py)
            try:
                elapsed = retry_budget.elapsed_since_stamp(stamp)
            except ValueError:
                return await retry_budget.bad_stamp(send, scope["path"], stamp, rid)
            state["arrival"] -= elapsed
            state["balancer_elapsed_s"] = elapsed
        if body_too_large(length, 0, self.max_body):
            return await _reject(send, scope["path"], rid, self.max_body)
        # Read the (small, capped) body here so an oversized chunked upload is refused before
        # FastAPI parses anything; then replay it to the app once.
        body, more = b"", scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # client went away before sending its body
            body += msg.get("body", b"")
            if body_too_large(None, len(body), self.max_body):
                return await _reject(send, scope["path"], rid, self.max_body)
            more = msg.get("more_body", False)
        state["body"] = body  # for load shedding's look at the deadline (shedding.py)
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        async def send_with_id(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg["headers"] = list(msg.get("headers", [])) + [(b"x-request-id", rid.encode("latin-1"))]
            await send(msg)

        try:
            fast = self.fast
            if fast is None or not await fast(scope, replay_receive, send_with_id):
                await self.app(scope, replay_receive, send_with_id)
        finally:
            if access.isEnabledFor(logging.INFO):
                # the record made directly: Logger.info would look up its caller's frame first
                # (the access log is written once per request; it was 5% of a small answer's CPU)
                access.handle(access.makeRecord(
                    access.name, logging.INFO, __file__, 0, "request", None, None,
                    extra={"request_id": rid, "method": scope["method"], "path": scope["path"], "status": status,
                           "latency_ms": round((time.monotonic() - state["arrival"]) * 1000, 3)}))


async def _reject(send, path: str, rid: str, limit: int) -> None:
    body = json.dumps(error_body(path, 413, f"request body larger than {limit} bytes")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", rid.encode("latin-1"))]})
    await send({"type": "http.response.body", "body": body})
