"""Other work on the machine. A machine-wide benchmark lock keeps other benchmarks and background
training away, not other developers' test runs, and every server here shares the same 2 cores. So
each cell starts when other processes are quiet (or after a bounded wait), and records how much CPU
processes outside this benchmark took while it ran."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import psutil


def wait_for_quiet(threshold: float = 0.25, max_wait_s: float = 60.0) -> float:
    """Wait until processes outside this benchmark use less than `threshold` cores (measured over
    1 s; the server under test is excluded, some idle by spinning), at most `max_wait_s`; the last value."""
    end = time.monotonic() + max_wait_s
    while True:
        with foreign_cpu() as other:
            time.sleep(1.0)
        if other["foreign_cores"] < threshold or time.monotonic() >= end:
            return other["foreign_cores"]


def _cpu_by_pid() -> dict[int, tuple[float, str]]:
    out = {}
    for p in psutil.process_iter(["pid", "cpu_times", "name"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[p.info["pid"]] = (t.user + t.system, p.info["name"] or "")
    return out


@contextmanager
def foreign_cpu():
    """Yields a dict that, after the block, holds `foreign_cores`: CPU seconds per second taken by
    processes that are not this benchmark or its descendants (servers, Ray's workers, ...), and the
    busiest of them."""
    result: dict = {}
    before, t0 = _cpu_by_pid(), time.monotonic()
    yield result
    after, dt = _cpu_by_pid(), time.monotonic() - t0
    me = psutil.Process(os.getpid())
    mine = {me.pid, *(c.pid for c in me.children(recursive=True))}
    deltas = {pid: (cpu - before.get(pid, (0.0, ""))[0], name) for pid, (cpu, name) in after.items() if pid not in mine}
    top = sorted(deltas.values(), reverse=True)[:3]
    result["foreign_cores"] = sum(d for d, _ in deltas.values()) / dt
    result["foreign_top"] = [f"{name} {d / dt:.2f}" for d, name in top if d / dt >= 0.05]
