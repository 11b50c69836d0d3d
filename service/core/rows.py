"""Which KV-cache slot holds which sequence, and the row copies that keep it so.

The runtime steps the contiguous prefix of slots [0, B): the active rows. A paused sequence
keeps its keys and values in some slot at or above B, so it resumes without recomputing
anything. Every change returns the row copies (src, dst) the runtime must make, in order,
and takes as few as it can: pausing the last active row, or a paused row finishing, copies
nothing.
"""
from __future__ import annotations

import heapq

from .request import Sequence


class RowTable:
    def __init__(self, max_active: int, slots: int):
        if slots < max_active:
            raise ValueError(f"slots={slots} < max_active={max_active}")
        self.max_active, self.slots = max_active, slots
        self.rows: list[Sequence] = []  # the active rows: rows[i].slot == i
        self._parked: dict[int, Sequence] = {}  # slot (>= B) -> paused sequence
        self._free = set(range(slots))
        # The free set as a max-heap with lazy deletion: a slot taken as row B (_grow) keeps its
        # entry. At most one entry per slot (_in_heap): releasing a slot whose stale entry is
        # still there must not push another, or every start and finish of a sequence leaves one
        # more entry behind that only a pause ever pops (the engine core's memory grew ~1.6 MB a
        # minute under steady traffic that way).
        self._heap = [-i for i in range(slots)]
        heapq.heapify(self._heap)
        self._in_heap = set(range(slots))

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def paused(self) -> int:
        return len(self._parked)

    def free_slots(self) -> int:
        return len(self._free)

    def start(self, s: Sequence, moves: list[tuple[int, int]]) -> None:
        """A new sequence joins the active rows (its cache row is written from position 0)."""
        s.slot = self._grow(moves)
        self.rows.append(s)

    def resume(self, s: Sequence, moves: list[tuple[int, int]]) -> None:
        """A paused sequence becomes active again, its keys and values copied along."""
        old = s.slot
        del self._parked[old]
        new = self._grow(moves)  # old is still taken: a row moved out of the way cannot land on it
        if old != new:
            moves.append((old, new))
            self._release(old)
        s.slot = new
        self.rows.append(s)

    def pause(self, s: Sequence, moves: list[tuple[int, int]]) -> None:
        """An active sequence stops stepping; its cache row stays (needs one free slot,
        unless it is the last active row)."""
        i, last = s.slot, self.rows[-1]
        self.rows.pop()
        if last is s:  # already just above the shrunk prefix: nothing to copy
            self._parked[i] = s
            return
        park = self._take_free(above=len(self.rows))
        moves.append((i, park))
        moves.append((last.slot, i))
        self._release(last.slot)
        last.slot, self.rows[i] = i, last
        s.slot = park
        self._parked[park] = s

    def can_pause(self) -> bool:
        """Pausing needs one free slot to copy through (it frees as many as it takes)."""
        return bool(self._free)

    def can_resume(self, s: Sequence) -> bool:
        """Room to make s active: a free active row, and s already at slot B or a free slot to
        move the row parked there to."""
        return len(self.rows) < self.max_active and (s.slot == len(self.rows) or bool(self._free))

    def can_start(self, n: int) -> bool:
        """Room for n new active rows: below max_active, and n free slots in all."""
        return len(self.rows) + n <= self.max_active and len(self._free) >= n

    def leave(self, s: Sequence, moves: list[tuple[int, int]]) -> None:
        """A sequence finishes: its slot is freed (the last active row fills an active hole)."""
        if s.slot < 0:
            return
        if s.slot in self._parked and self._parked[s.slot] is s:
            del self._parked[s.slot]
            self._release(s.slot)
        else:
            last = self.rows.pop()
            if last is not s:
                moves.append((last.slot, s.slot))
                last.slot = s.slot
                self.rows[s.slot] = last
            self._release(len(self.rows))
        s.slot = -1

    # ---- slots -----------------------------------------------------------------------------
    def _grow(self, moves: list[tuple[int, int]]) -> int:
        """Slot B for a new active row; a paused sequence there moves to a free slot above."""
        b = len(self.rows)
        if b >= self.max_active:
            raise RuntimeError("no active row is free")
        occupant = self._parked.pop(b, None)
        if occupant is not None:
            park = self._take_free(above=b)
            moves.append((b, park))
            occupant.slot = park
            self._parked[park] = occupant
        else:
            self._free.discard(b)
        return b

    def _take_free(self, above: int) -> int:
        """The highest free slot; it is above `above` whenever one is."""
        while self._heap:
            slot = -heapq.heappop(self._heap)
            if slot in self._free:
                if slot <= above:  # every free slot is at or below the prefix: none left above
                    heapq.heappush(self._heap, -slot)
                    break
                self._free.remove(slot)
                self._in_heap.discard(slot)
                return slot
            self._in_heap.discard(slot)  # a stale entry: the slot was taken as row B
        raise RuntimeError("no free KV-cache slot to park a row in")

    def _release(self, slot: int) -> None:
        if slot not in self._free:
            self._free.add(slot)
            if slot not in self._in_heap:  # its stale entry, if any, serves again
                self._in_heap.add(slot)
                heapq.heappush(self._heap, -slot)
