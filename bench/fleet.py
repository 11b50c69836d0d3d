"""The fleet benchmark (issue #28): two replicas behind HAProxy, one of them loaded by bulk
streams sent to it directly, and Poisson interactive requests through the balancer. Two
HAProxies run side by side in front of the same replicas:

- headroom: the shipped deploy/haproxy/haproxy.cfg (weights from each replica's agent, one
  retry elsewhere with the remaining deadline);
- round robin: the same file without the agent check and without retries (what a default
  balancer or a Kubernetes Service does).

Each round sends the same interactive arrivals (one seed per round) through each balancer in
turn, alternating which goes first, while the bulk streams run throughout. Reported per
balancer: interactive requests served, served on time, refused, mean tokens, quality-goodput
(the quality of on-time answers per second), and HAProxy's retries and redispatches."""
from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from pathlib import Path

from .fleet_proc import HAPROXY_CFG, haproxy, replicas
from .loadgen import Record, run_closed_loop, run_load
from .machine import header

BALANCERS = ("headroom", "round robin")


def round_robin_config(dst: Path) -> Path:
    """The shipped config without the agent check and without retries; health checks stay."""
    text = HAPROXY_CFG.read_text()
    text = text.replace(" agent-check agent-inter 250ms", "")
    text = re.sub(r' agent-port "\$\{ANYTIME_AGENT_\d+\}"', "", text)
    text = text.replace("    retries 1\n", "    retries 0\n")
    text = re.sub(r"\n    retry-on [^\n]*", "", text)
    text = re.sub(r"\n    option redispatch [^\n]*", "", text)
    assert "agent" not in re.sub(r"#[^\n]*", "", text) and "retry-on" not in text
    dst.write_text(text)
    return dst


def backend_counters(lb) -> dict[str, int]:
    """HAProxy's retries and redispatches of the anytime backend so far."""
    lines = lb.command("show stat").splitlines()
    fields = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(fields, line.split(",")))
        if row.get("pxname") == "anytime" and row.get("svname") == "BACKEND":
            return {"retries": int(row["wretr"] or 0), "redispatches": int(row["wredis"] or 0)}
    return {"retries": 0, "redispatches": 0}


def summarize(records: list[Record], duration: float) -> dict:
    ok = [r for r in records if r.status == 200]
    on_time = [r for r in ok if r.deadline_met and r.client_ms <= r.deadline_ms]
    return {"sent": len(records), "served": len(ok), "on_time": len(on_time),
            "refused": sum(r.status == 503 for r in records),
            "errors": sum(r.status not in (200, 503) for r in records),
            "mean_tokens": statistics.fmean(r.tokens for r in on_time) if on_time else 0.0,
            "quality_goodput": sum(r.quality for r in on_time) / duration}


async def _measure(lbs: dict, busy_url: str, rate: float, duration: float, rounds: int, deadlines: str,
                   min_tokens: int, bulk_clients: int, bulk_n: int, bulk_deadline_ms: int,
                   weights: list) -> tuple[dict, list]:
    results = {name: [] for name in lbs}
    counters = {name: {"retries": 0, "redispatches": 0} for name in lbs}
    total = rounds * len(lbs) * (duration + 1.0) + 3.0
    bulk = asyncio.create_task(run_closed_loop(busy_url, bulk_clients, total, n_mix=str(bulk_n),
                                               deadline_ms=bulk_deadline_ms, seed=7))
    start = time.perf_counter()

    async def sample_weights():
        lb = lbs["headroom"]
        while True:
            w = await asyncio.to_thread(lambda: (lb.weight("replica1"), lb.weight("replica2")))
            weights.append((round(time.perf_counter() - start, 2), *w))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_weights())
    await asyncio.sleep(3.0)  # the bulk streams fill replica1 and its agent reports it
    for i in range(rounds):
        order = list(lbs) if i % 2 == 0 else list(reversed(lbs))
        for name in order:
            before = backend_counters(lbs[name])
            records = await run_load(lbs[name].base, rate, duration, deadlines, "1", seed=1000 + i, progress=False,
                                     request_for=lambda body: ("/generate", {**body, "min_tokens": min_tokens}, {}))
            after = backend_counters(lbs[name])
            for k in counters[name]:
                counters[name][k] += after[k] - before[k]
            results[name].append(summarize(records, duration))
            await asyncio.sleep(1.0)
    sampler.cancel()
    bulk_done = await bulk
    return {"rounds": results, "counters": counters, "bulk_served": len(bulk_done)}, weights


def run(model_dir: Path, out: Path, rate: float, duration: float, rounds: int, deadlines: str, min_tokens: int,
        bulk_clients: int, bulk_n: int, bulk_deadline_ms: int, flags: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    rr_cfg = round_robin_config(logs / "haproxy-roundrobin.cfg")
    weights: list = []
    with replicas(model_dir, 2, *flags, log_dir=logs) as (busy, other), \
            haproxy([busy, other], logs / "haproxy-headroom.log") as lb_headroom, \
            haproxy([busy, other], logs / "haproxy-roundrobin.log", config=rr_cfg) as lb_rr:
        res, weights = asyncio.run(_measure({"headroom": lb_headroom, "round robin": lb_rr}, busy.base, rate,
                                            duration, rounds, deadlines, min_tokens, bulk_clients, bulk_n,
                                            bulk_deadline_ms, weights))
    totals = {}
    for name, rows in res["rounds"].items():
        totals[name] = {k: sum(r[k] for r in rows) for k in ("sent", "served", "on_time", "refused", "errors")}
        totals[name]["mean_tokens"] = statistics.fmean(r["mean_tokens"] for r in rows)
        totals[name]["quality_goodput"] = statistics.fmean(r["quality_goodput"] for r in rows)
        totals[name].update(res["counters"][name])
    ratio = totals["headroom"]["on_time"] / max(1, totals["round robin"]["on_time"])
    result = {"rate": rate, "duration": duration, "rounds": rounds, "deadlines": deadlines, "min_tokens": min_tokens,
              "bulk": {"clients": bulk_clients, "n": bulk_n, "deadline_ms": bulk_deadline_ms,
                       "served": res["bulk_served"]},
              "flags": flags, "per_round": res["rounds"], "totals": totals, "on_time_ratio": ratio,
              "weights": weights}
    (out / "fleet.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "fleet.png")
    (out / "fleet.md").write_text(report(result))
    return result


def report(res: dict) -> str:
    t = res["totals"]
    rows = ["| balancer | interactive sent | served | on time | refused | other errors | mean tokens (on time) | "
            "quality-goodput (/s) | HAProxy retries | redispatches |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in BALANCERS:
        x = t[name]
        rows.append(f"| {name} | {x['sent']} | {x['served']} | {x['on_time']} | {x['refused']} | {x['errors']} | "
                    f"{x['mean_tokens']:.1f} | {x['quality_goodput']:.2f} | {x['retries']} | {x['redispatches']} |")
    per_round = ["| round | " + " | ".join(f"{b}: on time / sent" for b in BALANCERS) + " |",
                 "|---|" + "---|" * len(BALANCERS)]
    for i in range(res["rounds"]):
        per_round.append(f"| {i + 1} | " + " | ".join(
            f"{res['per_round'][b][i]['on_time']} / {res['per_round'][b][i]['sent']}" for b in BALANCERS) + " |")
    w1 = [w[1] for w in res["weights"]]
    w2 = [w[2] for w in res["weights"]]
    verdict = "met" if res["on_time_ratio"] >= 1.5 else "NOT met"
    b = res["bulk"]
    return "\n".join([
        header("Fleet: headroom routing + retry vs round robin, two replicas behind HAProxy"),
        "Two `anytime serve` replicas (" + " ".join(res["flags"]) + ") on this machine behind HAProxy "
        "(Debian's package). Replica 1 also serves bulk work sent to it directly: "
        f"{b['clients']} closed-loop clients of n={b['n']}, deadline {b['deadline_ms']} ms, throughout "
        f"({b['served']} bulk requests served). Interactive requests (n=1, deadlines {res['deadlines']} ms, "
        f"a quality floor of min_tokens={res['min_tokens']}: fewer tokens than that is a 503, not an answer; "
        f"Poisson at {res['rate']:g}/s for {res['duration']:g} s per run) go through a balancer: each round "
        "sends the same arrivals through both, alternating which goes first.",
        "",
        "- **headroom**: deploy/haproxy/haproxy.cfg as shipped: weights from each replica's agent "
        "(headroom of a 100 ms request), `retry-on conn-failure empty-response 503` once elsewhere, "
        "the retry counting its deadline from the first arrival (`X-Anytime-Arrival-Ms`);",
        "- **round robin**: the same file without the agent check and without retries "
        "(logs/haproxy-roundrobin.cfg): what a default balancer or a Kubernetes Service does.",
        "",
        "On time: answered 200 with `deadline_met` and within the deadline at the client. Quality-goodput: "
        "the quality estimate of the on-time answers per second.",
        "",
        *rows,
        "",
        f"**Interactive requests served on time, headroom / round robin: {res['on_time_ratio']:.2f}x** "
        f"(target >= 1.5x: {verdict}).",
        "",
        *per_round,
        "",
        f"Replica 1's agent weight during the run (0.5 s samples): median {statistics.median(w1):g}, "
        f"range {min(w1)}-{max(w1)}; replica 2's: median {statistics.median(w2):g}, range {min(w2)}-{max(w2)} "
        "(fleet.png). Raw numbers: fleet.json; the replicas' and balancers' logs: logs/ (not committed).",
        "",
        "![fleet](fleet.png)",
        "",
    ])


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(BALANCERS)
    x = range(len(names))
    t = res["totals"]
    ax1.bar([i - 0.2 for i in x], [t[n]["on_time"] for n in names], width=0.4, label="on time")
    ax1.bar([i + 0.2 for i in x], [t[n]["refused"] for n in names], width=0.4, label="refused (503)")
    ax1.set_xticks(list(x), names)
    ax1.set_ylabel("interactive requests")
    ax1.set_title(f"interactive, all rounds (sent {t[names[0]]['sent']} each)")
    ax1.legend()
    w = res["weights"]
    ax2.plot([s[0] for s in w], [s[1] for s in w], label="replica 1 (bulk work)")
    ax2.plot([s[0] for s in w], [s[2] for s in w], label="replica 2")
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("HAProxy weight from the agent (%)")
    ax2.set_title("headroom balancer's weights")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
