"""Measure one server: its full-length capacity, then the policy sweep's traffic at multiples of
that capacity and at 2x Anytime's capacity, on one server process. Writes raw/<server>.json
(rows and settings) and raw/<server>-<cell>.jsonl (every request), so each server can be run in
its own short exclusive window and the report rebuilt from whatever has been measured."""
from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

from ..load_bench import measure_capacity
from ..loadgen import parse_mix, run_closed_loop, run_load
from .contention import foreign_cpu, wait_for_quiet
from .generator import DEFAULT_MODEL
from .scoring import score
from .servers import request_for, serve_server
from .settings import CAPACITY_OVERRIDES, peer_settings, slo_overrides

OWN_LOADS = (0.25, 0.5, 1.0, 2.0, 4.0)
ANYTIME_LOAD = 2.0  # every server also gets 2x Anytime's capacity: the same absolute traffic


def mean_samples(n_mix: str) -> float:
    values, weights = parse_mix(n_mix)
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def capacity_of(server: str, raw: Path, n_mix: str, anytime_flags: list[str], model_dir: Path) -> tuple[float, dict]:
    """Full-length samples/s: Anytime under policy `fixed`, a peer with its batching and no SLO limits."""
    if server == "anytime":
        flags = [*anytime_flags, "--policy", "fixed"]
        with serve_server("anytime", raw / "anytime-capacity.log", flags) as url:
            wait_for_quiet()
            with foreign_cpu() as foreign:
                capacity = asyncio.run(measure_capacity(url, n_mix))
            return capacity, {"flags": flags, **foreign}
    settings = {**peer_settings(server), **CAPACITY_OVERRIDES[server], "model_dir": str(model_dir)}
    with serve_server(server, raw / f"{server}-capacity.log", settings=settings) as url:
        wait_for_quiet()
        with foreign_cpu() as foreign:
            capacity = asyncio.run(measure_capacity(url, n_mix, request_for=request_for(server)))
        return capacity, {**settings, **foreign}


def run_server(server: str, out: Path, duration: float, deadlines: str, n_mix: str,
               anytime_flags: list[str] = (), model_dir: Path = DEFAULT_MODEL, seed: int = 0) -> dict:
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    capacity, capacity_settings = capacity_of(server, raw, n_mix, list(anytime_flags), model_dir)
    print(f"{server}: full-length capacity {capacity:.1f} samples/s", flush=True)
    anytime_capacity = capacity if server == "anytime" else json.loads((raw / "anytime.json").read_text())["capacity"]
    cells = [(load, "own", load * capacity) for load in OWN_LOADS]
    if server != "anytime":  # for Anytime the 2x-own cell is this one
        cells.append((ANYTIME_LOAD, "anytime", ANYTIME_LOAD * anytime_capacity))
    settings = {"flags": list(anytime_flags)} if server == "anytime" else \
        {**peer_settings(server), **slo_overrides(server, capacity), "model_dir": str(model_dir)}
    send = request_for(server)
    rows = []
    with serve_server(server, raw / f"{server}-load.log", list(anytime_flags), settings) as url:
        # warm-up (BentoML fits its batching cost model on the first requests): 3 s closed loop
        asyncio.run(run_closed_loop(url, 8, 3.0, n_mix, seed=99, request_for=send))
        for load, basis, samples_per_s in cells:
            time.sleep(2.0)  # the previous cell's stragglers are answered before the next starts
            quiet = wait_for_quiet()
            rate = samples_per_s / mean_samples(n_mix)
            with foreign_cpu() as foreign:
                records = asyncio.run(run_load(url, rate, duration, deadlines, n_mix, seed=seed, request_for=send,
                                               progress=False))
            row = {"server": server, "load": load, "load_basis": basis, **score(records, duration),
                   "rate_rps": rate, "capacity_samples_per_s": capacity, "busy_before": quiet, **foreign}
            rows.append(row)
            name = f"{server}-{load}x-{basis}"
            (raw / f"{name}.jsonl").write_text("\n".join(json.dumps(r.to_dict()) for r in records) + "\n")
            print(f"{name}: {rate:.1f} req/s, attainment {row['attainment']:.2%}, rejected {row['rejected']:.1%}, "
                  f"p99 {row['p99_ms']:.0f} ms, quality-goodput {row['quality_goodput']:.1f}/s; other processes "
                  f"{row['foreign_cores']:.2f} cores {row['foreign_top']}", flush=True)
    result = {"server": server, "command": "anytime " + shlex.join(sys.argv[1:]), "capacity": capacity, "capacity_settings": capacity_settings, "settings": settings,
              "duration_s": duration, "deadlines": deadlines, "n_mix": n_mix, "rows": rows,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (raw / f"{server}.json").write_text(json.dumps(result, indent=1))
    return result
