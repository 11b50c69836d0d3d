"""Summaries of load-test records: attainment, rejections, latency, tokens, quality-goodput."""
from __future__ import annotations

import numpy as np

from .loadgen import Record


def summarize(records: list[Record], duration: float) -> dict:
    total = len(records)
    ok = [r for r in records if r.status == 200]
    rejected = [r for r in records if r.status == 503]
    errors = [r for r in records if r.status not in (200, 503)]
    on_time = [r for r in ok if r.deadline_met]
    client_over = np.array([r.client_ms - r.deadline_ms for r in ok]) if ok else np.zeros(1)
    client = np.array([r.client_ms for r in ok]) if ok else np.zeros(1)
    frac = np.array([r.tokens / r.max_tokens for r in ok]) if ok else np.zeros(1)
    qual = np.array([r.quality for r in ok]) if ok else np.zeros(1)
    samples = sum(r.n for r in records)
    return {
        "requests": total,
        "samples": samples,
        "admitted": len(ok),
        "rejected": len(rejected),
        "errors": len(errors),
        "attainment_all": len(on_time) / total if total else 0.0,
        "attainment_admitted": len(on_time) / len(ok) if ok else 1.0,
        "rejection_rate": len(rejected) / total if total else 0.0,
        "latency_p50_ms": float(np.percentile(client, 50)),
        "latency_p99_ms": float(np.percentile(client, 99)),
        "client_over_deadline_p99_ms": float(np.percentile(client_over, 99)),
        "mean_token_fraction": float(frac.mean()),
        "mean_quality": float(qual.mean()),
        "quality_goodput": sum(r.quality * r.n for r in on_time) / duration,
        "token_fraction_hist": np.histogram(frac, bins=10, range=(0, 1))[0].tolist(),
        "quality_hist": np.histogram(qual, bins=10, range=(0, 1))[0].tolist(),
        "finish_reasons": {k: sum(1 for r in ok if r.finish_reason == k) for k in sorted({r.finish_reason for r in ok})},
        "reject_reasons": sorted({(r.error or "")[:60] for r in rejected})[:5],
    }
