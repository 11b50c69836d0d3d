"""`anytime plan`: the simulation drives the real scheduler classes on a simulated clock, behaves
as a replica does at the extremes of load, is reproducible, and the command says what is wrong
with bad input. A made-up calibration (a replica whose step costs 1 ms at batch 1) keeps it fast."""
from __future__ import annotations

import json

import numpy as np
import pytest

from service.capacity import cli
from service.capacity.calibration import Calibration
from service.capacity.fleet import Traffic, plan, simulate
from service.capacity.replica import SHED, SimulatedReplica
from service.capacity.traffic import arrivals
from service.core import admitter, lifecycle, planner
from service.core.scheduler import SchedulerConfig
from service.frontend.shedding import LAG_SHARE

D = 16


def calibration(contention_s: float = 0.0, frontend_s: float = 0.0) -> Calibration:
    """frontend_s 0 by default: the engine alone, unless a test is about the frontend."""
    quality = np.minimum(1.0, np.arange(D + 1) / 12).tolist()
    step = {1: 0.001, 8: 0.0015, 32: 0.003, 128: 0.009}
    decode = {1: 0.0002, 8: 0.0008, 32: 0.003, 64: 0.006}
    return Calibration("tiny", D, quality, step, decode, admit_s=0.001, respond_s=0.001, contention_s=contention_s,
                       frontend_s=frontend_s, source="made up for tests")


def test_the_simulation_runs_the_real_scheduler_on_its_clock(monkeypatch):
    calls = {"admit": 0, "plan": 0, "apply": 0}
    for module, cls, name, key in ((admitter, "Admitter", "admit", "admit"), (planner, "Planner", "plan", "plan"),
                                   (lifecycle, "Lifecycle", "apply", "apply")):
        real = getattr(getattr(module, cls), name)

        def counted(self, *a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(getattr(module, cls), name, counted)
    sim = SimulatedReplica(calibration())
    outcomes = sim.run(arrivals(100, 2.0, "fixed:200", "1", seed=1))
    assert calls["admit"] == len(outcomes) > 100
    assert calls["plan"] == calls["apply"] == sim.plans > 0
    # every time the scheduler read was simulated: its clock is the simulation's, far from monotonic's
    assert sim.scheduler.admitter.clock == sim.clock and sim.scheduler.lifecycle.clock == sim.clock
    assert 2.0 <= sim.now < 3.0


def test_at_very_low_load_every_request_gets_every_token_on_time():
    p = simulate(calibration(), Traffic(2.0, "loguniform:200:1000", "1"), replicas=1, duration=30)
    assert p.requests > 30
    assert p.on_time == 1.0 and p.refused == 0.0
    assert p.mean_tokens == pytest.approx(D, abs=0.01)


def test_more_load_needs_more_replicas():
    cal = calibration(contention_s=0.0005)
    light = plan(cal, Traffic(300, "loguniform:30:300", "1"), 0.8, duration=4)
    heavy = plan(cal, Traffic(3000, "loguniform:30:300", "1"), 0.8, duration=4)
    assert light.needed is not None and heavy.needed is not None
    assert heavy.needed > light.needed
    by = {q.replicas: q for q in heavy.points}
    assert by[heavy.needed].delivered_quality >= 0.8
    if heavy.needed - 1 in by:
        assert by[heavy.needed - 1].delivered_quality < 0.8
    # fewer replicas than needed: load takes quality away (fewer tokens, refusals or both)
    fewest = min(by)
    assert by[fewest].delivered_quality < by[heavy.needed].delivered_quality


def test_an_unreachable_floor_is_reported_as_such():
    # 20 ms deadlines leave a 1 ms-per-step replica far fewer than D tokens even when idle
    p = plan(calibration(), Traffic(50, "fixed:12", "1"), 0.99, duration=4)
    assert p.needed is None and p.ceiling.delivered_quality < 0.99


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    traffic = Traffic(800, "loguniform:50:500", "1:0.7,4:0.3")
    a = simulate(calibration(), traffic, 1, duration=3, seed=5)
    b = simulate(calibration(), traffic, 1, duration=3, seed=5)
    c = simulate(calibration(), traffic, 1, duration=3, seed=6)
    assert a == b
    assert a != c


def test_calibration_round_trips_through_json(tmp_path):
    cal = calibration(0.001)
    cal.save(tmp_path / "cal.json")
    back = Calibration.load(tmp_path / "cal.json")
    assert back == cal
    (tmp_path / "bad.json").write_text(json.dumps({"model": "x"}))
    with pytest.raises(ValueError, match="not a calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_anytime_plan_writes_its_report(tmp_path, capsys):
    calibration().save(tmp_path / "cal.json")
    out = tmp_path / "plan"
    rc = cli.main(["plan", "--rate", "400", "--deadlines", "loguniform:50:500", "--quality-floor", "0.8",
                   "--calibration", str(tmp_path / "cal.json"), "--duration", "3", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "plan.json").read_text())
    needed = doc["replicas_needed"]
    assert needed >= 1 and doc["traffic"]["rate"] == 400
    assert any(p["replicas"] == needed and p["delivered_quality"] >= 0.8 for p in doc["points"])
    md = (out / "plan.md").read_text()
    assert f"**{needed} replica" in md and "| replicas |" in md
    assert (out / "plan.png").stat().st_size > 10_000
    assert md in capsys.readouterr().out


def test_more_frontend_workers_lift_a_frontend_bound_plan(tmp_path):
    # a replica whose one worker's loop parses only 500 requests/s, far below its engine's
    cal = calibration(frontend_s=0.002)
    cal.save(tmp_path / "cal.json")
    needed = {}
    for workers in ("1", "4"):
        out = tmp_path / workers
        assert cli.main(["--rate", "2000", "--deadlines", "loguniform:50:500", "--n-mix", "1", "--quality-floor",
                         "0.8", "--calibration", str(tmp_path / "cal.json"), "--frontend-workers", workers,
                         "--duration", "2", "--out", str(out)]) == 0
        needed[workers] = json.loads((out / "plan.json").read_text())["replicas_needed"]
        assert f"on {workers} worker" in (out / "plan.md").read_text()
    # 2000 requests/s need 4 single-worker loops at least; with 4 workers each, the engines decide
    assert needed["1"] >= 4 and needed["4"] < needed["1"]


@pytest.mark.parametrize("args, message", [
    (["--rate", "-5"], "--rate"),
    (["--rate", "10", "--deadlines", "lognormal:1:2"], "unknown deadline distribution"),
    (["--rate", "10", "--deadlines", "loguniform:0:100"], "1-60000"),
    (["--rate", "10", "--n-mix", "1:x"], "malformed n mix"),
    (["--rate", "10", "--n-mix", "65"], "n must be 1-64"),
    (["--rate", "10", "--quality-floor", "1.5"], "--quality-floor"),
    (["--rate", "10", "--replicas", "0"], "--replicas"),
    (["--rate", "10", "--frontend-workers", "0"], "--frontend-workers"),
])
def test_anytime_plan_refuses_bad_input_with_a_message(args, message, capsys, tmp_path):
    calibration().save(tmp_path / "cal.json")
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--calibration", str(tmp_path / "cal.json"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_anytime_plan_names_a_missing_calibration_or_server(tmp_path, capsys):
    assert cli.main(["--rate", "10", "--calibration", str(tmp_path / "none.json")]) == 2
    assert "not a calibration" in capsys.readouterr().err
    assert cli.main(["--rate", "10", "--server", "http://127.0.0.1:9"]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_one_token_answers_cost_no_decode_and_the_runtime_calls_are_counted():
    # a decoder so slow that most answers can afford only one token: the engine's first-token
    # table answers those rows, so the simulated decoder is never called for them
    cal = calibration()
    cal.decode_s = {1: 0.05, 64: 3.2}
    sim = SimulatedReplica(cal)
    outcomes = sim.run(arrivals(300, 1.0, "fixed:1000", "1", seed=3))
    answered = [o for o in outcomes if not o.refused]
    one_token = [o for o in answered if o.tokens == 1]
    assert len(one_token) > len(answered) / 2 and len(one_token) < len(answered)
    assert sim.decode_rows == sum(o.arrival.n for o in answered if o.tokens > 1)
    stats = sim.runtime_stats()
    assert stats["steps"] > 0 and stats["mean_batch"] >= 1 and stats["mean_step_ms"] > 0
    assert stats["decodes"] >= len(answered) / 10  # every decode call, table-only ones included, as /metrics counts


def test_a_server_calibration_takes_its_decode_from_the_start_up_profile():
    api, profile = calibration(), calibration()
    profile.decode_s, profile.copy_row_s, profile.source = {1: 0.0001, 64: 0.005}, 3e-6, "a profile"
    mixed = api.with_profile_decode(profile)
    assert mixed.decode_s == {1: 0.0001, 64: 0.005} and mixed.copy_row_s == 3e-6
    assert mixed.step_s == calibration().step_s and mixed.admit_s == calibration().admit_s
    assert "a profile" in mixed.source
    other = calibration()
    other.D = D + 1
    with pytest.raises(ValueError, match="D="):
        calibration().with_profile_decode(other)


def test_contention_slows_the_engine_steps_and_not_the_decodes():
    # a measured replica's decode over its start-up profile stays flat from 0.5x to 2x load while
    # its step's grows (bench/results/plan): the simulation slows only the steps
    sim = SimulatedReplica(calibration(contention_s=0.002))
    steps, decodes = [], []
    update, observe = sim.scheduler.update_from_output, sim.latency.decode.observe
    sim.scheduler.update_from_output = lambda tokens, s: (steps.append((len(tokens), s)), update(tokens, s))
    sim.latency.decode.observe = lambda rows, dt: (decodes.append((rows, dt)), observe(rows, dt))
    sim.run(arrivals(400, 2.0, "fixed:100", "1", seed=2))
    # after the first second, about 400 requests in the last second: steps cost about 1.8x
    late = [cost / sim.truth.step.profiled(b) for b, cost in steps[len(steps) // 2:]]
    assert 1.6 < sum(late) / len(late) < 2.0
    assert decodes and all(dt == pytest.approx(sim.truth.decode.profiled(rows)) for rows, dt in decodes)


def test_the_engines_work_per_live_request_makes_iterations_fewer_and_fuller():
    # the engine's own Python per live request and planned iteration (Calibration.plan_request_s),
    # which one request at a time through the API cannot show: the engine learns it as step cost
    quiet, busy = calibration(), calibration()
    busy.plan_request_s = 20e-6
    stats = []
    for cal in (quiet, busy):
        sim = SimulatedReplica(cal, jitter=0.0)
        out = sim.run(arrivals(500, 2.0, "loguniform:30:300", "1", seed=3))
        stats.append((sim.runtime_stats(), np.mean([o.tokens for o in out if not o.refused])))
    (q, q_tokens), (b, b_tokens) = stats
    assert b["steps"] < 0.9 * q["steps"] and b["mean_batch"] > 1.1 * q["mean_batch"]
    assert b["mean_step_ms"] == pytest.approx(q["mean_step_ms"], rel=0.25)  # the runtime's own step is not slower
    assert b_tokens < q_tokens  # admission plans with the dearer iterations the engine learned


def test_the_calibrated_jitter_sets_the_overrun_margin_admission_keeps():
    cal = calibration()
    quiet = SimulatedReplica(cal)
    quiet.run(arrivals(400, 3.0, "fixed:100", "1", seed=2))
    cal.jitter = 0.3
    loaded = SimulatedReplica(cal)  # jitter=None: the calibration's
    loaded.run(arrivals(400, 3.0, "fixed:100", "1", seed=2))
    q, s = quiet.runtime_stats(), loaded.runtime_stats()
    assert q["margin_jitter_ms"] < 0.5 < s["margin_jitter_ms"]  # overruns of the predicted costs
    # no frontend queue: every response takes the idle replica's 1 ms
    assert q["margin_respond_ms"] == pytest.approx(1.0) and s["margin_respond_ms"] == pytest.approx(1.0)
    assert SimulatedReplica(cal, jitter=0.0).jitter == 0.0  # an explicit one wins


def frontend_run(rate: float, workers: int = 1, deadlines: str = "fixed:1000") -> tuple[dict, list]:
    cal = calibration(frontend_s=0.002)  # one worker's loop parses and answers 500 requests/s
    cal.frontend_workers = workers
    sim = SimulatedReplica(cal)
    out = sim.run(arrivals(rate, 3.0, deadlines, "1", seed=3))
    return sim.runtime_stats(), out


def test_the_frontend_is_a_queue_whose_delay_grows_faster_than_the_rate():
    margins = [frontend_run(rate)[0]["margin_respond_ms"] for rate in (100, 250, 450)]
    waits = [m - 1.0 for m in margins]  # beyond the idle replica's 1 ms
    assert 0 < waits[0] < waits[1] < waits[2]
    assert waits[2] / waits[1] > 2 * 450 / 250  # a queue near saturation, not a linear growth
    # a second worker halves each loop's share: near one worker's saturation it hardly waits
    assert frontend_run(450, workers=2)[0]["margin_respond_ms"] < margins[2] / 4


def test_a_saturated_frontend_sheds_by_the_servers_rule_and_keeps_its_answers_on_time():
    for rate in (100, 250, 400):  # below one worker's 500 requests/s: nothing shed
        assert not any(o.refused for o in frontend_run(rate)[1])
    stats, out = frontend_run(700)
    shed = [o for o in out if o.refused == SHED]
    answered = [o for o in out if not o.refused]
    assert len(shed) + len(answered) == len(out)  # the engine refused nothing: the door did
    # a shed request costs half an answered one: 500 = answered + shed / 2 of 700 requests/s
    assert 0.45 < len(shed) / len(out) < 0.65
    assert all(o.on_time for o in answered)
    # the rule lets the loop fall behind by up to LAG_SHARE of a 1 s deadline before it sheds;
    # an answer may wait that and the answers of a batch that finished together (1 ms each)
    assert 50 < stats["margin_respond_ms"] < 1000 * LAG_SHARE + SchedulerConfig().max_batch * 1.0
    # tighter deadlines are shed sooner (10% of 100 ms: past the 10 ms floor)
    tight = frontend_run(700, deadlines="fixed:100")[0]["margin_respond_ms"]
    assert tight < 0.4 * stats["margin_respond_ms"]
    assert not any(o.refused for o in frontend_run(700, workers=2)[1])


def test_the_loaded_run_fit_recovers_a_known_replica():
    # a "measured" run made by the simulation itself with known parameters: the fit on that run
    # alone finds them again (bench/plan_validation.py, fit_loaded_run)
    from bench.plan_validation import fit_loaded_run, simulated_point

    truth = calibration(contention_s=0.001, frontend_s=1e-3)
    truth.jitter, truth.plan_request_s = 0.3, 10e-6
    measured = simulated_point(truth, 500, 3.0, "loguniform:30:300", "1", 5, None)
    fitted = calibration()
    fit_loaded_run(fitted, measured, 500, 3.0, "loguniform:30:300", "1", 5)
    assert fitted.frontend_s == pytest.approx(1e-3, rel=0.15)
    assert fitted.jitter == pytest.approx(0.3, abs=0.08)
    assert fitted.contention_s == pytest.approx(0.001, rel=0.3)
    assert fitted.plan_request_s == pytest.approx(10e-6, rel=0.3)
    again = simulated_point(fitted, 500, 3.0, "loguniform:30:300", "1", 5, None)
    assert again["mean_tokens"] == pytest.approx(measured["mean_tokens"], rel=0.03)
    assert again["runtime"]["steps"] == pytest.approx(measured["runtime"]["steps"], rel=0.05)
