"""Classifier-free guidance in the engine: which rows of the batch are paired, and the mix.

A guided sample steps two rows, its label's and the null label's (the model's unconditional
start token), both fed the codes the sample draws. The pair belongs to one request, which the
scheduler starts, pauses, resumes and finishes as a whole, so the two rows are always active
together and the request costs the rows (and KV-cache slots) it uses: a guided request of n
samples is a request of 2n rows to admission, the planner and the latency model.
"""
from __future__ import annotations

import numpy as np

from model_format.contract import guided_logits

from .request import Sequence


class GuidedRows:
    """The guided pairs among the active rows (rows[i].slot == i), rebuilt when rows change."""

    def __init__(self, cond: np.ndarray, null: np.ndarray, guidance: np.ndarray):
        self.cond, self.null = cond, null  # row indices of each pair's sampled row and null-label row
        self.guidance = guidance[:, None]  # [pairs, 1]

    @classmethod
    def of(cls, rows: list[Sequence]) -> "GuidedRows | None":
        """The pairs among `rows`, or None when no row is guided (the common, free case)."""
        cond, null, w = [], [], []
        for i, s in enumerate(rows):
            if s.null_row is not None:
                cond.append(i)
                null.append(s.null_row.slot)
                w.append(s.request.guidance)
        if not cond:
            return None
        return cls(np.array(cond), np.array(null), np.array(w, dtype=np.float64))

    def mix(self, logits: np.ndarray) -> np.ndarray:
        """logits [B, K] -> a copy whose sampled rows hold the guided logits."""
        out = logits.astype(np.float64)
        out[self.cond] = guided_logits(out[self.cond], out[self.null], self.guidance)
        return out

    def follow(self, tokens: np.ndarray) -> None:
        """Each null-label row is fed the token its sample drew (in place)."""
        tokens[self.null] = tokens[self.cond]
