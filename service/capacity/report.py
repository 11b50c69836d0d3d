"""What `anytime plan` writes: plan.md (the answer and a table per replica count), plan.json
(inputs, calibration and every point) and plan.png (quality and refusals against replicas; needs
matplotlib, in the `bench` extra: without it the plot is skipped and the report says so)."""
from __future__ import annotations

import json
from pathlib import Path

from .calibration import Calibration
from .fleet import Plan
from .traffic import mean_n


def markdown(p: Plan, cal: Calibration, title: str, header: list[str], plot: bool) -> str:
    t = p.traffic
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    answer = (f"**{p.needed} replica{'s' if p.needed > 1 else ''}** deliver{'s' if p.needed == 1 else ''} the quality floor of {p.floor:g}" if p.needed else
              f"**No replica count reaches the quality floor of {p.floor:g}**: even a nearly idle fleet delivers "
              f"{p.ceiling.delivered_quality:.3f} (the deadlines leave too few tokens, or requests are refused)")
    lines = [f"# {title}", "", *header,
             f"- traffic: {t.rate:g} requests/s, Poisson; deadlines `{t.deadlines}` ms; samples per request "
             f"`{t.n_mix}` (mean {mean_n(t.n_mix):.2f})",
             f"- replica: {cal.model} (D={cal.D}), {cal.source}; max_batch "
             f"{cal.max_batch or 'default'}; before the engine {1000 * cal.admit_s:.2f} ms, after it "
             f"{1000 * cal.respond_s:.2f} ms; frontend {1000 * cal.frontend_s:.3f} ms of event loop per request on "
             f"{cal.frontend_workers} worker{'s' if cal.frontend_workers > 1 else ''} (up to "
             f"{cal.frontend_workers / cal.frontend_s if cal.frontend_s else float('inf'):.0f} requests/s unloaded)",
             f"- one replica's full-length capacity (k = D, a full batch): {p.capacity:.0f} samples/s",
             "", answer + ".", "",
             f"A nearly idle fleet ({p.ceiling.replicas} replicas) delivers {p.ceiling.delivered_quality:.3f} "
             f"(on time {pct(p.ceiling.on_time)}, mean tokens {p.ceiling.mean_tokens:.1f}): the most this traffic "
             "can get, whatever the count.", "",
             "Delivered quality: the mean over all requests of the quality curve at the tokens an answer got, "
             "0 for a refusal or a late answer (the curve is relative: 1 at k = D).", "",
             "| replicas | requests/s per replica | on time | refused | late | mean tokens | quality of answers "
             "| delivered quality |",
             "|---|---|---|---|---|---|---|---|"]
    for q in p.points:
        mark = " **(needed)**" if q.replicas == p.needed else ""
        lines.append(f"| {q.replicas}{mark} | {q.rate_per_replica:.1f} | {pct(q.on_time)} | {pct(q.refused)} | "
                     f"{pct(q.late)} | {q.mean_tokens:.1f} | {q.mean_quality:.3f} | {q.delivered_quality:.3f} |")
    lines += ["", "![plan](plan.png)" if plot else "(No plot: matplotlib is not installed; `pip install "
              "'anytime[bench]'`.)", ""]
    return "\n".join(lines)


def write(p: Plan, cal: Calibration, out: Path, title: str, header: list[str], inputs: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    plotted = plot(p, out / "plan.png", title)
    text = markdown(p, cal, title, header, plotted)
    (out / "plan.md").write_text(text)
    doc = {"inputs": inputs, "calibration": json.loads(cal.to_json()), **p.to_dict()}
    (out / "plan.json").write_text(json.dumps(doc, indent=1) + "\n")
    return text


def plot(p: Plan, path: Path, title: str) -> bool:
    try:
        import matplotlib
    except ModuleNotFoundError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [q.replicas for q in p.points]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    a.plot(rs, [q.delivered_quality for q in p.points], "o-", label="delivered quality (0 if refused or late)")
    a.plot(rs, [q.mean_quality for q in p.points], "s--", label="quality of answers")
    a.axhline(p.floor, color="k", ls=":", label=f"floor {p.floor:g}")
    if p.needed:
        a.axvline(p.needed, color="g", ls="--", lw=1, label=f"needed: {p.needed}")
    a.set(xlabel="replicas", ylabel="quality (relative to k = D)", ylim=(0, 1.05), title="quality")
    b.plot(rs, [100 * q.refused for q in p.points], "o-", color="C3", label="refused (503)")
    b.plot(rs, [100 * q.late for q in p.points], "s--", color="C1", label="late")
    b.plot(rs, [100 * (1 - q.on_time) for q in p.points], "^:", color="C4", label="not on time (either)")
    b.set(xlabel="replicas", ylabel="% of requests", title="refusals")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
