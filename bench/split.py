"""The process split, measured: the same server in one process (`--workers 0`: the engine
core's message loop on a thread, behind the same socket; before issue #26 the frontend called the
core directly, the shape before issue #9) and split into an engine-core process and 1 or 2
frontend workers, side by side in one run, driven from outside by `hey` (closed loop):

- n=1 full-length requests/s against n=64 samples/s (per-request overhead vs batched work);
- 1-token requests/s against GET /healthz requests/s (the generate path vs the HTTP floor);
- idle overhead (bench/overhead.py), and the admission round trip frontend -> engine core.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import header
from .overhead import run as overhead
from .server_proc import serve

CONFIGS = (("one process", "0"), ("split, 1 worker", "1"), ("split, 2 workers", "2"))


def hey_rps(url: str, seconds: float, conc: int, body: dict | None = None) -> float:
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(conc)]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-d", json.dumps(body)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[1] for line in out.splitlines() if "Requests/sec" in line))


def ratios(url: str, D: int, rounds: int) -> dict:
    """The two throughput ratios of ../shared/tools/throughput-ratios.sh, medians of rounds."""
    rows = []
    for _ in range(rounds):
        full = hey_rps(url + "/generate", 8, 128, {"deadline_ms": 60000, "seed": 1, "min_tokens": D})
        batch = 64 * hey_rps(url + "/generate", 8, 4, {"deadline_ms": 60000, "seed": 1, "n": 64, "min_tokens": D})
        health = hey_rps(url + "/healthz", 5, 32)
        one = hey_rps(url + "/generate", 5, 32, {"deadline_ms": 5000, "seed": 1, "max_tokens": 1})
        rows.append({"n1_full_rps": full, "n64_samples_s": batch, "healthz_rps": health, "one_token_rps": one,
                     "full_ratio": full / batch, "token_ratio": one / health})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {"rounds": rows}


def admission_rtt(model_dir: Path, requests: int = 2000) -> dict:
    """Round trip of an admission decision through a real engine-core process: add() to the
    Admitted reply, for refusals (a deadline too short for one token: decided, nothing queued)
    and for admitted 1-token requests, one at a time."""
    from service import ipc
    from service.frontend.core_client import MPClient
    from service.settings import Settings

    tmp = tempfile.mkdtemp(prefix="anytime-rtt-")
    address = f"ipc://{tmp}/core.sock"
    settings = Settings(model_dirs=str(model_dir), workers=1)
    r, w = os.pipe()
    core = subprocess.Popen([sys.executable, "-m", "service.core.process", "--address", address, "--ready-fd", str(w)],
                            env={**os.environ, "ANYTIME_PROCESS_SETTINGS": settings.model_dump_json()}, pass_fds=(w,))
    os.close(w)
    try:
        assert os.fdopen(r).readline().strip() == "ready"

        async def go() -> dict:
            client = MPClient(address, core.pid)
            await client.start()
            model = client.default_model
            out = {}
            for name, deadline_s, max_tokens in (("refused", 0.0005, 1), ("admitted", 5.0, 1)):
                times = []
                for i in range(requests):
                    msg = ipc.AddRequest(client.next_id(), model, 1, i, None, deadline_s, time.monotonic(), 1,
                                         max_tokens, 1.0, 0, 1.0, 0, "")
                    t = time.perf_counter()
                    adm, stream = await client.add(msg)
                    times.append((time.perf_counter() - t) * 1000)
                    assert adm.ok == (name == "admitted"), adm
                    if stream is not None:
                        await stream.events.get()
                a = np.array(times[100:])
                out[name] = {"p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99))}
            await client.close()
            return out

        return asyncio.run(go())
    finally:
        core.terminate()
        core.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def run(flags: list[str], model_dir: Path, out: Path, rounds: int = 2) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    D = json.loads((model_dir / "manifest.json").read_text())["D"]
    results = {}
    for name, workers in CONFIGS:
        with serve(*flags, "--workers", workers, log_path=out / f"server-{workers}.log") as url:
            res = ratios(url, D, rounds)
            time.sleep(2)  # idle overhead on an idle server: the closed-loop clients' backlog drains first
            res["overhead"] = overhead(url, out / f"overhead-{workers}", requests=300,
                                       title=f"Idle overhead, {name}")
            results[name] = res
            print(name, {k: round(v, 3) for k, v in res.items() if isinstance(v, float)}, flush=True)
    results["admission_rtt"] = admission_rtt(model_dir)
    (out / "split.json").write_text(json.dumps(results, indent=1))
    _report(results, flags, rounds, out)
    return results


def _report(results: dict, flags: list[str], rounds: int, out: Path) -> None:
    rtt = results["admission_rtt"]
    lines = [header("The engine core in its own process: before and after"),
             f"Server flags: `{' '.join(flags)}`; each row is one server, started in turn in this run. Closed-loop "
             f"`hey` from outside the server (medians of {rounds} alternating rounds): n=1 full-length with 128 "
             "connections for 8 s, n=64 full-length with 4 connections for 8 s, `GET /healthz` and 1-token "
             "requests with 32 connections for 5 s. Idle overhead: 300 sequential requests (bench/overhead.py), "
             "client-observed latency − engine compute.", "",
             "| server | n=1 full req/s | n=64 samples/s | n=1 / n=64 | 1-token req/s | /healthz req/s | "
             "1-token / healthz | idle overhead p50 ms (client) | (server) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, _ in CONFIGS:
        r = results[name]
        o = r["overhead"]
        lines.append(f"| {name} | {r['n1_full_rps']:.0f} | {r['n64_samples_s']:.0f} | **{r['full_ratio']:.2f}** | "
                     f"{r['one_token_rps']:.0f} | {r['healthz_rps']:.0f} | **{r['token_ratio']:.2f}** | "
                     f"{o['client_overhead_ms']['p50']:.2f} | {o['server_overhead_ms']['p50']:.2f} |")
    lines += ["", "Admission round trip through a real engine-core process (frontend `MPClient.add` to the "
              "decision, one request at a time, 1,900 after 100 warm-up):", "",
              "| decision | p50 ms | p99 ms |", "|---|---|---|",
              *[f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} |" for k, v in rtt.items()], ""]
    (out / "split.md").write_text("\n".join(lines))
    _plot(results, out)


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in CONFIGS]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(names))
    ax[0].bar(x - 0.2, [results[n]["n1_full_rps"] for n in names], 0.4, label="n=1 full-length req/s")
    ax[0].bar(x + 0.2, [results[n]["n64_samples_s"] for n in names], 0.4, label="n=64 samples/s")
    ax[1].bar(x - 0.2, [results[n]["one_token_rps"] for n in names], 0.4, label="1-token req/s")
    ax[1].bar(x + 0.2, [results[n]["healthz_rps"] for n in names], 0.4, label="/healthz req/s")
    for a in ax:
        a.set_xticks(x, names, fontsize=8)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "split.png", dpi=120)
