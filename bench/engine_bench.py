"""Engine micro-benchmark: prior step latency vs batch per backend next to the FLOP-bound
time from the device's measured peak matmul throughput; decode latency vs batch; the ONNX
KV cache in host memory vs device memory (I/O binding) in the same run."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from service.capacity.gpu import step_flops  # the roofline's FLOPs: one definition for the bench and the GPU projection
from service.core.latency import median_time

from .machine import header


def peak_matmul_gflops(sizes=(512, 1024, 2048), repeats: int = 10, device: str = "cpu") -> dict:
    """Best fp32 GEMM throughput of torch on the device (the roofline's compute roof)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(3):
            a @ b
        sync()
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        out[n] = 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9
    return out


def median_ms(fn, repeats: int) -> float:
    return median_time(fn, repeats, warmup=3) * 1000


SPIN_MODES = ("on", "run", "off")  # ANYTIME_ORT_SPIN, see service/core/runtime.py


@contextmanager
def env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _busy_ticks() -> tuple[int, int]:
    """(CPU ticks of the whole machine that were not idle, CPU ticks of this process)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    t = os.times()
    return sum(v) - v[3] - v[4], int((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


@contextmanager
def other_load(result: dict):
    """Share of the machine's CPU that other processes used while the block ran (Linux only)."""
    try:
        busy0, mine0 = _busy_ticks()
    except OSError:
        yield
        return
    t0 = time.monotonic()
    yield
    busy1, mine1 = _busy_ticks()
    capacity = (time.monotonic() - t0) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
    result["other_processes_cpu_share"] = max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / capacity)


def run(model_dir: Path, out: Path, prior_checkpoint: Path | None = None, batches=(1, 8, 32, 64, 128),
        repeats: int = 50, device: str = "cpu") -> dict:
    """device: where both backends and the GEMM roof run (`cuda` under make gpu-check)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    D = manifest["D"]
    peak = peak_matmul_gflops(device=device)
    best_peak = max(peak.values())
    rows = {b: {"flop_bound_ms": step_flops(manifest, b) / (best_peak * 1e9) * 1000} for b in batches}
    decode = {b: {} for b in batches}
    spin = {b: {} for b in batches}
    binding = {b: {} for b in batches}
    result = {"model": manifest["name"], "device": device, "peak_gflops": peak, "step": rows, "decode": decode,
              "onnx_spin": spin, "onnx_io_binding": binding}
    with other_load(result):
        _measure(model_dir, D, batches, repeats, prior_checkpoint, rows, decode, spin, device)
        _measure_io_binding(model_dir, batches, repeats, binding, device)
    if device != "cpu":
        del result["onnx_spin"]  # how idle CPU threads wait: a CPU question
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "engine.png")
    (out / "engine.md").write_text(markdown(result))
    return result


def _measure(model_dir, D, batches, repeats, prior_checkpoint, rows, decode, spin, device) -> None:
    from service.core.model_dir import load_model_dir
    from service.core.runtime import make_runtime

    for backend in ("torchscript", "onnx"):
        spec = load_model_dir(model_dir, backend)
        rt = make_runtime(spec, backend, max(batches), device)
        if rt.device != device:
            raise RuntimeError(f"{backend} runs on {rt.device}, not {device}")
        for b in batches:
            tokens = np.full(b, spec.unconditional_token, dtype=np.int64)
            positions = (np.arange(b, dtype=np.int64) * 7) % D
            rows[b][backend] = median_ms(lambda: rt.step(tokens, positions), repeats)
            codes = np.random.default_rng(0).integers(0, spec.K, (b, D)).astype(np.int64)
            lengths = np.full(b, D, dtype=np.int64)
            decode[b][backend] = median_ms(lambda: rt.decode(codes, lengths), max(5, repeats // 5))
    spec = load_model_dir(model_dir, "onnx")
    for mode in SPIN_MODES if device == "cpu" else ():
        with env("ANYTIME_ORT_SPIN", mode):
            rt = make_runtime(spec, "onnx", max(batches))
        for b in batches:
            tokens = np.full(b, spec.unconditional_token, dtype=np.int64)
            positions = (np.arange(b, dtype=np.int64) * 7) % D
            spin[b][mode] = median_ms(lambda: rt.step(tokens, positions), repeats)
        del rt
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


IO_BINDING_MODES = ("off", "on")  # ort_io_binding: KV cache in host memory / in device memory


def _measure_io_binding(model_dir, batches, repeats, result, device) -> None:
    """Step latency and bytes across the runtime's boundary per step, ONNX KV cache in host
    memory (`off`) and in device memory (`on`). Both runtimes live side by side and take turns
    per batch size, three times, keeping each one's best median: drift on a shared machine hits both."""
    from service.core.model_dir import load_model_dir
    from service.core.runtime import make_runtime

    spec = load_model_dir(model_dir, "onnx")
    rts = {m: make_runtime(spec, "onnx", max(batches), device, ort_io_binding=m) for m in IO_BINDING_MODES}
    for b in batches:
        tokens = np.full(b, spec.unconditional_token, dtype=np.int64)
        positions = (np.arange(b, dtype=np.int64) * 7) % spec.D
        for _ in range(3):
            for m, rt in rts.items():
                ms = median_ms(lambda: rt.step(tokens, positions), repeats)
                result[b][m] = min(ms, result[b].get(m, ms))
        for m, rt in rts.items():
            rt.transfers.reset()
            rt.step(tokens, positions)
            result[b][m + "_bytes"] = rt.transfers.total


def markdown(result: dict) -> str:
    peak = result["peak_gflops"]
    backends = [b for b in ("eager", "torchscript", "onnx") if b in next(iter(result["step"].values()))]
    device = result.get("device", "cpu")
    lines = [header(f"Engine micro-benchmark: {result['model']} on {device}"),
             f"Peak fp32 matmul throughput on {device} measured in the same run (torch GEMM, n x n): "
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
    if result.get("onnx_spin"):
        lines += ["", "## ONNX Runtime intra-op thread spinning (prior step, median ms)", "",
                  f"`ANYTIME_ORT_SPIN` (service/core/runtime.py), {os.environ.get('ANYTIME_THREADS') or os.cpu_count()} "
                  "intra-op threads: `on` = ORT's default (idle workers spin, also for a while after each run), "
                  "`run` = spin only while a run is in flight (`session.force_spinning_stop=1`), "
                  "`off` = never spin (`session.intra_op.allow_spinning=0`). The columns above use "
                  f"`{os.environ.get('ANYTIME_ORT_SPIN', 'run')}` (the service's default).", "",
                  "| batch | " + " | ".join(SPIN_MODES) + " | run / on | off / on |", "|---|" + "---|" * 5]
        for b, row in result["onnx_spin"].items():
            lines.append(f"| {b} | " + " | ".join(f"{row[m]:.3f}" for m in SPIN_MODES)
                         + f" | {row['run'] / row['on']:.2f} | {row['off'] / row['on']:.2f} |")
    if result.get("onnx_io_binding"):
        lines += ["", f"## ONNX Runtime KV cache: host memory vs device memory (I/O binding), on {device}", "",
                  "`ort_io_binding` (service/core/runtime.py, service/core/ort_device.py): `off` passes the active "
                  "rows' cache as feeds and writes new keys/values with numpy; `on` binds device buffers in place "
                  "and writes new keys/values with a second, scatter run. Median ms per step (best of three "
                  "interleaved rounds) and bytes handed between host and runtime per step.", "",
                  "| batch | off (ms) | on (ms) | on / off | off (bytes/step) | on (bytes/step) |",
                  "|---|---|---|---|---|---|"]
        for b, row in result["onnx_io_binding"].items():
            lines.append(f"| {b} | {row['off']:.3f} | {row['on']:.3f} | {row['on'] / row['off']:.2f} | "
                         f"{row['off_bytes']:,} | {row['on_bytes']:,} |")
    if "other_processes_cpu_share" in result:
        lines += ["", f"Other processes used {result['other_processes_cpu_share']:.1%} of the machine's CPU "
                      "while this benchmark ran."]
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
