"""Per-row token sampling from logits, deterministic per sequence.

Each sequence owns a numpy Generator seeded from (request seed, sample index) and draws
exactly one uniform per step, so the t-th token depends only on the seed, the logits and t:
the same seed gives the same sample whatever else is batched, and a shorter sample is a
prefix of a longer one.
"""
from __future__ import annotations

import numpy as np


def sequence_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index])))


def sample_rows(logits: np.ndarray, uniforms: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
                top_p: np.ndarray) -> np.ndarray:
    """logits [B, K]; uniforms, temperature, top_p [B] float; top_k [B] int (0 = off) -> tokens [B] int64.

    Inverse-CDF sampling in token-id order from the filtered, renormalised distribution. The
    CDF is searched in two levels (block sums, then one block) because a row-wise cumsum over
    all K is the slowest numpy operation of a step. Every row is computed on its own, so the
    result does not depend on the other rows of the batch.
    """
    B, K = logits.shape
    z = logits.astype(np.float64)
    if (temperature != 1.0).any():
        z /= np.maximum(temperature, 1e-6)[:, None]
    if (top_k > 0).any():
        k = np.where(top_k > 0, np.minimum(top_k, K), K)
        if (k == k[0]).all():
            kth = -np.partition(-z, k[0] - 1, axis=1)[:, k[0] - 1]
        else:
            kth = -np.sort(-z, axis=1)[np.arange(B), k - 1]
        z = np.where(z >= kth[:, None], z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    if (top_p < 1.0).any():
        p /= p.sum(axis=1, keepdims=True)
        order = np.argsort(-p, axis=1, kind="stable")
        ps = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(ps, axis=1) - ps  # mass of strictly more likely tokens
        keep_sorted = before < top_p[:, None]
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        p = np.where(keep, p, 0.0)
    return _inverse_cdf(p, uniforms)


def _inverse_cdf(p: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Index where the running sum of each row of p (unnormalised, >= 0) first exceeds u * total."""
    B, K = p.shape
    block = 32 if K % 32 == 0 and K >= 64 else K
    blocks = p.reshape(B, K // block, block).sum(axis=2)  # [B, K/block]
    cum_blocks = np.cumsum(blocks, axis=1)
    target = uniforms * cum_blocks[:, -1]
    b = np.minimum((cum_blocks <= target[:, None]).sum(axis=1), K // block - 1)  # block holding the target
    before = np.where(b > 0, cum_blocks[np.arange(B), b - 1], 0.0)
    inner = np.cumsum(p.reshape(B, K // block, block)[np.arange(B), b], axis=1)  # [B, block]
    i = np.minimum((inner <= (target - before)[:, None]).sum(axis=1), block - 1)
    tokens = b * block + i
    # never land on a zero-probability token through rounding at a block edge
    bad = p[np.arange(B), tokens] == 0
    if bad.any():
        for r in np.nonzero(bad)[0]:
            nz = np.nonzero(p[r])[0]
            tokens[r] = nz[np.argmin(np.abs(nz - tokens[r]))]
    return tokens.astype(np.int64)
