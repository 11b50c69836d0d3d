"""Runtimes: run the exported prior step and decoder graphs (TorchScript or ONNX Runtime).

A runtime owns the physical KV cache: per layer, one [slots, H, D, hd] tensor of keys and one
of values. The engine keeps its active sequences in rows 0..B-1 (compacting on finish), so
every step hands the graph each layer's contiguous prefix [:B] without a copy, and writes the
step's new keys/values back at each row's position (docs/model-format.md).

Where the cache lives: TorchScript keeps it on its device; ONNX Runtime in host memory on the
CPU (OnnxRuntime) and in device memory through I/O binding on CUDA (OnnxDeviceRuntime,
service/core/ort_device.py), so that per step only tokens, positions and logits cross.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..settings import Settings
from .model_dir import ModelSpec
from .ort_sessions import intra_op_threads, one_thread_step_session, ort_device, ort_sessions
from .staging import HostStaging, Transfers


class Runtime(Protocol):
    backend: str
    device: str
    transfers: "Transfers"  # bytes between host memory and the runtime, counted at its boundary

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rows 0..B-1: tokens [B] int64, positions [B] int64 -> logits [B, K] float32;
        writes each row's new key/value into the cache at its position."""

    def move_row(self, src: int, dst: int) -> None:
        """Copy cache row src to row dst (compaction when a sequence finishes)."""

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """codes [B, D] int64, lengths [B] int64 -> samples [B, ...] float32 in [0, 1]."""


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
        self.transfers = Transfers()
        self.staging = HostStaging(torch, self.device, self.transfers)
        self.step_fn = None  # loaded by the first call, on the thread that will step (_load)

    def _load(self) -> None:
        """Load the graphs and allocate the cache on the calling thread. Torch's OpenMP pool
        belongs to the thread that first runs parallel work: set up from another thread, every
        step on the engine thread was 2-3x slower (1.5 vs 0.5 ms at batch 1)."""
        torch, spec, slots = self.torch, self._spec, self._slots
        torch.set_num_threads(intra_op_threads(self._threads))
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
            t = self.staging.to_device("tokens", tokens)
            p = self.staging.to_device("positions", positions)
            out = self.step_fn(t, p, *[k[:B] for k in self.k], *[v[:B] for v in self.v])
            rows = self.rows[:B]
            for i in range(L):  # new key/value [B, H, hd] at each row's position, on the device
                self.k[i][rows, :, p] = out[1 + i]
                self.v[i][rows, :, p] = out[1 + L + i]
            return self.staging.to_host("logits", out[0])

    def move_row(self, src: int, dst: int) -> None:
        for c in self.k + self.v:
            c[dst] = c[src]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.step_fn is None:
            self._load()
        torch = self.torch
        with torch.inference_mode():
            out = self.decode_fn(self.staging.to_device("codes", codes), self.staging.to_device("lengths", lengths))
            return self.staging.to_host("samples", out)


class OnnxRuntime:
    """ONNX Runtime with the KV cache in host memory: every step passes the active rows' cache
    as feeds (no copy on the CPU provider, a full host-to-device copy on CUDA) and writes the new
    keys/values with numpy. The CPU path; on CUDA see OnnxDeviceRuntime (service/core/ort_device.py)."""
    backend = "onnx"
    io_binding = False

    def __init__(self, spec: ModelSpec, slots: int, device: str | None = None, threads: int = 0,
                 ort_spin: str | None = None, decode_threads: int = 0):
        self.device, self.step_sess, self.decode_sess = ort_sessions(spec, device, threads, ort_spin, decode_threads)
        # On the CPU with a pool of intra-op threads, the step graph also on one thread: batches
        # below one_thread_below run there (chosen at start-up, service/core/step_threads.py)
        self.step_one_thread = (one_thread_step_session(spec, ort_spin or "off")
                                if self.device == "cpu" and intra_op_threads(threads) > 1 else None)
        self.one_thread_below = 0
        shape = (slots, spec.n_head, spec.D, spec.head_dim)
        # Host cache; ORT reads each layer's contiguous prefix [:B] in place on the CPU provider.
        self.k = [np.zeros(shape, dtype=np.float32) for _ in range(spec.n_layer)]
        self.v = [np.zeros(shape, dtype=np.float32) for _ in range(spec.n_layer)]
        self.k_names, self.v_names = _step_names(spec.n_layer)
        self.rows = np.arange(slots)
        self.transfers = Transfers()
        # per row: tokens, positions and the row's whole cache in; logits and new keys/values out
        self._in_row_bytes = 16 + 2 * spec.n_layer * spec.n_head * spec.D * spec.head_dim * 4
        self._out_row_bytes = (spec.K + 2 * spec.n_layer * spec.n_head * spec.head_dim) * 4

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        B, L = len(tokens), len(self.k)
        feeds = {"tokens": tokens, "positions": positions}
        for i in range(L):
            feeds[self.k_names[i]] = self.k[i][:B]
            feeds[self.v_names[i]] = self.v[i][:B]
        sess = self.step_one_thread if B < self.one_thread_below else self.step_sess
        out = sess.run(None, feeds)
        self.transfers.to_device += B * self._in_row_bytes
        self.transfers.to_host += B * self._out_row_bytes
        rows = self.rows[:B]
        for i in range(L):  # new key/value [B, H, hd] at each row's position
            self.k[i][rows, :, positions] = out[1 + i]
            self.v[i][rows, :, positions] = out[1 + L + i]
        return out[0]

    def move_row(self, src: int, dst: int) -> None:
        for c in self.k + self.v:
            c[dst] = c[src]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self.transfers.to_device += codes.nbytes + lengths.nbytes
        out = self.decode_sess.run(None, {"codes": codes, "lengths": lengths})[0]
        self.transfers.to_host += out.nbytes
        return out


def make_runtime(spec: ModelSpec, backend: str, slots: int, device: str | None = None, threads: int | None = None,
                 ort_spin: str | None = None, ort_io_binding: str = "auto", decode_threads: int | None = None) -> Runtime:
    """threads and ort_spin as Settings has them (service/settings.py); None: as Settings reads them
    from the environment, for a runtime built outside the service (tests, benchmarks). threads 0:
    all cores. ort_io_binding: `on` keeps the ONNX KV cache in device memory (OnnxDeviceRuntime), `off` in
    host memory (OnnxRuntime), `auto` picks `on` on CUDA and `off` on the CPU, where the host
    cache is no copy and the extra scatter run would cost (bench/results/engine-io-binding/engine.md)."""
    if threads is None or ort_spin is None:
        env = Settings()
        threads = env.threads if threads is None else threads
        ort_spin = env.ort_spin if ort_spin is None else ort_spin
        decode_threads = env.decode_threads if decode_threads is None else decode_threads
    elif decode_threads is None:  # the others given: no environment read
        decode_threads = Settings.model_fields["decode_threads"].default
    if backend == "torchscript":
        return TorchScriptRuntime(spec, slots, device, threads)
    if backend != "onnx":
        raise ValueError(f"unknown backend {backend!r}; choose torchscript or onnx")
    if ort_io_binding not in ("auto", "on", "off"):
        raise ValueError(f"ort_io_binding={ort_io_binding!r}; choose auto, on or off")
    if ort_io_binding == "on" or (ort_io_binding == "auto" and ort_device(device) == "cuda"):
        try:
            from .ort_device import OnnxDeviceRuntime
        except ModuleNotFoundError as e:  # the CPU image leaves out onnx, which builds the cache graphs
            raise RuntimeError(f"ort_io_binding=on needs the {e.name!r} package (in the GPU image and the "
                               "dev install); on the CPU the host-memory cache (off) is the faster one") from e
        return OnnxDeviceRuntime(spec, slots, device, threads, ort_spin)
    return OnnxRuntime(spec, slots, device, threads, ort_spin, decode_threads)
