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

    Inverse-CDF sampling in token-id order from the filtered, renormalised distribution.
    """
    B, K = logits.shape
    z = logits.astype(np.float64) / np.maximum(temperature, 1e-6)[:, None]
    if (top_k > 0).any():
        k = np.where(top_k > 0, np.minimum(top_k, K), K)
        if (k == k[0]).all():
            kth = -np.partition(-z, k[0] - 1, axis=1)[:, k[0] - 1]
        else:
            kth = -np.sort(-z, axis=1)[np.arange(B), k - 1]
        z = np.where(z >= kth[:, None], z, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if (top_p < 1.0).any():
        order = np.argsort(-p, axis=1, kind="stable")
        ps = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(ps, axis=1) - ps  # mass of strictly more likely tokens
        keep_sorted = before < top_p[:, None]
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=1, keepdims=True)
    c = np.cumsum(p, axis=1)
    tokens = (c < (uniforms * c[:, -1])[:, None]).sum(axis=1)
    return np.minimum(tokens, K - 1).astype(np.int64)
