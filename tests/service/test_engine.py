"""The real engine on a tiny exported model: batching, determinism, faults, the deadline guard."""
import threading
import time

import numpy as np
import pytest

from service.core.request import FinishReason, Status
from tests.utils.engine import make_engine, run, submit
from tests.utils.faults import set_step_hook


@pytest.fixture(params=["onnx", "torchscript"])
def engine(request, tiny_model_dir):
    e = make_engine(tiny_model_dir, request.param)
    yield e
    e.stop(timeout=5)


def codes(req):
    return [s.codes for s in req.sequences]


def test_same_seed_same_sample_and_shorter_is_prefix(engine):
    a = run(engine, seed=7, n=2)
    b = run(engine, seed=7, n=2)
    short = run(engine, seed=7, n=2, max_tokens=3)
    assert codes(a) == codes(b) and a.tokens == engine.spec.D
    assert [c[:3] for c in codes(a)] == codes(short) and short.tokens == 3
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-6)
    assert codes(run(engine, seed=8, n=2)) != codes(a)
    assert codes(a)[0] != codes(a)[1]  # the n samples of one request differ


def test_mixed_positions_in_one_batch_give_the_same_tokens_as_alone(engine):
    alone = {s: codes(run(engine, seed=s, label=s % 3)) for s in range(6)}
    slow = lambda B: time.sleep(0.01)  # noqa: E731 - keep every request in flight long enough to overlap
    set_step_hook(engine, slow)
    reqs = []
    for s in range(6):  # staggered arrivals: each joins the batch at a different position of the others
        reqs.append(submit(engine, seed=s, label=s % 3))
        time.sleep(0.025)
    for r, done in reqs:
        assert done.wait(10)
    set_step_hook(engine, None)
    assert {r.seed: codes(r) for r, _ in reqs} == alone
    assert max(e for e in engine_batch_sizes(reqs)) > 1


def test_per_row_seeds_and_labels_sample_each_row_as_a_one_row_request(engine):
    seeds, labels = [3, 11, 3, 2**40 + 5], [0, 2, 1, None]
    alone = [run(engine, seed=s, label=c, n=1) for s, c in zip(seeds, labels)]
    rows = run(engine, n=4, seed=0, label=None, seeds=seeds, labels=labels)
    assert codes(rows) == [codes(a)[0] for a in alone]
    assert codes(rows)[0] != codes(rows)[2]  # the same seed with another label is another sample
    np.testing.assert_allclose(rows.samples, np.concatenate([a.samples for a in alone]), atol=1e-6)
    with pytest.raises(ValueError):
        engine.new_request(n=2, seed=0, label=None, deadline_s=1, arrival=0, min_tokens=1, max_tokens=8,
                           sampling=rows.sampling, seeds=[1])
    with pytest.raises(ValueError):
        engine.new_request(n=1, seed=0, label=None, deadline_s=1, arrival=0, min_tokens=1, max_tokens=8,
                           sampling=rows.sampling, seeds=[1], labels=[len(engine.spec.classes)])


def engine_batch_sizes(reqs):
    # overlapping lifetimes prove the requests shared steps
    spans = sorted((r.started, r.finished) for r, _ in reqs)
    return [sum(1 for s, f in spans if s <= start < f) for start, _ in spans]


def test_a_failing_step_fails_only_its_requests(engine):
    calls = {"n": 0}

    def fail_once(B):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected")

    set_step_hook(engine, fail_once)
    failed = run(engine, seed=1)
    set_step_hook(engine, None)
    assert failed.finish_reason is FinishReason.ERROR and failed.error_status == 500
    assert "runtime step failed" in failed.error
    ok = run(engine, seed=1)
    assert ok.finish_reason is FinishReason.BUDGET and ok.tokens == engine.spec.D
    assert engine.active_sequences == 0


def test_non_finite_logits_fail_that_request_only(engine):
    real_step = engine.runtime.step
    poisoned = {}

    def step(tokens, positions):
        logits = real_step(tokens, positions)
        for i, s in enumerate(engine.rows):
            if s.request.seed == 666:
                logits[i, 0] = np.nan
                poisoned["hit"] = True
        return logits

    engine.runtime.step = step
    set_step_hook(engine, lambda B: time.sleep(0.005))
    bad, bad_done = submit(engine, seed=666)
    good, good_done = submit(engine, seed=5)
    assert bad_done.wait(10) and good_done.wait(10)
    engine.runtime.step = real_step
    set_step_hook(engine, None)
    assert poisoned and bad.finish_reason is FinishReason.ERROR and "non-finite" in bad.error
    assert good.finish_reason is FinishReason.BUDGET
    assert codes(good) == codes(run(engine, seed=5))


def test_slow_steps_make_the_guard_truncate_instead_of_running_late(engine):
    set_step_hook(engine, lambda B: time.sleep(0.04))  # 8 steps would take 320 ms
    t0 = time.monotonic()
    req = run(engine, seed=3, deadline_ms=200)
    set_step_hook(engine, None)
    latency = req.finished - req.arrival
    assert req.finish_reason is FinishReason.DEADLINE_GUARD
    assert 1 <= req.tokens < engine.spec.D
    assert latency <= 0.2, f"finished {latency * 1000:.1f} ms after arrival"
    assert time.monotonic() - t0 < 1


def test_cancel_frees_rows(engine):
    set_step_hook(engine, lambda B: time.sleep(0.02))
    req, done = submit(engine, seed=1, n=4)
    time.sleep(0.05)
    assert engine.active_sequences == 4
    engine.cancel(req)
    assert done.wait(5)
    set_step_hook(engine, None)
    assert req.finish_reason is FinishReason.CANCELLED and req.status is Status.FINISHED
    assert engine.active_sequences == 0 and engine.queued_sequences == 0


def test_a_request_arriving_mid_generation_starts_within_one_step(engine):
    set_step_hook(engine, lambda B: time.sleep(0.02))
    first, first_done = submit(engine, seed=1)
    time.sleep(0.05)
    assert first.status is Status.RUNNING
    second, second_done = submit(engine, seed=2)
    assert second_done.wait(10) and first_done.wait(10)
    set_step_hook(engine, None)
    assert second.started - second.arrival <= 0.02 + 0.015  # at most one (slowed) step, plus slack
    assert second.started < first.finished  # it did not wait for the first to end


def test_finishing_requests_are_decoded_and_answered_in_deadline_order(engine):
    engine.DECODE_CHUNK_S = 0.0  # one decode call per request
    decode = engine.runtime.decode

    def slow_decode(codes, lengths):  # 3 ms per decoded row, as for a heavy audio decoder
        time.sleep(0.003 * len(codes))
        return decode(codes, lengths)

    engine.runtime.decode = slow_decode
    set_step_hook(engine, lambda B: time.sleep(0.02))
    busy, _ = submit(engine, seed=1, deadline_ms=60000)  # keeps a step in flight while the next two queue
    time.sleep(0.005)
    big, big_done = submit(engine, seed=2, n=8, deadline_ms=30000, max_tokens=3)
    urgent, urgent_done = submit(engine, seed=3, n=1, deadline_ms=20000, max_tokens=3)
    assert big_done.wait(10) and urgent_done.wait(10)
    assert abs(big.started - urgent.started) < 0.005  # they joined, ran and finished in one iteration
    # the earlier deadline is answered before the 8-row decode (>= 24 ms) of the other
    assert urgent.finished < big.finished - 0.02
    engine.cancel(busy)


def test_a_failing_start_up_profile_is_raised_by_start(tiny_model_dir):
    from service.core.engine import Engine
    from service.core.model_dir import load_model_dir
    from service.core.runtime import make_runtime
    from service.core.scheduler import SchedulerConfig

    spec = load_model_dir(tiny_model_dir, "torchscript")
    runtime = make_runtime(spec, "torchscript", 4)

    def broken(tokens, positions):
        raise RuntimeError("graph failed to load")

    runtime.step = broken
    engine = Engine(spec, runtime, SchedulerConfig(max_batch=4))
    # the profile runs on the engine thread; its failure still stops start-up in the caller
    with pytest.raises(RuntimeError, match="graph failed to load"):
        engine.start()
    assert not engine.ready.is_set()


def test_finished_requests_leave_no_cyclic_garbage(engine):
    """Reference counting frees a finished request: a collector pass would stall the engine."""
    import gc

    run(engine, seed=1)  # warm
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        done = [run(engine, seed=s, n=2, max_tokens=4) for s in range(5)]
        cancelled, _ = submit(engine, seed=9, deadline_ms=5000)
        engine.cancel(cancelled)
        time.sleep(0.2)
        del done, cancelled
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if type(o).__name__ in ("Request", "Sequence", "Generator")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []
