"""HTTP + scheduling overhead on an idle server: latency minus the engine compute the server
reports for the request (its prior steps with their sampling, and its decode), one request
at a time."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np

from .machine import header


def run(url: str, out: Path, requests: int = 500, deadline_ms: int = 1000, title: str = "") -> dict:
    rows = asyncio.run(_sequential(url, requests, deadline_ms))
    a = np.array(rows)
    client_over, server_over = a[:, 0] - a[:, 2], a[:, 1] - a[:, 2]
    client_outside, server_outside = a[:, 0] - a[:, 3], a[:, 1] - a[:, 3]
    pct = lambda x: {"p50": float(np.median(x)), "p99": float(np.percentile(x, 99))}  # noqa: E731
    res = {"requests": requests, "deadline_ms": deadline_ms,
           "client_outside_engine_ms": pct(client_outside), "server_outside_engine_ms": pct(server_outside),
           "engine_ms_p50": float(np.median(a[:, 3])),
           "client_overhead_ms": {"p50": float(np.median(client_over)), "p99": float(np.percentile(client_over, 99))},
           "server_overhead_ms": {"p50": float(np.median(server_over)), "p99": float(np.percentile(server_over, 99))},
           "compute_ms_p50": float(np.median(a[:, 2])), "client_latency_ms_p50": float(np.median(a[:, 0]))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.json").write_text(json.dumps(res, indent=1))
    (out / "overhead.md").write_text("\n".join([
        header(title or "HTTP + scheduling overhead on an idle server"),
        f"{requests} sequential `POST /generate` (n=1, deadline {deadline_ms} ms, full length, `format: npy`) "
        "after 20 warm-up requests; overhead = latency − engine compute (the prior steps with their token "
        "sampling and the decode the request took part in, reported by the server as `compute_ms`).", "",
        "| | p50 ms | p99 ms |", "|---|---|---|",
        f"| client-observed latency − compute | {res['client_overhead_ms']['p50']:.3f} | {res['client_overhead_ms']['p99']:.3f} |",
        f"| server-measured latency − compute | {res['server_overhead_ms']['p50']:.3f} | {res['server_overhead_ms']['p99']:.3f} |",
        f"| client-observed latency − time in the engine loop | {res['client_outside_engine_ms']['p50']:.3f} | "
        f"{res['client_outside_engine_ms']['p99']:.3f} |",
        f"| server-measured latency − time in the engine loop | {res['server_outside_engine_ms']['p50']:.3f} | "
        f"{res['server_outside_engine_ms']['p99']:.3f} |",
        "", f"Median engine compute per request: {res['compute_ms_p50']:.2f} ms (runtime calls and sampling); median time "
        f"in the engine loop (first step to decoded samples, including per-step sampling and scheduling): "
        f"{res['engine_ms_p50']:.2f} ms; median client latency {res['client_latency_ms_p50']:.2f} ms. The gap "
        "between the two compute figures is the engine loop's Python work per step besides sampling "
        "(bookkeeping and the per-iteration schedule).", ""]))
    return res


async def _sequential(url: str, requests: int, deadline_ms: int) -> list[tuple[float, float, float, float]]:
    """(client ms, server latency ms, compute ms, engine-loop ms) of each request after 20
    warm-up ones, sent one at a time (aiohttp: the lightest client CPU on the shared cores)."""
    rows = []
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=10)) as client:
        for i in range(requests + 20):
            t = time.perf_counter()
            async with client.post("/generate", json={"deadline_ms": deadline_ms, "seed": i, "format": "npy"}) as r:
                await r.read()
                client_ms = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                h = r.headers
            if i >= 20:  # warm-up
                rows.append((client_ms, float(h["x-anytime-latency-ms"]), float(h["x-anytime-compute-ms"]),
                             float(h["x-anytime-engine-ms"])))
    return rows
