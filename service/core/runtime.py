"""Runtimes: run the exported prior step and decoder graphs (TorchScript or ONNX Runtime).

A runtime owns the physical KV cache: per layer, one [slots, H, D, hd] tensor of keys and one
of values. The engine keeps its active sequences in rows 0..B-1 (compacting on finish), so
every step hands the graph each layer's contiguous prefix [:B] without a copy, and writes the
step's new keys/values back at each row's position (docs/model-format.md).
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


def _threads(threads: int = 0) -> int:
    """Intra-op threads: the setting, else ANYTIME_THREADS (tests, benchmarks), else all cores."""
    return threads or int(os.environ.get("ANYTIME_THREADS", "0")) or (os.cpu_count() or 1)


def _ort_spinning(opts, mode: str | None = None) -> None:
    """How idle ONNX Runtime intra-op threads wait (ANYTIME_ORT_SPIN): `run` (the default: spin
    only while a run is in flight: session.force_spinning_stop), `on` (ORT's own default: they
    spin, also for a while after each run) or `off` (never spin: session.intra_op.allow_spinning=0).
    Spinning after a run takes the CPU the HTTP event loop and the engine's Python need between
    steps: at 2x load `on` rejected 33% of requests where `run` rejected 11%, while `run` costs the
    bare step 5-15% (bench/results/thread-modes/modes.md, bench/results/engine/engine.md)."""
    mode = mode or os.environ.get("ANYTIME_ORT_SPIN", "run")
    if mode == "run":
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    elif mode == "off":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif mode != "on":
        raise ValueError(f"ANYTIME_ORT_SPIN={mode!r}; choose on, run or off")


def _step_names(n_layer: int) -> tuple[list[str], list[str]]:
    """Cache input names of the step graph (format 2): k_cache_0.. and v_cache_0.."""
    return [f"k_cache_{i}" for i in range(n_layer)], [f"v_cache_{i}" for i in range(n_layer)]


class TorchScriptRuntime:
    backend = "torchscript"

    def __init__(self, spec: ModelSpec, slots: int, device: str | None = None, threads: int = 0):
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._spec, self._slots, self._threads = spec, slots, threads
        self.step_fn = None  # loaded by the first call, on the thread that will step (_load)

    def _load(self) -> None:
        """Load the graphs and allocate the cache on the calling thread. Torch's OpenMP pool
        belongs to the thread that first runs parallel work: set up from another thread, every
        step on the engine thread was 2-3x slower (1.5 vs 0.5 ms at batch 1)."""
        torch, spec, slots = self.torch, self._spec, self._slots
        torch.set_num_threads(_threads(self._threads))
        self.decode_fn = torch.jit.load(str(spec.file("decoder_torchscript")), map_location=self.device).eval()
        shape = (slots, spec.n_head, spec.D, spec.head_dim)
        self.k = [torch.zeros(shape, device=self.device) for _ in range(spec.n_layer)]
        self.v = [torch.zeros(shape, device=self.device) for _ in range(spec.n_layer)]
        self.rows = torch.arange(slots, device=self.device)
        self.step_fn = torch.jit.load(str(spec.file("prior_step_torchscript")), map_location=self.device).eval()

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.step_fn is None:
            self._load()
        torch = self.torch
        B, L = len(tokens), len(self.k)
        with torch.inference_mode():
            t = torch.from_numpy(tokens).to(self.device)
            p = torch.from_numpy(positions).to(self.device)
            out = self.step_fn(t, p, *[k[:B] for k in self.k], *[v[:B] for v in self.v])
            rows = self.rows[:B]
            for i in range(L):  # new key/value [B, H, hd] at each row's position
                self.k[i][rows, :, p] = out[1 + i]
                self.v[i][rows, :, p] = out[1 + L + i]
            return out[0].float().cpu().numpy()

    def move_row(self, src: int, dst: int) -> None:
        for c in self.k + self.v:
            c[dst] = c[src]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.step_fn is None:
            self._load()
        torch = self.torch
        with torch.inference_mode():
            out = self.decode_fn(torch.from_numpy(codes).to(self.device), torch.from_numpy(lengths).to(self.device))
            return out.float().cpu().numpy()


class OnnxRuntime:
    backend = "onnx"

    def __init__(self, spec: ModelSpec, slots: int, device: str | None = None, threads: int = 0,
                 ort_spin: str | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = device in (None, "cuda") and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        self.device = "cuda" if want_cuda else "cpu"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        _ort_spinning(opts, ort_spin)
        self.step_sess = ort.InferenceSession(str(spec.file("prior_step_onnx")), opts, providers=providers)
        self.decode_sess = ort.InferenceSession(str(spec.file("decoder_onnx")), opts, providers=providers)
        shape = (slots, spec.n_head, spec.D, spec.head_dim)
        # Host cache; ORT reads each layer's contiguous prefix [:B] in place on the CPU provider.
        self.k = [np.zeros(shape, dtype=np.float32) for _ in range(spec.n_layer)]
        self.v = [np.zeros(shape, dtype=np.float32) for _ in range(spec.n_layer)]
        self.k_names, self.v_names = _step_names(spec.n_layer)
        self.rows = np.arange(slots)

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        B, L = len(tokens), len(self.k)
        feeds = {"tokens": tokens, "positions": positions}
        for i in range(L):
            feeds[self.k_names[i]] = self.k[i][:B]
            feeds[self.v_names[i]] = self.v[i][:B]
        out = self.step_sess.run(None, feeds)
        rows = self.rows[:B]
        for i in range(L):  # new key/value [B, H, hd] at each row's position
            self.k[i][rows, :, positions] = out[1 + i]
            self.v[i][rows, :, positions] = out[1 + L + i]
        return out[0]

    def move_row(self, src: int, dst: int) -> None:
        for c in self.k + self.v:
            c[dst] = c[src]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.decode_sess.run(None, {"codes": codes, "lengths": lengths})[0]


def make_runtime(spec: ModelSpec, backend: str, slots: int, device: str | None = None, threads: int = 0,
                 ort_spin: str | None = None) -> Runtime:
    """threads 0 and ort_spin None: ANYTIME_THREADS / ANYTIME_ORT_SPIN, else all cores and `run`."""
    if backend == "torchscript":
        return TorchScriptRuntime(spec, slots, device, threads)
    if backend == "onnx":
        return OnnxRuntime(spec, slots, device, threads, ort_spin)
    raise ValueError(f"unknown backend {backend!r}; choose torchscript or onnx")
