"""Latency model: cost of one prior step vs batch size and of one decode vs batch size.

Profiled at start-up, then corrected online: every measured step updates a multiplicative
factor (EMA of measured / profiled), so contention from anything else on the device shows
up as load and every later budget shrinks accordingly.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time (seconds) of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


class CostCurve:
    """Piecewise-linear cost (seconds) vs batch size from a profile, with online correction."""

    def __init__(self, profile: dict[int, float], alpha: float = 0.2, clock=time.monotonic):
        if not profile:
            raise ValueError("empty latency profile")
        self.sizes = np.array(sorted(profile), dtype=np.float64)
        self.costs = np.array([profile[int(b)] for b in self.sizes], dtype=np.float64)
        self.costs = np.maximum.accumulate(self.costs)  # a bigger batch never costs less
        self.alpha = alpha
        # the scheduler asks for integer batch sizes many times per iteration: tabulate them
        self._table = [self._interpolate(b) for b in range(int(self.sizes[-1]) * 2 + 1)]
        self._factor = 1.0
        self._last = 1.0  # measured / profiled of the latest observation alone
        self.clock = clock
        self._observed_at = clock()
        self._lock = threading.Lock()

    # Without observations a correction fades back to the profile (half-life FORGET_S): one
    # stalled step (a paused process, a swap storm) must not leave an engine that only short
    # requests reach refusing them for good, since it would never step to learn otherwise.
    FORGET_S = 2.0

    def _fade(self, value: float) -> float:
        age = self.clock() - self._observed_at
        return value if age < 0.05 else 1.0 + (value - 1.0) * 0.5 ** (age / self.FORGET_S)

    @property
    def factor(self) -> float:
        return self._fade(self._factor)

    @property
    def last_factor(self) -> float:
        return self._fade(self._last)

    def profiled(self, batch: float) -> float:
        if type(batch) is int and 0 <= batch < len(self._table):
            return self._table[batch]
        return self._interpolate(batch)

    def _interpolate(self, batch: float) -> float:
        b = max(1.0, float(batch))
        if b <= self.sizes[-1] or len(self.sizes) == 1:
            return float(np.interp(b, self.sizes, self.costs))
        slope = (self.costs[-1] - self.costs[-2]) / (self.sizes[-1] - self.sizes[-2])
        return float(self.costs[-1] + slope * (b - self.sizes[-1]))

    def __call__(self, batch: float) -> float:
        return self.profiled(batch) * self.factor

    def paced(self, batch: float) -> float:
        """Pessimistic cost for the deadline guard: the smoothed model or the measured pace of
        the latest step, whichever is slower, so a sudden slowdown counts at once."""
        return self.profiled(batch) * max(self.factor, self.last_factor)

    def observe(self, batch: int, seconds: float) -> None:
        ratio = min(1000.0, max(0.25, seconds / max(self.profiled(batch), 1e-9)))
        with self._lock:
            factor = self.factor
            self._last, self._observed_at = ratio, self.clock()
            self._factor = factor + self.alpha * (ratio - factor)


class RecentMax:
    """The largest value observed in the last `window_s` seconds (0 when none), in O(1)
    amortised per observation and query: the scheduler asks every iteration."""

    def __init__(self, window_s: float, clock=time.monotonic):
        self.window_s, self.clock = window_s, clock
        # (time, value) with values strictly decreasing: an entry that a later, larger value
        # outlives can never be the maximum again
        self._queue: collections.deque[tuple[float, float]] = collections.deque()
        self._lock = threading.Lock()  # observed from the engine thread and the event loop

    def observe(self, value: float) -> None:
        with self._lock:
            q = self._queue
            while q and q[-1][1] <= value:
                q.pop()
            q.append((self.clock(), value))

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def age(self, seconds: float) -> None:
        """Pretend every observation is `seconds` older (tests)."""
        with self._lock:
            self._queue = collections.deque((t - seconds, v) for t, v in self._queue)

    def __call__(self) -> float:
        cutoff = self.clock() - self.window_s
        with self._lock:
            q = self._queue
            while q and q[0][0] < cutoff:
                q.popleft()
            return q[0][1] if q else 0.0


class LatencyModel:
    def __init__(self, step_profile: dict[int, float], decode_profile: dict[int, float], alpha: float = 0.2,
                 copy_row_s: float = 2e-6, clock=time.monotonic):
        # clock: time.monotonic, or the simulated clock of the capacity planner (service/capacity)
        self.clock = clock
        self.step = CostCurve(step_profile, alpha, clock)
        self.decode = CostCurve(decode_profile, alpha, clock)
        # KV-cache row copies (pausing and resuming rows) vs the rows copied: linear in the rows
        self.copy = CostCurve({1: copy_row_s, 64: 64 * copy_row_s}, alpha, clock)
        # (time, seconds, decode rows) of the last iterations; entries older than RECENT_S are
        # ignored so that an idle server forgets a past burst
        self._recent: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=8)
        # From a request's end in the engine to its encoded response: the event loop's share of
        # the latency, which grows with HTTP load the engine cannot see.
        self.respond = RecentMax(2.0, clock)
        # How much later than predicted recent steps and decodes ended (the paced prediction the
        # deadline guard used): preemption by other processes, GIL waits, page faults. The guard
        # keeps the worst recent one free, as no cost curve can predict a single hiccup.
        self.jitter = RecentMax(2.0, clock)

    RECENT_S = 0.5

    def reset_online(self) -> None:
        """Back to the start-up profile (after warm-up traffic)."""
        for curve in (self.step, self.decode, self.copy):
            curve._factor = curve._last = 1.0
        self._recent.clear()
        self.respond.clear()
        self.jitter.clear()

    def observe_respond(self, seconds: float) -> None:
        """A request's time from leaving the engine to its response being ready (HTTP side)."""
        self.respond.observe(seconds)

    def observe_iteration(self, seconds: float, decode_rows: int) -> None:
        self._recent.append((self.clock(), seconds, decode_rows))

    def _fresh(self) -> list[tuple[float, float, int]]:
        cutoff = self.clock() - self.RECENT_S
        return [r for r in list(self._recent) if r[0] >= cutoff]

    def busiest_decode(self) -> int:
        """Rows of the busiest decode in the recent iterations."""
        return max((r[2] for r in self._fresh()), default=0)

    def finish_decode(self, n: int, ahead: int | None = None, busiest: int | None = None) -> float:
        """Decoding n rows when they finish. The engine decodes in deadline order, so only rows
        that finish in the same iteration with an earlier deadline go first: `ahead` of them
        when the caller knows that bound, and never more than the busiest recent decode
        (`busiest`, when the caller has it at hand)."""
        if busiest is None:
            busiest = self.busiest_decode()
        return self.decode.paced(n + (busiest if ahead is None else min(ahead, busiest)))

    def iteration_in_flight(self, batch: int) -> float:
        """What a request arriving now may wait for the current iteration: the slowest recent
        iteration (they include decodes of finishing requests), or one step; nothing if idle."""
        if batch <= 0:
            return 0.0
        return max(max((r[1] for r in self._fresh()), default=0.0), self.step(batch))
