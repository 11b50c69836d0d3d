"""Small batches step on one thread, large ones on the intra-op pool, as measured at start-up;
both ORT sessions give the same logits."""
import numpy as np
import pytest

from service.core.model_dir import load_model_dir
from service.core.runtime import make_runtime
from service.core.step_threads import choose_one_thread_below


class Timed:
    """A runtime whose step costs what a table says for each ORT session: one thread grows with the
    batch, the pool pays a fixed wake-up."""

    def __init__(self):
        self.step_one_thread = object()
        self.one_thread_below = 0

    def step(self, tokens, positions):
        import time
        B = len(tokens)
        one = B < self.one_thread_below
        time.sleep((0.0001 * B) if one else (0.002 + 0.00002 * B))


class Spec:
    unconditional_token, D, name = 0, 8, "timed"


def test_the_pool_is_used_from_the_first_size_where_it_is_clearly_faster():
    rt = Timed()
    # one thread: 0.1 ms per row; the pool: 2 ms + 0.02 ms per row -> the pool wins from 25 rows
    assert choose_one_thread_below(rt, Spec, [1, 4, 16, 64, 128]) == 64 == rt.one_thread_below


class Fluke(Timed):
    """The pool happens to win at 4 rows (a noisy start-up), not at 16."""

    def step(self, tokens, positions):
        import time
        if len(tokens) == 4 and self.one_thread_below <= 4:
            return time.sleep(0.0001)
        return super().step(tokens, positions)


class Disturbed(Timed):
    """Something else takes the core for a stretch of calls (the frontend workers starting)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def step(self, tokens, positions):
        import time
        self.calls += 1
        if 3 <= self.calls <= 12:
            time.sleep(0.005)
        return super().step(tokens, positions)


def test_a_small_batch_steps_on_the_pool_only_if_every_larger_one_does_too():
    assert choose_one_thread_below(Fluke(), Spec, [1, 4, 16, 64, 128]) == 64


def test_both_sessions_are_timed_in_turn_so_a_disturbance_slows_both():
    # at 16 rows one thread takes 1.6 ms, the pool 2.3: timed one after the other, the
    # stretch would fall on one thread's calls and make the pool look faster
    assert choose_one_thread_below(Disturbed(), Spec, [16]) == 17


def test_without_a_one_thread_session_nothing_is_chosen(tiny_model_dir):
    spec = load_model_dir(tiny_model_dir, "onnx")
    rt = make_runtime(spec, "onnx", 16, threads=1, ort_spin="off")
    assert rt.step_one_thread is None and choose_one_thread_below(rt, spec, [1, 2, 4]) == 0


@pytest.mark.parametrize("B", [1, 5])
def test_both_sessions_give_the_same_logits_and_cache(tiny_model_dir, B):
    spec = load_model_dir(tiny_model_dir, "onnx")
    outs = []
    for below in (0, 1 << 20):  # the pool, then one thread
        rt = make_runtime(spec, "onnx", 16, threads=2, ort_spin="off")
        assert rt.step_one_thread is not None
        rt.one_thread_below = below
        tokens = np.arange(B, dtype=np.int64) % spec.K
        logits = [rt.step(tokens, np.full(B, t, np.int64)) for t in range(3)]
        outs.append((np.stack(logits), rt.k[0][:B].copy()))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-5)
