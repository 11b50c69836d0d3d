"""How much later than admission estimated a request got its row, when it had to wait for one.

Admission's wait for a row in a full batch (Budget.wait_estimate) counts the rows ahead of a
request when it arrives, not those that arrive after it with earlier deadlines and start first,
nor the 16 rows an n=16 request needs free at once. At 4x load every late answer was a request
admitted into a full batch with 1-2 tokens that then waited 20-45 ms longer than estimated
(bench/results/one-policy-4x-late/traced). The engine thread records each queued request's
error as it starts; admission reads a high quantile of the recent errors, as one float, and
refuses a queued request that such an error would leave without a single token by its
deadline. Only requests whose deadline bound their tokens at admission are learned from
(Anytime.budget_for sets their `start_by`): a request with time to spare is passed by every
arrival due sooner, by design, and its delay is no error. Learned from every queued request,
the quantile grew to seconds beside bulk work due in 5-30 s, and refused 39% of 1-3 s
streaming requests at 2x (bench/results/one-policy-mixed/at-9bf6607)."""
from __future__ import annotations

import collections
import math

WINDOW = 512  # recent queued starts: at 4x load, a few seconds of them
QUANTILE = 0.99
MIN_STARTS = 32  # until this many, admission trusts its estimate
REFRESH = 16  # starts between recomputations of the quantile (a sort of WINDOW floats)


class QueueWaitError:
    """Written on the engine thread (observe), read on the admitting thread (seconds)."""

    def __init__(self):
        self._errors: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._since = 0
        self.seconds = 0.0  # the QUANTILE of the recent errors, never below 0

    def observe(self, start_by: float, started: float) -> None:
        """A request admitted to wait for a row, expected to start by `start_by`, started."""
        if math.isnan(start_by):
            return  # rows were free when it was admitted: no wait was estimated
        self._errors.append(started - start_by)
        self._since += 1
        if self._since >= REFRESH and len(self._errors) >= MIN_STARTS:
            self._since = 0
            ordered = sorted(self._errors)
            self.seconds = max(0.0, ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))])
