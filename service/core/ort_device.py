"""ONNX Runtime with the KV cache in device memory (I/O binding): the ONNX backend on CUDA.

Per layer and kind the cache is one ORT-allocated [slots, H, D, hd] buffer on the ORT session's
device, zeroed once at load. A step binds, by address, each layer's rows 0..B-1 (a contiguous
prefix) as the step graph's cache input and the first B rows of a [slots, H, hd] buffer as its
`k_new_i`/`v_new_i` output; then the scatter graph (service/core/kv_graphs.py) writes those at
each row's position, its output bound to its input's memory. Tokens and positions go to the
device once per step (both graphs read the same device copy of positions) and logits come back
into a fresh host array: nothing else crosses, whatever the cache size (`transfers` counts it).

The bindings for a batch size are built once and kept: a step rebinds only tokens, positions and
logits. ONNX Runtime synchronizes the device at the end of every run, so the scatter run sees
the step run's outputs even if the two ORT sessions use different CUDA streams.
"""
from __future__ import annotations

import numpy as np

from .kv_graphs import cache_graphs, cache_names, new_names
from .model_dir import ModelSpec
from .ort_sessions import ort_sessions
from .staging import Transfers


class OnnxDeviceRuntime:
    backend = "onnx"
    io_binding = True

    def __init__(self, spec: ModelSpec, slots: int, device: str | None = None, threads: int = 0,
                 ort_spin: str | None = None):
        import onnxruntime as ort

        self.ort = ort
        self.device, self.step_sess, self.decode_sess = ort_sessions(spec, device, threads, ort_spin)
        scatter, move = cache_graphs(spec)
        # The cache graphs move a few rows: one thread, no pool to wake.
        small = ort.SessionOptions()
        small.intra_op_num_threads = small.inter_op_num_threads = 1
        providers = self.step_sess.get_providers()
        self.scatter_sess = ort.InferenceSession(scatter.SerializeToString(), small, providers=providers)
        self.move_sess = ort.InferenceSession(move.SerializeToString(), small, providers=providers)
        self._spec, self.slots = spec, slots
        self.transfers = Transfers()
        cache_shape = [slots, spec.n_head, spec.D, spec.head_dim]
        zeros = np.zeros(cache_shape, dtype=np.float32)  # masked slots must hold finite numbers
        self.cache = {n: self._device_value(zeros) for n in cache_names(spec.n_layer)}
        self.new = {n: ort.OrtValue.ortvalue_from_shape_and_type([slots, spec.n_head, spec.head_dim], np.float32,
                                                                 self.device, 0)
                    for n in new_names(spec.n_layer)}
        self._step_bindings: dict[int, object] = {}
        self._scatter_bindings: dict[int, object] = {}
        self._move_binding = None

    def _device_value(self, host: np.ndarray):
        """A device copy of a host array (on the CPU provider: a copy ORT owns, never numpy's)."""
        v = self.ort.OrtValue.ortvalue_from_shape_and_type(list(host.shape), host.dtype.type, self.device, 0)
        v.update_inplace(host)
        return v

    def _upload(self, host: np.ndarray):
        self.transfers.to_device += host.nbytes
        return self.ort.OrtValue.ortvalue_from_numpy(host, self.device, 0)

    def _bind_rows(self, bind, name: str, value, rows: int, output: bool = False) -> None:
        """Bind rows 0..rows-1 of a device buffer by address (a prefix starts at the buffer's own
        address): no copy, the graph reads or writes that memory."""
        row_shape = value.shape()[1:]
        (bind.bind_output if output else bind.bind_input)(name, self.device, 0, np.float32, [rows, *row_shape],
                                                          value.data_ptr())

    def _step_binding(self, B: int):
        bind = self._step_bindings.get(B)
        if bind is None:
            bind = self.step_sess.io_binding()
            for name, value in self.cache.items():
                self._bind_rows(bind, name, value, B)
            for name, value in self.new.items():
                self._bind_rows(bind, name, value, B, output=True)
            self._step_bindings[B] = bind
        return bind

    def _scatter_binding(self, B: int):
        bind = self._scatter_bindings.get(B)
        if bind is None:
            bind = self.scatter_sess.io_binding()
            for name, value in self.cache.items():
                self._bind_rows(bind, name, value, B)
                self._bind_rows(bind, name.replace("_cache_", "_out_"), value, B, output=True)
            for name, value in self.new.items():
                self._bind_rows(bind, name, value, B)
            self._scatter_bindings[B] = bind
        return bind

    def step(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        B = len(tokens)
        pos = self._upload(positions)
        bind = self._step_binding(B)
        bind.bind_ortvalue_input("tokens", self._upload(tokens))
        bind.bind_ortvalue_input("positions", pos)
        logits = np.empty((B, self._spec.K), dtype=np.float32)  # the caller's to keep
        bind.bind_output("logits", "cpu", 0, np.float32, [B, self._spec.K], logits.ctypes.data)
        self.step_sess.run_with_iobinding(bind)
        self.transfers.to_host += logits.nbytes
        scatter = self._scatter_binding(B)
        scatter.bind_ortvalue_input("positions", pos)
        self.scatter_sess.run_with_iobinding(scatter)
        return logits

    def move_row(self, src: int, dst: int) -> None:
        if self._move_binding is None:
            bind = self.move_sess.io_binding()
            for name, value in self.cache.items():
                self._bind_rows(bind, name, value, self.slots)
                self._bind_rows(bind, name.replace("_cache_", "_out_"), value, self.slots, output=True)
            self._move_binding = bind
        self._move_binding.bind_ortvalue_input("src", self._upload(np.array([src], dtype=np.int64)))
        self._move_binding.bind_ortvalue_input("dst", self._upload(np.array([dst], dtype=np.int64)))
        self.move_sess.run_with_iobinding(self._move_binding)

    def cache_rows(self, name: str, rows: int) -> np.ndarray:
        """A host copy of rows 0..rows-1 of one cache tensor (tests and checks, not the hot path)."""
        return self.cache[name].numpy()[:rows]

    def decode(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self.transfers.to_device += codes.nbytes + lengths.nbytes
        out = self.decode_sess.run(None, {"codes": codes, "lengths": lengths})[0]
        self.transfers.to_host += out.nbytes
        return out
