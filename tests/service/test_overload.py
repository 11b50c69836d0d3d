"""Beyond the in-flight limit and the queue, the server answers 503 with Retry-After at once."""
import threading
import time

import httpx

from tests.utils.server import running_server


def test_in_flight_limit_and_queue_limit_reject_fast(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), max_inflight=2, max_queue=4, max_batch=4,
                        test_step_delay_ms=30) as (base, state):
        results = []

        def slow():
            results.append(httpx.post(base + "/generate", json={"deadline_ms": 5000, "n": 1}, timeout=10))

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for t in threads:
            t.start()
        end = time.monotonic() + 5
        while state._inflight < 2 and time.monotonic() < end:
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
        engine = state.engines["tiny"]
        assert engine.active_sequences == 0 and engine.queued_sequences == 0
