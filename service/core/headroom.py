"""Headroom: the quality this replica could give a reference request now, the signal a load
balancer routes on (docs/scaling-out.md).

The reference request is one sample (n=1) due in `headroom_deadline_ms` (100 ms by default),
arriving now. Its headroom is the budget the scheduler's own admission would plan for it, as a
fraction of D: the same Budget and policy code a real request meets (Admitter.probe, which
changes no state), so it falls as the batch fills, as the quality knee drops under pressure,
and to 0 when such a request would be refused. Queue length or CPU use say how busy a replica
is; headroom says what a request would get there.

Computed on the admitting thread (the engine core's IPC thread, or the event loop in-process),
on demand: a scrape of /metrics, GET /headroom or the load balancer's agent check."""
from __future__ import annotations

import time

from prometheus_client.core import GaugeMetricFamily

from .request import Request

REFERENCE_N = 1


def model_headroom(engine, deadline_s: float) -> float:
    """Tokens the engine's admission would plan for the reference request, over D (0 if refused)."""
    sched = engine.scheduler
    if sched is None:
        return 0.0
    D = engine.spec.D
    req = Request(model=engine.spec.name, n=REFERENCE_N, seed=0, label=None, deadline_s=deadline_s,
                  arrival=time.monotonic(), min_tokens=1, max_tokens=D, request_id="headroom")
    adm = sched.probe_request(req)
    return adm.planned_tokens / D if adm.ok else 0.0


def replica_headroom(core) -> dict[str, float]:
    """Every model's headroom (an engine core that is not ready has none: all 0)."""
    deadline_s = core.settings.headroom_deadline_ms / 1000
    return {name: (model_headroom(e, deadline_s) if core.ready else 0.0) for name, e in core.engines.items()}


class HeadroomCollector:
    """`anytime_headroom{model}` in the engine core's registry, computed at scrape time."""

    def __init__(self, core):
        self.core = core

    def collect(self):
        ms = self.core.settings.headroom_deadline_ms
        g = GaugeMetricFamily("anytime_headroom", f"Tokens the scheduler would plan now for a reference request "
                              f"(n=1, deadline {ms:g} ms), as a fraction of D (0: it would be refused)",
                              labels=["model"])
        for model, value in replica_headroom(self.core).items():
            g.add_metric([model], value)
        yield g

    def describe(self):
        return []  # collected only at scrape time (registering must not run the scheduler)
