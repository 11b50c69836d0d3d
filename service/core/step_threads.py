"""Which batch sizes step on one thread.

ONNX Runtime spreads every operator of a step over its intra-op threads. With them asleep
between steps (`--ort-spin off`, which keeps their spinning off the cores the HTTP workers
need), a small batch pays for waking them on every operator and runs slower than on one
thread: at 1x load on 2 cores the mean step took 0.95 ms on the pool and 0.64 ms on one
thread, and the default scheduler gave 0.45 of D tokens where one thread gave 0.55
(bench/results/step-threads). A large batch still gains from the pool. So the runtime keeps the
step graph on both and this start-up measurement picks, per batch size, the faster one: one
thread below the smallest profiled size from which on the pool is clearly faster: at least 15%,
because the measurement runs on idle cores and under load the pool's second thread competes
with the HTTP workers for them (at 64 rows the pool was 4-19% faster at start-up for 60% more
CPU time; with a 5% margin, start-ups of one machine chose anything from 32 to never).
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .model_dir import ModelSpec
from .profiling import probe_rows

log = logging.getLogger("anytime.engine")

POOL_MARGIN = 0.85  # the pool must be at least 15% faster to be used (see the module docstring)


def choose_one_thread_below(runtime, spec: ModelSpec, sizes: list[int]) -> int:
    """Set and return runtime.one_thread_below (0: the runtime has no one-thread step): the
    smallest size from which on the pool is clearly faster at every profiled size.

    The two are timed in alternation, so that whatever else runs at start-up (the frontend
    workers start beside the engine) slows both alike; and a size counts only if every larger
    one agrees, because a single noisy win at a small batch would put every small batch on
    the pool (start-ups of one machine chose 1, 32 and 32 when the first win decided, where
    one thread was faster up to 64 in quiet measurements)."""
    if getattr(runtime, "step_one_thread", None) is None:
        return 0
    below = max(sizes) + 1
    for b in sorted(sizes, reverse=True):
        one, pool = _alternating_times(runtime, spec, b, 5 if b > 64 else 9)
        if pool >= POOL_MARGIN * one:
            break
        below = b
    runtime.one_thread_below = below
    log.info("step threads chosen", extra={"model": spec.name, "one_thread_below": below})
    return below


def _alternating_times(runtime, spec: ModelSpec, batch: int, repeats: int) -> tuple[float, float]:
    """Median step seconds at `batch` on one thread and on the pool, timed in turn."""
    tokens, positions = probe_rows(spec, batch)
    times = {True: [], False: []}
    for i in range(repeats + 1):
        for one in (True, False):
            runtime.one_thread_below = batch + 1 if one else 0
            t = time.perf_counter()
            runtime.step(tokens, positions)
            if i:  # the first round warms both up
                times[one].append(time.perf_counter() - t)
    return float(np.median(times[True])), float(np.median(times[False]))
