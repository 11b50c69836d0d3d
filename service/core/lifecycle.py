"""The Lifecycle: the request queues and every change of a request's state on the engine
thread: add, start, pause, resume, finish, fail, and the KV-cache row moves they need. It
applies what the Planner decided; it decides nothing itself."""
from __future__ import annotations

import itertools
import math
import operator
import time

from .admission import LoadSnapshot
from .planner import IterationPlan
from .queue_wait import QueueWaitError
from .request import FinishReason, Request, Status
from .rows import RowTable
from .slack import PRIORITY_RANK

_deadline = operator.attrgetter("deadline")


class Lifecycle:
    def __init__(self, config, slots: int, clock=time.monotonic):
        self.config, self.clock = config, clock
        self.waiting: list[Request] = []  # admitted, not yet in the batch
        self.running: list[Request] = []  # in the batch
        self.paused: list[Request] = []  # started, standing aside for now (KV cache kept)
        self.table = RowTable(config.max_batch, slots)  # which KV-cache slot holds which sequence
        self.rows_changed = True  # rows joined or left since the engine last built its step inputs
        self.taken_id = 0  # id of the last request taken from the engine's inbox
        self.dequeued_rows = 0  # rows that left the waiting queue (admission counts the rest as queued)
        self.short_starts = 0  # started with less than min_tokens (the last resort; should stay 0)
        self.previews_skipped = 0  # best-effort previews due every preview_every tokens never decoded
        self.cancelled: list[Request] = []
        self.wait_error = QueueWaitError()  # how much later than admission estimated queued requests start

    @property
    def rows(self):
        return self.table.rows

    def add(self, req: Request) -> None:
        """An admitted request taken from the engine's inbox joins the waiting queue."""
        req.budget = req.planned_tokens  # from here on, only this thread changes it
        self.waiting.append(req)
        self.taken_id = req.id

    def cancel(self, req: Request) -> None:
        """The client went away: its rows are freed and it finishes at the next schedule()."""
        if req.status is not Status.FINISHED and not req.cancelled:
            req.cancelled = True
            self.cancelled.append(req)

    def apply(self, plan: IterationPlan, now: float, moves: list[tuple[int, int]]) -> None:
        """The plan's finishes leave their rows (decoded next); pauses, resumes, starts."""
        self.leave_all([r for r, _ in plan.finish], moves)
        for r in plan.pause:
            self._move(r, self.running, self.paused, Status.PAUSED, self.table.pause, moves)
        for r in plan.resume:
            self._move(r, self.paused, self.running, Status.RUNNING, self.table.resume, moves)
        for r in plan.start:
            self.waiting.remove(r)
            self.dequeued_rows += r.n
            r.started, r.budget = now, plan.budgets[id(r)]
            self.wait_error.observe(r.start_by, now)
            self._move(r, None, self.running, Status.RUNNING, self.table.start, moves)
        self.short_starts += plan.short_starts

    def update_from_output(self, tokens: list[int], compute_s: float) -> None:
        """One step's sampled token for every row, in row order."""
        for s, tok in zip(self.rows, tokens):
            s.codes.append(tok)
        for r in self.running:
            r.compute_s += compute_s

    def decoded(self, r: Request, samples, compute_s: float, reason: FinishReason | None,
                best_effort_previews: bool) -> None:
        """A decode of r's current prefix: its final samples (reason given) or a preview."""
        r.compute_s += compute_s
        if r.preview_every and best_effort_previews:  # nominal previews passed over since the last one
            k, every = r.tokens, r.preview_every
            self.previews_skipped += max(0, k // every - r.last_preview // every - 1 if reason is None
                                         else (k - 1) // every - r.last_preview // every)
        if reason is None:
            r.last_preview, r.last_preview_at = r.tokens, self.clock()
            return
        r.samples = samples
        self.finish(r, reason)

    def fail(self, requests, message: str, status: int = 500) -> list[tuple[int, int]]:
        """Finish requests with an error; returns the KV-cache row moves their leaving needs."""
        moves: list[tuple[int, int]] = []
        failing = [r for r in requests if r.status is not Status.FINISHED]
        self.leave_all(failing, moves)
        for r in failing:
            self.finish(r, FinishReason.ERROR, error=message, status=status)
        return moves

    def finish(self, r: Request, reason: FinishReason, error: str | None = None, status: int = 0) -> None:
        r.status = Status.FINISHED
        r.finish_reason, r.error, r.error_status = reason, error, status
        r.finished = self.clock()
        for s in r.sequences:
            s.status, s.finish_reason = Status.FINISHED, reason

    def leave(self, r: Request, moves: list[tuple[int, int]]) -> None:
        """Take r out of the queues and free its KV-cache slots (RowTable keeps rows 0..B-1)."""
        self.leave_all([r], moves)

    def leave_all(self, requests: list[Request], moves: list[tuple[int, int]]) -> None:
        """leave() for several requests at once. Their rows leave highest slot first, so that
        the last active row moved into a hole is never one that leaves too: a batch of one-token
        requests that all finish together copies no row at all (taken one request at a time,
        about one copy per row, 5% of the engine core's CPU on one-token traffic)."""
        leaving = []
        for r in requests:
            if r in self.waiting:
                self.waiting.remove(r)
                self.dequeued_rows += r.n
            if r in self.running:
                self.running.remove(r)
            if r in self.paused:
                self.paused.remove(r)
            leaving += [s for s in r.sequences if s.slot >= 0]
        if leaving:
            self.rows_changed = True
            for s in sorted(leaving, key=lambda s: s.slot, reverse=True):
                self.table.leave(s, moves)

    def _move(self, r: Request, src: list | None, dst: list, status: Status, change, moves) -> None:
        if src is not None:
            src.remove(r)
        r.status = status
        self.rows_changed = True
        for s in r.sequences:
            change(s, moves)
            s.status = status
        dst.append(r)

    def snapshot(self, stepping, budget) -> LoadSnapshot:
        """The load as admission reads it: deadlines and rows in order, the work guaranteed
        before each deadline and, for the anytime policy (stepping: its Stepping, else None),
        who may stand aside: when each request with seconds to spare turns urgent (the others
        never stand aside), or, when none has seconds to spare, only the rows of lower
        priorities (standing aside for a higher one)."""
        reqs = sorted(self.running + self.paused + self.waiting, key=_deadline)
        deadlines = tuple(map(_deadline, reqs))
        rows_before = tuple(itertools.accumulate((r.n for r in reqs), initial=0))
        if stepping is None:
            return LoadSnapshot(len(self.rows), deadlines, rows_before, queue_wait_error=self.wait_error.seconds)
        full = budget.full_step()
        row_step = full / self.config.max_batch
        demand = tuple(itertools.accumulate((r.n * max(0, stepping.target(r) - r.tokens) for r in reqs), initial=0))
        spare = [math.inf] * (len(reqs) + 1)
        for i in range(len(reqs) - 1, -1, -1):
            spare[i] = min(spare[i + 1], deadlines[i] / row_step - demand[i + 1])
        guaranteed = dict(row_step_s=row_step, demand_before=demand, spare_after=tuple(spare),
                          queue_wait_error=self.wait_error.seconds)
        if not any(map(stepping.may_stand_aside, reqs)):
            rows = dict.fromkeys(PRIORITY_RANK, 0)
            for r in reqs:
                rows[r.priority] += r.n
            at_or_above = dict(zip(PRIORITY_RANK, itertools.accumulate(rows[p] for p in PRIORITY_RANK)))
            return LoadSnapshot(len(self.rows), deadlines, rows_before, rows_at_or_above=at_or_above, **guaranteed)
        margin = budget.margin()
        keyed = sorted((stepping.urgent_at(r, full, margin) if stepping.may_stand_aside(r) else -math.inf, r.n)
                       for r in reqs)
        return LoadSnapshot(len(self.rows), deadlines, rows_before, True, tuple(t for t, _ in keyed),
                            tuple(itertools.accumulate((n for _, n in keyed), initial=0)), **guaranteed)
