"""Run an exported directory's graphs from numpy in either format, and sample with them.

For `anytime check` and for measuring a quality curve of a user's model (models/byom.py):
both work on the files alone, the way the service sees them, whatever module produced them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from model_format.contract import guided_logits

Graph = Callable[..., list[np.ndarray]]  # numpy inputs in the contract's order -> numpy outputs


def open_graph(path: Path, backend: str) -> Graph:
    """Load one graph file; calling it runs the graph on CPU."""
    if backend == "torchscript":
        import torch

        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(*arrays):
            with torch.no_grad():
                out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
            return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

        return run
    if backend == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        run = lambda *arrays: sess.run(None, dict(zip(names, arrays)))
        run.input_names, run.output_names = names, [o.name for o in sess.get_outputs()]
        return run
    raise ValueError(f"unknown backend {backend!r}")


def empty_caches(n_layer: int, batch: int, n_head: int, D: int, head_dim: int) -> list[np.ndarray]:
    """k_cache_0..k_cache_{L-1}, v_cache_0..v_cache_{L-1}: zeros [batch, H, D, hd]."""
    return [np.zeros((batch, n_head, D, head_dim), np.float32) for _ in range(2 * n_layer)]


def write_new(caches: list[np.ndarray], new: list[np.ndarray], positions: np.ndarray) -> None:
    """Store each row's step keys/values ([B, H, hd] per layer and kind) at its position."""
    rows = np.arange(len(positions))
    for cache, kv in zip(caches, new):
        cache[rows, :, positions] = kv


def sample_inverse_cdf(logits: np.ndarray, uniforms: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """One token per row from softmax(logits / T), by the row's own uniform (batch-independent)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    return np.minimum((cdf < uniforms[:, None] * cdf[:, -1:]).sum(axis=1), logits.shape[1] - 1).astype(np.int64)


def generate(step: Graph, start_tokens: np.ndarray, *, D: int, n_layer: int, n_head: int, head_dim: int, seed: int,
             k: int | None = None, temperature: float = 1.0, guidance: float = 0.0,
             null_token: int | None = None) -> np.ndarray:
    """Codes [B, D] (zeros after k): row b draws one uniform per step from its own stream (seed, b).

    guidance w > 0 (needs `null_token`): each row steps beside a null-label row fed the same
    codes, and samples from guided_logits(cond, null, w), as the service does."""
    B, k = len(start_tokens), D if k is None else k
    guided = guidance > 0
    if guided and null_token is None:
        raise ValueError("guidance needs the prior's null token (manifest prior.guidance.null_token)")
    rows = 2 * B if guided else B
    rngs = [np.random.default_rng([seed, b]) for b in range(B)]
    caches = empty_caches(n_layer, rows, n_head, D, head_dim)
    tokens = np.asarray(start_tokens, np.int64)
    if guided:
        tokens = np.concatenate([tokens, np.full(B, null_token, np.int64)])
    codes = np.zeros((B, D), np.int64)
    for p in range(k):
        positions = np.full(rows, p, np.int64)
        logits, *new = step(tokens, positions, *caches)
        write_new(caches, new, positions)
        if guided:
            logits = guided_logits(logits[:B], logits[B:], guidance)
        sampled = sample_inverse_cdf(logits, np.array([r.random() for r in rngs]), temperature)
        codes[:, p] = sampled
        tokens = np.concatenate([sampled, sampled]) if guided else sampled
    return codes
