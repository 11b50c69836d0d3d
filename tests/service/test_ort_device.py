"""ONNX Runtime with the KV cache in device memory (I/O binding, service/core/ort_device.py),
run on whatever device ONNX Runtime picks: the CPU here (ORT's CPU device supports I/O binding,
so this is the code path CUDA runs), CUDA under `make gpu-check`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.core.kv_graphs import cache_names
from service.core.model_dir import load_model_dir
from service.core.ort_device import OnnxDeviceRuntime
from service.core.runtime import OnnxRuntime, make_runtime
from service.core.sampling import sample_rows, sequence_rng

ZOO_MODEL = Path(__file__).resolve().parents[2] / "models" / "zoo" / "fashion-mnist"


def _pair(model_dir, slots):
    spec = load_model_dir(model_dir, "onnx")
    host = make_runtime(spec, "onnx", slots, ort_io_binding="off")
    bound = make_runtime(spec, "onnx", slots, ort_io_binding="on")
    assert isinstance(host, OnnxRuntime) and isinstance(bound, OnnxDeviceRuntime)
    return spec, host, bound


def _host_cache(rt: OnnxRuntime, name: str, rows: int) -> np.ndarray:
    kind, i = name.split("_cache_")
    return (rt.k if kind == "k" else rt.v)[int(i)][:rows]


@pytest.mark.parametrize("model", ["tiny", "zoo"])
def test_bound_steps_equal_host_steps_through_joins_and_compaction(model, tiny_model_dir):
    """Rows at different positions, a row leaving (move_row compacts) and a new one joining:
    logits and every cache tensor equal the host-cache runtime's within 1e-5."""
    spec, host, bound = _pair(tiny_model_dir if model == "tiny" else ZOO_MODEL, slots=6)
    D, rng = spec.D, np.random.default_rng(3)
    positions = np.array([0, 2, 1, 0, 3], dtype=np.int64)
    tokens = np.where(positions == 0, spec.unconditional_token, rng.integers(0, spec.K, 5)).astype(np.int64)
    for t in range(2 * D):
        if t == D // 2:  # row 1 finishes: the last row takes its place, a new sequence joins at the end
            host.move_row(4, 1)
            bound.move_row(4, 1)
            tokens, positions = tokens[[0, 4, 2, 3]], positions[[0, 4, 2, 3]]
            tokens = np.append(tokens, spec.start_token_base).astype(np.int64)
            positions = np.append(positions, 0).astype(np.int64)
        want, got = host.step(tokens, positions), bound.step(tokens, positions)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        B = len(tokens)
        for name in cache_names(spec.n_layer):
            np.testing.assert_allclose(bound.cache_rows(name, B), _host_cache(host, name, B), atol=1e-5, rtol=0)
        tokens = want.argmax(1).astype(np.int64)
        positions = (positions + 1) % D  # a row that reaches D starts over at 0 (a new sequence)
        tokens[positions == 0] = spec.unconditional_token


def test_move_row_copies_every_layer_and_leaves_other_rows(tiny_model_dir):
    spec, host, bound = _pair(tiny_model_dir, slots=4)
    tokens, positions = np.arange(4, dtype=np.int64), np.array([0, 1, 2, 3], dtype=np.int64)
    for _ in range(3):
        host.step(tokens, positions)
        bound.step(tokens, positions)
        positions += 1
    before = {n: bound.cache_rows(n, 4).copy() for n in cache_names(spec.n_layer)}
    bound.move_row(3, 0)
    for name, old in before.items():
        now = bound.cache_rows(name, 4)
        np.testing.assert_array_equal(now[0], old[3])
        np.testing.assert_array_equal(now[1:], old[1:])
        assert not np.array_equal(old[0], old[3])  # the move changed something


def _count_host_arrays(monkeypatch, rt: OnnxDeviceRuntime) -> list[int]:
    """Spy on every way a host array can reach ONNX Runtime: device values made from numpy,
    host bindings, and plain runs (which the bound step must not use)."""
    seen: list[int] = []
    real = ort.OrtValue.ortvalue_from_numpy

    def from_numpy(array, *args, **kw):
        seen.append(array.nbytes)
        return real(array, *args, **kw)

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(from_numpy))
    monkeypatch.setattr(ort.IOBinding, "bind_cpu_input", lambda *a: pytest.fail("host input bound"))
    for sess in (rt.step_sess, rt.scatter_sess, rt.move_sess):
        monkeypatch.setattr(sess, "run", lambda *a, **k: pytest.fail("plain run with host feeds"))
    return seen


@pytest.mark.parametrize("model", ["tiny", "zoo"])
def test_bytes_per_step_are_tokens_positions_and_logits(model, tiny_model_dir, monkeypatch):
    """At the runtime's boundary a bound step passes B * (8 + 8) bytes in and B * K * 4 out,
    whatever the cache size (slots, D, layers, heads); the host-cache step passes the cache."""
    model_dir = tiny_model_dir if model == "tiny" else ZOO_MODEL
    per_step = {}
    for slots in (4, 64):
        spec, host, bound = _pair(model_dir, slots)
        seen = _count_host_arrays(monkeypatch, bound)
        for B in (1, 4):
            tokens = np.full(B, spec.unconditional_token, dtype=np.int64)
            positions = np.arange(B, dtype=np.int64) % spec.D
            bound.transfers.reset()
            seen.clear()
            logits = bound.step(tokens, positions)
            assert bound.transfers.to_device == sum(seen) == B * 16  # everything that went in was counted
            assert bound.transfers.to_host == logits.nbytes == B * spec.K * 4
            per_step[slots, B] = bound.transfers.total
            host.transfers.reset()
            host.step(tokens, positions)
            cache_bytes = B * 2 * spec.n_layer * spec.n_head * spec.D * spec.head_dim * 4
            assert host.transfers.to_device == B * 16 + cache_bytes
        monkeypatch.undo()
    assert per_step[4, 1] == per_step[64, 1] and per_step[4, 4] == per_step[64, 4]


def _sample(rt, spec, seed: int, k: int) -> list[int]:
    rng = sequence_rng(seed, 0)
    tokens, out = np.array([spec.unconditional_token]), []
    for p in range(k):
        logits = rt.step(tokens, np.array([p]))
        tokens = sample_rows(logits, np.array([rng.random()]), np.ones(1), np.zeros(1, dtype=np.int64), np.ones(1))
        out.append(int(tokens[0]))
    return out


def test_same_seed_same_tokens_bound_or_not(tiny_model_dir):
    spec, host, bound = _pair(tiny_model_dir, slots=1)
    got = _sample(bound, spec, 7, spec.D)
    assert got == _sample(host, spec, 7, spec.D)
    fresh = make_runtime(spec, "onnx", 1, ort_io_binding="on")
    assert _sample(fresh, spec, 7, spec.D) == got  # and again on a fresh cache
    assert _sample(fresh, spec, 8, spec.D) != got


def test_engine_serves_with_the_bound_runtime(tiny_model_dir):
    """A whole generation through the engine (scheduling, compaction, decode) gives the same
    tokens with the cache in device memory as in host memory."""
    from service.core.engine import Engine
    from service.core.scheduler import SchedulerConfig
    from tests.utils.engine import submit

    results = {}
    for mode in ("off", "on"):
        spec = load_model_dir(tiny_model_dir, "onnx")
        engine = Engine(spec, make_runtime(spec, "onnx", 4, ort_io_binding=mode), SchedulerConfig(max_batch=4))
        engine.start()
        try:
            jobs = [submit(engine, seed=s, n=n, deadline_ms=30000) for s, n in ((1, 2), (2, 1), (3, 3))]
            for _, done in jobs:
                assert done.wait(30)
            results[mode] = [[list(s.codes) for s in r.sequences] for r, _ in jobs]
        finally:
            engine.stop(5)
    assert results["on"] == results["off"]
    assert all(len(c) == spec.D for r in results["on"] for c in r)


def test_auto_binds_on_cuda_only(tiny_model_dir):
    spec = load_model_dir(tiny_model_dir, "onnx")
    rt = make_runtime(spec, "onnx", 2)
    assert rt.io_binding == (rt.device == "cuda")
    with pytest.raises(ValueError, match="ort_io_binding"):
        make_runtime(spec, "onnx", 2, ort_io_binding="sometimes")


@pytest.mark.skipif(not os.environ.get("ANYTIME_EXPECT_DEVICE"), reason="set by make gpu-check")
@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_runtimes_run_on_the_expected_device(tiny_model_dir, backend):
    """Under `make gpu-check` (ANYTIME_EXPECT_DEVICE=cuda) the parity tests must not have fallen
    back to the CPU silently."""
    spec = load_model_dir(tiny_model_dir, backend)
    rt = make_runtime(spec, backend, 2)
    assert rt.device == os.environ["ANYTIME_EXPECT_DEVICE"]
    rt.step(np.array([spec.unconditional_token, spec.start_token_base]), np.array([0, 0]))
    assert rt.transfers.to_device == 32


def test_torchscript_passes_only_tokens_positions_and_logits(tiny_model_dir):
    """The TorchScript cache never leaves its device either: per step 16 bytes per row go in
    (through pinned staging buffers on CUDA) and the logits come out."""
    spec = load_model_dir(tiny_model_dir, "torchscript")
    for slots in (2, 32):
        rt = make_runtime(spec, "torchscript", slots)
        rt.step(np.array([spec.unconditional_token]), np.array([0]))  # loads the graphs
        rt.transfers.reset()
        logits = rt.step(np.full(2, spec.unconditional_token), np.array([1, 0]))
        assert rt.transfers.to_device == 2 * 16 and rt.transfers.to_host == logits.nbytes == 2 * spec.K * 4
