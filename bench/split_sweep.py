"""The anytime policy on both server shapes at the same offered loads, side by side in one run:
in one process (`--workers 0`: the engine core's loop on a thread, behind the same socket) and
the default split. The loads are
multiples of the in-process server's full-length capacity, so both shapes get the same
absolute traffic; then n=1 requests only at 2x, where per-request work counts most."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from .load_bench import measure_capacity
from .loadgen import parse_mix, run_load
from .machine import header
from .server_proc import serve
from .summary import summarize
from .tables import runs_table

SHAPES = (("in-process", ["--workers", "0"]), ("split", []))
COLUMNS = [("attainment_admitted", "met (admitted)", "{:.2%}"), ("rejection_rate", "rejected", "{:.1%}"),
           ("latency_p50_ms", "p50 ms", "{:.0f}"), ("latency_p99_ms", "p99 ms", "{:.0f}"),
           ("mean_token_fraction", "k/D", "{:.2f}"), ("quality_goodput", "quality-goodput/s", "{:.1f}")]


def run(flags: list[str], loads: list[float], duration: float, deadlines: str, n_mix: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with serve(*flags, "--workers", "0", "--policy", "fixed", log_path=out / "server-capacity.log") as url:
        capacity = asyncio.run(measure_capacity(url, n_mix))
    res = {"capacity_samples_per_s": capacity, "flags": flags, "duration_s": duration, "deadlines": deadlines,
           "n_mix": n_mix, "runs": []}
    cells = [(load, n_mix) for load in loads] + [(2.0, "1")]
    for load, mix in cells:
        values, weights = parse_mix(mix)
        rate = load * capacity / (sum(v * w for v, w in zip(values, weights)) / sum(weights))
        for shape, shape_flags in SHAPES:
            with serve(*flags, *shape_flags, log_path=out / f"server-{shape}-{load}-{mix}.log") as url:
                records = asyncio.run(run_load(url, rate, duration, deadlines, mix, seed=0))
            s = summarize(records, duration) | {"shape": shape, "load": load, "n_mix": mix, "rate": rate}
            res["runs"].append(s)
            print(f"{load}x n={mix} {shape}: " + ", ".join(f"{lb} {fmt.format(s[k])}" for k, lb, fmt in COLUMNS),
                  flush=True)
    (out / "split-sweep.json").write_text(json.dumps(res, indent=1))
    (out / "split-sweep.md").write_text(_markdown(res))
    _plot(res, out / "split-sweep.png")
    return res


def _markdown(res: dict) -> str:
    lines = [header("The anytime policy in-process and split, at the same offered loads"),
             f"Full-length capacity of the in-process server (policy `fixed`, closed loop): "
             f"**{res['capacity_samples_per_s']:.1f} samples/s**. Both shapes then get the same Poisson arrivals "
             f"({res['duration_s']:.0f} s per cell, deadlines `{res['deadlines']}` ms, samples per request "
             f"`{res['n_mix']}`, and a last cell with n=1 only at 2x), one server at a time, in this run. "
             f"Server flags: `{' '.join(res['flags'])}` (+ `--workers 0` in-process; split = the default workers).", "",
             *runs_table(res["runs"], [("n", "n_mix"), ("shape", "shape")], COLUMNS)]
    lines += ["", "![split sweep](split-sweep.png)", ""]
    return "\n".join(lines)


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for shape, _ in SHAPES:
        runs = sorted((s for s in res["runs"] if s["shape"] == shape and s["n_mix"] == res["n_mix"]),
                      key=lambda s: s["load"])
        x = [s["load"] for s in runs]
        axes[0].plot(x, [s["quality_goodput"] for s in runs], "o-", label=shape)
        axes[1].plot(x, [s["rejection_rate"] for s in runs], "o-", label=shape)
    axes[0].set(title="quality-goodput (on-time quality / s)", xlabel="offered load (x in-process capacity)",
                xscale="log")
    axes[1].set(title="share of requests refused", xlabel="offered load (x in-process capacity)", xscale="log")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
