"""The default (anytime) policy's stepping: requests with slack stand aside for tighter ones
only when those need the time, keep their KV cache while paused, still make their target,
and give the same samples as when run alone."""
import threading
import time

import numpy as np
import pytest

from service.core.latency import LatencyModel
from service.core.request import FinishReason, Request, Sequence, Status
from service.core.scheduler import Scheduler, SchedulerConfig
from tests.utils.engine import make_engine, run, submit
from tests.utils.faults import set_step_hook

D = 64
STEP = {1: 0.001, 8: 0.002, 64: 0.008}  # seconds per step vs batch
DECODE = {1: 0.001, 64: 0.01}
QUALITY = np.concatenate([[0.0], 1 - (1 - np.arange(1, D + 1) / D) ** 3])


def scheduler(**kw) -> Scheduler:
    cfg = SchedulerConfig(respond_margin_s=0.002, safety=1.0, **kw)
    return Scheduler(cfg, LatencyModel(STEP, DECODE), D, QUALITY)


def request(deadline_ms, now, n=1, planned=D, preview_every=0) -> Request:
    r = Request(model="m", n=n, seed=0, label=None, deadline_s=deadline_ms / 1000, arrival=now,
                min_tokens=1, max_tokens=D, planned_tokens=planned, budget=planned, preview_every=preview_every)
    r.sequences = [Sequence(r, i, stream=(0, i)) for i in range(n)]
    return r


def step(s: Scheduler, now: float):
    """One iteration as the engine runs it: schedule, then a token for every active row."""
    out = s.schedule(now)
    for r, reason in out.finish:
        s.decoded(r, None, 0.0, reason)
    s.update_from_output([0] * len(s.rows), 0.001)
    return out


def test_a_bulk_request_pauses_for_a_tight_one_and_resumes_with_its_rows_kept():
    s = scheduler(max_batch=8)
    now = 100.0
    bulk = request(10_000, now, n=8)
    s.add(bulk)
    for _ in range(3):
        step(s, now)
        now += 0.008
    assert bulk.status is Status.RUNNING and bulk.tokens == 3
    tight = request(40, now, n=1, planned=20)
    s.add(tight)
    out = step(s, now)
    assert bulk.status is Status.PAUSED and tight.status is Status.RUNNING
    assert s.table.paused == 8 and [q.request for q in s.rows] == [tight]
    parked = {q.slot for q in bulk.sequences}
    assert min(parked) >= 1 and len(parked) == 8 and out.moves  # its cache rows were copied, not dropped
    while tight.status is not Status.FINISHED:
        now += 0.001
        step(s, now)
    # it stood aside the whole time, and steps again in the iteration its row came free
    assert tight.tokens == 20 and bulk.tokens == 4
    assert bulk.status is Status.RUNNING and s.table.paused == 0


def test_a_request_with_slack_joins_when_the_batch_stays_affordable():
    s = scheduler(max_batch=64)
    now = 100.0
    tight = request(100, now, n=1, planned=50)  # 50 steps in ~97 ms: needs steps under ~1.9 ms
    bulk = request(10_000, now, n=48)  # step(49 rows) costs ~6.5 ms: it would break the tight plan
    small = request(10_000, now, n=2)  # step(3 rows) ~1.3 ms: affordable
    for r in (tight, bulk, small):
        s.add(r)
    step(s, now)
    assert {r.status for r in (tight, small)} == {Status.RUNNING} and bulk.status is Status.WAITING


def test_a_request_whose_laxity_runs_out_steps_whatever_else_waits():
    s = scheduler(max_batch=64)
    now = 100.0
    tight = request(100, now, n=1, planned=50)
    # 64 tokens at a full-batch step (8 ms) need 512 ms: with 520 ms left it is urgent
    bulk = request(520, now, n=48)
    spare = request(10_000, now, n=8)  # seconds to spare: laxity is weighed (not the no-slack fast path)
    for r in (tight, bulk, spare):
        s.add(r)
    step(s, now)
    assert bulk.urgent and bulk.status is Status.RUNNING and tight.status is Status.RUNNING


def test_admission_plans_against_the_rows_that_will_share_the_steps():
    s = scheduler(max_batch=128)
    now = 100.0
    for _ in range(2):  # 128 rows of bulk work with seconds to spare
        s.add(request(20_000, now, n=64))
    step(s, now)
    assert len(s.rows) == 128
    tight = request(150, now, n=1)
    tight.min_tokens = 40  # more than fit if every bulk row stepped beside it
    sharing = s.load.rows_sharing(tight.deadline)
    assert sharing == 0  # none of the bulk rows is urgent before 150 ms from now
    adm = s.admit(tight, now, running=128, waiting=0, ahead=0, sharing=sharing)
    assert adm.ok and adm.planned_tokens == D
    # were every row to step beside it (sharing unknown), it would be refused
    again = request(150, now, n=1)
    again.min_tokens = 40
    assert not s.admit(again, now, running=128, waiting=0, ahead=0).ok
    # a request that fits beside everything is planned so: nobody needs to stand aside for it
    easy = s.admit(request(150, now, n=1), now, running=128, waiting=0, ahead=0, sharing=sharing)
    assert 1 <= easy.planned_tokens < D / 2


def test_admission_refuses_what_promised_work_would_force_out():
    s = scheduler(max_batch=64)  # a full step: 8 ms for 64 rows, 0.125 ms per row-step
    now = 100.0
    for _ in range(6):  # 6 x 16 rows x 64 tokens = 6144 row-steps due in 1 s (8000 fit)
        s.add(request(1000, now, n=16))
    step(s, now)
    spare = s.load.promised_steps(64, now + 0.5, now)
    assert 25 < spare < 31  # fits before 0.5 s, but only ~1856 row-steps are free before 1 s
    early = request(500, now, n=64)
    early.min_tokens = 40
    adm = s.admit(early, now, running=64, waiting=32, ahead=0, sharing=64)
    assert not adm.ok and adm.reason == "deadline"
    later = s.admit(request(2000, now, n=64), now, running=64, waiting=32, ahead=0, sharing=64)
    assert later.ok and later.planned_tokens >= 40  # after the promised work there is room


def test_under_pressure_a_short_deadline_request_stops_at_the_knee():
    s = scheduler(max_batch=8, park_rows=4)
    s.pressure = 1.0
    knee = s.quality_cap()
    now = 100.0
    bulk = request(400, now, n=4)  # 400 ms hold fewer than 4 full-length generations (64 x 2 ms each)
    s.add(bulk)
    reasons = []
    for i in range(knee + 2):
        if i == 1:
            assert s.policy.stepping.target(bulk) == knee  # what admission counts it for
        reasons += [why for _, why in step(s, now).finish]
        now += 0.002
    assert reasons == [FinishReason.QUALITY] and bulk.tokens == knee


def test_past_the_knee_a_long_request_takes_only_spare_steps_and_ends_when_slots_run_short():
    s = scheduler(max_batch=8, park_rows=4)
    s.pressure = 1.0
    knee = s.quality_cap()
    now = 100.0
    bulk = request(10_000, now, n=4)  # seconds to spare: every token the deadline allows is planned
    s.add(bulk)
    for _ in range(knee + 2):
        step(s, now)
        now += 0.002
    assert bulk.status is Status.RUNNING and bulk.tokens == knee + 2  # nobody needs the steps: it goes on
    assert s.policy.stepping.urgent_at(bulk, s.budget.full_step(), s.margin()) == float("inf")
    tight = request(50, now, n=8, planned=10)
    s.add(tight)
    step(s, now)
    assert bulk.status is Status.PAUSED and s.table.free_slots() == 0  # it stood aside; no slot is left
    out = step(s, now)  # slots are short: the paused one ends at its knee
    assert (bulk, FinishReason.QUALITY) in out.finish


def test_a_request_larger_than_the_batch_is_refused_as_invalid():
    adm = scheduler(max_batch=16).admit(request(5000, 100.0, n=40), 100.0, 0, 0, 0, sharing=0)
    assert not adm.ok and adm.reason == "too_large" and "max_batch=16" in adm.message


def test_priority_changes_the_price_of_steps_under_pressure():
    s = scheduler()
    s.pressure = 1.0
    assert s.quality_cap("high") > s.quality_cap("normal") > s.quality_cap("low")


def test_a_large_request_is_refused_for_fair_share_only_under_pressure():
    s = scheduler(max_batch=64, fair_share=0.5)
    now = 100.0
    assert s.admit(request(5000, now, n=40), now, 0, 0, 0, sharing=0).ok
    s.pressure = 0.9
    adm = s.admit(request(5000, now, n=40), now, 0, 0, 0, sharing=0)
    assert not adm.ok and adm.reason == "fair_share" and "n=40" in adm.message
    assert s.admit(request(5000, now, n=32), now, 0, 0, 0, sharing=0).ok


def test_previews_keep_their_interval_and_their_share():
    s = scheduler(max_batch=8, preview_interval_s=0.01, preview_share=0.25)
    now = 100.0
    streams = [request(10_000, now, n=4, preview_every=1) for _ in range(2)]
    for r in streams:
        s.add(r)
    decoded = []
    for _ in range(40):
        out = step(s, now)
        for r in out.previews:
            s.decoded(r, None, 0.0, None)
            decoded.append((now, r))
        now += 0.002
    assert decoded  # best effort, but not never
    for r in streams:
        times = [t for t, q in decoded if q is r]
        assert all(b - a >= 0.01 - 1e-9 for a, b in zip(times, times[1:]))
    # decode(4 rows) costs ~1.3 ms of the 80 ms elapsed: the share allows at most ~20 ms
    assert len(decoded) * s.latency.decode(4) <= 0.25 * 0.08 + s.latency.decode(4)
    assert s.previews_skipped > 0


# ---- on the real engine ----------------------------------------------------------------------
@pytest.fixture(params=["onnx", "onnx-device-cache", "torchscript"])
def small_engine(request, tiny_model_dir):
    backend, _, device_cache = request.param.partition("-")
    engine = make_engine(tiny_model_dir, backend, max_batch=2, ort_io_binding="on" if device_cache else "off")
    yield engine
    engine.stop()


def test_pausing_does_not_change_a_sample(small_engine):
    engine = small_engine
    alone = run(engine, seed=11, n=2, deadline_ms=20_000)
    paused_seen = []
    set_step_hook(engine, lambda B: (time.sleep(0.005), paused_seen.append(engine.paused_sequences)))
    try:
        bulk, bulk_done = submit(engine, seed=11, n=2, deadline_ms=20_000)
        while bulk.tokens < 2:
            time.sleep(0.001)
        tight = run(engine, seed=5, n=1, deadline_ms=2_000)  # both rows are taken: the bulk one pauses
        assert bulk_done.wait(30)
    finally:
        set_step_hook(engine, None)
    assert max(paused_seen) == 2 and tight.finish_reason is FinishReason.BUDGET
    assert bulk.finish_reason is FinishReason.BUDGET and bulk.tokens == alone.tokens == engine.spec.D
    assert [s.codes for s in bulk.sequences] == [s.codes for s in alone.sequences]
    np.testing.assert_array_equal(bulk.samples, alone.samples)


def test_low_priority_leaves_rows_that_high_and_normal_can_take():
    s = scheduler(max_batch=128)
    now = 100.0

    def ask(priority, deadline_ms, n=1, min_tokens=1):
        r = request(deadline_ms, now, n=n)
        r.priority, r.min_tokens = priority, min_tokens
        return s.admit(r, now, running=100, waiting=0, ahead=0, sharing=100)

    low = ask("low", 1000, n=4, min_tokens=48)  # 104 rows would pass low's 75% of the batch
    assert not low.ok and low.reason == "deadline"
    assert ask("normal", 1000, n=4, min_tokens=48).ok
    assert ask("high", 150).ok


def test_among_requests_with_laxity_high_priority_steps_first():
    s = scheduler(max_batch=8)
    now = 100.0
    normal, high = request(10_000, now, n=8), request(20_000, now, n=8)
    high.priority = "high"
    for r in (normal, high):
        s.add(r)
    step(s, now)
    assert high.status is Status.RUNNING and normal.status is Status.WAITING


def test_without_seconds_to_spare_running_rows_go_on_and_only_priority_takes_a_row():
    s = scheduler(max_batch=8, park_rows=8)
    now = 100.0
    running = [request(400, now, n=4, planned=20) for _ in range(2)]  # none has seconds to spare
    for r in running:
        s.add(r)
    step(s, now)
    assert not s.load.stands_aside and s.load.rows_stepping_beside(now + 0.1, "normal") is None
    sooner = request(100, now, n=4, planned=10)  # an earlier deadline does not pause anyone
    s.add(sooner)
    step(s, now)
    assert all(r.status is Status.RUNNING for r in running) and sooner.status is Status.WAITING
    assert s.table.paused == 0
    for r in running:
        r.priority = "low"
    step(s, now)
    # low rows stand aside for a higher priority: admission counts only the rows at or above it
    assert s.load.rows_stepping_beside(now + 0.1, "normal") == 4
    high = request(100, now, n=4, planned=10)
    high.priority = "high"
    s.add(high)
    step(s, now)
    # both higher priorities (high, and the waiting normal one) take the low rows, which pause
    assert high.status is Status.RUNNING and sooner.status is Status.RUNNING
    assert all(r.status is Status.PAUSED for r in running)
