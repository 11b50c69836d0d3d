"""Scheduling policies as objects with one interface: how a request is admitted (its budget),
when a stepping request stops, who steps each iteration, and which previews are decoded.

- anytime (the default): a budget from the deadline, the batch that will share its steps and
  the latency model; a deadline guard; under pressure the guarantee stops at the quality knee
  and tokens past it come only from spare steps; a request stands aside (pauses, starts later,
  gets fewer previews) only when another needs its time (service/core/slack.py); fast 503 when
  not even min_tokens fit.
- fixed:   always max_tokens (D), FIFO, no admission control (a standard server).
- drop:    always max_tokens, reject at admission when that is predicted to miss (Clockwork).
- static:  k from the deadline alone against the idle profile, ignoring load.

The Planner (service/core/planner.py) and the Admitter (service/core/admitter.py) call these
hooks; neither asks which policy it runs.
"""
from __future__ import annotations

import math

from ..refusals import Refusal
from .admission import Admission, AdmissionState, AdmitView, refuse
from .budget import PRIORITY_PRICE, Budget
from .request import FinishReason, Request
from .slack import Stepping

FAIR_PRESSURE = 0.2  # above this pressure, one request may not ask for more than fair_share of the rows
# The share of the batch's rows and throughput a request of each priority may be promised: low
# leaves headroom that only normal and high can take, so a flood of low work is refused at the
# door while high-priority requests still find rows (and takes slack from running low work).
PRIORITY_SHARE = {"high": 1.0, "normal": 1.0, "low": 0.75}
# A request whose deadline holds this many full-length generations at a full batch is planned
# for all the tokens its deadline allows, guaranteed the knee, and steps past the knee only on
# spare steps (standing aside when others need them). A shorter one stops at the knee: its
# extra steps would compete with arrivals due in the same window (a paired sweep showed it).
LONG_GENERATIONS = 4


class Policy:
    """The common interface; the methods below are the fixed-length defaults."""

    name = ""
    guards = False  # stop a request early when only its decode and response fit (deadline guard)
    best_effort_previews = False  # previews within a share of the engine's time, not every preview_every
    stands_aside = False  # requests pause (KV-cache rows parked) or start later when others need the time
    stepping = None  # who steps and which previews (the anytime policy's Stepping)

    def __init__(self, config, budget: Budget):
        self.config, self.budget, self.D = config, budget, budget.D

    # ---- admission (the admitting thread) ---------------------------------------------------
    def admit(self, req: Request, view: AdmitView, state: AdmissionState) -> Admission:
        c = self.config
        if req.n > c.max_batch:  # its sequences step together: it could never start
            return refuse(Refusal.TOO_LARGE, f"n={req.n} exceeds this server's max_batch={c.max_batch}")
        cap, floor = min(req.max_tokens, self.D), max(1, req.min_tokens)
        idle_k = self.idle_tokens(req, view.now, cap, floor)
        if view.waiting + req.n > c.max_queue:
            return refuse(Refusal.QUEUE_FULL, "the queue is full", self._retry(view, state), idle_k)
        return self.budget_for(req, view, state, cap, floor, idle_k)

    def idle_tokens(self, req: Request, now: float, cap: int, floor: int) -> int:
        """What an idle replica would plan: the deadline alone decides."""
        fit = self.budget.deadline_tokens(req, now, req.n, self.budget.latency.step(1), 0, self.best_effort_previews)
        return min(cap, fit) if fit >= floor else 0

    def budget_for(self, req: Request, view: AdmitView, state: AdmissionState, cap: int, floor: int,
                   idle_k: int) -> Admission:
        return self.accept(state, cap, idle_k)

    def fit_all(self, req: Request, view: AdmitView, state: AdmissionState, late_by: float = 0.0) -> int:
        """Tokens that fit when every admitted row steps beside it (and it waits for a row,
        late_by seconds longer than estimated)."""
        b = self.budget
        wait = b.wait_estimate(view.running, view.waiting, req.n, state.mean_planned)
        return b.deadline_tokens(req, view.now, min(view.running + view.waiting + req.n, self.config.max_batch),
                                 wait + late_by, view.ahead, self.best_effort_previews)

    def queued(self, req: Request, view: AdmitView) -> bool:
        """It has to wait for rows to free up in a full batch."""
        return view.running + view.waiting + req.n > self.config.max_batch

    def accept(self, state: AdmissionState, k: int, idle_k: int, start_by: float = math.nan) -> Admission:
        state.observe_planned(k)
        return Admission(True, planned_tokens=k, idle_tokens=max(idle_k, k), start_by=start_by)

    def deadline_refusal(self, req: Request, view: AdmitView, state: AdmissionState, need: str,
                         idle_k: int) -> Admission:
        return refuse(Refusal.DEADLINE, f"deadline_ms={round(req.deadline_s * 1000)} cannot be met with {need} "
                      f"at the current load", self._retry(view, state), idle_k)

    def _retry(self, view: AdmitView, state: AdmissionState) -> float:
        return self.budget.retry_after(view.running, state.mean_planned)

    # ---- each iteration (the engine thread) ------------------------------------------------
    def caps(self, pressure: float) -> dict[str, int]:
        """The tokens each priority is guaranteed at most (the quality knee under pressure)."""
        return dict.fromkeys(PRIORITY_PRICE, self.D)

    def stop(self, r: Request, caps: dict[str, int], paused: bool, short_of_slots: bool) -> FinishReason | None:
        return FinishReason.BUDGET if r.tokens >= r.budget else None

    def choose(self, planner, plan, ch) -> int:
        """Who steps: waiting requests start in arrival order while rows are free (nothing
        pauses). Returns the active rows of the next step."""
        rows = ch.rows
        for r in ch.waiting:
            if rows + r.n > self.config.max_batch:
                break
            plan.start.append(r)
            plan.budgets[id(r)] = r.budget
            rows += r.n
        return rows

    def previews(self, now: float, running: list[Request], rows: int, margin: float) -> list[Request]:
        """Streaming previews decoded this iteration: every preview_every tokens."""
        return [r for r in running if r.preview_due()]


class Fixed(Policy):
    name = "fixed"

    def idle_tokens(self, req: Request, now: float, cap: int, floor: int) -> int:
        return cap  # it plans every token whatever the deadline


class Drop(Policy):
    name = "drop"

    def idle_tokens(self, req: Request, now: float, cap: int, floor: int) -> int:
        fit = super().idle_tokens(req, now, cap, floor)
        return fit if fit >= cap else 0  # drop refuses what cannot have every token, idle or not

    def budget_for(self, req, view, state, cap, floor, idle_k):
        if self.fit_all(req, view, state) < cap:
            return self.deadline_refusal(req, view, state, "all tokens", idle_k)
        return self.accept(state, cap, idle_k)


class Static(Policy):
    name = "static"

    def budget_for(self, req, view, state, cap, floor, idle_k):
        c, lat = self.config, self.budget.latency
        idle = lat.step.profiled(1) * c.safety
        k = min(cap, math.floor((req.deadline_s - lat.decode.profiled(req.n) - c.respond_margin_s) / idle))
        if k < floor:
            return self.deadline_refusal(req, view, state, f"min_tokens={floor}", min(idle_k, max(k, 0)))
        return self.accept(state, k, min(idle_k, k))  # static ignores load: it never loses to it


class Anytime(Policy):
    name = "anytime"
    guards = True
    best_effort_previews = True
    stands_aside = True

    def __init__(self, config, budget: Budget):
        super().__init__(config, budget)
        self.stepping = Stepping(config, budget, self.long)

    def budget_for(self, req, view, state, cap, floor, idle_k):
        c, b = self.config, self.budget
        share = PRIORITY_SHARE[req.priority]
        retry = self._retry(view, state)
        if state.pressure > FAIR_PRESSURE and req.n > c.fair_share * c.max_batch:
            return refuse(Refusal.FAIR_SHARE, f"n={req.n} is more than {c.fair_share:.0%} of the batch while the "
                          f"server is under load; send smaller requests", retry, idle_k)
        knee = self.guarantee_cap(req, state.pressure)
        want = min(cap, knee)
        # 1. everything admitted steps beside it (nobody stands aside for it)
        room = c.max_batch if share >= 1 else share * c.max_batch
        fit = self.fit_all(req, view, state) if share >= 1 or view.running + view.waiting + req.n <= room else 0
        # pressure: did load take tokens from this request (were everything to step)? Standing
        # aside for it is not free either: a burst that others stand aside for lowers the knee
        state.observe_pressure(float(fit < idle_k), c.pressure_alpha)
        queued = fit >= floor and self.queued(req, view)  # it fits, once rows free up
        # 2. only if it would be refused that way: rows with laxity stand aside while it steps,
        #    so count just the rows that cannot, within the work already guaranteed to other
        #    deadlines (so that no admitted request is forced out later)
        if fit < floor and view.sharing is not None and view.sharing + req.n <= room:
            excess = view.sharing + req.n - c.max_batch
            wait = b.latency.iteration_in_flight(view.running) if excess <= 0 else \
                b.latency.step(c.max_batch) * state.mean_planned * min(1.0, excess / c.max_batch)
            aside = b.deadline_tokens(req, view.now, min(view.sharing + req.n, c.max_batch), wait, view.ahead)
            end = req.deadline - c.safety * b.latency.decode(req.n) - b.margin()
            promised = view.load.promised_steps(req.n, end, view.now, view.pending_steps, share)
            if promised < aside:
                aside = max(0, math.floor(promised))
            fit = max(fit, aside)
        k = min(cap, fit) if self.long(req) else min(want, fit)
        if min(k, want) < floor:
            return self.deadline_refusal(req, view, state, f"min_tokens={floor}", idle_k)
        start_by = math.nan
        if queued:
            # it waits for a row, and later arrivals due sooner may start first: refused if the
            # usual error of the wait estimate (queue_wait.py) would leave it nothing on time
            late = view.load.queue_wait_error
            if late > 0 and self.fit_all(req, view, state, late) < floor:
                return self.deadline_refusal(req, view, state, f"min_tokens={floor}", idle_k)
            if fit < want and not self.long(req):
                # its deadline binds its tokens, so a later start costs it: what the error learns
                # from (a request with time to spare is passed by those due sooner, by design)
                start_by = view.now + b.wait_estimate(view.running, view.waiting, req.n, state.mean_planned)
        return self.accept(state, k, idle_k, start_by)

    def long(self, r: Request) -> bool:
        """Its deadline holds several full-length generations at a full batch: tokens past its
        knee can wait for spare steps without taking any from requests due sooner."""
        return r.deadline_s >= LONG_GENERATIONS * self.D * self.budget.full_step()

    def guarantee_cap(self, req: Request, pressure: float) -> int:
        return max(req.min_tokens, self.budget.quality_cap(pressure, req.priority))

    def caps(self, pressure: float) -> dict[str, int]:
        caps = {p: self.budget.quality_cap(pressure, p) for p in PRIORITY_PRICE}
        self.stepping.caps = caps  # the targets of this plan (and of the load it publishes)
        return caps

    def stop(self, r, caps, paused, short_of_slots):
        if r.tokens >= r.budget:
            return FinishReason.BUDGET
        # the knee as it is now (pressure may have risen since admission): steps are scarce
        if r.tokens >= max(caps[r.priority], r.min_tokens) and (not self.long(r) or (paused and short_of_slots)):
            return FinishReason.QUALITY
        return None

    def choose(self, planner, plan, ch) -> int:
        return self.stepping.choose(planner, plan, ch)

    def previews(self, now, running, rows, margin):
        return self.stepping.previews(now, running, rows, margin)


POLICY_CLASSES = {p.name: p for p in (Anytime, Fixed, Drop, Static)}


def make_policy(config, budget: Budget) -> Policy:
    try:
        cls = POLICY_CLASSES[config.policy]
    except KeyError:
        raise ValueError(f"unknown policy {config.policy!r}; choose from {', '.join(POLICY_CLASSES)}") from None
    return cls(config, budget)
