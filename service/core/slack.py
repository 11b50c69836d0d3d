"""Who steps this iteration under the anytime policy, and which previews are decoded.

A request's laxity is the time it can still stand aside and make its *target* by its deadline
if, from then on, it steps every iteration of a full batch. The target is its budget, or under
pressure the quality knee (Budget.quality_cap): tokens past the knee (planned only for requests
with seconds to spare, policies.LONG_GENERATIONS) are taken only from spare steps, never forced. Requests whose laxity is down to a few steps are *urgent* (until they
reach the target: no pause-resume flapping at the boundary) and always step.

When no request has seconds to spare (policies.LONG_GENERATIONS) and no waiting request has a
higher priority than a running one, stepping is --no-slack's: running rows go on, waiting ones
start as rows free up, and no laxity is computed (most iterations of short-deadline traffic).
When every request fits the batch and the step every one of them can afford, everything steps:
nobody gives anything up unless someone needs it. Otherwise urgent requests step first, then
high priority before normal and low, then by deadline, as long as the batch they join stays
cheap enough for every request already in it to make its target (a bulk request with seconds
to spare does not slow an interactive one down to a coarser answer); the rest pause, keeping
their KV-cache rows, or stay queued. Admission counts on this: it plans a new request against
the rows that cannot stand aside before its deadline (LoadSnapshot.rows_sharing).

A waiting request that must start soon (urgent, or without seconds to spare) and does not fit
the rows or KV-cache slots left *holds* them: waiting requests after it in the order (later
deadlines, lower priority) may not start in them, so the rows that free up are its own. Without the hold, a
large request (n = 16) waits while smaller ones due later fill every row that frees, until it
is far past its deadline (seconds, at 4x load): admission planned every request's work in
deadline order, and backfilling past a waiting request breaks that order. A request that can no
longer make its deadline keeps its place by deadline (the earliest): put after the others, it
was starved for seconds by the requests that kept arriving (bench/results/one-policy-sweep
notes); in its place it is answered a step or two late, with at least one token.

Previews are best effort: at most one per `preview_interval_s` per request, their decodes
limited to `preview_share` of the engine's time (a credit that accrues with the clock), and
none that would leave a running request without the time its own decode and response need.
"""
from __future__ import annotations

import math
import operator

from .budget import PRIORITY_PRICE, Budget
from .request import Request

RUNNING, PAUSED, WAITING = "running", "paused", "waiting"

HORIZON_STEPS = 3  # laxity (in full-batch steps) at which a request turns urgent
PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}  # among requests with laxity, who steps first

_deadline = operator.attrgetter("deadline")


def outranks(waiting: list[Request], running: list[Request]) -> bool:
    """Does a waiting request have a higher priority than a running one (and so may take its row)?"""
    return bool(waiting) and bool(running) and min(PRIORITY_RANK[r.priority] for r in waiting) < max(
        PRIORITY_RANK[r.priority] for r in running)


class Stepping:
    def __init__(self, config, budget: Budget, may_stand_aside=lambda r: True):
        self.config, self.budget, self.latency = config, budget, budget.latency
        self.may_stand_aside = may_stand_aside  # requests with seconds to spare (policies.Anytime.long)
        self.caps = dict.fromkeys(PRIORITY_PRICE, budget.D)  # the quality knee per priority, set by each plan
        self._credit = 0.0  # seconds of preview decode the share has accrued
        self._credit_at: float | None = None

    def target(self, r: Request) -> int:
        """The tokens r is guaranteed: its budget, or under pressure the quality knee."""
        return min(r.budget, max(r.min_tokens, self.caps[r.priority]))

    def urgent_at(self, r: Request, full_step: float, margin: float) -> float:
        """When r turns urgent: its laxity is down to HORIZON_STEPS full-batch steps."""
        remaining = self.target(r) - r.tokens
        if remaining <= 0:
            return math.inf  # past its target: only spare steps
        if r.urgent:
            return -math.inf
        return (r.deadline - self.config.safety * self.latency.decode.paced(r.n) - margin
                - (remaining + HORIZON_STEPS) * full_step)

    def allowance(self, r: Request, now: float, dec_now: float, margin: float) -> float:
        """The dearest step r can take from now on and still make its target."""
        remaining = self.target(r) - r.tokens
        if remaining <= 0:
            return math.inf
        left = r.deadline - now - self.config.safety * (dec_now + self.latency.decode.paced(r.n)) - margin
        return left / remaining

    def choose(self, planner, plan, ch) -> int:
        """Pause, resume and start from select(); a waiting request starts with the tokens
        that still fit. Returns the active rows of the next step."""
        c = self.config
        for r in ch.waiting:  # not even min_tokens fit alone in the batch: it may not wait a step longer
            if self.budget.deadline_tokens(r, ch.now, r.n, c.safety * ch.dec_now, 0) < max(1, r.min_tokens):
                r.urgent = True
        running = [r for r in ch.continuing if id(r) not in ch.paused_ids]
        paused = [r for r in ch.continuing if id(r) in ch.paused_ids]
        chosen = self.select(ch.now, running, paused, ch.waiting, ch.dec_now, ch.margin, ch.free_slots)
        stepping = set(map(id, chosen))
        plan.pause = [r for r in running if id(r) not in stepping]
        plan.resume = [r for r in paused if id(r) in stepping]
        rows = sum(r.n for r in chosen)
        started_rows = 0
        waiting_ids = set(map(id, ch.waiting))
        for r in sorted((r for r in chosen if id(r) in waiting_ids), key=_deadline):
            planner.start_budget(plan, r, ch.now, rows, ch.dec_now, planner.ahead_of(ch, r, started_rows))
            started_rows += r.n
        return rows

    def select(self, now: float, running: list[Request], paused: list[Request], waiting: list[Request],
               dec_now: float, margin: float, free_slots: int) -> list[Request]:
        """The requests that step this iteration, within max_batch rows and the KV-cache slots
        left (a start takes a slot per row; a pause or a resume copies through one free slot)."""
        c, lat = self.config, self.latency
        candidates = [*running, *paused, *waiting]
        if not paused and not any(map(self.may_stand_aside, candidates)) and not outranks(waiting, running):
            # nobody can stand aside, and no waiting request takes a row by priority: as
            # --no-slack, the running rows go on and waiting requests start by priority and
            # deadline while rows and slots last. No per-request laxity
            # is computed: this is most iterations of short-deadline traffic.
            chosen, rows = list(running), sum(r.n for r in running)
            held = 0  # rows and slots kept for waiting requests that do not fit yet
            for r in sorted(waiting, key=lambda r: (PRIORITY_RANK[r.priority], r.deadline)):
                if rows + held + r.n <= c.max_batch and free_slots - held >= r.n:
                    chosen.append(r)
                    rows += r.n
                    free_slots -= r.n
                else:
                    held += r.n  # it holds them (module docstring)
            return chosen
        full = self.budget.full_step()
        kind = {id(r): k for k, group in ((RUNNING, running), (PAUSED, paused), (WAITING, waiting)) for r in group}
        for r in candidates:
            r.urgent = now >= self.urgent_at(r, full, margin)
        if not paused and free_slots >= sum(r.n for r in waiting):
            # nobody needs anybody's time: everything steps, as long as every target still fits
            rows = sum(r.n for r in candidates)
            if rows <= c.max_batch and c.safety * lat.step.paced(rows) <= min(
                    (self.allowance(r, now, dec_now, margin) for r in candidates), default=math.inf):
                return candidates
        chosen: list[Request] = []
        rows, allow = 0, math.inf
        if free_slots < 1:  # nothing can stand aside: the running rows step whatever comes
            chosen = list(running)
            rows = sum(r.n for r in chosen)
            allow = min((self.allowance(r, now, dec_now, margin) for r in chosen), default=math.inf)
        taken = set(map(id, chosen))
        # a request that may not stand aside (its deadline is too near for its steps to come
        # back later without a loss) steps whenever a row is free, as an urgent one does
        first = {id(r) for r in candidates if r.urgent or not self.may_stand_aside(r)}
        held = 0  # rows and slots kept for waiting requests that do not fit yet: they bar later starts only
        for r in sorted(candidates, key=lambda r: (id(r) not in first, PRIORITY_RANK[r.priority],
                                                   r.deadline)):
            k = kind[id(r)]
            hold = held if k is WAITING else 0
            if id(r) in taken or rows + hold + r.n > c.max_batch or (k is WAITING and free_slots - hold < r.n) \
                    or (k is PAUSED and free_slots < 1):
                if k is WAITING and id(r) in first:
                    held += r.n
                continue
            if chosen and id(r) not in first and c.safety * lat.step.paced(rows + r.n) > allow:
                continue  # it has slack; joining now would cost someone in the batch its target
            chosen.append(r)
            rows += r.n
            if k is WAITING:
                free_slots -= r.n
            allow = min(allow, self.allowance(r, now, dec_now, margin))
        return chosen

    # ---- previews --------------------------------------------------------------------------
    def due(self, r: Request, now: float) -> bool:
        k = r.tokens
        return (r.preview_every > 0 and 0 < k < r.budget and k - r.last_preview >= r.preview_every
                and now - r.last_preview_at >= self.config.preview_interval_s)

    def previews(self, now: float, running: list[Request], rows: int, margin: float) -> list[Request]:
        """The due previews this iteration can afford, oldest first."""
        c, lat = self.config, self.latency
        if self._credit_at is not None:
            self._credit = min(c.preview_share, self._credit + c.preview_share * (now - self._credit_at))
        self._credit_at = now
        due = [r for r in running if self.due(r, now)]
        if not due:
            return []
        step = lat.step.paced(rows)
        # the least time any running request could give up this iteration and still decode in time
        spare = min(r.deadline - now - c.safety * (step + lat.decode.paced(r.n)) - margin for r in running)
        chosen, n = [], 0
        for r in sorted(due, key=lambda r: r.last_preview_at):
            cost = lat.decode.paced(n + r.n) - (lat.decode.paced(n) if n else 0.0)
            if cost > self._credit or c.safety * lat.decode.paced(n + r.n) > spare:
                continue
            self._credit -= cost
            chosen.append(r)
            n += r.n
        return chosen
