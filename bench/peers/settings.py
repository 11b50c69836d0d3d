"""Every setting of every peer in one place, with the reason for it (the results file prints them).

The traffic (bench/policy_sweep.py's): deadlines log-uniform 20-1000 ms, n in {1, 4, 16} with
weights 0.5/0.3/0.2 (4.9 samples per request on average). A peer always generates all D tokens,
so its only levers are how many samples it batches, how long it waits to fill a batch, how much
it queues, and when it gives up on a request. Each is set the way the peer's docs recommend for a
latency SLO, on this 2-core machine: one model worker (ONNX Runtime already uses both cores for
one batch; a second worker would halve each batch's threads and add a process to the two cores),
a short batching wait (a full-length batch takes tens of ms, so waiting longer than a few ms to
fill it only adds latency), and the largest deadline (1 s) wherever a timeout can only be set
per server: past it no request of this traffic can still be on time.

`ANYTIME_PEER_SETTINGS` (JSON, keys as below) overrides any of them, for tuning runs."""
from __future__ import annotations

import json
import os

# Batch sizes. A static batch runs all D steps together, so a batch of B samples costs 64 steps
# at batch B plus one decode: more samples per batch raise throughput until the step stops
# amortising its fixed cost, and lengthen every request's wait. Each peer's value is the winner of
# the tuning run (results/peers/tuning.md: same traffic, 0.5x Anytime's capacity, highest
# quality-goodput among the candidates in bench/peers/tuning.py).
MEAN_SAMPLES_PER_REQUEST = 4.9

DEFAULTS = {
    "litserve": {
        # LitAPI(max_batch_size=...) counts requests, not samples: 7 requests are about 34 samples
        # (tuned: 3 / 7 / 13 requests gave 64.2 / 64.6 / 48.8 quality-goodput/s)
        "max_batch_size": 7,
        # seconds to wait for a batch to fill; LitServe's docs: keep it small when latency matters
        "batch_timeout": 0.005,
        # LitServer(timeout=...): a request that waited longer than this in the queue gets a 504
        # instead of being run; server-wide (no per-request timeout), so the largest deadline.
        "timeout": 1.0,
        "workers_per_device": 1,
    },
    "litserve-continuous": {
        # LitServe's ContinuousBatchingLoop (streaming only): rows of the running batch. Requests
        # join between steps when all their rows fit, in order (tuned: 32 / 64 / 128 rows gave
        # 29.8 / 21.1 / 11.6 quality-goodput/s; Anytime's engine uses 128)
        "rows": 32,
        # the loop applies no request timeout of its own (it never checks a request's age)
        "timeout": 1.0,
    },
    "ray-serve": {
        # @serve.batch: batch_size_fn counts samples, so max_batch_size is in samples
        # (tuned: 8 / 16 / 32 / 64 samples gave 17.8 / 48.5 / 23.2 / 13.1 quality-goodput/s, with
        # Ray's default worker niceness 15: worker_niceness below was set after the tuning run)
        "max_batch_size": 16,
        # Ray's docs: a small batch_wait_timeout_s for latency-sensitive deployments
        "batch_wait_timeout_s": 0.005,
        # requests a replica takes at once; Ray's docs: at least the batch size (in requests) so
        # batches can fill, a small multiple for latency
        "max_ongoing_requests": 2 * round(16 / MEAN_SAMPLES_PER_REQUEST) + 2,
        # queued at the proxy beyond that: rejected at once with 503 (load shedding). Set to the
        # requests one replica can finish within the largest deadline at its measured capacity
        # (results/peers: capacity / 4.9 samples per request, times 1 s).
        "max_queued_requests": -1,  # set from the measured capacity: slo_overrides()
        # each request's own deadline goes in the x-request-timeout-seconds header (408 when it
        # passes, and the replica cancels the request); this is the fallback for requests without one
        "request_timeout_s": 1.0,
        "num_replicas": 1,
        # Ray runs workers at niceness 15 by default (RAY_worker_niceness); 0 like every other server
        "worker_niceness": 0,
    },
    "bentoml": {
        # @bentoml.api(batchable=True): the batch is the concatenation of the requests' sample
        # lists, so max_batch_size is in samples (a request larger than the rest is split;
        # tuned: 16 / 32 / 64 / 128 samples gave 20.3 / 46.6 / 54.6 / 46.4 quality-goodput/s)
        "max_batch_size": 64,
        # BentoML's docs: set max_latency_ms to the latency SLO; its dispatcher rejects (503)
        # queued requests whose estimated latency exceeds it. Per API, not per request: 1 s.
        "max_latency_ms": 1000,
        # @bentoml.service(traffic={"timeout": ...}) in whole seconds: the largest deadline
        "timeout": 1,
        "workers": 1,
        "threads": 1,
    },
}


def peer_settings(server: str) -> dict:
    """DEFAULTS[server] (and the model directory) with the overrides from ANYTIME_PEER_SETTINGS."""
    from .generator import DEFAULT_MODEL

    return {**DEFAULTS[server], "model_dir": str(DEFAULT_MODEL), **json.loads(os.environ.get("ANYTIME_PEER_SETTINGS", "{}"))}


# The capacity run measures throughput, not SLOs: the same batching with every limit that would
# refuse work lifted (60 s timeouts, no queue cap), like Anytime's capacity under policy `fixed`.
CAPACITY_OVERRIDES = {
    "litserve": {"timeout": 60.0},
    "litserve-continuous": {"timeout": 60.0},
    "ray-serve": {"max_queued_requests": -1, "request_timeout_s": 60.0},
    "bentoml": {"max_latency_ms": 60000, "timeout": 60},
}


def slo_overrides(server: str, capacity_samples_per_s: float, largest_deadline_s: float = 1.0) -> dict:
    """Settings that follow from the measured capacity: Ray Serve's queue holds what one replica
    can finish within the largest deadline (a request queued behind more is late anyway)."""
    if server == "ray-serve":
        return {"max_queued_requests": max(1, round(capacity_samples_per_s / MEAN_SAMPLES_PER_REQUEST
                                                    * largest_deadline_s))}
    return {}
