"""Debian's haproxy with the shipped config (deploy/haproxy/haproxy.cfg) in front of two real
`anytime serve` replicas on loopback:

- one replica flooded with bulk work: its agent reports little headroom, HAProxy lowers its
  weight, and interactive requests are answered by the other replica;
- one replica killed with SIGKILL under load: the only requests that may fail are those in
  flight at the kill (HAProxy retries refused connections on the other replica)."""
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.fleet_proc import haproxy, replicas
from tests.utils.faults import slow_server_env

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (make apt)")

FLAGS = ("--workers", "1", "--no-standby-worker", "--threads", "1", "--max-batch", "4")
STEP_DELAY_MS = 10  # every prior step of the replicas sleeps this long (tests/utils/faults.py)


def closed_loop(url: str, body: dict, threads: int, stop: threading.Event, record: list) -> list[threading.Thread]:
    """`threads` clients, each sending its next request when the last is answered, until stop;
    each request recorded as (start, end, status, replica, error body)."""

    def client():
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    r = c.post(url, json=body)
                    status, replica = r.status_code, r.headers.get("x-anytime-replica")
                    detail = "" if status == 200 else r.text[:200]
                except httpx.HTTPError as e:
                    status, replica, detail = type(e).__name__, None, str(e)
                record.append((start, time.monotonic(), status, replica, detail))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers


def refusals_logged(log: Path) -> list[str]:
    """HAProxy's log lines of answers other than 200 (server, timers, retries, termination state)."""
    return [line for line in log.read_text(errors="replace").splitlines() if "POST" in line and " 200 " not in line]


def test_headroom_weights_and_retries_behind_haproxy(tiny_model_dir, tmp_path):
    with replicas(tiny_model_dir, 2, *FLAGS, log_dir=tmp_path, env=slow_server_env(STEP_DELAY_MS)) as (busy, other), \
            haproxy([busy, other], tmp_path / "haproxy.log") as lb:
        assert lb.weight("replica1") == lb.weight("replica2") == 100  # idle: all of D fits 100 ms

        # 1. bulk work straight at one replica: its weight falls, interactive work goes elsewhere
        stop, bulk = threading.Event(), []
        # (due in 800 ms: their promised steps fill the replica's throughput, so a 100 ms request
        # could be promised nothing there)
        flood = closed_loop(busy.base + "/generate", {"deadline_ms": 800, "n": 4}, 16, stop, bulk)
        try:
            end = time.monotonic() + 10
            while lb.weight("replica1") > 30 and time.monotonic() < end:
                time.sleep(0.05)
            assert lb.weight("replica1") <= 30, "the agent did not lower the busy replica's weight"
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: httpx.post(lb.base + "/generate", json={"deadline_ms": 300},
                                                             timeout=5), range(40)))
        finally:
            stop.set()
            for t in flood:
                t.join(15)
        assert [r.status_code for r in answers] == [200] * 40
        served_by = [r.headers["x-anytime-replica"] for r in answers]
        assert served_by.count("replica2") >= 32, served_by  # round robin would send half to replica1
        assert sum(r.json()["deadline_met"] for r in answers) >= 38
        assert any(status == 200 for _, _, status, _, _ in bulk)  # the flood was served, not refused

        # 2. SIGKILL one replica under load through the balancer
        stop, calls = threading.Event(), []
        load = closed_loop(lb.base + "/generate", {"deadline_ms": 500}, 4, stop, calls)
        time.sleep(1.5)
        killed_at = time.monotonic()
        in_flight = 4  # a closed loop: at most one request per client
        busy.kill9()
        time.sleep(3)
        stop.set()
        for t in load:
            t.join(15)
        failed = [(round(start - killed_at, 3), round(end - killed_at, 3), *rest)
                  for start, end, *rest in calls if rest[0] != 200]
        why = (failed, refusals_logged(tmp_path / "haproxy.log"))  # times from the kill; HAProxy's view
        assert len(failed) <= in_flight, why
        assert all(start <= 0 for start, *_ in failed), why  # only what was in flight
        after = [replica for start, _, _, replica, _ in calls if start > killed_at + 0.1]
        assert len(after) > 20 and set(after) == {"replica2"}
        assert lb.states()["replica1"].startswith("DOWN")
