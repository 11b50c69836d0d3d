"""Mixed workloads (issue #10): interactive n=1 requests with tight deadlines beside bulk
requests with slack and streaming requests with frequent previews, all Poisson, against the
same engine with each scheduler (`--schedulers`: sweep entries, maybe of other checkouts,
bench/checkouts.py) on the same arrivals, at each load.

Load is a multiple of the server's full-length capacity (samples/s, policy `fixed`), shared
between the classes by CLASS_SHARES of the samples offered."""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from .checkouts import Checkout, scrub, split_entry, this_commit
from .load_bench import measure_capacity
from .loadgen import Record, _error_message, _session
from .machine import header
from .policy_sweep import policy_flags
from .server_proc import serve
from .summary import summarize
from .tables import cell, runs_table



@dataclass(frozen=True)
class WorkClass:
    name: str
    share: float  # of the samples offered
    n: tuple[int, ...]  # drawn uniformly
    deadline_ms: tuple[float, float]
    log_deadline: bool = False  # loguniform, else uniform
    stream: bool = False


CLASSES = (WorkClass("interactive", 0.3, (1,), (50, 300), log_deadline=True),
           WorkClass("bulk", 0.5, (16, 32, 64), (5000, 30000)),
           WorkClass("streaming", 0.2, (4,), (1000, 3000), stream=True))


@dataclass
class MixedRecord(Record):
    cls: str = ""
    previews: int = 0  # preview events a stream received


def arrivals(load: float, capacity: float, duration: float, seed: int) -> list[tuple[float, str, dict]]:
    """(time, class, body) for every request of the run, in time order."""
    rng, plan = random.Random(seed), []
    for c in CLASSES:
        t, rate = 0.0, load * capacity * c.share / np.mean(c.n)
        while (t := t + rng.expovariate(rate)) < duration:
            lo, hi = c.deadline_ms
            ms = np.exp(rng.uniform(np.log(lo), np.log(hi))) if c.log_deadline else rng.uniform(lo, hi)
            body = {"deadline_ms": int(ms), "n": rng.choice(c.n), "seed": rng.randrange(2**31)}
            body |= {"stream": True, "preview_every": 1} if c.stream else {"format": "npy"}
            plan.append((t, c.name, body))
    return sorted(plan, key=lambda p: p[0])


async def _plain(client: aiohttp.ClientSession, body: dict, rec: MixedRecord, sent: float) -> None:
    async with client.post("/generate", json=body) as r:
        data = await r.read()
        rec.client_ms, rec.status, h = (time.perf_counter() - sent) * 1000, r.status, r.headers
    if rec.status == 200:
        rec.tokens, rec.max_tokens = int(h["x-anytime-tokens"]), int(h["x-anytime-max-tokens"])
        rec.quality, rec.server_ms = float(h["x-anytime-quality"]), float(h["x-anytime-latency-ms"])
        rec.deadline_met, rec.finish_reason = h["x-anytime-deadline-met"] == "true", h.get("x-anytime-finish-reason")
    else:
        rec.error = _error_message(data)


async def _stream(client: aiohttp.ClientSession, body: dict, rec: MixedRecord, sent: float) -> None:
    async with client.post("/generate", json=body) as r:
        rec.status = r.status
        if r.status != 200:
            rec.error = _error_message(await r.read())
            rec.client_ms = (time.perf_counter() - sent) * 1000
            return
        event = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "preview":
                rec.previews += 1
            elif line.startswith("data: ") and event in ("final", "error"):
                rec.client_ms = (time.perf_counter() - sent) * 1000
                data = json.loads(line[6:])
                if event == "error":
                    rec.status, rec.error = data["error"]["code"], data["error"]["message"]
                    return
                rec.tokens, rec.max_tokens, rec.quality = data["tokens"], data["max_tokens"], data["quality"]
                rec.server_ms, rec.deadline_met = data["latency_ms"], data["deadline_met"]
                rec.finish_reason = data["finish_reason"]
                return
        rec.status, rec.error = 0, "stream ended without a final event"


async def run_mixed(url: str, plan: list[tuple[float, str, dict]]) -> list[MixedRecord]:
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
                await (_stream if body.get("stream") else _plain)(client, body, rec, sent)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as e:
                rec.client_ms = (time.perf_counter() - sent) * 1000
                rec.error = f"{type(e).__name__}: {e}"[:200]
            records.append(rec)

        await asyncio.gather(*(one(*p) for p in plan))
    return sorted(records, key=lambda r: r.sent_at)


def class_summary(records: list[MixedRecord], duration: float) -> dict:
    refused = np.array([r.client_ms for r in records if r.status == 503], dtype=float)
    ok = [r for r in records if r.status == 200]
    s = summarize(records, duration)
    return s | {"refusal_p50_ms": float(np.percentile(refused, 50)) if refused.size else None,
                "refusal_p99_ms": float(np.percentile(refused, 99)) if refused.size else None,
                "mean_tokens": float(np.mean([r.tokens for r in ok])) if ok else 0.0,
                "late_admitted": sum(1 for r in ok if not r.deadline_met),
                "client_late": sum(1 for r in ok if r.client_ms > r.deadline_ms),
                "mean_previews": float(np.mean([r.previews for r in ok])) if ok else 0.0}


def run(flags: list[str], loads: list[float], duration: float, out: Path, seed: int = 0,
        schedulers: list[str] = ("anytime",), checkouts: dict[str, Checkout] | None = None) -> dict:
    checkouts = checkouts or {}
    out.mkdir(parents=True, exist_ok=True)
    with serve(*flags, "--policy", "fixed", log_path=out / "server-capacity.log") as url:
        capacity = asyncio.run(measure_capacity(url, "1"))
    res = {"capacity_samples_per_s": capacity, "flags": scrub(" ".join(flags), checkouts).split(),
           "duration_s": duration, "runs": [], "classes": [c.__dict__ for c in CLASSES], "schedulers": list(schedulers),
           "commit": this_commit(), "checkouts": {c.name: c.commit for c in checkouts.values()}}
    for load in loads:
        plan = arrivals(load, capacity, duration, seed)
        for name in schedulers:
            where, entry = split_entry(name)
            exe = checkouts[where].executable if where is not None else None
            with serve(*flags, *policy_flags(entry), log_path=out / f"server-{name.replace(':', '-')}-{load}.log",
                       executable=exe) as url:
                records = asyncio.run(run_mixed(url, plan))
            for c in CLASSES:
                s = class_summary([r for r in records if r.cls == c.name], duration)
                res["runs"].append(s | {"scheduler": name, "load": load, "class": c.name})
                print(f"{load}x {name:12s} {c.name:12s} " + ", ".join(
                    f"{label} {cell(s[k], fmt)}" for k, label, fmt in COLUMNS), flush=True)
    (out / "mixed.json").write_text(json.dumps(res, indent=1))
    (out / "mixed.md").write_text(scrub(_markdown(res), checkouts))
    _plot(res, out / "mixed.png")
    return res


COLUMNS = [("requests", "requests", "{}"), ("attainment_admitted", "on time (admitted)", "{:.2%}"),
           ("late_admitted", "late", "{}"), ("rejection_rate", "refused", "{:.1%}"),
           ("refusal_p50_ms", "refusal p50 ms", "{:.1f}"), ("refusal_p99_ms", "refusal p99 ms", "{:.1f}"),
           ("mean_tokens", "tokens/sample", "{:.1f}"), ("quality_goodput", "quality-goodput/s", "{:.1f}"),
           ("latency_p50_ms", "p50 ms", "{:.0f}"), ("mean_previews", "previews", "{:.1f}")]


def _markdown(res: dict) -> str:
    classes = "; ".join(f"**{c['name']}** n∈{list(c['n'])}, deadlines {c['deadline_ms'][0]:.0f}–"
                        f"{c['deadline_ms'][1]:.0f} ms ({'log-uniform' if c['log_deadline'] else 'uniform'})"
                        f"{', streamed with a preview every token' if c['stream'] else ''}, "
                        f"{c['share']:.0%} of the samples" for c in res["classes"])
    named = "".join(f" `{n}:` = a checkout of commit {c}." for n, c in res.get("checkouts", {}).items())
    lines = [header("Mixed workloads: schedulers side by side"),
             f"Full-length capacity (policy `fixed`, closed loop, n=1): **{res['capacity_samples_per_s']:.1f} "
             f"samples/s**. Poisson arrivals for {res['duration_s']:.0f} s per cell; the same arrivals for both "
             f"schedulers at each load, one server at a time. Classes: {classes}. Server flags: "
             f"`{' '.join(res['flags']) or '(defaults)'}`; schedulers (sweep entries) "
             f"{', '.join(f'`{x}`' for x in res['schedulers'])}, this commit {res.get('commit', '?')}.{named}", "",
             *runs_table(res["runs"], [("scheduler", "scheduler"), ("class", "class")], COLUMNS)]
    lines += ["", "On time (admitted): answers the server itself reported within their deadline, over answers. "
              "Refusal latency: client-observed, from sending to the 503. Quality-goodput: summed quality estimate "
              "of on-time samples per second of arrivals.", "", "![mixed](mixed.png)", ""]
    return "\n".join(lines)


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("quality_goodput", "quality-goodput / s"), ("rejection_rate", "share refused"),
               ("mean_tokens", "tokens per sample"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 3.8))
    names = [c["name"] for c in res["classes"]]
    loads = sorted({s["load"] for s in res["runs"]})
    width = 0.8 / (len(loads) * len(res["schedulers"]))
    for ax, (key, title) in zip(axes, metrics):
        i = 0
        for load in loads:
            for sched in res["schedulers"]:
                vals = [next(s[key] for s in res["runs"] if s["load"] == load and s["scheduler"] == sched
                             and s["class"] == c) for c in names]
                ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"{sched} {load}x")
                i += 1
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
