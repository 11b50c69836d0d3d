"""Guidance under load: labelled requests with guidance off, pinned at the model's default, and
left to the server (`"auto"`, priced against tokens), on the same arrivals at each offered load.
Each run gets a fresh server; the quality the server reports for a labelled sample comes from
the manifest's guided curves, so quality-goodput counts what guidance buys."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from .load_bench import measure_capacity
from .loadgen import anytime_request, parse_mix, run_load
from .machine import header
from .server_proc import serve
from .summary import summarize
from .tables import runs_table

COLUMNS = [("attainment_admitted", "met (admitted)", "{:.2%}"), ("rejection_rate", "rejected", "{:.1%}"),
           ("mean_token_fraction", "k/D", "{:.2f}"), ("mean_quality", "quality", "{:.3f}"),
           ("quality_goodput", "quality-goodput/s", "{:.1f}")]


def modes(default: float) -> dict[str, float | str]:
    """Mode name -> the request's `guidance`."""
    return {"off": 0.0, f"pinned {default:g}": default, "auto (priced)": "auto"}


def labelled(guidance: float | str, classes: int):
    """The load generator's bodies, each with a label (from its seed) and this guidance."""
    def request_for(body: dict):
        path, payload, headers = anytime_request(body)
        return path, {**payload, "label": payload["seed"] % classes, "guidance": guidance}, headers
    return request_for


def model_facts(url: str) -> tuple[str, int, float]:
    """The default model's name, class count and default guidance (422 from it if it has none)."""
    info = httpx.get(url + "/models", timeout=10).json()["models"][0]
    if not info.get("guidance") or "quality" not in info["guidance"]:
        raise SystemExit(f"model {info['name']!r} has no guided quality curves (manifest prior.guidance.quality)")
    return info["name"], len(info["classes"]), float(info["guidance"].get("default", 1.0))


def run(server_flags: list[str], loads: list[float], duration: float, deadlines: str, n_mix: str, out: Path,
        seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with serve(*server_flags, "--policy", "fixed", log_path=out / "server-capacity.log") as url:
        name, classes, default = model_facts(url)
        capacity = asyncio.run(measure_capacity(url, n_mix))  # unguided, unlabelled: the usual unit
    values, weights = parse_mix(n_mix)
    mean_n = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    res = {"model": name, "capacity_samples_per_s": capacity, "server_flags": server_flags, "duration_s": duration,
           "deadlines": deadlines, "n_mix": n_mix, "default_guidance": default, "runs": []}
    for load in loads:
        rate = load * capacity / mean_n
        for mode, guidance in modes(default).items():
            with serve(*server_flags, log_path=out / f"server-{load}-{mode.split()[0]}.log") as url:
                records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=seed,
                                               request_for=labelled(guidance, classes)))
            s = summarize(records, duration)
            s.update({"mode": mode, "load": load, "rate": rate})
            res["runs"].append(s)
            print(f"load {load}x {mode}: " + ", ".join(f"{label} {fmt.format(s[k])}" for k, label, fmt in COLUMNS))
    (out / "guidance.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "guidance.png")
    (out / "guidance.md").write_text(markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [header("Classifier-free guidance under load: off, pinned, and priced by the server"),
             f"Model `{res['model']}`; every request labelled (label = seed mod classes). Full-length capacity "
             f"{res['capacity_samples_per_s']:.1f} samples/s (unguided, policy `fixed`); Poisson arrivals for "
             f"{res['duration_s']:g} s per run, deadlines `{res['deadlines']}`, n mix `{res['n_mix']}`, the same "
             f"arrivals for every mode; a fresh server per run (flags: `{' '.join(res['server_flags'])}`).", "",
             "Quality is the server's estimate for each sample: a labelled sample's from the manifest's guided "
             "curves (`prior.guidance.quality`) at the tokens and guidance it got. quality-goodput = sum over "
             "samples answered on time of their quality, per second.", "",
             *runs_table(res["runs"], [("guidance", "mode")], COLUMNS), ""]
    lines += ["| load | auto ÷ off (quality-goodput) | auto ÷ pinned |", "|---|---|---|"]
    for load in sorted({s["load"] for s in res["runs"]}):
        by = {s["mode"].split()[0]: s["quality_goodput"] for s in res["runs"] if s["load"] == load}
        lines.append(f"| {load}x | {by['auto'] / max(by['off'], 1e-9):.3f} | {by['auto'] / max(by['pinned'], 1e-9):.3f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for mode in dict.fromkeys(s["mode"] for s in res["runs"]):
        runs = [s for s in res["runs"] if s["mode"] == mode]
        x = [s["load"] for s in runs]
        axes[0].plot(x, [s["quality_goodput"] for s in runs], "o-", label=mode)
        axes[1].plot(x, [s["attainment_admitted"] for s in runs], "o-", label=mode)
        axes[2].plot(x, [s["mean_quality"] for s in runs], "o-", label=mode)
    axes[0].set(title="quality-goodput (on-time quality / s)", xlabel="offered load (x capacity)", xscale="log")
    axes[1].set(title="admitted requests on time", xlabel="offered load (x capacity)", xscale="log")
    axes[2].set(title="mean quality of answers", xlabel="offered load (x capacity)", xscale="log", ylim=(0, 1.02))
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
