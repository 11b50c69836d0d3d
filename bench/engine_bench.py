"""Engine micro-benchmark: prior step latency vs batch per backend next to the FLOP-bound
time from this machine's measured peak matmul throughput; decode latency vs batch."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from service.latency import median_time

from .machine import header


def peak_matmul_gflops(sizes=(512, 1024, 2048), repeats: int = 10) -> dict:
    """Best fp32 GEMM throughput of torch on this machine (the roofline's compute roof)."""
    import torch

    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        out[n] = 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9
    return out


def step_flops(manifest: dict, batch: int) -> float:
    """Multiply-adds x2 of one step: the linear layers, attention over the D cache slots, the head."""
    p, D, K = manifest["prior"], manifest["D"], manifest["K"]
    d, L = p["d_model"], p["n_layer"]
    per_row = L * (2 * 12 * d * d + 2 * 2 * D * d) + 2 * d * K
    return float(per_row * batch)


def median_ms(fn, repeats: int) -> float:
    return median_time(fn, repeats, warmup=3) * 1000


def run(model_dir: Path, out: Path, prior_checkpoint: Path | None = None, batches=(1, 8, 32, 64, 128),
        repeats: int = 50) -> dict:
    from service.model_dir import load_model_dir
    from service.runtime import make_runtime

    manifest = json.loads((model_dir / "manifest.json").read_text())
    D = manifest["D"]
    peak = peak_matmul_gflops()
    best_peak = max(peak.values())
    rows = {b: {"flop_bound_ms": step_flops(manifest, b) / (best_peak * 1e9) * 1000} for b in batches}
    decode = {b: {} for b in batches}
    for backend in ("torchscript", "onnx"):
        spec = load_model_dir(model_dir, backend)
        rt = make_runtime(spec, backend, max(batches))
        for b in batches:
            tokens = np.full(b, spec.unconditional_token, dtype=np.int64)
            positions = (np.arange(b, dtype=np.int64) * 7) % D
            rows[b][backend] = median_ms(lambda: rt.step(tokens, positions), repeats)
            codes = np.random.default_rng(0).integers(0, spec.K, (b, D)).astype(np.int64)
            lengths = np.full(b, D, dtype=np.int64)
            decode[b][backend] = median_ms(lambda: rt.decode(codes, lengths), max(5, repeats // 5))
    if prior_checkpoint:
        import torch

        from models.checkpoint import load_prior
        from models.prior import empty_cache

        prior, _ = load_prior(prior_checkpoint)
        for b in batches:
            kc, vc = empty_cache(prior.config, b)
            t = torch.full((b,), spec.unconditional_token)
            p = (torch.arange(b) * 7) % D
            with torch.inference_mode():
                rows[b]["eager"] = median_ms(lambda: prior.step(t, p, kc, vc), repeats)
    result = {"model": manifest["name"], "peak_gflops": peak, "step": rows, "decode": decode}
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "engine.png")
    (out / "engine.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    peak = result["peak_gflops"]
    backends = [b for b in ("eager", "torchscript", "onnx") if b in next(iter(result["step"].values()))]
    lines = [header(f"Engine micro-benchmark: {result['model']}"),
             "Peak fp32 matmul throughput measured in the same run (torch GEMM, n x n): "
             + ", ".join(f"n={n}: {g:.1f} GFLOP/s" for n, g in peak.items()) + ".",
             "The FLOP-bound time is the step's FLOPs (linear layers, attention over the D cache slots, "
             "output head) divided by the best of these.", "",
             "## Prior step latency (median ms)", "",
             "| batch | " + " | ".join(backends) + " | FLOP-bound | best / bound |",
             "|---|" + "---|" * (len(backends) + 2)]
    for b, row in result["step"].items():
        best = min(row[k] for k in backends)
        lines.append(f"| {b} | " + " | ".join(f"{row[k]:.3f}" for k in backends)
                     + f" | {row['flop_bound_ms']:.3f} | {best / row['flop_bound_ms']:.1f}x |")
    lines += ["", "## Decode latency (median ms, k = D)", "", "| batch | torchscript | onnx |", "|---|---|---|"]
    for b, row in result["decode"].items():
        lines.append(f"| {b} | {row['torchscript']:.3f} | {row['onnx']:.3f} |")
    lines += ["", "![engine](engine.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = [int(b) for b in result["step"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in ("eager", "torchscript", "onnx"):
        if k in result["step"][bs[0]]:
            a1.plot(bs, [result["step"][b][k] for b in bs], "o-", label=k)
    a1.plot(bs, [result["step"][b]["flop_bound_ms"] for b in bs], "k--", label="FLOP-bound")
    a1.set(xscale="log", yscale="log", xlabel="batch (sequences)", ylabel="ms per step", title="prior step")
    for k in ("torchscript", "onnx"):
        a2.plot(bs, [result["decode"][b][k] for b in bs], "o-", label=k)
    a2.set(xscale="log", yscale="log", xlabel="batch (samples)", ylabel="ms per decode", title="decoder")
    for a in (a1, a2):
        a.grid(alpha=0.3, which="both")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
