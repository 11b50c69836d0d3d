"""Pick each peer's batch size on this machine and this traffic: every candidate serves the same
open-loop traffic (0.5x Anytime's full-length capacity, so all candidates see the same requests,
at a rate the peers can carry: at 1x every candidate was overloaded and answered almost nothing
on time, which says nothing about the batch size) and
the one with the highest quality-goodput (on-time samples/s) wins. Writes tuning.json / tuning.md;
settings.py takes the winners."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ..loadgen import run_closed_loop, run_load
from ..machine import header
from .contention import foreign_cpu, wait_for_quiet
from .run import mean_samples
from .scoring import score
from .servers import request_for, serve_server
from .settings import peer_settings

CANDIDATES = {  # the batch-size knob of each peer and the values tried
    "litserve": ("max_batch_size", [3, 7, 13]),  # requests: about 16, 32, 64 samples (4.9 per request)
    "litserve-continuous": ("rows", [32, 64, 128]),
    "ray-serve": ("max_batch_size", [8, 16, 32, 64]),  # samples (8 added when 16 beat 32 and 64)
    "bentoml": ("max_batch_size", [16, 32, 64, 128]),  # samples (128 added when 64 beat 32 and 16)
}


def tune(peers: list[str], out: Path, duration: float, deadlines: str, n_mix: str, load: float = 0.5) -> list[dict]:
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    path = out / "tuning.json"
    results = json.loads(path.read_text()) if path.exists() else []
    anytime_capacity = json.loads((raw / "anytime.json").read_text())["capacity"]
    rate = load * anytime_capacity / mean_samples(n_mix)
    for peer in peers:
        knob, values = CANDIDATES[peer]
        results = [r for r in results if r["server"] != peer or r["value"] in values]
        for value in values:
            if any(r["server"] == peer and r["value"] == value for r in results):
                continue  # measured by an earlier tuning run
            settings = {**peer_settings(peer), knob: value}
            if peer == "ray-serve":  # batches fill only if the replica takes enough requests at once
                settings["max_ongoing_requests"] = 2 * round(value / 4.9) + 2
            send = request_for(peer)
            with serve_server(peer, raw / f"tune-{peer}-{value}.log", settings=settings) as url:
                asyncio.run(run_closed_loop(url, 8, 3.0, n_mix, seed=99, request_for=send))
                wait_for_quiet()
                with foreign_cpu() as foreign:
                    records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=1, request_for=send,
                                                   progress=False))
            row = {"server": peer, "knob": knob, "value": value, "rate_rps": rate, "settings": settings,
                   **foreign, **score(records, duration)}
            results.append(row)
            print(f"tune {peer} {knob}={value}: quality-goodput {row['quality_goodput']:.1f}/s, "
                  f"on time {row['attainment']:.2%}, p99 {row['p99_ms']:.0f} ms, other processes "
                  f"{row['foreign_cores']:.2f} cores", flush=True)
            path.write_text(json.dumps(results, indent=1))
    (out / "tuning.md").write_text(markdown(results, rate, duration, deadlines, n_mix))
    return results


def markdown(results: list[dict], rate: float, duration: float, deadlines: str, n_mix: str) -> str:
    lines = [header("Peer batch sizes, tuned on the benchmark's traffic"),
             f"Each candidate serves the same open-loop traffic: {results[0]['rate_rps']:.1f} requests/s (0.5x "
             f"Anytime's full-length capacity as measured then), deadlines `{deadlines}` ms, samples per request "
             f"`{n_mix}`, {duration:.0f} s after a 3 s warm-up; the other settings as in bench/peers/settings.py. The "
             "highest quality-goodput wins. Rows accumulate over tuning runs (`--tune PEERS`, a short exclusive "
             "window each; the command above is the last); a value was added to a peer's candidates when its best "
             "sat at the edge of the range.", "",
             "| server | knob | value | on time (all) | refused | p50 ms | p99 ms | quality-goodput/s | other processes (cores) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = max((x for x in results if x["server"] == r["server"]), key=lambda x: x["quality_goodput"])
        mark = " **(chosen)**" if r is best else ""
        lines.append(f"| {r['server']} | {r['knob']} | {r['value']}{mark} | {r['attainment']:.2%} | {r['rejected']:.1%} "
                     f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['quality_goodput']:.1f} | {r['foreign_cores']:.2f} |")
    return "\n".join(lines + [""])
