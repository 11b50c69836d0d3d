"""Priority under overload (issue #23): a flood of low-priority requests that cannot shrink
(min_tokens at 3/4 of D, deadlines 0.3-1 s, offered at a multiple of capacity) beside a steady
stream of high-priority interactive requests (n=1, 150 ms, min_tokens 1). High should keep
>= 99% served on time while low absorbs the refusals. Each scheduler (a sweep entry, maybe of
another checkout) gets the same arrivals."""
from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from .checkouts import Checkout, scrub, split_entry, this_commit
from .load_bench import measure_capacity
from .loadgen import _session
from .machine import header
from .mixed import MixedRecord, _plain
from .policy_sweep import policy_flags
from .server_proc import serve

HIGH_RATE, HIGH_DEADLINE_MS = 20.0, 150  # high-priority requests per second, their deadline
LOW_N, LOW_DEADLINES_MS, LOW_MIN_SHARE = 4, (300, 1000), 0.75


def arrivals(load: float, capacity: float, D: int, duration: float, seed: int) -> list[tuple[float, str, dict]]:
    rng, plan = random.Random(seed), []
    t, rate = 0.0, load * capacity / LOW_N
    while (t := t + rng.expovariate(rate)) < duration:
        plan.append((t, "low", {"n": LOW_N, "deadline_ms": int(rng.uniform(*LOW_DEADLINES_MS)), "priority": "low",
                                "min_tokens": int(LOW_MIN_SHARE * D), "seed": rng.randrange(2**31), "format": "npy"}))
    t = 0.0
    while (t := t + rng.expovariate(HIGH_RATE)) < duration:
        plan.append((t, "high", {"n": 1, "deadline_ms": HIGH_DEADLINE_MS, "priority": "high",
                                 "seed": rng.randrange(2**31), "format": "npy"}))
    return sorted(plan, key=lambda p: p[0])


async def drive(url: str, plan) -> list[MixedRecord]:
    records: list[MixedRecord] = []
    async with _session(url, 4096) as client:
        start = time.perf_counter()

        async def one(at: float, cls: str, body: dict) -> None:
            if (delay := at - (time.perf_counter() - start)) > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            rec = MixedRecord(sent_at=sent - start, deadline_ms=body["deadline_ms"], n=body["n"], status=0,
                              client_ms=0.0, cls=cls)
            try:
                await _plain(client, body, rec, sent)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
                rec.client_ms = (time.perf_counter() - sent) * 1000
                rec.error = f"{type(e).__name__}: {e}"[:200]
            records.append(rec)

        await asyncio.gather(*(one(*p) for p in plan))
    return records


def refusals_by_priority(url: str) -> dict:
    text = httpx.get(url + "/metrics", timeout=5).text
    out: dict[str, dict[str, float]] = {}
    for f in text_string_to_metric_families(text):
        if f.name == "anytime_rejections":
            for s in f.samples:
                if s.name.endswith("_total"):
                    out.setdefault(s.labels.get("priority", "?"), {})[s.labels["reason"]] = s.value
    return out


def summary(records: list[MixedRecord], cls: str) -> dict:
    rs = [r for r in records if r.cls == cls]
    ok = [r for r in rs if r.status == 200]
    on_time = [r for r in ok if r.deadline_met and r.client_ms <= r.deadline_ms + 5]
    refused = [r.client_ms for r in rs if r.status == 503]
    return {"requests": len(rs), "served_on_time": len(on_time) / max(1, len(rs)), "refused": len(refused) / max(1, len(rs)),
            "late": len(ok) - len(on_time), "errors": sum(1 for r in rs if r.status not in (200, 503)),
            "refusal_p99_ms": float(np.percentile(refused, 99)) if refused else None,
            "mean_tokens": float(np.mean([r.tokens for r in ok])) if ok else 0.0}


def run(flags: list[str], out: Path, schedulers: list[str], load: float, duration: float,
        checkouts: dict[str, Checkout] | None = None, seed: int = 0) -> dict:
    checkouts = checkouts or {}
    out.mkdir(parents=True, exist_ok=True)
    with serve(*flags, "--policy", "fixed", log_path=out / "server-capacity.log") as url:
        capacity = asyncio.run(measure_capacity(url, str(LOW_N)))
        D = int(httpx.get(url + "/models", timeout=5).json()["models"][0]["D"])
    plan = arrivals(load, capacity, D, duration, seed)
    res = {"flags": scrub(" ".join(flags), checkouts).split(), "commit": this_commit(), "load": load,
           "duration_s": duration, "capacity_samples_per_s": capacity, "D": D,
           "checkouts": {c.name: c.commit for c in checkouts.values()}, "runs": []}
    for name in schedulers:
        where, entry = split_entry(name)
        exe = checkouts[where].executable if where is not None else None
        with serve(*flags, *policy_flags(entry), log_path=out / f"server-{name.replace(':', '-')}.log",
                   executable=exe) as url:
            records = asyncio.run(drive(url, plan))
            by_priority = refusals_by_priority(url)
        run_ = {"scheduler": name, "high": summary(records, "high"), "low": summary(records, "low"),
                "refusals_by_priority": by_priority}
        res["runs"].append(run_)
        print(json.dumps(run_), flush=True)
    (out / "priority.json").write_text(json.dumps(res, indent=1))
    (out / "priority.md").write_text(scrub(markdown(res), checkouts))
    plot(res, out / "priority.png")
    return res


def markdown(res: dict) -> str:
    named = "".join(f" `{n}:` = a checkout of commit {c}." for n, c in res["checkouts"].items())
    lines = [header("Priority under overload: high-priority requests beside a flood of low ones"),
             f"Capacity (policy `fixed`, closed loop, n={LOW_N}): {res['capacity_samples_per_s']:.1f} samples/s. "
             f"Low: n={LOW_N}, min_tokens={int(LOW_MIN_SHARE * res['D'])} of D={res['D']} (cannot shrink), deadlines "
             f"{LOW_DEADLINES_MS[0]}-{LOW_DEADLINES_MS[1]} ms, Poisson at {res['load']}x capacity. High: n=1, "
             f"{HIGH_DEADLINE_MS} ms, Poisson at {HIGH_RATE:.0f}/s. {res['duration_s']:.0f} s, the same arrivals for "
             f"each scheduler; this commit {res['commit']}.{named} On time: served, the server's deadline met and "
             f"the client's latency within deadline + 5 ms.", "",
             "| scheduler | high on time | high refused | high late | high refusal p99 ms | low on time | low refused "
             "| low late | low tokens | refusals by priority (/metrics) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        h, lo = r["high"], r["low"]
        p99 = "–" if h["refusal_p99_ms"] is None else f"{h['refusal_p99_ms']:.1f}"
        lines.append(f"| {r['scheduler']} | {h['served_on_time']:.2%} of {h['requests']} | {h['refused']:.1%} | {h['late']} "
                     f"| {p99} | {lo['served_on_time']:.2%} of {lo['requests']} | {lo['refused']:.1%} | {lo['late']} "
                     f"| {lo['mean_tokens']:.1f} | `{json.dumps(r['refusals_by_priority'])}` |")
    return "\n".join(lines + ["", "![priority](priority.png)", ""])


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scheduler"] for r in res["runs"]]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "served_on_time", "served on time"), (axes[1], "refused", "refused")):
        ax.bar(x - 0.2, [r["high"][key] for r in res["runs"]], 0.4, label="high (150 ms)")
        ax.bar(x + 0.2, [r["low"][key] for r in res["runs"]], 0.4, label="low (min_tokens 3/4 D)")
        ax.set_xticks(x, names, fontsize=8)
        ax.set(title=title, ylim=(0, 1.05))
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
