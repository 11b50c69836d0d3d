"""The headroom signal: what the scheduler's own admission would plan for a reference request,
in /metrics, on GET /headroom and on HAProxy's agent-check port; and the retry budget header."""
import copy
import gc
import socket
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.core.headroom import model_headroom
from tests.utils.server import free_port, running_server


def agent_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while chunk := s.recv(64):
            data += chunk
        return data


def metric(text: str, name: str) -> dict[str, float]:
    return {s.labels["model"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


def test_headroom_falls_under_load_and_probing_changes_nothing(tiny_model_dir):
    agent = free_port()
    with running_server(model_dirs=str(tiny_model_dir), max_batch=4, step_delay_ms=10,
                        agent_port=agent) as (base, core):
        idle = httpx.get(base + "/headroom").json()
        assert idle["models"]["tiny"] == 1.0 and idle["weight"] == 100  # 8 tokens fit 100 ms when idle
        assert idle["reference"] == {"n": 1, "deadline_ms": 100.0}
        assert agent_line(agent) == b"ready 100%\n"
        assert metric(httpx.get(base + "/metrics").text, "anytime_headroom") == {"tiny": 1.0}

        # bulk work: more rows than the batch, due within a second (their steps are promised)
        engine = core.engines["tiny"]
        statuses = []

        def bulk():
            statuses.append(httpx.post(base + "/generate", json={"deadline_ms": 1200, "n": 2}, timeout=10).status_code)

        admitter = engine.scheduler.admitter
        rows_before = admitter.admitted_rows  # the warm-up's among them
        threads = [threading.Thread(target=bulk) for _ in range(8)]
        for t in threads:
            t.start()
        end = time.monotonic() + 5
        while admitter.admitted_rows < rows_before + 16 and time.monotonic() < end:  # all admitted
            time.sleep(0.005)
        state = engine.scheduler.admitter.state
        before = (copy.copy(state.__dict__), list(engine.scheduler.admitter._pending), engine.scheduler.admitter.admitted_rows)
        busy = httpx.get(base + "/headroom").json()
        line = agent_line(agent)
        scraped = metric(httpx.get(base + "/metrics").text, "anytime_headroom")["tiny"]
        direct = model_headroom(engine, 0.1)
        after = (copy.copy(state.__dict__), list(engine.scheduler.admitter._pending), engine.scheduler.admitter.admitted_rows)
        assert before == after  # asking changed no admission state (pressure, plans, pending)
        assert 0 <= busy["models"]["tiny"] <= 1 and line.startswith(b"ready ") and 0 <= scraped <= 1
        assert 0 <= direct <= 1
        for t in threads:
            t.join(10)
        assert statuses == [200] * 8

        # a closed loop of work due in 400 ms keeps the batch and its promised steps full: a 100 ms
        # request would get little or nothing here, and the signal says so
        stop = threading.Event()

        def flood():
            with httpx.Client() as c:
                while not stop.is_set():
                    c.post(base + "/generate", json={"deadline_ms": 400, "n": 2}, timeout=10)

        threads = [threading.Thread(target=flood) for _ in range(12)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        samples, lines = [], []
        for _ in range(10):
            samples.append(httpx.get(base + "/headroom").json()["models"]["tiny"])
            lines.append(agent_line(agent))
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(10)
        assert sorted(samples)[len(samples) // 2] <= 0.5, samples
        weights = sorted(int(x[len(b"ready "):-2]) for x in lines)
        assert weights[len(weights) // 2] <= 50 and weights[0] >= 1, lines  # never 0% while ready



def test_agent_says_drain_while_the_replica_admits_nothing(tiny_model_dir):
    """The agent-check server of a frontend (the one the app starts with --agent-port): a ready
    line while admitting, `drain` once draining, as HAProxy's agent protocol has it."""
    import asyncio

    from service.frontend.headroom import AgentServer
    from service.frontend.state import FrontendState
    from service.inproc import CoreThread
    from service.settings import Settings

    port = free_port()
    settings = Settings(model_dirs=str(tiny_model_dir), workers=0, agent_port=port)

    async def check(core: CoreThread) -> tuple[bytes, bytes]:
        state = FrontendState(settings, core.client())
        await state.start()
        agent = AgentServer(state, settings)
        await agent.start()
        try:
            ready = await asyncio.to_thread(agent_line, port)
            state.start_draining()
            return ready, await asyncio.to_thread(agent_line, port)
        finally:
            await agent.stop()
            await state.client.close()

    with CoreThread(settings) as core:
        ready, draining = asyncio.run(check(core))
    assert ready == b"ready 100%\n" and draining == b"drain\n"


def test_retry_budget_header_counts_from_the_first_arrival(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), step_delay_ms=1) as (base, _):
        now_ms = time.time() * 1000
        r = httpx.post(base + "/generate", json={"deadline_ms": 1000, "format": "json"},
                       headers={"X-Anytime-Arrival-Ms": f"{now_ms - 300:.0f}"})
        assert r.status_code == 200 and r.json()["latency_ms"] >= 300  # latency from the first arrival
        # a stamp older than the deadline: nothing is left, a fast 503 (never a late answer)
        r = httpx.post(base + "/generate", json={"deadline_ms": 200},
                       headers={"X-Anytime-Arrival-Ms": f"{time.time() * 1000 - 500:.0f}"})
        assert r.status_code == 503 and "cannot be met" in r.json()["error"]["message"]
        # a stamp in the future counts as now: a client gains no time by setting it
        r = httpx.post(base + "/generate", json={"deadline_ms": 1000, "format": "json"},
                       headers={"X-Anytime-Arrival-Ms": f"{time.time() * 1000 + 60_000:.0f}"})
        assert r.status_code == 200 and r.json()["latency_ms"] < 1000 and r.json()["deadline_met"]
        r = httpx.post(base + "/generate", json={"deadline_ms": 1000}, headers={"X-Anytime-Arrival-Ms": "soon"})
        assert r.status_code == 400 and "X-Anytime-Arrival-Ms" in r.json()["error"]["message"]
