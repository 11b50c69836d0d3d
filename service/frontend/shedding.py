"""Load shedding at the door. When this worker's event loop runs behind, every request it takes
on makes the answers it already owes later: past its capacity, a frontend that parses,
validates and admits everything builds a backlog that no respond margin covers, and admitted
requests miss their deadlines (bench/results/split-sweep, n=1 at 2x). So while the loop is more
than `shed_lag_ms` behind, a new generation request whose deadline that lag would eat into
(more than LAG_SHARE of it) gets a 503 before its body is parsed: the cheapest answer there
is, and the answers already owed go out first. A request with seconds to spare is still taken
(a busy worker with a bounded backlog serves it fine); as the backlog grows, so does the
deadline a request needs to get in, until everything is shed."""
from __future__ import annotations

import asyncio
import json
import re
import time

from .errors import error_body

PROBE_S = 0.005  # how often the probe asks to run; its lateness is the loop's lag
LAG_SHARE = 0.1  # the most of a request's deadline the loop's lag may take (an answer waits a few iterations)
# /generate's field and the Open Inference Protocol's parameter have the same name
DEADLINE = re.compile(rb'"deadline_ms"\s*:\s*([0-9]+(?:\.[0-9]*)?)')


def peek_deadline_s(body: bytes) -> float | None:
    """The request's deadline without parsing the body (None when absent or odd: validation
    will say why)."""
    m = DEADLINE.search(body)
    return float(m.group(1)) / 1000 if m else None


class LoopLag:
    """How far behind the event loop runs: a callback due every PROBE_S measures how late it
    fires. behind() is the lateness of the last two probes both (one late probe is a hiccup, a GC
    pass or a GIL wait, not a backlog), or how overdue the probe is now (a loop stuck now)."""

    def __init__(self):
        self.last_s = 0.0
        self.sustained_s = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = time.monotonic() + PROBE_S
        self._handle = loop.call_at(loop.time() + PROBE_S, self._probe)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _probe(self) -> None:
        now = time.monotonic()
        late = max(0.0, now - self._due)
        self.sustained_s, self.last_s = min(late, self.last_s), late
        self._due = now + PROBE_S
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + PROBE_S, self._probe)

    def behind(self, now: float) -> float:
        return max(self.sustained_s, now - self._due)


def is_generation(scope) -> bool:
    path = scope["path"]
    return scope["method"] == "POST" and (path == "/generate" or (path.startswith("/v2/models/")
                                                                  and path.endswith("/infer")))


def sheds(behind_s: float, max_lag_s: float, deadline_s: float | None) -> bool:
    """The rule: a generation request is shed while the loop runs more than max_lag_s behind (0:
    never) and more than LAG_SHARE of its deadline (None, not found in the body: shed). The
    capacity planner's simulated frontend applies it too (service/capacity/replica.py)."""
    if not max_lag_s or behind_s <= max_lag_s:
        return False
    return deadline_s is None or behind_s > LAG_SHARE * deadline_s


def shed_lag(scope, lag: LoopLag, max_lag_s: float) -> float | None:
    """How far behind the loop runs when this request is to be shed, else None."""
    if not max_lag_s or not is_generation(scope) or (behind := lag.behind(time.monotonic())) <= max_lag_s:
        return None
    return behind if sheds(behind, max_lag_s, peek_deadline_s(scope.get("state", {}).get("body", b""))) else None


class LoadShedding:
    """ASGI middleware: 503 `overloaded` for a generation request while the loop lags more than
    max_lag_s (0: never) and more than LAG_SHARE of the request's deadline. Runs inside
    ArrivalAndLimits, which has read the body. `on_shed` counts each one (the engine core's
    metrics)."""

    def __init__(self, app, lag: LoopLag, max_lag_s: float, on_shed):
        self.app, self.lag, self.max_lag_s, self.on_shed = app, lag, max_lag_s, on_shed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (behind := shed_lag(scope, self.lag, self.max_lag_s)) is None:
            return await self.app(scope, receive, send)
        self.on_shed()
        message = f"overloaded: this worker is {behind * 1000:.0f} ms behind; retry shortly"
        body = json.dumps(error_body(scope["path"], 503, message)).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})
