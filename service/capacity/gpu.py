"""A GPU replica's calibration, PROJECTED (no GPU was measured): the cost model of the GPU
readiness work (bench/engine_bench.py and docs/gpu.md: a step against the device's roofline,
with the KV cache in device memory, I/O binding) plus the host's share, measured here.

- step(B) on the device = one kernel launch per node of the step graph, plus the larger of the
  step's FLOPs over the device's fp32 peak and the bytes it reads (the weights once, the KV
  cache of B rows) over its memory bandwidth;
- plus the host: the logits (B x K floats) copied back over PCIe and sampled with numpy, timed
  on this machine's CPU (sampling stays on the host in the engine);
- decode(B) = a launch per decoder node, plus this machine's measured CPU decode scaled by
  the ratio of the device's peak to this CPU's (the engine benchmark's measured GEMM peak);
- max_batch 512 (a GPU step costs nearly the same at 128 and 512 rows; the CPU default is 128).
- the frontend: 8 workers (the most `anytime serve` starts by default, for a host with 9 cores
  or more), each an event loop at this CPU's frontend cost per request (Calibration.frontend_s),
  with cores to spare (no contention).

Not modelled: CUDA graphs (not tried, docs/gpu.md), contention with other tenants, and the
engine core's own per-request work beside the step (admission, messages)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.latency import median_time
from ..core.sampling import sample_rows
from .calibration import Calibration, from_profile

# Datasheet numbers: dense fp32 FLOP/s and memory bandwidth (bytes/s)
PRESETS = {
    "l4": (30.3e12, 300e9),
    "a10g": (31.2e12, 600e9),
    "a100": (19.5e12, 1555e9),
    "h100": (67e12, 3350e9),
}
LAUNCH_S = 6e-6  # one kernel launch and ORT's per-node dispatch on CUDA
PCIE_BYTES_S = 12e9  # effective host <-> device copy bandwidth (PCIe 4.0 x16, pageable)
CPU_PEAK_FLOPS = 203e9  # this machine's measured fp32 GEMM peak (bench/results/engine/engine.md)
GPU_MAX_BATCH = 512
GPU_FRONTEND_WORKERS = 8  # service/settings.default_workers' ceiling


def step_flops(manifest: dict, batch: int) -> float:
    """Multiply-adds x2 of one step: the linear layers, attention over the D cache slots, the head."""
    p, D, K = manifest["prior"], manifest["D"], manifest["K"]
    d, L = p["d_model"], p["n_layer"]
    per_row = L * (2 * 12 * d * d + 2 * 2 * D * d) + 2 * d * K
    return float(per_row * batch)


def step_bytes(manifest: dict, batch: int) -> float:
    """fp32 bytes a step reads: the weights once, and every row's keys and values in the cache."""
    p, D, K = manifest["prior"], manifest["D"], manifest["K"]
    d, L = p["d_model"], p["n_layer"]
    weights = L * 12 * d * d + 2 * d * K
    return 4.0 * (weights + batch * L * 2 * D * d)


def graph_nodes(path: Path, fallback: int) -> int:
    try:
        import onnx
    except ModuleNotFoundError:
        return fallback
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def project(model_dir: Path, preset: str) -> Calibration:
    if preset not in PRESETS:
        raise ValueError(f"unknown GPU preset {preset!r}; choose {', '.join(PRESETS)}")
    peak, bandwidth = PRESETS[preset]
    cpu = from_profile(model_dir)  # the manifest, the quality curve and this CPU's decode
    import json

    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    files = manifest["files"]
    step_nodes = graph_nodes(Path(model_dir) / files["prior_step_onnx"]["path"], 30 * manifest["prior"]["n_layer"])
    decode_nodes = graph_nodes(Path(model_dir) / files["decoder_onnx"]["path"], 25)
    K = manifest["K"]
    step, decode = {}, {}
    for b in (1, 8, 32, 128, 256, GPU_MAX_BATCH):
        device = step_nodes * LAUNCH_S + max(step_flops(manifest, b) / peak, step_bytes(manifest, b) / bandwidth)
        logits = np.random.default_rng(0).standard_normal((b, K)).astype(np.float32)
        ones, off = np.ones(b), np.zeros(b, dtype=np.int64)
        host = median_time(lambda: sample_rows(logits, np.full(b, 0.5), ones, off, ones), 5) + b * K * 4 / PCIE_BYTES_S
        step[b] = device + host
    for b, c in cpu.decode_s.items():
        decode[b] = decode_nodes * LAUNCH_S + c * CPU_PEAK_FLOPS / peak
    return Calibration(cpu.model, cpu.D, cpu.quality, step, decode, copy_row_s=2 * LAUNCH_S,
                       admit_s=cpu.admit_s, respond_s=cpu.respond_s, max_batch=GPU_MAX_BATCH,
                       frontend_s=cpu.frontend_s, frontend_workers=GPU_FRONTEND_WORKERS,
                       source=f"PROJECTION for an NVIDIA {preset.upper()} (service/capacity/gpu.py: roofline "
                              f"{peak / 1e12:g} TFLOP/s, {bandwidth / 1e9:g} GB/s, {step_nodes} step kernels at "
                              f"{LAUNCH_S * 1e6:g} us; host sampling measured here); not a measurement",
                       measured={**cpu.measured, "projection": preset})
