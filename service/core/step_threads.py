"""Which batch sizes step on one thread.

ONNX Runtime spreads every operator of a step over its intra-op threads. With them asleep
between steps (`--ort-spin off`, which keeps their spinning off the cores the HTTP workers
need), a small batch pays for waking them on every operator and runs slower than on one
thread: at 1x load on 2 cores the mean step took 0.95 ms on the pool and 0.64 ms on one
thread, and the default scheduler gave 0.45 of D tokens where one thread gave 0.55
(bench/results/step-threads). A large batch still gains from the pool. So the runtime keeps the
step graph on both and this start-up measurement picks, per batch size, the faster one: one
thread below the first profiled size where the pool is clearly faster.
"""
from __future__ import annotations

import logging

from .latency import median_time
from .model_dir import ModelSpec
from .profiling import probe_rows

log = logging.getLogger("anytime.engine")

POOL_MARGIN = 0.95  # the pool must be at least 5% faster to be used (timings are noisy)


def choose_one_thread_below(runtime, spec: ModelSpec, sizes: list[int]) -> int:
    """Set and return runtime.one_thread_below (0: the runtime has no one-thread step)."""
    if getattr(runtime, "step_one_thread", None) is None:
        return 0
    below = max(sizes) + 1
    for b in sorted(sizes):
        tokens, positions = probe_rows(spec, b)
        timed = {}
        for one in (True, False):
            runtime.one_thread_below = b + 1 if one else 0
            timed[one] = median_time(lambda: runtime.step(tokens, positions), 5 if b > 64 else 9)
        if timed[False] < POOL_MARGIN * timed[True]:
            below = b
            break
    runtime.one_thread_below = below
    log.info("step threads chosen", extra={"model": spec.name, "one_thread_below": below})
    return below
