"""The Admitter: the only engine code that runs on the admitting thread (the engine core's IPC
thread, or the event loop in-process). It decides in microseconds from the load the engine
thread last published and its own list of admissions the engine has not taken yet, writes a
request's `planned_tokens`, `idle_tokens` and `start_by` before handing it over, and otherwise writes only
its own state (AdmissionState, the pending list)."""
from __future__ import annotations

import collections
import copy
import time

from .admission import Admission, AdmissionState, AdmitView, LoadSnapshot
from .request import Request


class Admitter:
    def __init__(self, policy, D: int, clock=time.monotonic):
        self.policy = policy
        self.clock = clock  # time.monotonic, or a simulated clock (service/capacity)
        self.state = AdmissionState(D, clock)
        self.admitted_rows = 0  # rows admitted in all (queued = admitted - dequeued by the engine)
        # admitted requests the engine may not have taken from its inbox yet: (id, deadline, n, k)
        self._pending: collections.deque[tuple[int, float, int, int]] = collections.deque()

    def admit(self, req: Request, load: LoadSnapshot, taken_id: int, dequeued_rows: int) -> Admission:
        """Plan a budget (or refuse) against the published load and the pending admissions."""
        pending = self._pending
        while pending and pending[0][0] <= taken_id:
            pending.popleft()
        adm = self.policy.admit(req, self._view(req, load, pending, dequeued_rows), self.state)
        if adm.ok:
            req.planned_tokens, req.idle_tokens, req.start_by = adm.planned_tokens, adm.idle_tokens, adm.start_by
            self.admitted_rows += req.n
            pending.append((req.id, req.deadline, req.n, adm.planned_tokens))
        return adm

    def _view(self, req: Request, load: LoadSnapshot, pending, dequeued_rows: int) -> AdmitView:
        # rows decoded before it when they finish together: those with earlier deadlines
        pending_ahead = sum(n for _, d, n, _ in pending if d < req.deadline)
        # rows that will step beside it: those that cannot stand aside before its deadline, and
        # admissions not yet taken by the engine if they are due earlier (None: every row)
        sharing = load.rows_stepping_beside(req.deadline, req.priority)
        if sharing is not None:
            sharing += pending_ahead
        pending_steps = sum(n * k for _, d, n, k in pending if d < req.deadline)
        return AdmitView(self.clock(), load.running_rows, self.admitted_rows - dequeued_rows,
                         load.rows_ahead_of(req.deadline) + pending_ahead, sharing, pending_steps, load)

    def decide(self, req: Request, now: float, running: int, waiting: int, ahead: int | None = None,
               sharing: int | None = None, pending_steps: int = 0, load: LoadSnapshot | None = None) -> Admission:
        """The policy's decision for a made-up load (tests and what-if questions); no state but
        the learned pressure changes."""
        return self.policy.admit(req, AdmitView(now, running, waiting, ahead, sharing, pending_steps,
                                                load or LoadSnapshot()), self.state)

    def probe(self, req: Request, load: LoadSnapshot, taken_id: int, dequeued_rows: int) -> Admission:
        """What admit() would decide for `req` now, changing nothing: the same view of the load
        and the pending admissions, the policy run on a copy of the learned state (headroom.py
        asks this for a reference request, guidance_pricing.py for each choice of guidance).
        Call it on the admitting thread, like admit()."""
        pending = [p for p in self._pending if p[0] > taken_id]
        return self.policy.admit(req, self._view(req, load, pending, dequeued_rows), copy.copy(self.state))
