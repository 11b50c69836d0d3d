"""Optional API keys: `Authorization: Bearer <key>`, compared in constant time.

Keys come from `api_keys` (comma-separated) and/or `api_keys_file` (one per line, # comments).
With no keys configured, everything is open. `open_paths` stay open either way (probes,
metrics scrapes)."""
from __future__ import annotations

import hmac
import json
from pathlib import Path

from .errors import error_body


def load_keys(inline: str, file: str | None) -> list[bytes]:
    keys = [k.strip() for k in inline.split(",") if k.strip()]
    if file:
        for line in Path(file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    return [k.encode() for k in keys]


def _authorized(header: bytes, keys: list[bytes]) -> bool:
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return False
    ok = False
    for key in keys:  # no early exit: time does not depend on which key matched
        ok |= hmac.compare_digest(token.strip(), key)
    return ok


def allowed(scope, keys: list[bytes], open_paths: set[str]) -> bool:
    """No keys configured, an open path, or a valid key in the Authorization header."""
    if not keys or scope["path"] in open_paths:
        return True
    return _authorized(dict(scope.get("headers") or []).get(b"authorization", b""), keys)


class ApiKeyAuth:
    def __init__(self, app, keys: list[bytes], open_paths: set[str]):
        self.app, self.keys, self.open_paths = app, keys, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or allowed(scope, self.keys, self.open_paths):
            return await self.app(scope, receive, send)
        body = json.dumps(error_body(scope["path"], 401, "missing or invalid API key "
                                     "(send Authorization: Bearer <key>)")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="anytime"')]})
        await send({"type": "http.response.body", "body": body})
