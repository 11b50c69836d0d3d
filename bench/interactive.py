"""Interactive requests beside bulk streams (issue #23's check): in each round two bulk n=64
requests stream with a preview every token and seconds of deadline, and 30 interactive n=1
requests with a 150 ms deadline arrive beside them (spaced, faster, then all at once). Pass:
>= 90% of interactive requests served, none answered later than deadline + 5 ms at the
client, no 503 slower than 10 ms at the client, and no 503 after admission (the server's
`anytime_rejections{reason="expired"}` stays 0)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from .checkouts import Checkout, scrub, split_entry, this_commit
from .loadgen import _error_message, _session
from .machine import header
from .mixed import MixedRecord, _plain, _stream
from .policy_sweep import policy_flags
from .server_proc import serve

INTERACTIVE, DEADLINE_MS, BULK_N, BULK_DEADLINE_MS = 30, 150, 64, 20_000
ROUND_GAPS_MS = (30.0, 10.0, 0.0)  # between interactive arrivals in rounds 1, 2, 3 (0: a burst)
WARM_S = 0.3  # bulk streams run this long before the first interactive request


async def one_round(url: str, gap_ms: float, seed: int) -> list[MixedRecord]:
    records: list[MixedRecord] = []
    async with _session(url, 256) as client:
        async def send(cls: str, body: dict, at: float, start: float) -> None:
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

        start = time.perf_counter()
        jobs = [send("bulk", {"n": BULK_N, "deadline_ms": BULK_DEADLINE_MS, "seed": seed + i, "stream": True,
                              "preview_every": 1}, 0.0, start) for i in range(2)]
        jobs += [send("interactive", {"n": 1, "deadline_ms": DEADLINE_MS, "seed": seed + 100 + i, "format": "npy"},
                      WARM_S + i * gap_ms / 1000, start) for i in range(INTERACTIVE)]
        await asyncio.gather(*jobs)
    return records


def expired_refusals(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "anytime_rejections"
               for s in f.samples if s.name.endswith("_total") and s.labels.get("reason") == "expired")


def verdict(records: list[MixedRecord]) -> dict:
    inter = [r for r in records if r.cls == "interactive"]
    served = [r for r in inter if r.status == 200]
    refused = [r for r in inter if r.status == 503]
    bulk = [r for r in records if r.cls == "bulk"]
    return {"interactive": len(inter), "served": len(served), "served_share": len(served) / max(1, len(inter)),
            "late_at_client": sum(1 for r in served if r.client_ms > r.deadline_ms + 5),
            "worst_over_deadline_ms": max((r.client_ms - r.deadline_ms for r in served), default=None),
            "refused": len(refused), "slowest_503_ms": max((r.client_ms for r in refused), default=None),
            "mean_tokens": float(np.mean([r.tokens for r in served])) if served else 0.0,
            "other_errors": sum(1 for r in inter if r.status not in (200, 503)),
            "bulk_served": sum(1 for r in bulk if r.status == 200), "bulk_tokens": [r.tokens for r in bulk],
            "bulk_previews": [r.previews for r in bulk]}


def run(flags: list[str], out: Path, schedulers: list[str], checkouts: dict[str, Checkout] | None = None,
        repeats: int = 1) -> dict:
    checkouts = checkouts or {}
    out.mkdir(parents=True, exist_ok=True)
    res = {"flags": scrub(" ".join(flags), checkouts).split(), "commit": this_commit(),
           "checkouts": {c.name: c.commit for c in checkouts.values()}, "runs": []}
    for name in schedulers:
        where, entry = split_entry(name)
        exe = checkouts[where].executable if where is not None else None
        for rep in range(repeats):
            with serve(*flags, *policy_flags(entry), log_path=out / f"server-{name.replace(':', '-')}.log",
                       executable=exe) as url:
                records, rounds = [], []
                for i, gap in enumerate(ROUND_GAPS_MS):
                    got = asyncio.run(one_round(url, gap, seed=1000 * i + 7 * rep))
                    records += got
                    rounds += [i] * len(got)
                expired = expired_refusals(url)
            # every request's client and server times, to tell where a late answer lost its time
            (out / f"records-{name.replace(':', '-')}-{rep}.jsonl").write_text(
                "".join(json.dumps(dataclasses.asdict(r) | {"round": i}) + "\n" for r, i in zip(records, rounds)))
            v = verdict(records) | {"scheduler": name, "repeat": rep, "expired_503": expired}
            v["pass"] = (v["served_share"] >= 0.9 and v["late_at_client"] == 0 and expired == 0
                         and (v["slowest_503_ms"] or 0) <= 10 and v["other_errors"] == 0)
            res["runs"].append(v)
            print(json.dumps({k: v[k] for k in ("scheduler", "served", "interactive", "late_at_client",
                                                "worst_over_deadline_ms", "refused", "slowest_503_ms",
                                                "expired_503", "pass")}), flush=True)
    (out / "interactive.json").write_text(json.dumps(res, indent=1))
    (out / "interactive.md").write_text(scrub(markdown(res), checkouts))
    plot(res, out / "interactive.png")
    return res


def _fmt(x, spec="{:.1f}"):
    return "–" if x is None else spec.format(x)


def markdown(res: dict) -> str:
    named = "".join(f" `{n}:` = a checkout of commit {c}." for n, c in res["checkouts"].items())
    lines = [header("Interactive requests beside bulk streams"),
             f"Per server, three rounds: two bulk requests (n={BULK_N}, deadline {BULK_DEADLINE_MS / 1000:.0f} s, "
             f"streamed with a preview every token) start, and {WARM_S * 1000:.0f} ms later {INTERACTIVE} interactive "
             f"requests (n=1, deadline {DEADLINE_MS} ms) arrive {', '.join(f'{g:.0f} ms' for g in ROUND_GAPS_MS)} apart "
             f"(0: all at once). Pass: >= 90% of interactive requests served, none later than deadline + 5 ms at "
             f"the client, no 503 slower than 10 ms, no 503 after admission (`anytime_rejections{{reason=\"expired\"}}`). "
             f"Server flags `{' '.join(res['flags'])}`; this commit {res['commit']}.{named}", "",
             "| scheduler | run | served | late at client (> +5 ms) | worst vs deadline ms | refused | slowest 503 ms "
             "| expired 503s | interactive tokens | bulk served | bulk previews | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in res["runs"]:
        lines.append(f"| {v['scheduler']} | {v['repeat'] + 1} | {v['served']}/{v['interactive']} | {v['late_at_client']} "
                     f"| {_fmt(v['worst_over_deadline_ms'], '{:+.1f}')} | {v['refused']} | {_fmt(v['slowest_503_ms'])} "
                     f"| {v['expired_503']:.0f} | {v['mean_tokens']:.1f} | {v['bulk_served']}/{len(v['bulk_tokens'])} "
                     f"| {sum(v['bulk_previews'])} | {'yes' if v['pass'] else 'no'} |")
    return "\n".join(lines + ["", "![interactive](interactive.png)", ""])


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    x = np.arange(len(runs))
    labels = [f"{v['scheduler']} #{v['repeat'] + 1}" for v in runs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].bar(x, [v["served_share"] for v in runs])
    axes[0].axhline(0.9, color="k", ls="--", lw=1)
    axes[0].set(title="interactive requests served (target >= 90%)", ylim=(0, 1.05))
    axes[1].bar(x, [v["slowest_503_ms"] or 0 for v in runs])
    axes[1].axhline(10, color="k", ls="--", lw=1)
    axes[1].set(title="slowest 503 at the client, ms (target <= 10)")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
