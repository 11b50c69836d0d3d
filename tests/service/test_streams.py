"""The batched streams are numpy's per-sequence Generators, bit for bit."""
import numpy as np
import pytest

from service.core.sampling import sequence_rng
from service.core.streams import VECTORISED_FROM, SlotStreams, seed_origins


def keys_of(count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    edge = [(0, 0), (2**64 - 1, 2**32 - 1), (2**63 - 1, 5), (2**32, 1), (2**32 - 1, 0)]
    return (edge + [(int(rng.integers(2**63)), int(rng.integers(64))) for _ in range(count)])[:count]


def reference(key: tuple[int, int], skip: int, draws: int) -> np.ndarray:
    g = sequence_rng(*key)
    g.random(skip)
    return g.random(draws)


@pytest.mark.parametrize("count", [1, VECTORISED_FROM - 1, VECTORISED_FROM, 200])
def test_seeded_states_match_numpy(count):
    keys = keys_of(count)
    got = seed_origins(keys)
    for key, (sh, sl, ih, il) in zip(keys, got):
        state = sequence_rng(*key).bit_generator.state["state"]
        assert (int(sh) << 64 | int(sl), int(ih) << 64 | int(il)) == (state["state"], state["inc"])


def test_draws_follow_each_row_through_starts_moves_and_pauses():
    keys = keys_of(40, seed=1)
    streams = SlotStreams(48)
    streams.start(list(range(40)), keys)
    drawn = {i: [] for i in range(40)}
    slot_of = list(range(40))  # row -> key index
    for step in range(6):
        B = len(slot_of) - (step % 3)  # the last rows sit out some steps (paused above B)
        for row, u in enumerate(streams.draw(B)):
            drawn[slot_of[row]].append(u)
        streams.move(0, 45)  # row 0 parked above the batch, the last active row fills its hole
        streams.move(B - 1, 0)
        streams.move(45, B - 1)
        slot_of[0], slot_of[B - 1] = slot_of[B - 1], slot_of[0]
    for k, values in drawn.items():
        assert np.array_equal(values, reference(keys[k], 0, len(values))), k


def test_a_bad_key_is_refused():
    with pytest.raises(ValueError):
        seed_origins([(2**64, 0)])
    with pytest.raises(ValueError):
        seed_origins([(-1, 0)])
