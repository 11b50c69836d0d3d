"""Slack-aware scheduling (issue #10): who steps this iteration, and which previews are decoded.

A request's laxity is the time it can still stand aside and make its *target* by its deadline
if, from then on, it steps every iteration of a full batch. The target is its planned tokens,
or under pressure the quality knee (Scheduler.quality_cap): slack turns into quality, since
tokens past the knee are taken only from spare steps, never forced. Requests whose laxity is
down to a few steps are *urgent* (until they reach the target: no pause-resume flapping at the
boundary) and always step. The rest step in deadline order as long as the batch they join stays cheap enough
for every request already in it to make its plan (a bulk request with seconds to spare does
not slow an interactive one down to a coarser answer); otherwise they pause, keeping their KV
cache rows, or stay queued. Admission plans a new request against the rows that will share
its steps: those urgent before its deadline (LoadSnapshot.rows_sharing).

Previews are best effort: at most one per `preview_interval_s` per request, their decodes
limited to `preview_share` of the engine's time (a credit that accrues with the clock), and
none that would leave a running request without the time its own decode and response need.
"""
from __future__ import annotations

import math
import operator

from .latency import LatencyModel
from .request import Request

RUNNING, PAUSED, WAITING = "running", "paused", "waiting"

HORIZON_STEPS = 3  # laxity (in full-batch steps) at which a request turns urgent
PRIORITY_PRICE = {"high": 0.5, "normal": 1.0, "low": 2.0}  # multiplies the quality price

_deadline = operator.attrgetter("deadline")


class SlackPolicy:
    def __init__(self, config, latency: LatencyModel, D: int):
        self.config, self.latency = config, latency
        self.caps = {p: D for p in PRIORITY_PRICE}  # the quality knee per priority, set by each plan
        self._credit = 0.0  # seconds of preview decode the share has accrued
        self._credit_at: float | None = None

    def full_step(self) -> float:
        """What one step costs, with its safety factor, when every row is busy."""
        return self.config.safety * self.latency.step.paced(self.config.max_batch)

    def target(self, r: Request) -> int:
        """The tokens r is guaranteed: its plan, or under pressure the quality knee."""
        return min(r.planned_tokens, max(r.min_tokens, self.caps[r.priority]))

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
        c = self.config
        remaining = self.target(r) - r.tokens
        if remaining <= 0:
            return math.inf
        left = r.deadline - now - c.safety * (dec_now + self.latency.decode.paced(r.n)) - margin
        return left / remaining

    def select(self, now: float, running: list[Request], paused: list[Request], waiting: list[Request],
               dec_now: float, margin: float, free_slots: int) -> list[Request]:
        """The requests that step this iteration: urgent ones first, then by deadline, within
        max_batch rows and the KV-cache slots left (a start takes a slot per row; a pause or
        a resume copies through one free slot and takes none)."""
        c, lat = self.config, self.latency
        full = self.full_step()
        kind = {id(r): k for k, group in ((RUNNING, running), (PAUSED, paused), (WAITING, waiting)) for r in group}
        candidates = [*running, *paused, *waiting]
        for r in candidates:
            r.urgent = now >= self.urgent_at(r, full, margin)
        chosen: list[Request] = []
        rows, allow = 0, math.inf
        if free_slots < 1:  # nothing can stand aside: the running rows step whatever comes
            chosen = list(running)
            rows = sum(r.n for r in chosen)
            allow = min((self.allowance(r, now, dec_now, margin) for r in chosen), default=math.inf)
        taken = set(map(id, chosen))
        for r in sorted(candidates, key=lambda r: (not r.urgent, r.deadline)):
            k = kind[id(r)]
            if id(r) in taken or rows + r.n > c.max_batch or (k is WAITING and free_slots < r.n) \
                    or (k is PAUSED and free_slots < 1):
                continue
            if chosen and not r.urgent and c.safety * lat.step.paced(rows + r.n) > allow:
                continue  # it has slack; joining now would cost someone in the batch its plan
            chosen.append(r)
            rows += r.n
            if k is WAITING:
                free_slots -= r.n
            allow = min(allow, self.allowance(r, now, dec_now, margin))
        return chosen

    # ---- previews --------------------------------------------------------------------------
    def due(self, r: Request, now: float) -> bool:
        k = r.tokens
        return (r.preview_every > 0 and 0 < k < r.planned_tokens and k - r.last_preview >= r.preview_every
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

    def preview_cost_per_step(self, r: Request, step: float) -> float:
        """Admission's share of r's previews in each of its steps (bounded as above)."""
        if not r.preview_every:
            return 0.0
        c = self.config
        per_preview = self.latency.decode(r.n)
        rate = min(1.0 / r.preview_every, step / c.preview_interval_s if c.preview_interval_s > 0 else 1.0)
        return min(per_preview * rate, c.preview_share * step)
