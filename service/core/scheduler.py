"""The scheduler: one object per engine that wires its four parts together, in the shape of
vLLM v1's Scheduler (it owns request state; the engine executes what `schedule()` returns and
reports back through `update_from_output()` and `decoded()`; it never touches tensors):

- Admitter (service/core/admitter.py): the only code on the admitting thread;
- Budget (service/core/budget.py): pure arithmetic of tokens, deadlines and the quality knee;
- Planner (service/core/planner.py): each iteration's plan, read-only on request state;
- Lifecycle (service/core/lifecycle.py): applies plans: queues, statuses, KV-cache rows.

The policy (service/core/policies.py: anytime, fixed, drop, static) is one object the Admitter
and the Planner call through the same interface. docs/architecture.md says which part writes
each field of a request's state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import Settings
from .admission import Admission, LoadSnapshot
from .admitter import Admitter
from .budget import Budget, future_gain_rate  # noqa: F401  (re-exported for tests and tools)
from .latency import LatencyModel
from .lifecycle import Lifecycle
from .planner import IterationPlan, Planner
from .policies import POLICY_CLASSES, make_policy
from .request import FinishReason, Request, Sequence

__all__ = ["Admission", "IterationPlan", "Scheduler", "SchedulerConfig", "SchedulerOutput", "future_gain_rate"]


def _setting(name: str, scale: float = 1.0):
    """A default of Settings, the one place each setting's default is written."""
    default = Settings.model_fields[name].default
    return type(default)(default * scale) if scale != 1.0 else default


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
    park_rows: int = _setting("park_rows")  # KV-cache slots beyond max_batch for paused rows
    preview_interval_s: float = _setting("preview_interval_ms", 1e-3)  # least time between two previews
    preview_share: float = _setting("preview_share")  # of the engine's time, at most, for preview decodes
    fair_share: float = _setting("fair_share")  # under pressure, the most of max_batch one request may ask

    @classmethod
    def from_settings(cls, s: Settings) -> "SchedulerConfig":
        return cls(policy=s.policy, max_batch=s.max_batch, max_queue=s.max_queue,
                   respond_margin_s=s.respond_margin_ms / 1000, safety=s.safety, quality_price=s.quality_price,
                   park_rows=s.park_rows, preview_interval_s=s.preview_interval_ms / 1000,
                   preview_share=s.preview_share, fair_share=s.fair_share)

    def slots(self) -> int:
        """KV-cache slots the runtime allocates: the batch, and room for paused rows."""
        return self.max_batch + (self.park_rows if POLICY_CLASSES[self.policy].stands_aside else 0)


@dataclass
class SchedulerOutput:
    """What the engine executes this iteration; the scheduler has already updated request state."""

    moves: list[tuple[int, int]] = field(default_factory=list)  # KV-cache row copies (src, dst), in order
    answered: list[Request] = field(default_factory=list)  # finished with nothing to decode (cancelled)
    finish: list[tuple[Request, FinishReason]] = field(default_factory=list)  # decode, then finish
    previews: list[Request] = field(default_factory=list)  # decode a streaming preview
    plan: IterationPlan | None = None


class Scheduler:
    def __init__(self, config: SchedulerConfig, latency: LatencyModel, D: int, quality):
        """Every time it reads comes from the latency model's clock (time.monotonic in the engine;
        a simulated one in the capacity planner, service/capacity)."""
        self.config, self.latency, self.D = config, latency, D
        self.budget = Budget(config, latency, D, quality)
        self.policy = make_policy(config, self.budget)
        self.admitter = Admitter(self.policy, D, latency.clock)  # the admitting thread's
        self.planner = Planner(config, self.budget, self.policy)
        self.lifecycle = Lifecycle(config, config.slots(), latency.clock)  # the engine thread's, as is everything below
        # what admission reads of the batch, replaced whole after each plan
        self.load = LoadSnapshot()

    # ---- views -------------------------------------------------------------------------------
    @property
    def rows(self) -> list[Sequence]:
        """The active rows: rows[i] is the sequence in KV-cache row i (the step's batch)."""
        return self.lifecycle.rows

    waiting = property(lambda self: self.lifecycle.waiting)
    running = property(lambda self: self.lifecycle.running)
    paused = property(lambda self: self.lifecycle.paused)
    table = property(lambda self: self.lifecycle.table)
    previews_skipped = property(lambda self: self.lifecycle.previews_skipped)
    short_starts = property(lambda self: self.lifecycle.short_starts)

    @property
    def pressure(self) -> float:
        return self.admitter.state.pressure

    @pressure.setter
    def pressure(self, value: float) -> None:
        self.admitter.state.pressure = value

    def take_rows_changed(self) -> bool:
        """Did rows join or leave since the engine last asked (and built its step inputs)?"""
        changed, self.lifecycle.rows_changed = self.lifecycle.rows_changed, False
        return changed

    def queued_rows(self) -> int:
        return self.admitter.admitted_rows - self.lifecycle.dequeued_rows

    def margin(self) -> float:
        return self.budget.margin()

    def respond_margin(self) -> float:
        return self.budget.respond_margin()

    def quality_cap(self, priority: str = "normal") -> int:
        return self.budget.quality_cap(self.pressure, priority)

    def deadline_tokens(self, req: Request, now: float, batch: int, wait_s: float = 0.0, ahead: int | None = None) -> int:
        return self.budget.deadline_tokens(req, now, batch, wait_s, ahead, self.policy.best_effort_previews)

    # ---- admission (the admitting thread) ----------------------------------------------------
    def admit_request(self, req: Request) -> Admission:
        """Admit against the published load; on success the request is ready for add()."""
        return self.admitter.admit(req, self.load, self.lifecycle.taken_id, self.lifecycle.dequeued_rows)

    def probe_request(self, req: Request) -> Admission:
        """What admit_request would decide now, changing nothing (Admitter.probe)."""
        return self.admitter.probe(req, self.load, self.lifecycle.taken_id, self.lifecycle.dequeued_rows)

    def admit(self, req: Request, now: float, running: int, waiting: int, ahead: int | None = None,
              sharing: int | None = None, pending_steps: int = 0) -> Admission:
        """The policy's decision for a made-up load (tests)."""
        return self.admitter.decide(req, now, running, waiting, ahead, sharing, pending_steps, self.load)

    # ---- each iteration (the engine thread) ----------------------------------------------------
    def plan(self, now: float, running: list[Request], waiting: list[Request], running_rows: int,
             preview_rows: int = 0, paused: list[Request] = (), free_slots: int | None = None) -> IterationPlan:
        free = self.table.free_slots() if free_slots is None else free_slots
        return self.planner.plan(now, running, waiting, running_rows, self.pressure, preview_rows, paused, free)

    def add(self, req: Request) -> None:
        self.lifecycle.add(req)

    def cancel(self, req: Request) -> None:
        self.lifecycle.cancel(req)

    def has_news(self) -> bool:
        """Something the last plan did not see: an arrival or a cancellation."""
        return bool(self.lifecycle.waiting) or bool(self.lifecycle.cancelled)

    def has_work(self) -> bool:
        lc = self.lifecycle
        return bool(lc.running) or bool(lc.waiting) or bool(lc.paused) or bool(lc.cancelled)

    def schedule(self, now: float) -> SchedulerOutput:
        """Plan this iteration and apply it to request state: cancelled requests finish,
        finishing requests leave their rows (the engine decodes them next), others pause,
        resume or join the batch. Returns what the engine must execute."""
        lc, out = self.lifecycle, SchedulerOutput()
        for r in lc.cancelled:
            if r.status.value != "finished":
                lc.leave(r, out.moves)
                lc.finish(r, FinishReason.CANCELLED)
                out.answered.append(r)
        lc.cancelled.clear()
        due = self.policy.previews(now, lc.running, len(lc.rows), self.margin())
        plan = self.plan(now, lc.running, lc.waiting, len(lc.rows), preview_rows=sum(r.n for r in due),
                         paused=lc.paused)
        lc.apply(plan, now, out.moves)
        finishing = {id(r) for r, _ in plan.finish}
        out.finish = plan.finish
        out.previews = [r for r in due if id(r) not in finishing]
        out.plan = plan
        self.publish_load()
        return out

    def update_from_output(self, tokens: list[int], compute_s: float) -> None:
        self.lifecycle.update_from_output(tokens, compute_s)

    def decoded(self, r: Request, samples, compute_s: float, reason: FinishReason | None) -> None:
        self.lifecycle.decoded(r, samples, compute_s, reason, self.policy.best_effort_previews)

    def fail(self, requests, message: str, status: int = 500) -> list[tuple[int, int]]:
        moves = self.lifecycle.fail(requests, message, status)
        self.publish_load()
        return moves

    def finish(self, r: Request, reason: FinishReason, error: str | None = None, status: int = 0) -> None:
        self.lifecycle.finish(r, reason, error, status)

    def publish_load(self) -> None:
        self.load = self.lifecycle.snapshot(self.policy.stepping, self.budget)
