"""Token sampling: distribution, filters, determinism and independence from the batch."""
import numpy as np

from service.core.sampling import sample_rows, sequence_rng


def draw(logits, n=20000, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    rng = np.random.default_rng(seed)
    B = n
    lg = np.repeat(logits[None], B, axis=0).astype(np.float32)
    return sample_rows(lg, rng.random(B), np.full(B, temperature), np.full(B, top_k, dtype=np.int64), np.full(B, top_p))


def test_matches_the_softmax_distribution():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4] * 32))  # K = 128: the two-level search is used
    freq = np.bincount(draw(logits), minlength=128) / 20000
    np.testing.assert_allclose(freq, np.exp(logits) / np.exp(logits).sum(), atol=0.006)


def test_top_k_top_p_temperature():
    logits = np.linspace(0, 5, 64)
    assert set(draw(logits, top_k=3)) <= {61, 62, 63}
    p = np.exp(logits) / np.exp(logits).sum()
    keep = np.argsort(-p)[: np.searchsorted(np.cumsum(np.sort(p)[::-1]), 0.5) + 1]
    assert set(draw(logits, top_p=0.5)) <= set(keep.tolist())
    cold = np.bincount(draw(logits, temperature=0.01), minlength=64)
    assert cold[63] > 0.99 * cold.sum()


def test_rows_do_not_depend_on_the_rest_of_the_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 512)).astype(np.float32)
    u = rng.random(64)
    args = lambda n: (np.ones(n), np.zeros(n, dtype=np.int64), np.ones(n))  # noqa: E731
    batched = sample_rows(logits, u, *args(64))
    alone = [int(sample_rows(logits[i : i + 1], u[i : i + 1], *args(1))[0]) for i in range(64)]
    assert batched.tolist() == alone


def test_sequence_rng_is_deterministic_per_seed_and_index():
    a, b, c = sequence_rng(5, 0), sequence_rng(5, 0), sequence_rng(5, 1)
    xs = [a.random() for _ in range(5)]
    assert xs == [b.random() for _ in range(5)] and xs != [c.random() for _ in range(5)]
    assert sequence_rng(2**62, 3).random() != sequence_rng(2**62 + 1, 3).random()


def test_a_row_without_filters_does_not_depend_on_filtered_rows_beside_it():
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3, size=(32, 512)).astype(np.float32)
    u = rng.random(32)
    temperature = np.where(np.arange(32) % 4 == 1, 0.7, 1.0)
    top_k = np.where(np.arange(32) % 4 == 2, 20, 0)
    top_p = np.where(np.arange(32) % 4 == 3, 0.8, 1.0)
    batched = sample_rows(logits, u, temperature, top_k, top_p)
    alone = [int(sample_rows(logits[i : i + 1], u[i : i + 1], temperature[i : i + 1], top_k[i : i + 1],
                             top_p[i : i + 1])[0]) for i in range(32)]
    assert batched.tolist() == alone
