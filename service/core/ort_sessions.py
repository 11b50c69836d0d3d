"""ONNX Runtime sessions of a model directory's two graphs, as every ONNX runtime opens them
(host cache: runtime.OnnxRuntime; device cache: ort_device.OnnxDeviceRuntime)."""
from __future__ import annotations

import os

from .model_dir import ModelSpec


def intra_op_threads(threads: int) -> int:
    """Intra-op threads of a runtime: the setting (Settings.threads), 0 meaning all cores."""
    return threads or (os.cpu_count() or 1)


def _ort_spinning(opts, mode: str) -> None:
    """How idle ONNX Runtime intra-op threads wait (Settings.ort_spin, ANYTIME_ORT_SPIN): `off` (the
    default: never spin, session.intra_op.allow_spinning=0), `run` (spin only while a run is in
    flight: session.force_spinning_stop) or `on` (ORT's own default: they spin, also for a while
    after each run). Spinning takes the CPU the HTTP event loop and the engine's Python need: at 2x
    load `on` rejected 33% of requests, `run` 11%, `off` 5.6% (bench/results/thread-modes/modes.md);
    on a 1-token request the spinning pool threads were 40% of the engine core's CPU, and `off`
    halved that process's CPU per request (bench/results/cost/cost.md)."""
    if mode == "run":
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    elif mode == "off":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif mode != "on":
        raise ValueError(f"ort_spin={mode!r}; choose on, run or off")


def ort_device(device: str | None) -> str:
    """The device ONNX Runtime will run on: cuda when asked for or by default when
    onnxruntime-gpu sees a GPU, else cpu."""
    import onnxruntime as ort

    cuda = device in (None, "cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    return "cuda" if cuda else "cpu"


def one_thread_step_session(spec: ModelSpec, ort_spin: str):
    """The step graph on the CPU with one intra-op thread: small batches run faster on it than on
    a pool whose threads must be woken for every operator (service/core/step_threads.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    _ort_spinning(opts, ort_spin)
    return ort.InferenceSession(str(spec.file("prior_step_onnx")), opts, providers=["CPUExecutionProvider"])


def ort_sessions(spec: ModelSpec, device: str | None, threads: int, ort_spin: str, decode_threads: int = 0):
    """(device, step graph InferenceSession, decoder InferenceSession) on ort_device(device);
    the decoder with decode_threads intra-op threads (0: as the step graph)."""
    import onnxruntime as ort

    want_cuda = ort_device(device) == "cuda"
    providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    _ort_spinning(opts, ort_spin)
    step = ort.InferenceSession(str(spec.file("prior_step_onnx")), opts, providers=providers)
    if decode_threads:
        opts.intra_op_num_threads = decode_threads
    decode = ort.InferenceSession(str(spec.file("decoder_onnx")), opts, providers=providers)
    return ("cuda" if want_cuda else "cpu"), step, decode
