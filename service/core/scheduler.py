"""Deadline-aware scheduling: admission with a token budget, per-iteration finish decisions,
and the request lifecycle.

The scheduler owns request state (as vLLM v1's scheduler does): the waiting and running
queues, statuses, KV-cache rows and expiry; the engine loop only executes what `schedule()`
returns and reports back (`update_from_output`, `finish`). It never touches tensors. Two
threads use it and each writes only its own part:

- the admitting thread (the engine core's IPC thread, or the event loop in-process) calls
  `admit()`, which writes only `AdmissionState` (the pressure EMA, the mean planned k);
- the engine thread calls everything else and writes everything else. Policies (selected by configuration, all on the same engine):

- anytime: budget from the deadline, the current batch and the latency model; a deadline
  guard stops a sequence when only decode-and-respond time is left; under pressure every
  sequence stops where the quality curve flattens (equal marginal quality per step);
  fast 503 when not even `min_tokens` fit.
- fixed:   always max_tokens (D), FIFO, no admission control (a standard server).
- drop:    always max_tokens, reject at admission when that is predicted to miss (Clockwork).
- static:  k from the deadline alone against the idle profile, ignoring load.

With `slack` on (`--slack`), the anytime policy also decides who steps each iteration:
requests with slack pause (KV cache kept) or wait while tighter ones step, previews are best
effort, and admission plans against the rows that will share a request's steps
(service/core/slack.py).
"""
from __future__ import annotations

import bisect
import itertools
import math
import operator
import time
from dataclasses import dataclass, field

import numpy as np

from ..settings import POLICIES, Settings
from .admission import Admission, AdmissionState, LoadSnapshot
from .latency import LatencyModel
from .request import FinishReason, Request, Sequence, Status
from .rows import RowTable
from .slack import PRIORITY_PRICE, SlackPolicy


_deadline = operator.attrgetter("deadline")
FAIR_PRESSURE = 0.2  # above this pressure, one request may not ask for more than fair_share of the rows


def _setting(name: str, scale: float = 1.0):
    """A default of Settings, the one place each setting's default is written."""
    return type(Settings.model_fields[name].default)(Settings.model_fields[name].default * scale) \
        if scale != 1.0 else Settings.model_fields[name].default


@dataclass
class SchedulerConfig:
    policy: str = _setting("policy")
    max_batch: int = _setting("max_batch")  # sequences stepped together (KV cache rows)
    max_queue: int = _setting("max_queue")  # sequences admitted but waiting for a row
    respond_margin_s: float = _setting("respond_margin_ms", 1e-3)  # least time kept for encoding + response
    safety: float = _setting("safety")  # multiplies every predicted cost in deadline decisions
    quality_price: float = _setting("quality_price")  # price of a step at full pressure, in units of 1/D
    pressure_alpha: float = 0.05  # EMA weight of each admission in the pressure signal
    # pressure = EMA share of admissions that got fewer tokens than on an idle server
    slack: bool = _setting("slack")  # slack-aware stepping, best-effort previews (anytime policy)
    park_rows: int = _setting("park_rows")  # KV-cache slots beyond max_batch for paused rows
    preview_interval_s: float = _setting("preview_interval_ms", 1e-3)  # least time between two previews
    preview_share: float = _setting("preview_share")  # of the engine's time, at most, for preview decodes
    fair_share: float = _setting("fair_share")  # under pressure, the most of max_batch one request may ask

    @classmethod
    def from_settings(cls, s: Settings) -> "SchedulerConfig":
        return cls(policy=s.policy, max_batch=s.max_batch, max_queue=s.max_queue,
                   respond_margin_s=s.respond_margin_ms / 1000, safety=s.safety, quality_price=s.quality_price,
                   slack=s.slack, park_rows=s.park_rows, preview_interval_s=s.preview_interval_ms / 1000,
                   preview_share=s.preview_share, fair_share=s.fair_share)

    @property
    def slack_aware(self) -> bool:
        return self.slack and self.policy == "anytime"

    def slots(self) -> int:
        """KV-cache slots the runtime allocates: the batch, and room for paused rows."""
        return self.max_batch + (self.park_rows if self.slack_aware else 0)


@dataclass
class IterationPlan:
    start: list[Request] = field(default_factory=list)
    finish: list[tuple[Request, FinishReason]] = field(default_factory=list)
    expire: list[Request] = field(default_factory=list)  # waited too long for min_tokens
    pause: list[Request] = field(default_factory=list)  # slack: stop stepping, keep the KV cache
    resume: list[Request] = field(default_factory=list)  # slack: paused requests that step again
    # The following iterations need no plan (see Scheduler._quiet): for quiet_steps iterations,
    # while the clock is before quiet_until and costs are no higher than the ones assumed.
    quiet_steps: int = 0
    quiet_until: float = -math.inf
    quiet_step_cost: float = 0.0
    quiet_margin: float = 0.0


@dataclass
class SchedulerOutput:
    """What the engine executes this iteration; the scheduler has already updated request state."""

    moves: list[tuple[int, int]] = field(default_factory=list)  # KV-cache row copies (src, dst), in order
    answered: list[Request] = field(default_factory=list)  # finished with nothing to decode (cancelled, expired)
    finish: list[tuple[Request, FinishReason]] = field(default_factory=list)  # decode, then finish
    previews: list[Request] = field(default_factory=list)  # decode a streaming preview
    plan: IterationPlan | None = None


def future_gain_rate(quality: np.ndarray) -> np.ndarray:
    """g[k] = best average quality gain per further token from k: max_j (q[j]-q[k])/(j-k)."""
    D = len(quality) - 1
    g = np.zeros(D + 1)
    for k in range(D):
        g[k] = np.max((quality[k + 1:] - quality[k]) / np.arange(1, D - k + 1))
    return g


class Scheduler:
    def __init__(self, config: SchedulerConfig, latency: LatencyModel, D: int, quality: np.ndarray):
        if config.policy not in POLICIES:
            raise ValueError(f"unknown policy {config.policy!r}; choose from {', '.join(POLICIES)}")
        self.config = config
        self.latency = latency
        self.D = D
        self.quality = quality
        self.gain = future_gain_rate(quality)
        # quality_cap(price) = first k with gain[k] < price = first k whose running minimum of
        # gain is below price; that running minimum falls, so its negation can be bisected
        self._neg_min_gain = (-np.minimum.accumulate(self.gain)).tolist()
        self.admission = AdmissionState(D)  # written by the admitting thread only
        self.slack = SlackPolicy(config, latency, D)
        # ---- request state: written by the engine thread only ----
        self.waiting: list[Request] = []  # admitted, not yet in the batch
        self.running: list[Request] = []  # in the batch
        self.paused: list[Request] = []  # slack: started, not stepping for now
        self.table = RowTable(config.max_batch, config.slots())  # which KV-cache slot holds which sequence
        self.previews_skipped = 0  # slack: previews due every preview_every tokens that were never decoded
        self.rows_changed = True  # rows joined or left since the engine last built its step inputs
        self.taken_id = 0  # id of the last request taken from the engine's inbox
        self.dequeued_rows = 0  # rows that left the waiting queue (admission counts the rest as queued)
        self._cancelled: list[Request] = []
        # what admission reads of the batch: (running rows, deadlines of running and waiting
        # requests in order, rows with a deadline before each), replaced whole after each plan
        self.load = LoadSnapshot()

    @property
    def rows(self) -> list[Sequence]:
        """The active rows: rows[i] is the sequence in KV-cache row i (the step's batch)."""
        return self.table.rows

    @property
    def pressure(self) -> float:
        return self.admission.pressure

    @pressure.setter
    def pressure(self, value: float) -> None:
        self.admission.pressure = value

    @property
    def mean_planned(self) -> float:
        return self.admission.mean_planned

    # ---- budgets -------------------------------------------------------------------------
    def respond_margin(self) -> float:
        """Time kept after the decode: the configured floor, or the slowest recent response."""
        return max(self.config.respond_margin_s, self.latency.respond())

    def margin(self) -> float:
        """Time a deadline decision keeps free besides predicted costs: responding, and the
        worst recent overrun of a predicted step or decode."""
        return self.respond_margin() + self.latency.jitter()

    def quality_cap(self, priority: str = "normal") -> int:
        """Under pressure, the k after which further tokens buy less quality than a step costs
        (a high-priority request pays half the price, a low-priority one twice)."""
        price = self.config.quality_price * PRIORITY_PRICE[priority] * self.pressure / self.D
        if price <= 0:
            return self.D
        return min(self.D, bisect.bisect_right(self._neg_min_gain, -price))

    def deadline_tokens(self, req: Request, now: float, batch: int, wait_s: float = 0.0,
                        ahead: int | None = None) -> int:
        """Steps that fit before the deadline at `batch` rows, after waiting, decoding (behind
        `ahead` rows with earlier deadlines) and responding."""
        c, lat = self.config, self.latency
        overhead = wait_s + c.safety * lat.finish_decode(req.n, ahead) + self.margin()
        step = lat.step(batch)
        per_step = c.safety * step
        if req.preview_every and c.slack_aware:  # best-effort previews, bounded (service/core/slack.py)
            per_step += c.safety * self.slack.preview_cost_per_step(req, step)
        elif req.preview_every:  # streaming: one preview decode every preview_every steps
            per_step += c.safety * lat.decode(req.n) / req.preview_every
        return max(0, math.floor((req.deadline - now - overhead) / per_step + 1e-9))

    def _wait_estimate(self, running: int, waiting: int, n: int) -> float:
        excess = running + waiting + n - self.config.max_batch
        if excess <= 0:
            return self.latency.iteration_in_flight(running)
        # rows free up as sequences finish: about mean_planned steps per generation
        return self.latency.step(self.config.max_batch) * self.mean_planned * min(1.0, excess / self.config.max_batch)

    def admit(self, req: Request, now: float, running: int, waiting: int, ahead: int | None = None,
              sharing: int | None = None, pending_steps: int = 0) -> Admission:
        """Decide in microseconds: a token budget for `req`, or a rejection with a reason.

        ahead: rows running or waiting with an earlier deadline (decoded before it), if known.
        sharing: slack scheduling: rows that will step beside it (urgent before its deadline).
        pending_steps: slack scheduling: row-steps of admissions the engine has not published."""
        c = self.config
        cap = min(req.max_tokens, self.D)
        if req.n > c.max_batch:  # its sequences step together: it could never start
            return Admission(False, reason="too_large", message=f"n={req.n} exceeds this server's max_batch={c.max_batch}")
        floor = max(1, req.min_tokens)
        # what an idle replica would plan: the deadline alone decides (fixed plans cap anyway)
        idle_fit = cap if c.policy == "fixed" else self.deadline_tokens(req, now, req.n, self.latency.step(1), 0)
        idle_k = min(cap, idle_fit) if idle_fit >= floor else 0
        if c.policy == "drop" and idle_fit < cap:
            idle_k = 0  # drop refuses what cannot have every token, idle or not
        if waiting + req.n > c.max_queue:
            return Admission(False, reason="queue_full", message="the queue is full",
                             retry_after_s=self._retry_after(running), idle_tokens=idle_k)
        if c.policy == "fixed":
            return self._accept(cap, idle_k)
        if c.slack_aware and sharing is not None:
            if self.pressure > FAIR_PRESSURE and req.n > c.fair_share * c.max_batch:
                return Admission(False, reason="fair_share", retry_after_s=self._retry_after(running), idle_tokens=idle_k,
                                 message=f"n={req.n} is more than {c.fair_share:.0%} of the batch while the server "
                                         f"is under load; send smaller requests")
            excess = sharing + req.n - c.max_batch
            wait = self.latency.iteration_in_flight(running) if excess <= 0 else \
                self.latency.step(c.max_batch) * self.mean_planned * min(1.0, excess / c.max_batch)
            batch = min(sharing + req.n, c.max_batch)
        else:
            wait = self._wait_estimate(running, waiting, req.n)
            batch = min(running + waiting + req.n, c.max_batch)
        if c.policy == "static":
            idle = self.latency.step.profiled(1) * c.safety
            k = math.floor((req.deadline_s - self.latency.decode.profiled(req.n) - c.respond_margin_s) / idle)
            k = min(cap, k)
            idle_k = min(idle_k, max(k, 0))  # static ignores load: it never loses to it
        else:
            fit = self.deadline_tokens(req, now, batch, wait, ahead)
            if c.slack_aware and sharing is not None and self.load.row_step_s > 0:
                # refuse now what promised work would later force out (a 503 at arrival, not
                # an admitted request expiring in the queue)
                end = req.deadline - c.safety * self.latency.decode(req.n) - self.margin()
                fit = min(fit, math.floor(self.load.promised_steps(req.n, end, now, pending_steps)))
            if c.policy == "drop":
                k = cap if fit >= cap else -1
            else:
                # pressure: did load (not the deadline itself) take tokens from this request?
                self.admission.observe_pressure(float(fit < min(cap, idle_fit)), c.pressure_alpha)
                # slack scheduling plans what the deadline allows and guarantees the knee (slack.py)
                knee = self.D if c.slack_aware else max(req.min_tokens, self.quality_cap(req.priority))
                k = min(cap, fit, knee)
        if k < floor:
            need = "all tokens" if c.policy == "drop" else f"min_tokens={floor}"
            return Admission(False, reason="deadline", retry_after_s=self._retry_after(running),
                             message=f"deadline_ms={round(req.deadline_s * 1000)} cannot be met with {need} "
                                     f"at the current load", idle_tokens=idle_k)
        return self._accept(k, max(idle_k, k))

    def _accept(self, k: int, idle_k: int) -> Admission:
        self.admission.mean_planned += 0.05 * (k - self.admission.mean_planned)
        return Admission(True, planned_tokens=k, idle_tokens=idle_k)

    def _retry_after(self, running: int) -> float:
        return max(1.0, self.latency.step(max(1, running)) * self.mean_planned)

    # ---- each iteration --------------------------------------------------------------------
    def plan(self, now: float, running: list[Request], waiting: list[Request], running_rows: int,
             preview_rows: int = 0, paused: list[Request] = (), free_slots: int | None = None) -> IterationPlan:
        """Which running (or paused) requests finish now (and why), which waiting ones join the
        batch, and with slack scheduling which pause or resume.

        preview_rows: streaming previews decoded in this iteration's decode batch.
        free_slots: KV-cache slots free before this plan (slack scheduling; default: the table's)."""
        c, lat = self.config, self.latency
        plan = IterationPlan()
        rows = running_rows
        finishing_rows = 0
        decode_rows = preview_rows
        caps = {p: self.quality_cap(p) if c.policy == "anytime" else self.D for p in PRIORITY_PRICE}
        self.slack.caps = caps
        # 1. budgets reached, and the quality knee under pressure (with slack scheduling: once
        #    paused past it while KV-cache slots run short; until then it waits for spare steps)
        paused_ids = set(map(id, paused))
        short_of_slots = (self.table.free_slots() if free_slots is None else free_slots) < c.max_batch // 4
        keep = []
        for r in itertools.chain(running, paused):
            if r.tokens >= r.planned_tokens:
                plan.finish.append((r, FinishReason.BUDGET))
            elif c.policy == "anytime" and r.tokens >= max(caps[r.priority], r.min_tokens) and (
                    not c.slack_aware or (id(r) in paused_ids and short_of_slots)):
                plan.finish.append((r, FinishReason.QUALITY))
            else:
                keep.append(r)
                continue
            finishing_rows += r.n
            if id(r) not in paused_ids:  # a paused request holds no active row
                rows -= r.n
        decode_rows += finishing_rows
        # 2. deadline guard: continue only if this iteration's decode, one more step, then this
        #    request's own decode and response still fit before its deadline
        margin = self.margin()
        dec_now = lat.decode.paced(decode_rows) if decode_rows else 0.0
        #    (its decode waits only for rows with earlier deadlines: those before it in this order)
        deadlines, ahead_rows = [], [0]  # continuing requests by deadline, rows before each
        continuing = keep
        if c.policy == "anytime":
            continuing = []
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
        # 3. slack: who steps (urgent first, then by deadline while the batch stays affordable)
        if c.slack_aware:
            free = self.table.free_slots() if free_slots is None else free_slots
            self._select(plan, now, continuing, waiting, lat.decode.paced(decode_rows) if decode_rows else 0.0,
                         margin, free + sum(r.n for r, _ in plan.finish), deadlines, ahead_rows, paused_ids)
            if not (plan.pause or plan.resume or paused) and len(plan.start) + len(plan.expire) == len(waiting):
                self._quiet(plan, continuing + plan.start, rows + sum(r.n for r in plan.start), caps, margin)
            return plan
        # 3. admit waiting requests into free rows (earliest deadline first for anytime)
        order = sorted(waiting, key=_deadline) if c.policy == "anytime" else waiting
        started_rows = 0  # rows started just now: earlier deadlines than the next in `order`
        for r in order:
            if rows + r.n > c.max_batch:
                if c.policy == "anytime":
                    continue  # a smaller request behind may still fit
                break
            if c.policy == "anytime":  # it starts after this iteration's decode
                ahead = ahead_rows[bisect.bisect_left(deadlines, r.deadline)] + started_rows
                if not self._still_fits(r, now, rows + r.n, dec_now, ahead):
                    plan.expire.append(r)
                    continue
            plan.start.append(r)
            rows += r.n
            started_rows += r.n
        if len(plan.start) + len(plan.expire) == len(waiting):
            self._quiet(plan, continuing + plan.start, rows, caps, margin)
        return plan

    def _select(self, plan: IterationPlan, now: float, continuing: list[Request], waiting: list[Request],
                dec_now: float, margin: float, free_slots: int, deadlines: list[float], ahead_rows: list[int],
                paused_ids: set[int]) -> None:
        """Slack scheduling's step 3: pause, resume and start from SlackPolicy.select; a waiting
        request starts with the tokens that still fit (or expires, as in step 3 below)."""
        c = self.config
        hopeless = {id(r) for r in waiting  # not even alone in the batch: no row for it
                    if self.deadline_tokens(r, now, r.n, c.safety * dec_now, 0) < max(1, r.min_tokens)}
        plan.expire += [r for r in waiting if id(r) in hopeless]
        waiting = [r for r in waiting if id(r) not in hopeless]
        running = [r for r in continuing if id(r) not in paused_ids]
        paused = [r for r in continuing if id(r) in paused_ids]
        chosen = self.slack.select(now, running, paused, waiting, dec_now, margin, free_slots)
        stepping = set(map(id, chosen))
        plan.pause = [r for r in running if id(r) not in stepping]
        plan.resume = [r for r in paused if id(r) in stepping]
        rows = sum(r.n for r in chosen)
        started_rows = 0
        waiting_ids = set(map(id, waiting))
        for r in sorted((r for r in chosen if id(r) in waiting_ids), key=_deadline):
            ahead = ahead_rows[bisect.bisect_left(deadlines, r.deadline)] + started_rows
            if not self._still_fits(r, now, rows, dec_now, ahead):
                plan.expire.append(r)
                continue
            plan.start.append(r)
            started_rows += r.n

    def _still_fits(self, r: Request, now: float, batch: int, dec_now: float, ahead: int) -> bool:
        """A waiting request about to start: its plan shrinks to the steps that still fit after
        this iteration's decode; False when not even min_tokens do (it expires)."""
        fit = self.deadline_tokens(r, now, batch, self.config.safety * dec_now, ahead)
        r.planned_tokens = min(r.planned_tokens, max(fit, 0))
        return r.planned_tokens >= max(1, r.min_tokens)

    def _quiet(self, plan: IterationPlan, continuing: list[Request], rows: int, caps: dict[str, int],
               margin: float) -> None:
        """How many of the following iterations can skip planning: no budget or quality stop
        falls due, and the deadline guard lets every row go on while the clock stays before
        quiet_until and step cost and margin stay as assumed here (the engine checks those,
        and plans as usual as soon as anything arrives, is cancelled or runs slow)."""
        if not continuing or any(r.preview_every for r in continuing):
            return
        c, lat = self.config, self.latency
        anytime = c.policy == "anytime"
        # tokens advance one per step: the first stop is due when tokens reach a budget or the cap
        steps = min((min(r.planned_tokens, max(caps[r.priority], r.min_tokens)) if anytime else r.planned_tokens)
                    - r.tokens - 1 for r in continuing)
        if steps <= 0:
            return
        step_cost, until, ahead = lat.step.paced(rows), math.inf, 0
        if anytime:  # the guard's test of the next iterations, with no decode before their step
            busiest = lat.busiest_decode()
            most = c.safety * (step_cost + lat.decode.paced(max(r.n for r in continuing) + busiest)) + margin
            for r in sorted(continuing, key=_deadline):
                if r.deadline - most >= until:  # no later deadline can come sooner
                    break
                until = min(until, r.deadline - c.safety * (step_cost + lat.finish_decode(r.n, ahead, busiest)) - margin)
                ahead += r.n
        plan.quiet_steps, plan.quiet_until, plan.quiet_step_cost, plan.quiet_margin = steps, until, step_cost, margin

    # ---- the request lifecycle (engine thread) ---------------------------------------------
    def add(self, req: Request) -> None:
        """An admitted request taken from the engine's inbox joins the waiting queue."""
        self.waiting.append(req)
        self.taken_id = req.id

    def cancel(self, req: Request) -> None:
        """The client went away: its rows are freed and it finishes at the next schedule()."""
        if req.status is not Status.FINISHED and not req.cancelled:
            req.cancelled = True
            self._cancelled.append(req)

    def has_news(self) -> bool:
        """Something the last plan did not see: an arrival or a cancellation."""
        return bool(self.waiting) or bool(self._cancelled)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting) or bool(self.paused) or bool(self._cancelled)

    def schedule(self, now: float) -> SchedulerOutput:
        """Plan this iteration and apply it to request state: cancelled and expired requests
        finish, finishing requests leave their rows (the engine decodes them next), waiting
        requests join the batch. Returns what the engine must execute."""
        out = SchedulerOutput()
        for r in self._cancelled:
            if r.status is not Status.FINISHED:
                self._leave(r, out.moves)
                self.finish(r, FinishReason.CANCELLED)
                out.answered.append(r)
        self._cancelled.clear()
        if self.config.slack_aware:
            due = self.slack.previews(now, self.running, len(self.rows), self.margin())
        else:
            due = [r for r in self.running if r.preview_due()]
        plan = self.plan(now, self.running, self.waiting, len(self.rows), preview_rows=sum(r.n for r in due),
                         paused=self.paused, free_slots=self.table.free_slots())
        for r in plan.expire:
            self._leave(r, out.moves)
            self.finish(r, FinishReason.ERROR, status=503,
                        error="by the time the request could start, its deadline no longer fit min_tokens")
            out.answered.append(r)
        finishing = set()
        for r, _ in plan.finish:
            self._leave(r, out.moves)
            finishing.add(r)
        for r in plan.pause:
            self._pause(r, out.moves)
        for r in plan.resume:
            self._resume(r, out.moves)
        for r in plan.start:
            self._start(r, now, out.moves)
        out.finish = plan.finish
        out.previews = [r for r in due if r not in finishing]
        out.plan = plan
        self._publish_load()
        return out

    def update_from_output(self, tokens: list[int], compute_s: float) -> None:
        """One step's sampled token for every row, in row order."""
        for s, tok in zip(self.rows, tokens):
            s.codes.append(tok)
        for r in self.running:
            r.compute_s += compute_s

    def decoded(self, r: Request, samples, compute_s: float, reason: FinishReason | None) -> None:
        """A decode of r's current prefix: its final samples (reason given) or a preview."""
        r.compute_s += compute_s
        if r.preview_every and self.config.slack_aware:  # nominal previews passed over since the last one
            k, every = r.tokens, r.preview_every
            self.previews_skipped += max(0, k // every - r.last_preview // every - 1 if reason is None
                                         else (k - 1) // every - r.last_preview // every)
        if reason is None:
            r.last_preview, r.last_preview_at = r.tokens, time.monotonic()
            return
        r.samples = samples
        self.finish(r, reason)

    def fail(self, requests, message: str, status: int = 500) -> list[tuple[int, int]]:
        """Finish requests with an error; returns the KV-cache row moves their leaving needs."""
        moves: list[tuple[int, int]] = []
        for r in requests:
            if r.status is Status.FINISHED:
                continue
            self._leave(r, moves)
            self.finish(r, FinishReason.ERROR, error=message, status=status)
        self._publish_load()
        return moves

    def finish(self, r: Request, reason: FinishReason, error: str | None = None, status: int = 0) -> None:
        r.status = Status.FINISHED
        r.finish_reason, r.error, r.error_status = reason, error, status
        r.finished = time.monotonic()
        for s in r.sequences:
            s.status, s.finish_reason = Status.FINISHED, reason

    def _start(self, r: Request, now: float, moves: list[tuple[int, int]]) -> None:
        self.waiting.remove(r)
        self.dequeued_rows += r.n
        r.status, r.started = Status.RUNNING, now
        self._set_rows(r, Status.RUNNING, self.table.start, moves)
        self.running.append(r)

    def _pause(self, r: Request, moves: list[tuple[int, int]]) -> None:
        self.running.remove(r)
        r.status = Status.PAUSED
        self._set_rows(r, Status.PAUSED, self.table.pause, moves)
        self.paused.append(r)

    def _resume(self, r: Request, moves: list[tuple[int, int]]) -> None:
        self.paused.remove(r)
        r.status = Status.RUNNING
        self._set_rows(r, Status.RUNNING, self.table.resume, moves)
        self.running.append(r)

    def _set_rows(self, r: Request, status: Status, change, moves: list[tuple[int, int]]) -> None:
        self.rows_changed = True
        for s in r.sequences:
            change(s, moves)
            s.status = status

    def _leave(self, r: Request, moves: list[tuple[int, int]]) -> None:
        """Take r out of the queues and free its KV-cache slots (RowTable keeps rows 0..B-1)."""
        if r in self.waiting:
            self.waiting.remove(r)
            self.dequeued_rows += r.n
        if r in self.running:
            self.running.remove(r)
        if r in self.paused:
            self.paused.remove(r)
        for s in r.sequences:
            if s.slot >= 0:
                self.rows_changed = True
                self.table.leave(s, moves)

    def _publish_load(self) -> None:
        reqs = sorted(self.running + self.paused + self.waiting, key=_deadline)
        deadlines = tuple(map(_deadline, reqs))
        rows_before = tuple(itertools.accumulate((r.n for r in reqs), initial=0))
        if not self.config.slack_aware:
            self.load = LoadSnapshot(len(self.rows), deadlines, rows_before)
            return
        full, margin = self.slack.full_step(), self.margin()
        keyed = sorted((self.slack.urgent_at(r, full, margin), r.n) for r in reqs)
        row_step = full / self.config.max_batch
        demand = tuple(itertools.accumulate((r.n * max(0, self.slack.target(r) - r.tokens) for r in reqs),
                                            initial=0))
        spare = [math.inf] * (len(reqs) + 1)
        for i in range(len(reqs) - 1, -1, -1):
            spare[i] = min(spare[i + 1], deadlines[i] / row_step - demand[i + 1])
        self.load = LoadSnapshot(len(self.rows), deadlines, rows_before, tuple(t for t, _ in keyed),
                                 tuple(itertools.accumulate((n for _, n in keyed), initial=0)),
                                 row_step, demand, tuple(spare))
