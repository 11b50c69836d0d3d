"""One-token samples come from a table, not the decoder.

A sample stopped after one token is a function of that token alone: the decoder masks every
later position. So there are only K of them, and a server under tight deadlines answers many
(at 2x load, half of the requests with deadlines under 40 ms get k = 1). The first time the
decoder produces the one-token sample of a code, the engine keeps it; every later one-token row
with that code is a copy from the table, with no decoder call. The table fills as traffic
arrives (no start-up cost) and holds at most K samples; a model whose K samples would take more
than MAX_BYTES gets no table.

The samples are the decoder's own output, so a table hit is bitwise what that first decode
gave; a decoder whose output for a row depends on its batch neighbours in the last bits makes
later hits equal to the first decode rather than to a fresh one (the same seed still gives the
same sample).
"""
from __future__ import annotations

import numpy as np

MAX_BYTES = 64 << 20


class FirstTokenTable:
    def __init__(self, K: int, sample_shape: tuple[int, ...]):
        self.samples = np.zeros((K, *sample_shape), dtype=np.float32)
        self.filled = np.zeros(K, dtype=bool)
        self.hits = 0  # rows answered from the table (for tests and stats)

    @classmethod
    def for_model(cls, K: int, sample_shape: tuple[int, ...]) -> "FirstTokenTable | None":
        """A table for a model, or None when its K samples would not fit MAX_BYTES (or the
        manifest gives no sample shape to size it by)."""
        if not sample_shape or K * int(np.prod(sample_shape)) * 4 > MAX_BYTES:
            return None
        return cls(K, tuple(sample_shape))

    def hits_among(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows the table answers: one token, already seen."""
        return (lengths == 1) & self.filled[codes[:, 0]]

    def fill(self, codes: np.ndarray, lengths: np.ndarray, samples: np.ndarray) -> bool:
        """Keep the one-token rows of a decoder output; False when its samples are not of the
        shape the manifest declared (the table is then of no use)."""
        if samples.shape[1:] != self.samples.shape[1:]:
            return False
        one = lengths == 1
        if one.any():
            first = codes[one, 0]
            self.samples[first] = samples[one]
            self.filled[first] = True
        return True
