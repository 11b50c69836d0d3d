"""Policy sweep: the same engine under each scheduling policy, at offered loads expressed as
multiples of the measured full-length capacity, side by side in one run."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from .checkouts import Checkout, scrub, split_entry, this_commit
from .load_bench import measure_capacity
from .loadgen import parse_mix, run_load
from .machine import header
from .server_proc import serve
from .summary import summarize
from .tables import runs_table

COLUMNS = [("attainment_all", "met (all)", "{:.2%}"), ("attainment_admitted", "met (admitted)", "{:.2%}"),
           ("rejection_rate", "rejected", "{:.1%}"), ("latency_p50_ms", "p50 ms", "{:.0f}"),
           ("latency_p99_ms", "p99 ms", "{:.0f}"), ("mean_token_fraction", "k/D", "{:.2f}"),
           ("mean_quality", "quality", "{:.3f}"), ("quality_goodput", "quality-goodput/s", "{:.1f}")]


def run(server_flags: list[str], loads: list[float], policies: list[str], duration: float, deadlines: str,
        n_mix: str, out: Path, seed: int = 0, checkouts: dict[str, Checkout] | None = None, rounds: int = 1) -> dict:
    """Each entry of `policies` is `[CHECKOUT:]policy[+switch...]` (see bench/checkouts.py).

    rounds > 1: every cell runs that many times, round r on arrivals of seed + r with the entries'
    order rotated by r (so none always runs first after a server start, or last as the machine
    drifts); a cell's row pools its rounds' records, and each round's own ratio is kept."""
    checkouts = checkouts or {}
    for entry in policies:
        name, _ = split_entry(entry)
        if name is not None and name not in checkouts:
            raise ValueError(f"sweep entry {entry!r} names no --checkout {name}")
    out.mkdir(parents=True, exist_ok=True)
    with serve(*server_flags, "--policy", "fixed", log_path=out / "server-capacity.log") as url:
        capacity = asyncio.run(measure_capacity(url, n_mix))
    values, weights = parse_mix(n_mix)
    mean_n = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    results = {"capacity_samples_per_s": capacity, "server_flags": scrub(" ".join(server_flags), checkouts).split(),
               "duration_s": duration, "deadlines": deadlines, "n_mix": n_mix, "runs": [], "commit": this_commit(),
               "checkouts": {c.name: c.commit for c in checkouts.values()}, "rounds": rounds, "round_runs": []}
    for load in loads:
        rate = load * capacity / mean_n
        pooled = {policy: [] for policy in policies}
        for r in range(rounds):
            for policy in policies[r % len(policies):] + policies[:r % len(policies)]:
                name, entry = split_entry(policy)
                exe = checkouts[name].executable if name is not None else None
                log = out / f"server-{policy.replace(':', '-')}-{load}" f"{f'-r{r}' if rounds > 1 else ''}.log"
                with serve(*server_flags, *policy_flags(entry), log_path=log, executable=exe) as url:
                    records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=seed + r))
                pooled[policy] += records
                s = summarize(records, duration)
                s.update({"policy": policy, "load": load, "rate": rate, "round": r})
                results["round_runs"].append(s)
                print(f"load {load}x round {r} policy {policy}: "
                      + ", ".join(f"{label} {fmt.format(s[k])}" for k, label, fmt in COLUMNS))
        for policy in policies:
            s = summarize(pooled[policy], duration * rounds)
            s.update({"policy": policy, "load": load, "rate": rate})
            results["runs"].append(s)
    (out / "sweep.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "sweep.png")
    (out / "sweep.md").write_text(scrub(markdown(results), checkouts))
    return results


def round_ratios(res: dict, load: float, first: str, other: str) -> list[float]:
    """Quality-goodput of `first` over `other` in each round at `load` (same arrivals within a round)."""
    by_round = {}
    for s in res.get("round_runs", []):
        if s["load"] == load:
            by_round.setdefault(s["round"], {})[s["policy"]] = s["quality_goodput"]
    return [c[first] / c[other] for _, c in sorted(by_round.items()) if c.get(other) and first in c]


def checkouts_note(res: dict) -> list[str]:
    if not res.get("checkouts"):
        return []
    named = ", ".join(f"`{name}:` = a checkout of commit {commit}" for name, commit in res["checkouts"].items())
    return [f"Servers of this commit ({res.get('commit', '?')}) and of other checkouts in one run on the same "
            f"arrivals: {named} (each its own `anytime serve`).", ""]


def policy_flags(policy: str) -> list[str]:
    """`anytime serve` flags of a sweep entry: a policy, optionally with serve switches after
    `+` (`anytime+no-slack`: the anytime policy without slack scheduling)."""
    name, *switches = policy.split("+")
    return ["--policy", name, *(f"--{s}" for s in switches)]


def markdown(res: dict) -> str:
    rounds = res.get("rounds", 1)
    lines = [header("Scheduling policies under load, same engine"),
             f"Full-length capacity measured first (policy `fixed`, closed-loop clients keeping 256 sequences in "
             f"flight, deadlines 60 s): "
             f"**{res['capacity_samples_per_s']:.1f} samples/s** at k = D. Offered load = multiple of that capacity, "
             f"Poisson arrivals for {res['duration_s']:.0f} s per cell"
             f"{f' in each of {rounds} rounds (pooled below; each round new arrivals and the order rotated)' if rounds > 1 else ''}, "
             f"deadlines `{res['deadlines']}` ms, "
             f"samples per request `{res['n_mix']}`. Server flags: `{' '.join(res['server_flags'])}`.", "",
             *checkouts_note(res), 
             "quality-goodput = sum over samples answered on time of their quality estimate, per second.", "",
             *runs_table(res["runs"], [("policy", "policy")], COLUMNS)]
    entries = list(dict.fromkeys(s["policy"] for s in res["runs"]))
    first, others = entries[0], entries[1:]
    lines += ["", f"## Quality-goodput of `{first}` relative to the others", "",
              "| load | " + " | ".join(f"vs {p}" for p in others) + " |", "|---|" + "---|" * len(others)]
    for load in sorted({s["load"] for s in res["runs"]}):
        cell = {s["policy"]: s["quality_goodput"] for s in res["runs"] if s["load"] == load}
        if first not in cell:
            continue
        ratio = lambda p: f"{cell[first] / cell[p]:.2f}x" if cell.get(p) else ("inf" if p in cell else "-")  # noqa: E731
        lines.append(f"| {load}x | " + " | ".join(ratio(p) for p in others) + " |")
    if rounds > 1:
        lines += ["", f"Each round's own ratio (`{first}` over each other entry, same arrivals within a round):", "",
                  "| load | " + " | ".join(f"vs {p}" for p in others) + " |", "|---|" + "---|" * len(others)]
        for load in sorted({s["load"] for s in res["runs"]}):
            lines.append(f"| {load}x | " + " | ".join(
                " / ".join(f"{x:.2f}" for x in round_ratios(res, load, first, p)) or "-" for p in others) + " |")
    lines += ["", "![sweep](sweep.png)", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for policy in sorted({s["policy"] for s in res["runs"]}):
        runs = sorted((s for s in res["runs"] if s["policy"] == policy), key=lambda s: s["load"])
        x = [s["load"] for s in runs]
        axes[0].plot(x, [s["quality_goodput"] for s in runs], "o-", label=policy)
        axes[1].plot(x, [s["attainment_all"] for s in runs], "o-", label=policy)
        axes[2].plot(x, [s["mean_quality"] for s in runs], "o-", label=policy)
    axes[0].set(title="quality-goodput (on-time quality / s)", xlabel="offered load (x capacity)", xscale="log")
    axes[1].set(title="deadline attainment (all requests)", xlabel="offered load (x capacity)", xscale="log",
                ylim=(0, 1.02))
    axes[2].set(title="mean quality of answers", xlabel="offered load (x capacity)", xscale="log", ylim=(0, 1.02))
    for a in axes:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
