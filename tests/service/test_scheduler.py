"""Scheduler policy with made-up timings and no model at all."""
import numpy as np
import pytest

from service.core.latency import LatencyModel
from service.core.request import FinishReason, Request, Sequence
from service.core.scheduler import Scheduler, SchedulerConfig, future_gain_rate

D = 64
STEP = {1: 0.001, 8: 0.002, 64: 0.008}  # seconds per step vs batch
DECODE = {1: 0.001, 64: 0.01}
QUALITY = np.concatenate([[0.0], 1 - (1 - np.arange(1, D + 1) / D) ** 3])  # concave curve


def scheduler(policy="anytime", **kw) -> Scheduler:
    cfg = SchedulerConfig(policy=policy, respond_margin_s=0.002, safety=1.0, **kw)
    return Scheduler(cfg, LatencyModel(STEP, DECODE), D, QUALITY)


def request(deadline_ms, now=100.0, n=1, min_tokens=1, max_tokens=D, tokens=0, planned=0) -> Request:
    r = Request(model="m", n=n, seed=0, label=None, deadline_s=deadline_ms / 1000, arrival=now,
                min_tokens=min_tokens, max_tokens=max_tokens, planned_tokens=planned, budget=planned)
    r.sequences = [Sequence(r, i, stream=(0, i), codes=[0] * tokens) for i in range(n)]
    return r


def test_budget_grows_with_deadline_and_caps_at_D():
    s = scheduler()
    ks = [s.admit(request(d), 100.0, running=0, waiting=0).planned_tokens for d in (10, 20, 40, 100, 1000)]
    assert ks == sorted(ks) and ks[0] >= 1 and ks[-1] == D
    # 20 ms at an idle server: (20 - decode 1 - margin 2) / 1 ms per step = 17 tokens
    assert s.admit(request(20), 100.0, 0, 0).planned_tokens == 17


def test_budget_shrinks_with_load():
    s = scheduler()
    idle = s.admit(request(100), 100.0, running=0, waiting=0).planned_tokens
    busy = s.admit(request(100), 100.0, running=63, waiting=0).planned_tokens
    assert busy < idle


def test_fast_rejection_when_min_tokens_cannot_fit():
    s = scheduler()
    adm = s.admit(request(5, min_tokens=10), 100.0, 0, 0)
    assert not adm.ok and adm.reason == "deadline" and adm.retry_after_s >= 1
    assert "min_tokens=10" in adm.message
    # not even one token: 3 ms cannot hold a step, a decode and the response margin
    assert not s.admit(request(3), 100.0, 0, 0).ok


def test_max_tokens_caps_the_budget():
    assert scheduler().admit(request(1000, max_tokens=10), 100.0, 0, 0).planned_tokens == 10


def test_queue_full_is_rejected():
    s = scheduler(max_queue=4)
    adm = s.admit(request(1000, n=5), 100.0, running=0, waiting=0)
    assert not adm.ok and adm.reason == "queue_full"


def test_policies():
    tight = request(20)
    assert scheduler("fixed").admit(tight, 100.0, 0, 0).planned_tokens == D  # ignores the deadline
    assert not scheduler("drop").admit(tight, 100.0, 0, 0).ok  # D tokens would miss: drop
    assert scheduler("drop").admit(request(1000), 100.0, 0, 0).planned_tokens == D
    static = scheduler("static")
    assert static.admit(request(20), 100.0, 0, 0).planned_tokens == static.admit(request(20), 100.0, 63, 0).planned_tokens


def test_deadline_guard_finishes_when_only_decode_time_is_left():
    s = scheduler()
    now = 100.0
    # 5 ms left: decode (1) + step (1) + margin (2) = 4 fits -> continue; 3.5 ms left -> stop
    ok = request(10, now=now - 0.005, tokens=3, planned=50)
    late = request(10, now=now - 0.0065, tokens=3, planned=50)
    plan = s.plan(now, [ok, late], [], running_rows=2)
    assert [(r, why) for r, why in plan.finish] == [(late, FinishReason.DEADLINE_GUARD)]


def test_budget_reached_finishes():
    s = scheduler()
    r = request(1000, tokens=12, planned=12)
    assert s.plan(100.0, [r], [], 1).finish == [(r, FinishReason.BUDGET)]


def test_quality_cap_under_pressure_only():
    s = scheduler()
    assert s.quality_cap() == D  # no pressure: every token is worth having
    s.pressure = 1.0
    cap = s.quality_cap()
    # stops where further tokens gain less than the curve's mean slope 1/D (the price at full pressure)
    gain = future_gain_rate(QUALITY)
    assert 1 <= cap < D and gain[cap] < 1 / D <= gain[cap - 1] and QUALITY[cap] > 0.75
    r = request(1000, tokens=cap, planned=D)
    assert s.plan(100.0, [r], [], 1).finish == [(r, FinishReason.QUALITY)]


def test_an_idle_server_forgets_past_load():
    s = scheduler()
    s.latency.observe_iteration(0.5, 64)  # one slow burst iteration
    assert s.latency.iteration_in_flight(1) == 0.5  # a request now may wait for such an iteration
    assert s.latency.iteration_in_flight(0) == 0.0  # but not on an idle engine
    s.latency._recent = type(s.latency._recent)([(t - 10, sec, rows) for t, sec, rows in s.latency._recent], maxlen=8)
    assert s.latency.iteration_in_flight(1) == s.latency.step(1)  # aged out
    s.pressure = 1.0
    value, at = s.admitter.state._pressure
    s.admitter.state._pressure = (value, at - 60)  # a minute without admissions
    assert s.pressure < 1e-6 and s.quality_cap() == D


def test_pressure_follows_admissions():
    s = scheduler()
    for _ in range(100):
        s.admit(request(10), 100.0, running=60, waiting=0)  # deadline-limited
    assert s.pressure > 0.9
    for _ in range(200):
        s.admit(request(5000), 100.0, running=0, waiting=0)
    assert s.pressure < 0.1


def test_waiting_requests_join_by_earliest_deadline_and_a_hopeless_one_is_answered_not_refused():
    s = scheduler(max_batch=2)
    late, soon, hopeless = request(500, planned=20), request(50, planned=20), request(1, planned=20)
    plan = s.plan(100.0, [], [late, soon, hopeless], running_rows=0)
    # admitted, it is never refused: it keeps its place by deadline (first), starts with what
    # fits (one token), counted, and turns urgent; the request due last waits for a row
    assert plan.start == [hopeless, soon] and plan.budgets[id(hopeless)] == 1 and plan.short_starts == 1
    assert hopeless.urgent and plan.budgets[id(soon)] == 20


def test_a_large_request_that_does_not_fit_holds_the_rows_left():
    s = scheduler(max_batch=4)
    big, small = request(60, n=4, planned=20), request(100, n=1, planned=20)  # none with time to spare
    running = [request(65, n=1, tokens=1, planned=10) for _ in range(2)]  # no time to stand aside
    # 2 rows run; the big one (due first) needs 4: the small one, due later, may not take them
    plan = s.plan(100.0, running, [big, small], running_rows=2)
    assert plan.start == [] and not plan.pause
    # a request due before it still starts in the rows left
    sooner = request(40, n=1, planned=20)
    plan = s.plan(100.0, running, [big, small, sooner], running_rows=2)
    assert plan.start == [sooner]
    plan = s.plan(100.0, [], [big, small], running_rows=0)  # the rows freed: it starts
    assert plan.start == [big]


def test_future_gain_rate_is_zero_on_a_flat_tail():
    q = np.array([0, 0.5, 0.9, 1.0, 1.0, 1.0])
    g = future_gain_rate(q)
    assert g[0] == pytest.approx(0.5) and g[3] == 0 and g[2] == pytest.approx(0.1)


def test_slow_responses_raise_the_respond_margin_until_they_age_out():
    s = scheduler()
    assert s.admit(request(20), 100.0, 0, 0).planned_tokens == 17  # margin: the configured 2 ms
    s.latency.observe_respond(0.006)  # the event loop took 6 ms to answer a finished request
    assert s.respond_margin() == pytest.approx(0.006)
    assert s.admit(request(20), 100.0, 0, 0).planned_tokens == 13  # (20 - 1 - 6) / 1 ms
    # the guard keeps the same margin: 7.5 ms left holds step 1 + decode 1 + 2 but not + 6
    r = request(10, now=100.0 - 0.0025, tokens=3, planned=50)
    assert s.plan(100.0, [r], [], 1).finish == [(r, FinishReason.DEADLINE_GUARD)]
    s.latency.respond.age(10)
    assert s.respond_margin() == pytest.approx(0.002)


def test_a_waiting_request_is_budgeted_after_this_iterations_decode():
    s = scheduler(max_batch=70)
    finishing = request(1000, tokens=20, planned=20, n=64)  # decoding 64 rows costs 10 ms
    waiting = request(40, planned=D)
    plan = s.plan(100.0, [finishing], [waiting], running_rows=64)
    assert plan.finish == [(finishing, FinishReason.BUDGET)] and plan.start == [waiting]
    # (40 ms - the decode before its first step 10 - its own decode 1 - margin 2) / 1 ms per step
    assert plan.budgets[id(waiting)] == 27 and waiting.planned_tokens == D  # admission's promise stays


def test_decode_waits_only_for_rows_with_earlier_deadlines():
    # a decode-heavy model (1 ms per decoded row, cheap steps), as the audio decoder is
    s = Scheduler(SchedulerConfig(respond_margin_s=0.002, safety=1.0),
                  LatencyModel({1: 0.0002, 64: 0.0005}, {1: 0.001, 64: 0.064}), D, QUALITY)
    s.latency.observe_iteration(0.07, 64)  # a recent decode of 64 rows: up to 64 rows may share one
    # the earliest deadline is decoded first: its own decode, not behind 64 other rows
    assert s.admit(request(20), 100.0, 0, 0, ahead=0).planned_tokens == D
    assert not s.admit(request(20), 100.0, 0, 0, ahead=63).ok
    assert not s.admit(request(20), 100.0, 0, 0).ok  # unknown: behind the busiest recent decode
    # the guard: 8 ms left is enough for the earliest deadline (step, own 1 ms decode, margin)...
    first = request(10, now=100.0 - 0.002, tokens=3, planned=50)
    behind = [request(10.5, now=100.0 - 0.002, tokens=3, planned=50, n=8) for _ in range(7)]
    plan = s.plan(100.0, [first] + behind, [], running_rows=57)
    assert (first, FinishReason.DEADLINE_GUARD) not in plan.finish
    # ...but not for the later ones, decoded behind it
    assert {r for r, _ in plan.finish} == set(behind)


def test_a_recent_overrun_is_kept_free_until_it_ages_out():
    s = scheduler()
    s.latency.jitter.observe(0.005)  # a step ended 5 ms later than predicted (preempted, say)
    assert s.admit(request(20), 100.0, 0, 0).planned_tokens == 12  # (20 - 1 - 2 - 5) / 1 ms
    r = request(10, now=100.0 - 0.0025, tokens=3, planned=50)  # 7.5 ms left: 1 + 1 + 2 + 5 > 7.5
    assert s.plan(100.0, [r], [], 1).finish == [(r, FinishReason.DEADLINE_GUARD)]
    s.latency.jitter.age(10)
    assert s.admit(request(20), 100.0, 0, 0).planned_tokens == 17


def test_recent_max_is_the_maximum_of_the_window():
    import random

    from service.core.latency import RecentMax

    m, seen = RecentMax(60.0), []
    for _ in range(500):
        seen.append(random.random())
        m.observe(seen[-1])
        assert m() == max(seen)
    m.age(61)
    assert m() == 0.0


def test_a_plan_says_how_long_it_holds():
    s = scheduler()
    r = request(100, tokens=10, planned=20)
    plan = s.plan(100.0, [r], [], running_rows=1)
    assert plan.finish == [] and plan.quiet_steps == 20 - 10 - 1  # the budget stop is due then
    # until the guard would stop it: deadline - (step 1 + decode 1 + margin 2 ms)
    assert plan.quiet_until == pytest.approx(100.1 - 0.004)
    assert s.plan(100.0, [r], [request(100, planned=20)], running_rows=1).quiet_steps > 0  # joins now
    s_full = scheduler(max_batch=1)
    assert s_full.plan(100.0, [r], [request(100, planned=20)], running_rows=1).quiet_steps == 0  # it waits
    streaming = request(100, tokens=10, planned=20)
    streaming.preview_every = 4
    assert s.plan(100.0, [streaming], [], running_rows=1).quiet_steps == 0


def test_the_engine_plans_only_when_something_can_change(tiny_model_dir):
    from tests.utils.engine import make_engine, run

    engine = make_engine(tiny_model_dir, "onnx")
    try:
        calls = []
        plan = engine.scheduler.plan
        engine.scheduler.plan = lambda *a, **k: calls.append(1) or plan(*a, **k)
        req = run(engine, seed=1, max_tokens=6)
        assert req.tokens == 6 and len(calls) < 6
    finally:
        engine.stop(timeout=5)


def test_a_waiting_request_is_budgeted_behind_the_rows_with_earlier_deadlines():
    s = scheduler(max_batch=256)
    # far deadlines (the guard's shortcut passes them in bulk) on both sides of the newcomer
    running = [request(5000 + 100 * i, n=1 + i % 3, tokens=5, planned=D) for i in range(60)]
    rows = sum(r.n for r in running)
    s.latency.observe_iteration(0.001, 64)  # decodes of up to 64 rows happened recently
    new = request(5000 + 100 * 30 + 50, planned=D)
    plan = s.plan(100.0, running, [new], running_rows=rows)
    assert plan.start == [new] and not plan.finish
    ahead = sum(r.n for r in running if r.deadline < new.deadline)
    assert plan.budgets[id(new)] == min(D, s.deadline_tokens(new, 100.0, rows + 1, 0.0, ahead))
    # and the guard still stops a request near its deadline among many far ones
    near = request(10, now=100.0 - 0.0065, tokens=3, planned=50)
    plan = s.plan(100.0, running + [near], [], running_rows=rows + 1)
    assert plan.finish == [(near, FinishReason.DEADLINE_GUARD)]


def test_the_scheduler_owns_the_lifecycle():
    """add -> schedule (rows assigned) -> tokens -> finish, with rows compacted by moves."""
    s = scheduler(max_batch=8)
    a, b, c = (request(1000, n=n, planned=3) for n in (2, 1, 2))
    for r in (a, b, c):
        s.add(r)
    out = s.schedule(100.0)
    assert out.moves == [] and [x.slot for r in (a, b, c) for x in r.sequences] == [0, 1, 2, 3, 4]
    assert all(r.status.value == "running" for r in (a, b, c)) and not s.waiting
    s.cancel(a)
    out = s.schedule(100.0)  # a's rows 0-1 are filled by the last rows (4 into 1, then 3 into 0)
    assert out.answered == [a] and a.finish_reason is FinishReason.CANCELLED
    assert out.moves == [(4, 1), (3, 0)] and [q.slot for q in s.rows] == [0, 1, 2]
    assert s.rows[0] is c.sequences[0] and s.rows[1] is c.sequences[1] and s.rows[2] is b.sequences[0]
    for _ in range(3):
        s.update_from_output([7] * len(s.rows), 0.001)
    out = s.schedule(100.0)  # budgets of 3 reached: both leave their rows, decoded next
    assert {r for r, _ in out.finish} == {b, c} and s.rows == [] and not s.running
    assert out.moves == []  # rows leaving together leave highest first: none is copied to leave later
    s.decoded(b, np.zeros((1, 4)), 0.002, FinishReason.BUDGET)
    assert b.status.value == "finished" and b.tokens == 3 and b.compute_s == pytest.approx(0.005)


def test_a_stalled_step_is_forgotten_when_no_steps_follow():
    """One step 200x slower than profiled (the process was stopped) must not leave the engine
    refusing every short request for good: without steps to relearn from, it fades."""
    s = scheduler()
    s.latency.step.observe(1, 0.2)
    assert s.latency.step.last_factor == 200 and not s.admit(request(20), 100.0, 0, 0).ok
    s.latency.step._observed_at -= 20  # ten half-lives later, nothing stepped
    assert s.latency.step.paced(1) < 0.0012 and s.admit(request(20), 100.0, 0, 0).ok
