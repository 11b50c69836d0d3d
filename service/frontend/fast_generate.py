"""POST /generate straight from the door: a request with a well-formed JSON body, that is not to
be shed and carries a valid key (or needs none), is served by the route's own code
(routes._generate) from the outermost middleware, without the framework's layers in between
(the shedding and auth middleware, Starlette's error and exception middleware, FastAPI's exit
stack, the router's path matching, the route's request wrapper). Together those were a fifth
of the frontend's CPU on a small answer.

Everything else takes the full stack as before: other paths, other content types, bodies that
fail validation (FastAPI reports why, in its own words), shed or unauthorized requests (their
middleware answers), and any request while CORS is configured (its middleware adds headers).
The route stays declared in FastAPI, so the OpenAPI document is unchanged, and an error raised
here is rendered by the same function as the app's exception handlers (errors.error_response)."""
from __future__ import annotations

import logging

from fastapi import Request

from .auth import allowed
from .errors import ApiError, error_response
from .routes import _content_type, _generate, _json_body
from .shedding import LoopLag, shed_lag
from .state import FrontendState

log = logging.getLogger("anytime.http")


class FastGenerate:
    def __init__(self, state: FrontendState, lag: LoopLag, max_lag_s: float, keys: list[bytes],
                 open_paths: set[str]):
        self.state, self.lag, self.max_lag_s = state, lag, max_lag_s
        self.keys, self.open_paths = keys, open_paths

    async def __call__(self, scope, receive, send) -> bool:
        """Serve the request and return True, or return False (having sent and read nothing)."""
        if scope["path"] != "/generate" or scope["method"] != "POST":
            return False
        if shed_lag(scope, self.lag, self.max_lag_s) is not None or not allowed(scope, self.keys, self.open_paths):
            return False  # their middleware answers
        body = _json_body(scope["state"].get("body", b""), _content_type(scope))
        if body is None:
            return False
        try:
            response = await _generate(body, Request(scope, receive), self.state)
        except ApiError as e:
            response = error_response(scope["path"], e.status, e.message, e.headers)
        except Exception:
            log.exception("unhandled error", extra={"request_id": scope["state"].get("request_id", "")})
            response = error_response(scope["path"], 500, "internal error")
        await response(scope, receive, send)
        return True
