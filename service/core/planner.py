"""The Planner: each iteration's plan, read from request state and never written to it (the
Lifecycle applies the plan). In order: budgets reached (and the quality knee), the deadline
guard, then who steps: the policy starts, pauses and resumes (Policy.choose)."""
from __future__ import annotations

import bisect
import itertools
import math
import operator
from dataclasses import dataclass, field

from .budget import Budget
from .request import FinishReason, Request

_deadline = operator.attrgetter("deadline")


@dataclass
class IterationPlan:
    start: list[Request] = field(default_factory=list)
    budgets: dict[int, int] = field(default_factory=dict)  # id(request) -> its budget from its start on
    finish: list[tuple[Request, FinishReason]] = field(default_factory=list)
    pause: list[Request] = field(default_factory=list)  # stand aside, keeping the KV cache
    resume: list[Request] = field(default_factory=list)  # paused requests that step again
    short_starts: int = 0  # started with less than min_tokens: the last resort instead of a 503
    copy_s: float = 0.0  # predicted KV-cache row copies of these pauses and resumes
    # The following iterations need no plan (see Planner._quiet): for quiet_steps iterations,
    # while the clock is before quiet_until and costs are no higher than the ones assumed.
    quiet_steps: int = 0
    quiet_until: float = -math.inf
    quiet_step_cost: float = 0.0
    quiet_margin: float = 0.0


@dataclass
class Choice:
    """What a policy's choice of who steps works from."""

    now: float
    continuing: list[Request]  # running or paused requests that go on
    waiting: list[Request]
    rows: int  # active rows that go on
    dec_now: float  # this iteration's decode, before the next step
    margin: float
    free_slots: int  # KV-cache slots free once the finishing requests left
    deadlines: list[float]  # of the continuing requests, in order
    ahead_rows: list[int]  # rows of the continuing requests before each deadline
    paused_ids: set[int]


class Planner:
    def __init__(self, config, budget: Budget, policy):
        self.config, self.budget, self.policy = config, budget, policy
        self.latency = budget.latency

    def plan(self, now: float, running: list[Request], waiting: list[Request], running_rows: int,
             pressure: float, preview_rows: int = 0, paused: list[Request] = (), free_slots: int = 0) -> IterationPlan:
        """Which running (or paused) requests finish now (and why), which waiting ones join the
        batch, which pause or resume. preview_rows: previews decoded in this iteration."""
        c, lat, policy = self.config, self.latency, self.policy
        plan = IterationPlan()
        caps = policy.caps(pressure)
        paused_ids = set(map(id, paused))
        short_of_slots = free_slots < c.max_batch // 4
        rows, decode_rows, keep = running_rows, preview_rows, []
        # 1. budgets reached, and past the quality knee once it stands aside while slots run short
        for r in itertools.chain(running, paused):
            why = policy.stop(r, caps, id(r) in paused_ids, short_of_slots)
            if why is None:
                keep.append(r)
                continue
            plan.finish.append((r, why))
            decode_rows += r.n
            free_slots += r.n
            if id(r) not in paused_ids:  # a paused request holds no active row
                rows -= r.n
        margin = self.budget.margin()
        # 2. deadline guard: continue only if this iteration's decode, one more step, then the
        #    request's own decode and response still fit before its deadline
        continuing, deadlines, ahead_rows = keep, [], [0]
        if policy.guards:
            continuing, deadlines, ahead_rows, rows, decode_rows = self._guard(plan, now, keep, rows, decode_rows,
                                                                              margin, paused_ids)
        dec_now = lat.decode.paced(decode_rows) if decode_rows else 0.0
        # 3. who steps: the policy starts waiting requests, and may pause and resume
        choice = Choice(now, continuing, waiting, rows, dec_now, margin, free_slots, deadlines, ahead_rows, paused_ids)
        rows = policy.choose(self, plan, choice)
        if policy.guards and (plan.pause or plan.resume):
            self._guard_copies(plan, choice)
        if not (plan.pause or plan.resume or paused) and len(plan.start) == len(waiting):
            stepping = [r for r in continuing if all(r is not f for f, _ in plan.finish)] + plan.start
            self._quiet(plan, stepping, rows, margin)
        return plan

    def _guard(self, plan, now, keep, rows, decode_rows, margin, paused_ids):
        c, lat = self.config, self.latency
        dec_now = lat.decode.paced(decode_rows) if decode_rows else 0.0
        # (its decode waits only for rows with earlier deadlines: those before it in this order)
        continuing, deadlines, ahead_rows = [], [], [0]
        step_cost = lat.step.paced(rows)
        busiest = lat.busiest_decode()
        max_n = max((r.n for r in keep), default=0)
        ordered = sorted(keep, key=_deadline)
        for i, r in enumerate(ordered):
            # past the latest deadline any request could fail by, every later one continues:
            # the guard's test stays O(requests near their deadline), not O(batch)
            if r.deadline > now + c.safety * (dec_now + step_cost + lat.decode.paced(max_n + busiest)) + margin:
                rest = ordered[i:]
                continuing += rest
                deadlines += [r.deadline for r in rest]
                ahead_rows += itertools.accumulate((r.n for r in rest), initial=ahead_rows.pop())
                break
            need = c.safety * (dec_now + step_cost + lat.finish_decode(r.n, ahead_rows[-1], busiest)) + margin
            if now + need > r.deadline and r.tokens >= 1:
                plan.finish.append((r, FinishReason.DEADLINE_GUARD))
                decode_rows += r.n
                if id(r) not in paused_ids:
                    rows -= r.n
                step_cost, dec_now = lat.step.paced(rows), lat.decode.paced(decode_rows)
            else:
                continuing.append(r)
                deadlines.append(r.deadline)
                ahead_rows.append(ahead_rows[-1] + r.n)
        return continuing, deadlines, ahead_rows, rows, decode_rows

    def _guard_copies(self, plan: IterationPlan, ch: Choice) -> None:
        """Pausing and resuming copy KV-cache rows before the next step: a stepping request
        that the copies would make miss its deadline finishes now instead (its resume or
        start is undone)."""
        c, lat = self.config, self.latency
        copy_rows = 2 * sum(r.n for r in plan.pause) + sum(r.n for r in plan.resume)
        plan.copy_s = c.safety * lat.copy(copy_rows)
        stepping = [r for r in ch.continuing if id(r) not in ch.paused_ids and r not in plan.pause] + plan.resume
        rows = sum(r.n for r in stepping) + sum(r.n for r in plan.start)
        step_cost = lat.step.paced(rows)
        for r in stepping:
            if r.tokens >= 1 and ch.now + c.safety * (ch.dec_now + step_cost + lat.decode.paced(r.n)) + plan.copy_s \
                    + ch.margin > r.deadline:
                plan.finish.append((r, FinishReason.DEADLINE_GUARD))
                if r in plan.resume:
                    plan.resume.remove(r)

    def start_budget(self, plan: IterationPlan, r: Request, now: float, batch: int, dec_now: float,
                     ahead: int) -> None:
        """A waiting request about to start: its budget shrinks to the steps that still fit after
        this iteration's decode. When not even min_tokens fit any more it starts all the same
        with what fits (at least one token): an admitted request is answered, never refused."""
        fit = self.budget.deadline_tokens(r, now, batch, self.config.safety * dec_now, ahead,
                                          self.policy.best_effort_previews)
        k = min(r.budget, max(fit, 0))
        if k < max(1, r.min_tokens):
            plan.short_starts += 1
            k = max(1, k)
        plan.start.append(r)
        plan.budgets[id(r)] = k

    def ahead_of(self, ch: Choice, r: Request, started_rows: int) -> int:
        return ch.ahead_rows[bisect.bisect_left(ch.deadlines, r.deadline)] + started_rows

    def _quiet(self, plan: IterationPlan, continuing: list[Request], rows: int, margin: float) -> None:
        """How many of the following iterations can skip planning: no budget or quality stop
        falls due, and the deadline guard lets every row go on while the clock stays before
        quiet_until and step cost and margin stay as assumed here (the engine checks those,
        and plans as usual as soon as anything arrives, is cancelled or runs slow)."""
        if not continuing or any(r.preview_every for r in continuing):
            return
        c, lat, policy = self.config, self.latency, self.policy
        # tokens advance one per step: the first stop is due when tokens reach a budget
        steps = min(plan.budgets.get(id(r), r.budget) - r.tokens - 1 for r in continuing)
        if steps <= 0:
            return
        step_cost, until, ahead = lat.step.paced(rows), math.inf, 0
        if policy.guards:  # the guard's test of the next iterations, with no decode before their step
            busiest = lat.busiest_decode()
            most = c.safety * (step_cost + lat.decode.paced(max(r.n for r in continuing) + busiest)) + margin
            for r in sorted(continuing, key=_deadline):
                if r.deadline - most >= until:  # no later deadline can come sooner
                    break
                until = min(until, r.deadline - c.safety * (step_cost + lat.finish_decode(r.n, ahead, busiest)) - margin)
                ahead += r.n
        plan.quiet_steps, plan.quiet_until, plan.quiet_step_cost, plan.quiet_margin = steps, until, step_cost, margin
