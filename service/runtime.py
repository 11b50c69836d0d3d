"""Runtimes: run the exported prior step and decoder graphs (TorchScript or ONNX Runtime).

A runtime owns the physical KV cache: `slots` rows of [L, H, D, hd] keys and values. The
engine keeps its active sequences in rows 0..B-1 (compacting on finish), so every step
runs on a contiguous prefix of the cache without a copy.
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from .model_dir import ModelSpec


class Runtime(Protocol):
    backend: str
    device: str

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rows 0..B-1: tokens [B] int64, positions [B] int64 -> logits [B, K] float32;
        writes each row's new key/value into the cache at its position."""

    def move_row(self, src: int, dst: int) -> None:
        """Copy cache row src to row dst (compaction when a sequence finishes)."""

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """codes [B, D] int64, lengths [B] int64 -> samples [B, ...] float32 in [0, 1]."""


def _threads() -> int:
    return int(os.environ.get("ANYTIME_THREADS", "0")) or (os.cpu_count() or 1)


class TorchScriptRuntime:
    backend = "torchscript"

    def __init__(self, spec: ModelSpec, slots: int, device: str | None = None):
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch.set_num_threads(_threads())
        self.step_fn = torch.jit.load(str(spec.file("prior_step_torchscript")), map_location=self.device).eval()
        self.decode_fn = torch.jit.load(str(spec.file("decoder_torchscript")), map_location=self.device).eval()
        shape = (slots, spec.n_layer, spec.n_head, spec.D, spec.head_dim)
        self.k = torch.zeros(shape, device=self.device)
        self.v = torch.zeros(shape, device=self.device)

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        torch = self.torch
        B = len(tokens)
        with torch.inference_mode():
            t = torch.from_numpy(tokens).to(self.device)
            p = torch.from_numpy(positions).to(self.device)
            logits, k_new, v_new = self.step_fn(t, p, self.k[:B], self.v[:B])
            rows = torch.arange(B, device=self.device)
            self.k[rows, :, :, p] = k_new  # [B, L, H, hd] at each row's position
            self.v[rows, :, :, p] = v_new
            return logits.float().cpu().numpy()

    def move_row(self, src: int, dst: int) -> None:
        self.k[dst] = self.k[src]
        self.v[dst] = self.v[src]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.decode_fn(torch.from_numpy(codes).to(self.device), torch.from_numpy(lengths).to(self.device))
            return out.float().cpu().numpy()


class OnnxRuntime:
    backend = "onnx"

    def __init__(self, spec: ModelSpec, slots: int, device: str | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = device in (None, "cuda") and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        self.device = "cuda" if want_cuda else "cpu"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.step_sess = ort.InferenceSession(str(spec.file("prior_step_onnx")), opts, providers=providers)
        self.decode_sess = ort.InferenceSession(str(spec.file("decoder_onnx")), opts, providers=providers)
        shape = (slots, spec.n_layer, spec.n_head, spec.D, spec.head_dim)
        # Host cache; ORT reads the contiguous prefix [:B] in place on the CPU provider.
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        B = len(tokens)
        logits, k_new, v_new = self.step_sess.run(
            None, {"tokens": tokens, "positions": positions, "k_cache": self.k[:B], "v_cache": self.v[:B]})
        rows = np.arange(B)
        self.k[rows, :, :, positions] = k_new
        self.v[rows, :, :, positions] = v_new
        return logits

    def move_row(self, src: int, dst: int) -> None:
        self.k[dst] = self.k[src]
        self.v[dst] = self.v[src]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.decode_sess.run(None, {"codes": codes, "lengths": lengths})[0]


def make_runtime(spec: ModelSpec, backend: str, slots: int, device: str | None = None) -> Runtime:
    if backend == "torchscript":
        return TorchScriptRuntime(spec, slots, device)
    if backend == "onnx":
        return OnnxRuntime(spec, slots, device)
    raise ValueError(f"unknown backend {backend!r}; choose torchscript or onnx")
