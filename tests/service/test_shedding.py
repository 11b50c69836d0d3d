"""A worker whose event loop runs behind (late probe after late probe, or stuck now) refuses new generation requests whose deadline the lag
would eat into, unparsed (503 overloaded, Retry-After); lets through those with time to spare
and everything else; recovers as soon as the loop does; and counts what it shed in the engine
core's metrics."""
import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.frontend.middleware import ArrivalAndLimits
from service.frontend.shedding import LoadShedding, LoopLag
from service.frontend.state import FrontendState
from service.inproc import CoreThread
from service.settings import Settings


async def _inner(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"served"})


class FixedLag:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def behind(self, now: float) -> float:
        return self.seconds


def test_a_loop_behind_sheds_generation_requests_whose_deadline_it_would_eat_into():
    shed = []
    lag = FixedLag(0.1)

    async def go():
        # as in the app: ArrivalAndLimits reads the body the shedding looks at
        app = ArrivalAndLimits(LoadShedding(_inner, lag, max_lag_s=0.04, on_shed=lambda: shed.append(1)), 65536)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            refused = await c.post("/generate", json={"deadline_ms": 100})
            oip = await c.post("/v2/models/m/infer", json={"parameters": {"deadline_ms": 200}})
            unknown = await c.post("/generate", json={"n": 1})  # no deadline to weigh: shed
            patient = await c.post("/generate", json={"deadline_ms": 60000, "n": 1})  # seconds to spare
            # everything but generation goes through: health, readiness, metrics, other routes
            health = await c.get("/healthz")
            other = await c.post("/v2/models/m/ready")
            lag.seconds = 0.03  # caught up (below max_lag_s)
            recovered = await c.post("/generate", json={"deadline_ms": 100})
        return refused, oip, unknown, patient, health, other, recovered

    refused, oip, unknown, patient, health, other, recovered = asyncio.run(go())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    message = refused.json()["error"]["message"]
    assert message.startswith("overloaded: this worker is 100 ms behind")
    assert oip.status_code == 503 and oip.json()["error"].startswith("overloaded")  # the OIP error shape
    assert unknown.status_code == 503
    assert health.text == other.text == patient.text == recovered.text == "served"
    assert len(shed) == 3


def test_loop_lag_sees_a_stuck_loop_and_a_backlog_but_not_a_single_hiccup():
    async def go():
        lag = LoopLag()
        lag.start()
        await asyncio.sleep(0.02)
        idle = lag.behind(time.monotonic())
        time.sleep(0.1)  # the loop is stuck: its probe is overdue
        stuck = lag.behind(time.monotonic())
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the probe has now run, 0.1 s late, once
        hiccup = (lag.last_s, lag.behind(time.monotonic()))
        time.sleep(0.1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # late twice in a row: a backlog
        backlog = lag.behind(time.monotonic())
        recovered_after = None
        t = time.monotonic()
        while time.monotonic() - t < 2:
            await asyncio.sleep(0.01)
            if lag.behind(time.monotonic()) < 0.04:
                recovered_after = time.monotonic() - t
                break
        lag.stop()
        return idle, stuck, hiccup, backlog, recovered_after

    idle, stuck, (last, after_hiccup), backlog, recovered_after = asyncio.run(go())
    assert idle < 0.05
    assert stuck >= 0.1 - 0.006  # due within PROBE_S of the sleep
    assert last >= 0.094 and after_hiccup < 0.05
    assert backlog >= 0.094
    assert recovered_after is not None and recovered_after < 1.0


def test_shedding_off_serves_however_far_behind():
    async def go():
        lag = LoopLag()
        lag.start()
        app = LoadShedding(_inner, lag, max_lag_s=0, on_shed=lambda: None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            time.sleep(0.05)
            r = await c.post("/generate", json={})
        lag.stop()
        return r

    assert asyncio.run(go()).text == "served"


def test_shed_requests_count_as_overloaded_refusals_of_the_default_model(tiny_model_dir):
    settings = Settings(model_dirs=str(tiny_model_dir))

    async def shed_twice() -> bytes:
        state = FrontendState(settings, core.client())
        await state.start()
        state.shed()
        state.shed()
        text = await state.client.metrics()  # the reports leave first, on the same socket
        await state.client.close()
        return text

    with CoreThread(settings) as core:
        values = {(s.name, s.labels.get("reason")): s.value
                  for f in text_string_to_metric_families(asyncio.run(shed_twice()).decode()) for s in f.samples
                  if s.labels.get("model") == "tiny"}
    assert values[("anytime_rejections_total", "overloaded")] == 2
    assert values[("anytime_load_refusals_total", "overloaded")] == 2  # the autoscaling signal sees it
