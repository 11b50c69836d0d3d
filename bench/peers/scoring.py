"""One row of peers.json from a load cell's records, scored the same way for every server.

On time means answered 200 with the client-observed latency within the request's deadline (the
peers report no server-side latency, so Anytime is held to the client clock too, which also
charges it the loopback). A peer's answer is full length: quality 1 on time, 0 late or refused.
Anytime's answer carries its quality estimate (X-Anytime-Quality, from the model's measured
curve). Refused = any answer other than 200 (503 shed, 504/408 timed out) or no answer."""
from __future__ import annotations

import numpy as np

from ..loadgen import Record


def on_time(r: Record) -> bool:
    return r.status == 200 and r.client_ms <= r.deadline_ms


def score(records: list[Record], duration: float) -> dict:
    ok = [r for r in records if r.status == 200]
    good = [r for r in ok if on_time(r)]
    client = np.array([r.client_ms for r in ok]) if ok else np.full(1, np.nan)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    return {
        "requests": len(records),
        "samples": sum(r.n for r in records),
        "attainment": len(good) / len(records) if records else 0.0,
        "attainment_admitted": len(good) / len(ok) if ok else 0.0,
        "rejected": (len(records) - len(ok)) / len(records) if records else 0.0,
        "p50_ms": float(np.percentile(client, 50)),
        "p99_ms": float(np.percentile(client, 99)),
        "quality_goodput": sum((1.0 if r.quality is None else r.quality) * r.n for r in good) / duration,
        "mean_quality_on_time": (sum((1.0 if r.quality is None else r.quality) * r.n for r in good)
                                 / max(1, sum(r.n for r in good))),
        "statuses": statuses,
    }
