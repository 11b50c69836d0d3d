"""The frontend's CPU per request for the Open Inference Protocol beside /generate: one frontend
worker, requests sent one at a time, the worker's CPU time (user + system, /proc) divided by the
requests it answered. The engine core's work is the same for both APIs and is not counted."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np

from .machine import header
from .process_cpu import cpu_s
from .server_proc import serve

MAX_TOKENS = 8  # the frontend's work does not depend on k; short generations keep the run short


def _generate(fmt: str):
    def body(i: int, n: int) -> tuple[str, bytes, dict]:
        payload = {"deadline_ms": 5000, "seed": i, "n": n, "max_tokens": MAX_TOKENS, "format": fmt}
        return "/generate", json.dumps(payload).encode(), {"content-type": "application/json"}
    return body


def _oip(binary: bool):
    def body(i: int, n: int) -> tuple[str, bytes, dict]:
        seeds = np.arange(i, i + n, dtype="<i8")
        seed = {"name": "seed", "shape": [n], "datatype": "INT64"}
        params = {"deadline_ms": 5000, "max_tokens": MAX_TOKENS}
        if not binary:
            head = json.dumps({"inputs": [{**seed, "data": seeds.tolist()}], "parameters": params}).encode()
            return "/v2/models/{model}/infer", head, {"content-type": "application/json"}
        seed["parameters"] = {"binary_data_size": seeds.nbytes}
        head = json.dumps({"inputs": [seed], "parameters": {**params, "binary_data_output": True}}).encode()
        return ("/v2/models/{model}/infer", head + seeds.tobytes(),
                {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))})
    return body


VARIANTS = {"/generate json (base64 PNG)": _generate("json"), "/generate npy": _generate("npy"),
            "OIP, JSON tensors": _oip(False), "OIP, binary tensors": _oip(True)}


async def _measure(url: str, model: str, worker: int, make, n: int, requests: int) -> dict:
    latencies, failed = [], 0
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def one(i: int) -> None:
            nonlocal failed
            path, data, headers = make(i, n)
            t = time.perf_counter()
            async with client.post(path.format(model=model), data=data, headers=headers) as r:
                await r.read()
                failed += r.status != 200
            latencies.append((time.perf_counter() - t) * 1000)

        for i in range(20):  # warm-up
            await one(i)
        latencies.clear()
        cpu = cpu_s(worker)
        for i in range(requests):
            await one(i)
        cpu = cpu_s(worker) - cpu
    return {"n": n, "requests": requests, "failed": failed, "cpu_ms_per_request": cpu / requests * 1000,
            "client_latency_ms_p50": float(np.median(latencies))}


def run(flags: list[str], model: str, out: Path, requests: int = 400) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with serve(*flags, "--workers", "1", log_path=out / "server.log") as url:
        found = subprocess.run(["pgrep", "-P", str(serve.last_pid), "-f", "service.frontend.worker"],
                               capture_output=True, text=True).stdout.split()
        assert len(found) == 1, found
        worker = int(found[0])
        for n in (1, 64):
            for name, make in VARIANTS.items():
                res = asyncio.run(_measure(url, model, worker, make, n, requests if n == 1 else requests // 4))
                rows.append({"variant": name, **res})
                print(rows[-1])
    (out / "oip-cost.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, out / "oip-cost.png")
    lines = [header("Frontend CPU per request: Open Inference Protocol vs /generate"),
             f"One frontend worker (`--workers 1`), model `{model}`, requests one at a time (aiohttp), "
             f"`max_tokens` {MAX_TOKENS}, 20 warm-up requests per row; CPU = the worker's user + system time "
             "(/proc, 10 ms ticks: a resolution of 10 ms / requests) over the row's requests, divided by their "
             "number. The engine core's work is the same for both APIs and is not counted; client latencies "
             "(in oip-cost.json) include generation and are not a comparison of the APIs.", "",
             "| request | n | requests | non-200 | frontend CPU ms / request |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['n']} | {r['requests']} | {r['failed']} | {r['cpu_ms_per_request']:.3f} |"
              for r in rows]
    lines += ["", "![frontend CPU per request](oip-cost.png)", ""]
    (out / "oip-cost.md").write_text("\n".join(lines))
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, n in zip(axes, (1, 64)):
        mine = [r for r in rows if r["n"] == n]
        ax.barh([r["variant"] for r in mine], [r["cpu_ms_per_request"] for r in mine], color="#4477aa")
        ax.set_title(f"n = {n}")
        ax.set_xlabel("frontend CPU ms per request")
        ax.invert_yaxis()
    axes[1].set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
