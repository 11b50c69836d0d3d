"""Beyond the in-flight limit and the queue, the server answers 503 with Retry-After at once,
and overload leaves nothing behind."""
import asyncio
import gc
import random
import threading
import time
from collections import Counter

import httpx

from service.core.request import Request
from service.frontend.errors import ApiError
from service.frontend.state import FrontendState
from service.frontend.validation import GenerateRequest
from service.inproc import CoreThread
from service.settings import Settings
from tests.utils.faults import slow_engines
from tests.utils.server import running_server


def test_in_flight_limit_and_queue_limit_reject_fast(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), max_inflight=2, max_queue=4, max_batch=8,
                        step_delay_ms=30) as (base, core):
        engine = core.engines["tiny"]
        results = []

        def slow():
            results.append(httpx.post(base + "/generate", json={"deadline_ms": 5000, "n": 1}, timeout=10))

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for t in threads:
            t.start()
        end = time.monotonic() + 5
        while engine.active_sequences + engine.queued_sequences < 2 and time.monotonic() < end:
            time.sleep(0.005)
        t0 = time.perf_counter()
        r = httpx.post(base + "/generate", json={"deadline_ms": 5000})
        assert r.status_code == 503 and "overloaded" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1 and time.perf_counter() - t0 < 0.5
        for t in threads:
            t.join(10)
        assert [x.status_code for x in results] == [200, 200]
        # a request bigger than the whole queue is refused at admission
        r = httpx.post(base + "/generate", json={"deadline_ms": 5000, "n": 5})
        assert r.status_code == 503 and "queue is full" in r.json()["error"]["message"]
        assert httpx.get(base + "/healthz").status_code == 200
        assert engine.active_sequences == 0 and engine.queued_sequences == 0


def test_overload_leaves_nothing_behind(tiny_model_dir):
    """Thousands of requests against small limits, through the same generate flow the routes
    use: answered, rejected (in-flight limit, full queue, deadline), expired and cancelled
    ones all let go of their Request objects, rows, queue entries and in-flight slots."""
    settings = Settings(model_dirs=str(tiny_model_dir), max_inflight=12, max_queue=24, max_batch=16, workers=0)
    core = CoreThread(settings)
    with slow_engines(2):
        core.start()
    engine = core.core.engines["tiny"]
    state = FrontendState(settings, core.client())
    try:
        def live_requests() -> int:
            gc.collect()
            return sum(isinstance(o, Request) for o in gc.get_objects())

        async def burst(waves: int, per_wave: int) -> Counter:
            rng, outcomes, never = random.Random(waves), Counter(), asyncio.Event()

            async def one(i: int) -> None:
                body = GenerateRequest(deadline_ms=rng.choice([5, 30, 100, 400]), n=rng.randint(1, 6), seed=i)
                gone = i % 10 == 0  # every tenth client hangs up after a few ms

                async def receive():
                    if gone:
                        await asyncio.sleep(0.005)
                        return {"type": "http.disconnect"}
                    await never.wait()

                try:
                    result = await state.generate(body, time.monotonic(), f"r{i}", receive)
                    outcomes["answered" if result else "cancelled"] += 1
                except ApiError as e:
                    assert e.status == 503 and int(e.headers["Retry-After"]) >= 1
                    reason = next((r for r in ("overloaded", "queue is full", "by the time") if r in e.message),
                                  "deadline")
                    outcomes[reason] += 1

            tasks = []
            for w in range(waves):
                tasks += [asyncio.create_task(one(w * per_wave + i)) for i in range(per_wave)]
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            return outcomes

        async def settled() -> None:  # cancelled requests leave the engine at its next iteration
            end = time.monotonic() + 5
            while engine.active_sequences or engine.queued_sequences or not engine.inbox.empty():
                assert time.monotonic() < end, "the engine kept requests"
                await asyncio.sleep(0.01)

        async def twice() -> tuple[Counter, Counter, int]:
            await state.start()  # the client's socket lives on this one loop
            first = await burst(50, 40)
            await settled()
            gc.collect()  # count live objects, not garbage a later collection would free
            objects = len(gc.get_objects())
            second = await burst(50, 40)
            await settled()
            gc.collect()
            growth = len(gc.get_objects()) - objects
            await state.client.close()
            return first, second, growth

        before = live_requests()
        first, second, growth = asyncio.run(twice())
        for outcomes in (first, second):
            assert sum(outcomes.values()) == 2000, outcomes
        seen = first + second
        assert all(seen[k] > 0 for k in ("answered", "cancelled", "overloaded", "queue is full", "deadline")), seen
        end = time.monotonic() + 2  # the engine thread lets go of a finished request's last frame soon
        while live_requests() > before and time.monotonic() < end:
            time.sleep(0.05)
        assert live_requests() <= before, (first, second)
        assert growth < 500, (growth, first, second)  # a leak of one object per request would be 2000
        assert state.inflight == 0
        assert engine.active_sequences == 0 and engine.queued_sequences == 0
        sched = engine.scheduler
        assert not sched.rows and not sched.running and not sched.waiting and engine.inbox.empty()
    finally:
        core.stop()
