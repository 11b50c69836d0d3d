"""Soak / overload run: open-loop load at a multiple of capacity for minutes, sampling the
server's memory, /healthz latency and per-window deadline attainment."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from .loadgen import run_load
from .machine import header
from .summary import summarize


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _watch(url: str, pid: int, stop: asyncio.Event, samples: list, every: float) -> None:
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                ok = (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            samples.append({"t": round(t - t0, 1), "rss_mb": round(rss_mb(pid), 1), "healthz_ok": ok,
                            "healthz_ms": round((time.perf_counter() - t) * 1000, 2)})
            try:
                await asyncio.wait_for(stop.wait(), every)
            except asyncio.TimeoutError:
                pass


async def _run(url: str, pid: int, rate: float, duration: float, deadlines: str, n_mix: str):
    stop, samples = asyncio.Event(), []
    watcher = asyncio.create_task(_watch(url, pid, stop, samples, 10.0))
    records = await run_load(url, rate, duration, deadlines, n_mix, seed=7)
    stop.set()
    await watcher
    async with httpx.AsyncClient(base_url=url) as client:
        metrics = (await client.get("/metrics")).text
    return records, samples, metrics


def run(url: str, pid: int, rate: float, load: float, duration: float, deadlines: str, n_mix: str, out: Path) -> dict:
    records, samples, metrics = asyncio.run(_run(url, pid, rate, duration, deadlines, n_mix))
    windows = []
    for w in range(0, int(duration), 60):
        part = [r for r in records if w <= r.sent_at < w + 60]
        if part:
            s = summarize(part, 60)
            windows.append({"minute": w // 60 + 1, "requests": s["requests"], "attainment_admitted":
                            s["attainment_admitted"], "rejection_rate": s["rejection_rate"],
                            "mean_quality": s["mean_quality"]})
    after_warmup = [s["rss_mb"] for s in samples if s["t"] >= 60] or [s["rss_mb"] for s in samples]
    active = [line for line in metrics.splitlines() if line.startswith("anytime_active_sequences{")]
    result = {"summary": summarize(records, duration), "windows": windows, "memory": samples,
              "rss_after_warmup_mb": {"first": after_warmup[0], "max": max(after_warmup), "last": after_warmup[-1]},
              "rss_growth_after_warmup": max(after_warmup) / after_warmup[0] - 1,
              "healthz_all_ok": all(s["healthz_ok"] for s in samples),
              "healthz_max_ms": max(s["healthz_ms"] for s in samples),
              "active_sequences_at_end": active, "rate": rate, "load": load, "duration_s": duration}
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    s = result["summary"]
    lines = [header(f"Soak: {duration / 60:.0f} minutes at {load}x full-length capacity"),
             f"Open-loop Poisson arrivals at {rate:.1f} requests/s, deadlines `{deadlines}` ms, n `{n_mix}`.", "",
             f"- requests {s['requests']}, admitted {s['admitted']}, rejected {s['rejected']}, errors {s['errors']}",
             f"- deadline met of admitted: {s['attainment_admitted']:.4%}; mean quality {s['mean_quality']:.3f}",
             f"- server RSS after the first minute: first {result['rss_after_warmup_mb']['first']:.1f} MB, max "
             f"{result['rss_after_warmup_mb']['max']:.1f} MB, last {result['rss_after_warmup_mb']['last']:.1f} MB "
             f"(growth {result['rss_growth_after_warmup']:.2%})",
             f"- /healthz answered every probe: {result['healthz_all_ok']} (slowest {result['healthz_max_ms']:.1f} ms)",
             f"- at the end: {' '.join(active)}", "",
             "| minute | requests | met (admitted) | rejected | mean quality |", "|---|---|---|---|---|"]
    for w in windows:
        lines.append(f"| {w['minute']} | {w['requests']} | {w['attainment_admitted']:.4%} | {w['rejection_rate']:.2%} "
                     f"| {w['mean_quality']:.3f} |")
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    return result
