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
from .latency import LatencyModel
from .request import FinishReason, Request, Sequence, Status


_deadline = operator.attrgetter("deadline")


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

    @classmethod
    def from_settings(cls, s: Settings) -> "SchedulerConfig":
        return cls(policy=s.policy, max_batch=s.max_batch, max_queue=s.max_queue,
                   respond_margin_s=s.respond_margin_ms / 1000, safety=s.safety, quality_price=s.quality_price)


@dataclass
class Admission:
    ok: bool
    planned_tokens: int = 0
    reason: str = ""  # for rejections: deadline | queue_full
    message: str = ""
    retry_after_s: float = 0.0
    # tokens per sample an idle replica would have planned (0: the deadline itself leaves too
    # few); what load took is measured against it (the autoscaling signal, EngineCore)
    idle_tokens: int = 0


@dataclass
class IterationPlan:
    start: list[Request] = field(default_factory=list)
    finish: list[tuple[Request, FinishReason]] = field(default_factory=list)
    expire: list[Request] = field(default_factory=list)  # waited too long for min_tokens
    # The following iterations need no plan (see Scheduler._quiet): for quiet_steps iterations,
    # while the clock is before quiet_until and costs are no higher than the ones assumed.
    quiet_steps: int = 0
    quiet_until: float = -math.inf
    quiet_step_cost: float = 0.0
    quiet_margin: float = 0.0


@dataclass(frozen=True)
class LoadSnapshot:
    """The batch as the last plan left it, for admission on another thread."""

    running_rows: int = 0
    deadlines: tuple[float, ...] = ()  # running and waiting requests, earliest first
    rows_before: tuple[int, ...] = (0,)  # rows_before[i]: rows of the requests before deadlines[i]

    def rows_ahead_of(self, deadline: float) -> int:
        return self.rows_before[bisect.bisect_left(self.deadlines, deadline)]


class AdmissionState:
    """What admission learns: written only by the admitting thread, read by the engine thread.
    The pressure EMA and its time are one tuple, so a reader never sees half an update."""

    HALF_LIFE_S = 2.0

    def __init__(self, D: int):
        self._pressure = (0.0, time.monotonic())  # EMA share of admissions whose tokens load took away
        self.mean_planned = float(D)

    @property
    def pressure(self) -> float:
        """The EMA, decayed by the time since the last admission (an idle server has none)."""
        value, at = self._pressure
        return value * 0.5 ** ((time.monotonic() - at) / self.HALF_LIFE_S)

    @pressure.setter
    def pressure(self, value: float) -> None:
        self._pressure = (value, time.monotonic())

    def observe_pressure(self, lost: float, alpha: float) -> None:
        p = self.pressure
        self.pressure = p + alpha * (lost - p)


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
        # ---- request state: written by the engine thread only ----
        self.waiting: list[Request] = []  # admitted, not yet in the batch
        self.running: list[Request] = []  # in the batch
        self.rows: list[Sequence] = []  # rows[i] is the sequence in KV-cache row i
        self.rows_changed = True  # rows joined or left since the engine last built its step inputs
        self.taken_id = 0  # id of the last request taken from the engine's inbox
        self.dequeued_rows = 0  # rows that left the waiting queue (admission counts the rest as queued)
        self._cancelled: list[Request] = []
        # what admission reads of the batch: (running rows, deadlines of running and waiting
        # requests in order, rows with a deadline before each), replaced whole after each plan
        self.load = LoadSnapshot()

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

    def quality_cap(self) -> int:
        """Under pressure, the k after which further tokens buy less quality than a step costs."""
        price = self.config.quality_price * self.pressure / self.D
        if price <= 0:
            return self.D
        return min(self.D, bisect.bisect_right(self._neg_min_gain, -price))

    def deadline_tokens(self, req: Request, now: float, batch: int, wait_s: float = 0.0,
                        ahead: int | None = None) -> int:
        """Steps that fit before the deadline at `batch` rows, after waiting, decoding (behind
        `ahead` rows with earlier deadlines) and responding."""
        c, lat = self.config, self.latency
        overhead = wait_s + c.safety * lat.finish_decode(req.n, ahead) + self.margin()
        per_step = c.safety * lat.step(batch)
        if req.preview_every:  # streaming: one preview decode every preview_every steps
            per_step += c.safety * lat.decode(req.n) / req.preview_every
        return max(0, math.floor((req.deadline - now - overhead) / per_step + 1e-9))

    def _wait_estimate(self, running: int, waiting: int, n: int) -> float:
        excess = running + waiting + n - self.config.max_batch
        if excess <= 0:
            return self.latency.iteration_in_flight(running)
        # rows free up as sequences finish: about mean_planned steps per generation
        return self.latency.step(self.config.max_batch) * self.mean_planned * min(1.0, excess / self.config.max_batch)

    def admit(self, req: Request, now: float, running: int, waiting: int, ahead: int | None = None) -> Admission:
        """Decide in microseconds: a token budget for `req`, or a rejection with a reason.

        ahead: rows running or waiting with an earlier deadline (decoded before it), if known."""
        c = self.config
        cap = min(req.max_tokens, self.D)
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
        wait = self._wait_estimate(running, waiting, req.n)
        batch = min(running + waiting + req.n, c.max_batch)
        if c.policy == "static":
            idle = self.latency.step.profiled(1) * c.safety
            k = math.floor((req.deadline_s - self.latency.decode.profiled(req.n) - c.respond_margin_s) / idle)
            k = min(cap, k)
            idle_k = min(idle_k, max(k, 0))  # static ignores load: it never loses to it
        else:
            fit = self.deadline_tokens(req, now, batch, wait, ahead)
            if c.policy == "drop":
                k = cap if fit >= cap else -1
            else:
                # pressure: did load (not the deadline itself) take tokens from this request?
                self.admission.observe_pressure(float(fit < min(cap, idle_fit)), c.pressure_alpha)
                k = min(cap, fit, max(req.min_tokens, self.quality_cap()))
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
             preview_rows: int = 0) -> IterationPlan:
        """Which running requests finish now (and why), and which waiting ones join the batch.

        preview_rows: streaming previews decoded in this iteration's decode batch."""
        c, lat = self.config, self.latency
        plan = IterationPlan()
        rows = running_rows
        finishing_rows = 0
        decode_rows = preview_rows
        cap_q = self.quality_cap() if c.policy == "anytime" else self.D
        # 1. budgets reached, and the quality knee under pressure
        keep = []
        for r in running:
            if r.tokens >= r.planned_tokens:
                plan.finish.append((r, FinishReason.BUDGET))
            elif c.policy == "anytime" and r.tokens >= max(cap_q, r.min_tokens):
                plan.finish.append((r, FinishReason.QUALITY))
            else:
                keep.append(r)
                continue
            finishing_rows += r.n
        rows -= finishing_rows
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
                    rows -= r.n
                    step_cost, dec_now = lat.step.paced(rows), lat.decode.paced(decode_rows)
                else:
                    continuing.append(r)
                    deadlines.append(r.deadline)
                    ahead_rows.append(ahead_rows[-1] + r.n)
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
                fit = self.deadline_tokens(r, now, rows + r.n, c.safety * dec_now, ahead)
                r.planned_tokens = min(r.planned_tokens, max(fit, 0))
                if r.planned_tokens < max(1, r.min_tokens):
                    plan.expire.append(r)
                    continue
            plan.start.append(r)
            rows += r.n
            started_rows += r.n
        if len(plan.start) + len(plan.expire) == len(waiting):
            self._quiet(plan, continuing + plan.start, rows, cap_q, margin)
        return plan

    def _quiet(self, plan: IterationPlan, continuing: list[Request], rows: int, cap_q: int, margin: float) -> None:
        """How many of the following iterations can skip planning: no budget or quality stop
        falls due, and the deadline guard lets every row go on while the clock stays before
        quiet_until and step cost and margin stay as assumed here (the engine checks those,
        and plans as usual as soon as anything arrives, is cancelled or runs slow)."""
        if not continuing or any(r.preview_every for r in continuing):
            return
        c, lat = self.config, self.latency
        anytime = c.policy == "anytime"
        # tokens advance one per step: the first stop is due when tokens reach a budget or the cap
        steps = min((min(r.planned_tokens, max(cap_q, r.min_tokens)) if anytime else r.planned_tokens) - r.tokens - 1
                    for r in continuing)
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
        return bool(self.running) or bool(self.waiting) or bool(self._cancelled)

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
        due = [r for r in self.running if r.preview_due()]
        plan = self.plan(now, self.running, self.waiting, len(self.rows), preview_rows=sum(r.n for r in due))
        for r in plan.expire:
            self._leave(r, out.moves)
            self.finish(r, FinishReason.ERROR, status=503,
                        error="by the time the request could start, its deadline no longer fit min_tokens")
            out.answered.append(r)
        finishing = set()
        for r, _ in plan.finish:
            self._leave(r, out.moves)
            finishing.add(r)
        for r in plan.start:
            self._start(r, now)
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
        if reason is None:
            r.last_preview = r.tokens
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

    def _start(self, r: Request, now: float) -> None:
        self.waiting.remove(r)
        self.dequeued_rows += r.n
        r.status, r.started = Status.RUNNING, now
        self.rows_changed = True
        for s in r.sequences:
            s.slot, s.status = len(self.rows), Status.RUNNING
            self.rows.append(s)
        self.running.append(r)

    def _leave(self, r: Request, moves: list[tuple[int, int]]) -> None:
        """Take r out of the queues; its rows are filled with the last rows so rows stay 0..B-1."""
        if r in self.waiting:
            self.waiting.remove(r)
            self.dequeued_rows += r.n
        if r in self.running:
            self.running.remove(r)
        for s in r.sequences:
            if s.slot < 0:
                continue
            self.rows_changed = True
            last = self.rows.pop()
            if last is not s:
                moves.append((last.slot, s.slot))
                last.slot = s.slot
                self.rows[s.slot] = last
            s.slot = -1

    def _publish_load(self) -> None:
        reqs = sorted(self.running + self.waiting, key=_deadline)
        self.load = LoadSnapshot(len(self.rows), tuple(map(_deadline, reqs)),
                                 tuple(itertools.accumulate((r.n for r in reqs), initial=0)))
