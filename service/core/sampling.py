"""Per-row token sampling from logits, deterministic per sequence.

Each sequence has a random stream seeded from (request seed, sample index): sequence_rng's
Generator, which the engine draws from for the whole batch at once (service/core/streams.py).
It draws exactly one uniform per step, so the t-th token depends only on the seed, the logits
and t: the same seed gives the same sample whatever else is batched, and a shorter sample is
a prefix of a longer one.
"""
from __future__ import annotations

import numpy as np


def sequence_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index])))


def sample_rows(logits: np.ndarray, uniforms: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
                top_p: np.ndarray) -> np.ndarray:
    """logits [B, K]; uniforms, temperature, top_p [B] float; top_k [B] int (0 = off) -> tokens [B] int64."""
    return SamplingBatch(temperature, top_k, top_p).sample(logits, uniforms)


class SamplingBatch:
    """The sampling parameters of a batch's rows, checked once per batch composition (the
    engine keeps one while its rows do not change) instead of once per step.

    Inverse-CDF sampling in token-id order from the filtered distribution. The CDF is searched
    in two levels (block sums, then one block) because a row-wise cumsum over all K is the
    slowest numpy operation of a step. Every row is computed on its own, so the result does
    not depend on the other rows of the batch.
    """

    def __init__(self, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray):
        self.temperature = np.maximum(np.asarray(temperature, dtype=np.float64), 1e-6)[:, None]
        self.top_k = np.asarray(top_k, dtype=np.int64)
        self.top_p = np.asarray(top_p, dtype=np.float64)
        self.scaled = bool((self.temperature != 1.0).any())
        self.filter_k = bool((self.top_k > 0).any())
        self.filter_p = bool((self.top_p < 1.0).any())
        self.rows = np.arange(len(self.top_k))

    def sample(self, logits: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        B, K = logits.shape
        z = logits.astype(np.float64)
        if self.scaled:
            z /= self.temperature
        if self.filter_k:
            k = np.where(self.top_k > 0, np.minimum(self.top_k, K), K)
            if (k == k[0]).all():
                kth = -np.partition(-z, k[0] - 1, axis=1)[:, k[0] - 1]
            else:
                kth = -np.sort(-z, axis=1)[self.rows, k - 1]
            z = np.where(z >= kth[:, None], z, -np.inf)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        if self.filter_p:
            # rank on normalised probabilities, but zero tokens in the unnormalised p, so that a
            # row without top_p gets the same numbers as when it runs alone
            q = p / p.sum(axis=1, keepdims=True)
            order = np.argsort(-q, axis=1, kind="stable")
            qs = np.take_along_axis(q, order, axis=1)
            before = np.cumsum(qs, axis=1) - qs  # mass of strictly more likely tokens
            keep = np.zeros(q.shape, dtype=bool)
            np.put_along_axis(keep, order, before < self.top_p[:, None], axis=1)
            p = np.where(keep, p, 0.0)
        return _inverse_cdf(p, uniforms, self.rows)


def _inverse_cdf(p: np.ndarray, uniforms: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index where the running sum of each row of p (unnormalised, >= 0) first exceeds u * total."""
    B, K = p.shape
    block = 32 if K % 32 == 0 and K >= 64 else K
    p3 = p.reshape(B, K // block, block)
    cum_blocks = np.cumsum(p3.sum(axis=2), axis=1)  # [B, K/block]
    target = uniforms * cum_blocks[:, -1]
    b = np.minimum((cum_blocks <= target[:, None]).sum(axis=1), K // block - 1)  # block holding the target
    before = np.where(b > 0, cum_blocks[rows, b - 1], 0.0)
    inner = np.cumsum(p3[rows, b], axis=1)  # [B, block]
    tokens = b * block + np.minimum((inner <= (target - before)[:, None]).sum(axis=1), block - 1)
    # never land on a zero-probability token through rounding at a block edge
    bad = p[rows, tokens] == 0
    if bad.any():
        for r in np.nonzero(bad)[0]:
            nz = np.nonzero(p[r])[0]
            tokens[r] = nz[np.argmin(np.abs(nz - tokens[r]))]
    return tokens
