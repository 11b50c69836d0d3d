"""What admission works from, on the admitting thread: its decision, its own learned state, and
the engine thread's published view of the load (replaced whole after each plan, so a reader
never sees half of one)."""
from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass

from ..refusals import Refusal


@dataclass
class Admission:
    ok: bool
    planned_tokens: int = 0
    reason: Refusal | str = ""  # a Refusal for rejections ("" when admitted)
    message: str = ""
    retry_after_s: float = 0.0
    # tokens per sample an idle replica would have planned (0: the deadline itself leaves too
    # few); what load took is measured against it (the autoscaling signal, EngineCore)
    idle_tokens: int = 0
    start_by: float = math.nan  # when it should get a row, if it waits for one (Request.start_by)


@dataclass(frozen=True)
class LoadSnapshot:
    """The batch as the last plan left it, for admission on another thread."""

    running_rows: int = 0
    deadlines: tuple[float, ...] = ()  # running, paused and waiting requests, earliest first
    rows_before: tuple[int, ...] = (0,)  # rows_before[i]: rows of the requests before deadlines[i]
    stands_aside: bool = False  # some live request may stand aside for others (else all of them share every step)
    urgent_at: tuple[float, ...] = ()  # when each live request can no longer stand aside, earliest first
    urgent_rows_before: tuple[int, ...] = (0,)
    # when none may stand aside but for priority: live rows of each priority and higher ones
    rows_at_or_above: dict[str, int] | None = None
    # the work guaranteed before each deadline, in row-steps (a row's step at a full batch)
    row_step_s: float = 0.0  # seconds per row-step at a full batch
    demand_before: tuple[int, ...] = (0,)  # demand_before[i]: row-steps due by deadlines[i] (exclusive)
    spare_after: tuple[float, ...] = (math.inf,)  # min over j >= i of deadlines[j] / row_step_s - demand through j
    queue_wait_error: float = 0.0  # how much later than estimated queued requests get a row (queue_wait.py)

    def promised_steps(self, n: int, deadline: float, now: float, pending: int = 0, share: float = 1.0) -> float:
        """The most steps a request of n rows due at `deadline` can be guaranteed without the
        work already guaranteed missing a deadline (earlier ones, or later ones it would push
        out), at a full batch's throughput (`share` of it); `pending`: row-steps admitted but
        not yet published."""
        if self.row_step_s <= 0:
            return math.inf
        i = bisect.bisect_left(self.deadlines, deadline)
        here = share * (deadline - now) / self.row_step_s - self.demand_before[i] - pending
        later = self.spare_after[i] - now / self.row_step_s - pending
        return min(here, later) / n

    def rows_ahead_of(self, deadline: float) -> int:
        return self.rows_before[bisect.bisect_left(self.deadlines, deadline)]

    def rows_sharing(self, deadline: float) -> int:
        """Rows that step beside a request due at `deadline`: those that turn urgent before it
        (the others have the laxity to stand aside while it steps)."""
        return self.urgent_rows_before[bisect.bisect_left(self.urgent_at, deadline)]

    def rows_stepping_beside(self, deadline: float, priority: str) -> int | None:
        """Rows that step beside a new request (due at `deadline`, of `priority`) rather than
        stand aside for it; None: every row does (nobody stands aside for it)."""
        if self.stands_aside:
            return self.rows_sharing(deadline)
        rows = self.rows_at_or_above
        if rows and rows[priority] < rows["low"]:  # lower priorities give it their rows
            return rows[priority]
        return None


class AdmissionState:
    """What admission learns: written only by the admitting thread, read by the engine thread.
    The pressure EMA and its time are one tuple, so a reader never sees half an update."""

    HALF_LIFE_S = 2.0

    def __init__(self, D: int, clock=time.monotonic):
        self.clock = clock  # time.monotonic, or a simulated clock (service/capacity)
        self._pressure = (0.0, clock())  # EMA share of admissions whose tokens load took away
        self.mean_planned = float(D)

    @property
    def pressure(self) -> float:
        """The EMA, decayed by the time since the last admission (an idle server has none)."""
        value, at = self._pressure
        return value * 0.5 ** ((self.clock() - at) / self.HALF_LIFE_S)

    @pressure.setter
    def pressure(self, value: float) -> None:
        self._pressure = (value, self.clock())

    def observe_pressure(self, lost: float, alpha: float) -> None:
        p = self.pressure
        self.pressure = p + alpha * (lost - p)

    def observe_planned(self, k: int) -> None:
        self.mean_planned += 0.05 * (k - self.mean_planned)


@dataclass(frozen=True)
class AdmitView:
    """One admission's view of the load: what it reads, gathered by the Admitter."""

    now: float
    running: int  # rows stepping at the last plan
    waiting: int  # rows admitted and not yet started (the engine's inbox included)
    ahead: int | None = None  # rows with an earlier deadline (decoded before it), if known
    sharing: int | None = None  # rows that cannot stand aside before its deadline (None: all share)
    pending_steps: int = 0  # row-steps guaranteed to admissions the engine has not published yet
    load: LoadSnapshot = LoadSnapshot()


def refuse(reason: Refusal, message: str, retry_after_s: float = 0.0, idle_tokens: int = 0) -> Admission:
    return Admission(False, reason=reason, message=message, retry_after_s=retry_after_s, idle_tokens=idle_tokens)
