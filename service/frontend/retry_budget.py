"""The retry budget: a request that a load balancer retries on this replica (after another one
refused it or went away) gets only what is left of its deadline, not a fresh one.

The balancer stamps each request once, when it first arrives, with `X-Anytime-Arrival-Ms`: the
wall-clock time in milliseconds since the epoch (HAProxy: `http-request set-header
X-Anytime-Arrival-Ms %[date(0,ms)]`; rules run once per request, so a retry carries the first
stamp). ArrivalAndLimits (middleware.py), where the arrival is taken, moves it back by the time
since that stamp, so the budget, the admission decision, `deadline_met` and the latency all
count from the first arrival. Why an arrival stamp and not a remaining deadline: the balancer
does not read bodies, so it does not know the deadline; why wall-clock: monotonic clocks of two
hosts share no origin (skew between hosts under NTP is milliseconds, and counts against the
request).

A stamp can only take time away: one in the future counts as now, so a client that sets the
header itself gains nothing. A malformed stamp is a 400 (the balancer's configuration is
wrong)."""
from __future__ import annotations

import json
import time

from .errors import error_body

HEADER = b"x-anytime-arrival-ms"
MAX_ELAPSED_S = 3600.0  # older stamps count as this old: the deadline is long gone either way


def elapsed_since_stamp(value: bytes) -> float:
    """Seconds since the balancer's stamp, in [0, MAX_ELAPSED_S]; ValueError when malformed."""
    stamp_ms = float(value)
    if stamp_ms != stamp_ms or stamp_ms in (float("inf"), float("-inf")):
        raise ValueError(value)
    return min(MAX_ELAPSED_S, max(0.0, time.time() - stamp_ms / 1000))


async def bad_stamp(send, path: str, value: bytes, rid: str) -> None:
    message = f"X-Anytime-Arrival-Ms must be milliseconds since the epoch, not {value[:32].decode('latin-1')!r}"
    body = json.dumps(error_body(path, 400, message)).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", rid.encode("latin-1"))]})
    await send({"type": "http.response.body", "body": body})
