"""Soak / overload run: open-loop load at a multiple of capacity for minutes, sampling the
server's memory, open files, queue and /healthz latency, and per-window deadline attainment.

The sampler runs in its own process, so a load generator that keeps its event loop busy
(as at 4x capacity) does not add its own delays to the /healthz latencies it reports."""
from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import httpx
import numpy as np

from .loadgen import run_load
from .machine import header
from .summary import summarize

WARMUP_S = 60.0  # memory growth is judged after this (or the first third of a shorter run)
METRICS_EVERY_S = 5.0  # /metrics scrapes for queue depth and active sequences


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB; empty once the process is gone."""
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def engine_gauges(metrics_text: str) -> dict[str, float]:
    """Active sequences and queue depth summed over models, from a /metrics exposition."""
    out = {"active_sequences": 0.0, "queue_depth": 0.0}
    for line in metrics_text.splitlines():
        for name in out:
            if line.startswith(f"anytime_{name}{{"):
                out[name] += float(line.rsplit(" ", 1)[1])
    return out


def sample_server(url: str, pid: int, every: float, t0: float, stop, conn) -> None:
    """In a process of its own: every `every` s, probe /healthz and read the server's RSS and
    open files; every METRICS_EVERY_S, its queue depth and active sequences. Sends the list of
    samples through `conn` once `stop` is set. Times are seconds since t0 (time.monotonic, the
    same clock in every process)."""
    samples, next_scrape = [], 0.0
    with httpx.Client(base_url=url, timeout=5) as client:
        while not stop.is_set():
            start = time.monotonic()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            s = {"t": round(start - t0, 2), "healthz_ok": ok, "healthz_ms": round((time.monotonic() - start) * 1000, 2),
                 "rss_mb": round(proc_status(pid).get("VmRSS", math.nan), 1), "fds": open_fds(pid)}
            if start - t0 >= next_scrape:
                next_scrape += METRICS_EVERY_S
                try:
                    s.update(engine_gauges(client.get("/metrics").text))
                except httpx.HTTPError:
                    pass
            samples.append(s)
            stop.wait(max(0.0, every - (time.monotonic() - start)))
    conn.send(samples)
    conn.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _run(url: str, pid: int, rate: float, duration: float, deadlines: str, n_mix: str, every: float):
    ctx = multiprocessing.get_context("spawn")
    stop, (receiver, sender) = ctx.Event(), ctx.Pipe(duplex=False)
    t0 = time.monotonic()
    sampler = ctx.Process(target=sample_server, args=(url, pid, every, t0, stop, sender), daemon=True)
    sampler.start()
    try:
        records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=7))
        load_s = time.monotonic() - t0
        try:
            metrics = httpx.get(url + "/metrics", timeout=10).text
        except httpx.HTTPError as e:  # reported, not raised: the records say what happened
            metrics = f"# /metrics failed: {e!r}"
        peak_mb = proc_status(pid).get("VmHWM", math.nan)
    finally:
        stop.set()
    samples = receiver.recv() if receiver.poll(30) else []
    sampler.join(10)
    return records, samples, metrics, peak_mb, load_s


def run(url: str, pid: int, rate: float, load: float, duration: float, deadlines: str, n_mix: str, out: Path,
        sample_every: float = 1.0) -> dict:
    records, samples, metrics, peak_mb, load_s = _run(url, pid, rate, duration, deadlines, n_mix, sample_every)
    if not samples:
        raise RuntimeError("the server sampler returned nothing")
    windows = []
    for w in range(0, int(duration), 60):
        part = [r for r in records if w <= r.sent_at < w + 60]
        if part:
            s = summarize(part, 60)
            windows.append({"minute": w // 60 + 1, "requests": s["requests"],
                            "rate": s["requests"] / min(60.0, duration - w),
                            "attainment_admitted": s["attainment_admitted"], "rejection_rate": s["rejection_rate"],
                            "mean_quality": s["mean_quality"]})
    warmup = min(WARMUP_S, duration / 3)
    after = [s for s in samples if s["t"] >= warmup] or samples
    rss = [s["rss_mb"] for s in after if s["rss_mb"] == s["rss_mb"]] or [math.nan]  # NaN: server gone
    fds = [s["fds"] for s in after if s["fds"] is not None] or [-1]
    healthz = [s["healthz_ms"] for s in samples]
    gauges = [s for s in samples if "queue_depth" in s]
    active = [line for line in metrics.splitlines() if line.startswith("anytime_active_sequences{")]
    result = {"summary": summarize(records, duration), "windows": windows, "memory": samples,
              "warmup_s": warmup, "sample_every_s": sample_every,
              "rss_after_warmup_mb": {"first": rss[0], "max": max(rss), "last": rss[-1]},
              "rss_growth_after_warmup": max(rss) / rss[0] - 1,
              "rss_peak_mb": round(peak_mb, 1),
              "fds_after_warmup": {"first": fds[0], "max": max(fds), "last": fds[-1]},
              "healthz_probes": len(samples), "healthz_failures": sum(not s["healthz_ok"] for s in samples),
              "healthz_all_ok": all(s["healthz_ok"] for s in samples),
              "healthz_ms": _percentiles(healthz), "healthz_max_ms": max(healthz),
              "queue_depth_max": max((s["queue_depth"] for s in gauges), default=None),
              "active_sequences_max": max((s["active_sequences"] for s in gauges), default=None),
              "active_sequences_at_end": active, "rate": rate, "achieved_rate": len(records) / duration,
              "load": load, "duration_s": duration, "load_wall_s": round(load_s, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    title = f"Soak: {duration / 60:.0f} minutes at {load}x full-length capacity"
    plot(samples, windows, warmup, out / "soak.png", title)
    s, h = result["summary"], result["healthz_ms"]
    lines = [header(title),
             f"Open-loop Poisson arrivals at {rate:.1f} requests/s (sent: {result['achieved_rate']:.1f}/s), "
             f"deadlines `{deadlines}` ms, n `{n_mix}`. The server is sampled every {sample_every:g} s from a "
             f"separate process (RSS, open files, /healthz) and its /metrics every {METRICS_EVERY_S:g} s.", "",
             f"- requests {s['requests']}, admitted {s['admitted']}, rejected {s['rejected']}, errors {s['errors']}",
             f"- deadline met of admitted: {s['attainment_admitted']:.4%}; mean quality {s['mean_quality']:.3f}",
             f"- server RSS after {warmup:.0f} s of warm-up: first {rss[0]:.1f} MB, max {max(rss):.1f} MB, last "
             f"{rss[-1]:.1f} MB (growth {result['rss_growth_after_warmup']:.2%}); peak over the whole run (VmHWM) "
             f"{result['rss_peak_mb']:.1f} MB",
             f"- open file descriptors after warm-up: first {fds[0]}, max {max(fds)}, last {fds[-1]}",
             f"- /healthz: {len(samples)} probes, {result['healthz_failures']} failed; latency p50 {h['p50']:.1f} ms, "
             f"p99 {h['p99']:.1f} ms, max {h['max']:.1f} ms",
             f"- queue depth max {result['queue_depth_max']}, active sequences max {result['active_sequences_max']} "
             f"(sampled every {METRICS_EVERY_S:g} s)",
             f"- at the end: {' '.join(active)}", "",
             "| minute | requests | sent/s | met (admitted) | rejected | mean quality |", "|---|---|---|---|---|---|"]
    for w in windows:
        lines.append(f"| {w['minute']} | {w['requests']} | {w['rate']:.1f} | {w['attainment_admitted']:.4%} "
                     f"| {w['rejection_rate']:.2%} | {w['mean_quality']:.3f} |")
    lines += ["", "![soak](soak.png)", ""]
    (out / "soak.md").write_text("\n".join(lines))
    return result


def plot(samples: list[dict], windows: list[dict], warmup: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    rss = [s["rss_mb"] for s in samples if s["rss_mb"] == s["rss_mb"]] or [0.0]
    base = next((s["rss_mb"] for s in samples if s["t"] >= warmup), rss[0])
    axes[0].plot(t, [s["rss_mb"] for s in samples], lw=1, label="RSS")
    axes[0].axvspan(0, warmup, color="0.9", label="warm-up")
    axes[0].axhline(base * 1.05, color="r", ls="--", lw=1, label="+5% of the first sample after warm-up")
    axes[0].set(xlabel="time (s)", ylabel="MB", title="server memory (RSS)", ylim=(0, max(rss + [base * 1.05]) * 1.15))
    axes[0].legend(loc="lower right", fontsize="small")
    ok = [s for s in samples if s["healthz_ok"]]
    bad = [s for s in samples if not s["healthz_ok"]]
    axes[1].plot([s["t"] for s in ok], [s["healthz_ms"] for s in ok], ".", ms=2)
    if bad:
        axes[1].plot([s["t"] for s in bad], [s["healthz_ms"] for s in bad], "rx", label="failed")
        axes[1].legend()
    axes[1].set(xlabel="time (s)", ylabel="ms", yscale="log", title="/healthz latency")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    g = [s for s in samples if "queue_depth" in s]
    axes[2].plot([s["t"] for s in g], [s["active_sequences"] for s in g], lw=1, label="active sequences")
    axes[2].plot([s["t"] for s in g], [s["queue_depth"] for s in g], lw=1, label="queue depth")
    axes[2].set(xlabel="time (s)", ylabel="sequences", title="engine")
    axes[2].legend()
    minutes = [w["minute"] for w in windows]
    axes[3].plot(minutes, [w["attainment_admitted"] for w in windows], "o-", label="met (admitted)")
    axes[3].plot(minutes, [w["rejection_rate"] for w in windows], "s-", label="rejected")
    axes[3].set(xlabel="minute", ylabel="share", title="attainment and rejections", ylim=(-0.02, 1.02))
    axes[3].legend()
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
