"""Load benchmark of one server: open-loop arrivals, deadlines spread over a range, report
attainment, latency vs deadline, token-fraction and quality distributions."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from .loadgen import anytime_request, parse_mix, run_closed_loop, run_load
from .machine import header
from .summary import summarize


async def measure_capacity(url: str, n_mix: str = "1", model: str | None = None, seconds: float = 10.0,
                           rows: int = 256, request_for=anytime_request) -> float:
    """Full-length capacity (samples/s at k = D) of a `fixed`-policy server: closed-loop clients
    that keep about `rows` sequences (twice the default batch) in flight with requests that
    cannot be truncated (60 s deadlines); samples answered per second after a 2 s ramp-up."""
    values, weights = parse_mix(n_mix)
    mean_n = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    done = await run_closed_loop(url, max(2, round(rows / mean_n)), seconds, n_mix, model, seed=123,
                                 request_for=request_for)
    steady = [(t, n) for t, n in done if t >= 2.0]
    if len(steady) < 10:
        raise RuntimeError("capacity run produced too few answers")
    return sum(n for _, n in steady[1:]) / (steady[-1][0] - steady[0][0])


def run(url: str, rate: float, duration: float, deadlines: str, n_mix: str, out: Path, title: str,
        model: str | None = None, label_count: int = 0) -> dict:
    records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, model=model, label_count=label_count))
    summary = summarize(records, duration)
    summary.update({"rate": rate, "duration_s": duration, "deadlines": deadlines, "n_mix": n_mix})
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "records.jsonl").write_text("\n".join(json.dumps(r.to_dict()) for r in records) + "\n")
    plot(records, out / "load.png", title)
    (out / "load.md").write_text(markdown(summary, title))
    return summary


def markdown(s: dict, title: str) -> str:
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    return "\n".join([
        header(title),
        f"Open-loop Poisson arrivals at {s['rate']:.1f} requests/s for {s['duration_s']:.0f} s; deadlines "
        f"`{s['deadlines']}` ms; samples per request `{s['n_mix']}`.", "",
        "| metric | value |", "|---|---|",
        f"| requests | {s['requests']} ({s['samples']} samples) |",
        f"| admitted (200) | {s['admitted']} |",
        f"| rejected (503) | {s['rejected']} ({pct(s['rejection_rate'])}) |",
        f"| other errors | {s['errors']} |",
        f"| deadline met, of admitted (server-measured) | {pct(s['attainment_admitted'])} |",
        f"| deadline met, of all requests | {pct(s['attainment_all'])} |",
        f"| client latency p50 / p99 | {s['latency_p50_ms']:.1f} / {s['latency_p99_ms']:.1f} ms |",
        f"| client latency minus deadline, p99 | {s['client_over_deadline_p99_ms']:.2f} ms |",
        f"| mean token fraction k/D | {s['mean_token_fraction']:.3f} |",
        f"| mean quality estimate | {s['mean_quality']:.3f} |",
        f"| quality-goodput (sum of quality of on-time samples / s) | {s['quality_goodput']:.1f} |",
        f"| finish reasons | {s['finish_reasons']} |",
        f"| rejection messages | {s['reject_reasons']} |", "",
        "Token fraction histogram (10 bins over [0, 1]): " + str(s["token_fraction_hist"]), "",
        "Quality histogram (10 bins over [0, 1]): " + str(s["quality_hist"]), "",
        "![load](load.png)", "",
    ])


def plot(records, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.status == 200]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].scatter([r.deadline_ms for r in ok], [r.client_ms for r in ok], s=3, alpha=0.4, label="client")
    axes[0].scatter([r.deadline_ms for r in ok], [r.server_ms for r in ok], s=3, alpha=0.4, label="server")
    lim = max([r.deadline_ms for r in ok] + [1])
    axes[0].plot([0, lim], [0, lim], "k--", lw=1, label="deadline")
    axes[0].set(xlabel="deadline (ms)", ylabel="latency (ms)", title="latency vs deadline")
    axes[0].legend()
    axes[1].hist([r.tokens / r.max_tokens for r in ok], bins=20, range=(0, 1))
    axes[1].set(xlabel="k / D", ylabel="requests", title="token fraction")
    axes[2].scatter([r.deadline_ms for r in ok], [r.quality for r in ok], s=3, alpha=0.4)
    axes[2].set(xlabel="deadline (ms)", ylabel="quality estimate", title="quality vs deadline", ylim=(0, 1.05))
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
