"""ONNX Runtime thread modes under HTTP load: the same offered load against servers that differ
only in how the runtime's intra-op threads wait (ANYTIME_ORT_SPIN) and how many there are.

A bare step favours spinning threads (engine.md); a server shares its cores with the event
loop and the engine's Python, which threads that keep spinning after a step starve. This run
measures what that costs in deadlines, rejections and quality, side by side."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .load_bench import measure_capacity
from .loadgen import parse_mix, run_load
from .machine import header
from .server_proc import serve
from .summary import summarize

MODES = [("run", 0), ("on", 0), ("off", 0), ("on", 1)]  # (ANYTIME_ORT_SPIN, threads; 0 = all cores)
TIMINGS = ("step", "decode", "respond")


def _mean_timings(url: str) -> dict:
    """Mean step / decode / respond seconds from the server's own histograms."""
    text = httpx.get(url + "/metrics", timeout=5).text
    sums, counts = {}, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for t in TIMINGS:
                if s.name == f"anytime_{t}_latency_seconds_sum":
                    sums[t] = sums.get(t, 0.0) + s.value
                elif s.name == f"anytime_{t}_latency_seconds_count":
                    counts[t] = counts.get(t, 0.0) + s.value
    return {f"{t}_mean_ms": 1000 * sums[t] / counts[t] if counts.get(t) else float("nan") for t in TIMINGS}


def run(server_flags: list[str], load: float, duration: float, deadlines: str, n_mix: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with serve(*server_flags, "--policy", "fixed") as url:
        capacity = asyncio.run(measure_capacity(url, n_mix))
    values, weights = parse_mix(n_mix)
    rate = load * capacity / (sum(v * w for v, w in zip(values, weights)) / sum(weights))
    res = {"server_flags": server_flags, "capacity_samples_per_s": capacity, "load": load, "rate": rate,
           "duration_s": duration, "deadlines": deadlines, "n_mix": n_mix, "runs": []}
    for spin, threads in MODES:
        flags = [*server_flags, "--ort-spin", spin, "--threads", str(threads)]
        with serve(*flags, log_path=out / f"server-{spin}-{threads}.log") as url:
            records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=1))
            timings = _mean_timings(url)
        s = summarize(records, duration)
        s.update({"spin": spin, "threads": threads, **timings})
        res["runs"].append(s)
        print(f"spin {spin} threads {threads or 'all'}: admitted met {s['attainment_admitted']:.2%}, "
              f"rejected {s['rejection_rate']:.1%}, goodput {s['quality_goodput']:.1f}")
    (out / "modes.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "modes.png")
    (out / "modes.md").write_text(markdown(res))
    return res


def _label(s: dict) -> str:
    return f"{s['spin']}, {s['threads'] or 'all'} thr"


def markdown(res: dict) -> str:
    lines = [header("ONNX Runtime thread modes under load"),
             f"One offered load ({res['load']}x the full-length capacity of {res['capacity_samples_per_s']:.1f} "
             f"samples/s: {res['rate']:.1f} requests/s, Poisson, {res['duration_s']:.0f} s, the same arrivals for "
             f"every row), deadlines `{res['deadlines']}` ms, samples per request `{res['n_mix']}`; policy anytime. "
             f"Server flags: `{' '.join(res['server_flags'])}` plus `--ort-spin` and `--threads` per row. "
             "Step, decode and respond means are the server's own histograms (`/metrics`).", "",
             "| ort-spin | threads | met (admitted) | rejected | k/D | quality-goodput/s | step ms | decode ms "
             "| respond ms |", "|---|---|---|---|---|---|---|---|---|"]
    for s in res["runs"]:
        lines.append(f"| {s['spin']} | {s['threads'] or 'all'} | {s['attainment_admitted']:.2%} | "
                     f"{s['rejection_rate']:.1%} | {s['mean_token_fraction']:.2f} | {s['quality_goodput']:.1f} | "
                     f"{s['step_mean_ms']:.3f} | {s['decode_mean_ms']:.2f} | {s['respond_mean_ms']:.2f} |")
    lines += ["", "![modes](modes.png)", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    labels = [_label(s) for s in runs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].bar(labels, [s["quality_goodput"] for s in runs])
    axes[0].set(title="quality-goodput (on-time quality / s)")
    axes[1].bar(labels, [100 * s["rejection_rate"] for s in runs])
    axes[1].set(title="rejected (%)")
    axes[2].bar(labels, [s["respond_mean_ms"] for s in runs])
    axes[2].set(title="engine end to response ready (mean ms)")
    for a in axes:
        a.tick_params(axis="x", labelrotation=20)
        a.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
