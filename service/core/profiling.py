"""The start-up profile: step (with sampling), decode and row-copy cost vs batch size of one runtime,
from which the latency model starts."""
from __future__ import annotations

import numpy as np

from .latency import LatencyModel, median_time
from .model_dir import ModelSpec
from .runtime import Runtime
from .sampling import sample_rows


def probe_rows(spec: ModelSpec, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and positions of b rows spread over the cache: what a start-up measurement steps."""
    return (np.full(b, spec.unconditional_token, dtype=np.int64),
            (np.arange(b, dtype=np.int64) * 7) % spec.D)


def profile_runtime(runtime: Runtime, spec: ModelSpec, sizes: list[int]) -> LatencyModel:
    """Median cost of a step plus its sampling at each batch size, and of a full-length decode
    (up to batch 64, larger decodes are extrapolated). Runs on the thread that will step."""
    D = spec.D
    step, dec = {}, {}
    for b in sizes:
        tokens, positions = probe_rows(spec, b)
        ones, off = np.ones(b), np.zeros(b, dtype=np.int64)

        def step_and_sample():  # what one iteration costs besides scheduling
            logits = runtime.step(tokens, positions)
            sample_rows(logits, np.full(b, 0.5), ones, off, ones)

        step[b] = median_time(step_and_sample, 3 if b > 64 else 6)
    for b in [s for s in sizes if s <= 64]:
        codes = np.zeros((b, D), dtype=np.int64)
        lengths = np.full(b, D, dtype=np.int64)
        dec[b] = median_time(lambda: runtime.decode(codes, lengths), 3)
    copy_row = median_time(lambda: runtime.move_row(0, 0), 5)  # one KV-cache row copied (pause, resume)
    return LatencyModel(step, dec, copy_row_s=copy_row)
