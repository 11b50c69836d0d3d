"""Steps of one-token rows at position 0 come from the first-step table: the same tokens as a
runtime step for every seed and label, no runtime call (nothing for the latency model to
learn), and rows that go on are still stepped by the runtime, their samples unchanged."""
import numpy as np
import pytest

from tests.utils.engine import make_engine, run, submit


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def engine(request, tiny_model_dir):
    e = make_engine(tiny_model_dir, backend=request.param, max_batch=16)
    yield e
    e.stop(5)


def _codes(req):
    return [list(s.codes) for s in req.sampled]


def _without_table(engine, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setattr(engine.first_step, "answer", lambda *a: None)
        return run(engine, **kw)


@pytest.mark.parametrize("label", [None, 1])
def test_one_token_rows_take_the_tokens_a_runtime_step_gives(engine, monkeypatch, label):
    stats = []
    engine.observers.append(stats.append)
    steps = lambda: [x for x in stats if type(x).__name__ == "StepStats"]  # runtime steps
    try:
        run(engine, seed=1, n=2, max_tokens=1, label=label)  # a real step fills the table
        for seed in (11, 12, 13):
            stepped = _without_table(engine, monkeypatch, seed=seed, n=3, max_tokens=1, label=label)
            hits, before = engine.first_step.hits, len(steps())
            tabled = run(engine, seed=seed, n=3, max_tokens=1, label=label)
            assert engine.first_step.hits == hits + 1 and len(steps()) == before  # no runtime step
            assert _codes(tabled) == _codes(stepped) and tabled.tokens == 1
            np.testing.assert_array_equal(tabled.samples, stepped.samples)
    finally:
        engine.observers.remove(stats.append)


def test_rows_that_go_on_are_stepped_and_their_samples_do_not_change(engine, monkeypatch):
    D = engine.spec.D
    expected = _without_table(engine, monkeypatch, seed=30, n=2, max_tokens=D)
    run(engine, seed=31, n=2, max_tokens=1)  # the table holds the null label's first step
    hits = engine.first_step.hits
    # started together: one-token rows beside rows that go on, so the runtime steps them all
    reqs = [submit(engine, seed=31, n=2, max_tokens=1), submit(engine, seed=30, n=2, max_tokens=D)]
    assert all(done.wait(30) for _, done in reqs)
    longer = reqs[1][0]
    assert _codes(longer) == _codes(expected) and longer.tokens == D
    np.testing.assert_allclose(longer.samples, expected.samples, atol=1e-5)
    assert engine.first_step.hits - hits <= 1  # at most the one-token request, if it started alone
