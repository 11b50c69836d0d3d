"""The KV-cache slot table: after any sequence of starts, pauses, resumes and finishes, the row
copies it returned leave every sequence's keys and values in its slot, active rows first."""
import random

import pytest

from service.core.request import Sequence
from service.core.rows import RowTable


def _seq(i: int) -> Sequence:
    return Sequence(request=None, index=i, stream=(i, 0))


class FakeCache:
    """What each slot's keys and values belong to (a sequence's id), moved as a runtime would."""

    def __init__(self, slots: int):
        self.content = [None] * slots

    def apply(self, moves):
        for src, dst in moves:
            self.content[dst] = self.content[src]


def _check(table: RowTable, cache: FakeCache, paused: set) -> None:
    for i, s in enumerate(table.rows):
        assert s.slot == i and cache.content[i] == id(s)
    for s in paused:
        assert s.slot >= table.active and cache.content[s.slot] == id(s)
    assert table.paused == len(paused)
    assert table.free_slots() == table.slots - table.active - len(paused)
    assert len(table._heap) <= table.slots  # the free-slot heap holds at most one entry per slot


def test_pausing_the_last_row_copies_nothing_and_resuming_copies_one_row():
    table, cache, moves = RowTable(4, 8), FakeCache(8), []
    a, b = _seq(0), _seq(1)
    for s in (a, b):
        table.start(s, moves)
        cache.content[s.slot] = id(s)
    assert moves == []
    table.pause(b, moves)
    assert moves == [] and table.active == 1
    table.pause(a, moves)  # a is now the last active row
    assert moves == [] and table.active == 0
    table.resume(b, moves)  # b sat in slot 1; slot 0 is where active rows start
    cache.apply(moves)
    assert table.rows == [b] and cache.content[0] == id(b)
    _check(table, cache, {a})


def test_starting_into_a_parked_slot_moves_the_parked_row_away():
    table, cache, moves = RowTable(2, 3), FakeCache(3), []
    a, b, c = _seq(0), _seq(1), _seq(2)
    for s in (a, b):
        table.start(s, moves)
        cache.content[s.slot] = id(s)
    table.pause(a, moves)  # a (slot 0) goes up, b fills slot 0
    cache.apply(moves)
    moves.clear()
    table.start(c, moves)  # slot 1 must become active; whatever is parked there moves first
    cache.apply(moves)
    cache.content[c.slot] = id(c)
    _check(table, cache, {a})


def test_steady_starts_and_finishes_keep_the_table_bounded():
    """The engine's steady state without pressure: sequences start and finish, none pauses.
    The table's memory must not grow with the number of sequences served (it once kept one
    heap entry per finished sequence, and the engine core's RSS grew with it)."""
    table, moves = RowTable(16, 32), []
    for i in range(5000):
        s = _seq(i)
        table.start(s, moves)
        table.leave(s, moves)
    assert table.active == 0 and table.free_slots() == 32
    assert len(table._heap) <= table.slots


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_keep_every_row_in_its_slot(seed):
    rng = random.Random(seed)
    max_active, slots = rng.randint(1, 8), 0
    slots = max_active + rng.randint(0, 8)
    table, cache = RowTable(max_active, slots), FakeCache(slots)
    paused: set = set()
    counter = 0
    for _ in range(300):
        moves: list = []
        op = rng.random()
        if op < 0.35 and table.can_start(1):
            counter += 1
            s = _seq(counter)
            table.start(s, moves)
            cache.apply(moves)
            cache.content[s.slot] = id(s)  # the first step writes its row
        elif op < 0.55 and table.rows and table.can_pause():
            s = rng.choice(table.rows)
            table.pause(s, moves)
            cache.apply(moves)
            paused.add(s)
        elif op < 0.75 and paused and table.can_resume(s := rng.choice(sorted(paused, key=id))):
            table.resume(s, moves)
            cache.apply(moves)
            paused.discard(s)
        elif op < 0.9 and table.rows:
            table.leave(rng.choice(table.rows), moves)
            cache.apply(moves)
        elif paused:
            s = rng.choice(sorted(paused, key=id))
            table.leave(s, moves)
            cache.apply(moves)
            paused.discard(s)
            assert moves == []  # a paused row leaves without a copy
        _check(table, cache, paused)
