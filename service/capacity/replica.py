"""One replica on a simulated clock: the engine loop of service/core/engine.py (take new requests,
schedule, move rows, decode the finished, step, learn) with each runtime call replaced by its
calibrated cost and time.monotonic by a variable. Everything that decides is the real scheduler
(service/core/scheduler.py and its parts: the Admitter with the policy's admission and the
Budget, the Planner with the deadline guard and who steps, the Lifecycle, the latency model that
learns online). Nothing here re-implements a decision; it only lets simulated time pass.

Time passes in one place, `_advance`, which handles every arrival and admission due before the
new time at its own moment first: admission runs on another thread in the server, against the
load the engine published at its last plan, and so it does here.

The frontend is a queue per worker: each event loop serves its requests' work in order of
arrival (parsing and admitting a request, answering one), so a loop that the request rate keeps
busy delays both, and the response time the engine learns grows as the loop saturates. At the
loop's door the server's shedding rule (service/frontend/shedding.sheds) refuses new requests
while the loop runs behind."""
from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from dataclasses import dataclass

import numpy as np

from ..core.outputs import EngineOutputs
from ..core.planner import IterationPlan
from ..core.request import Request, Sequence
from ..core.scheduler import Scheduler, SchedulerConfig
from ..frontend.shedding import sheds
from .calibration import Calibration
from .traffic import Arrival

# How a request's frontend time (Calibration.frontend_s) splits: parsing, validating and admitting
# it on the way in, encoding and sending the answer on the way out (half each; bench cost's
# flame graphs of a full-length n=1 JSON request show neither side dominating). A refusal (shed
# at the door, or by admission) costs about what /healthz does: half a full request's frontend
# CPU (bench/results/cost/xeon-cbe4c73).
IN_SHARE = 0.5
REFUSAL_SHARE = 0.5
SHED = "overloaded"  # the refusal reason of a shed request (the server's message starts so)


@dataclass(frozen=True)
class Outcome:
    """What one request got: refused (the reason), or answered with `tokens` after `latency_s`."""

    arrival: Arrival
    refused: str = ""
    tokens: int = 0
    latency_s: float = 0.0
    quality: float = 0.0

    @property
    def on_time(self) -> bool:
        return not self.refused and self.latency_s <= self.arrival.deadline_ms / 1000


class SimulatedReplica:
    def __init__(self, cal: Calibration, config: SchedulerConfig | None = None, jitter: float | None = None,
                 seed: int = 0):
        """jitter: the sigma of a log-normal factor on every simulated runtime cost (0: each cost
        is exactly the calibrated one; None: the calibration's, Calibration.jitter); seeded, so a
        run is reproducible."""
        jitter = cal.jitter if jitter is None else jitter
        if config is None:
            config = SchedulerConfig() if cal.max_batch is None else SchedulerConfig(max_batch=cal.max_batch)
        self.cal, self.config = cal, config
        self.now = 0.0
        self.latency = cal.latency_model(self.clock)  # what the scheduler believes, and corrects online
        self.truth = cal.latency_model(lambda: 0.0)  # what the simulated runtime costs (never corrected)
        self.quality = cal.quality_k()
        self.scheduler = Scheduler(config, self.latency, cal.D, self.quality)
        self.jitter, self._rng = jitter, np.random.default_rng(seed)
        self._inbox: list = []  # (time, order, item): admitted requests and respond observations
        self._pending: list = []  # (time, order, arrival, worker): parsed, to be admitted then
        self._loops = [0.0] * max(1, cal.frontend_workers)  # when each frontend worker's loop is free
        self._worker: dict[int, int] = {}  # request id -> the worker that answers it
        self._order = itertools.count()
        self._quiet = IterationPlan()
        self._recent: collections.deque[float] = collections.deque()  # arrival times of the last second
        self._arrivals: list[Arrival] = []
        self._next = 0
        self._of: dict[int, Arrival] = {}
        self.outcomes: list[Outcome] = []
        self.iterations = self.plans = 0
        # what the simulated runtime did, as a server's /metrics counts it (anytime_batch_size,
        # anytime_step_latency_seconds, anytime_decode_latency_seconds): to compare with a real run
        self.steps = self.step_rows = self.decodes = self.decode_rows = 0
        self.step_s = self.decode_s = 0.0
        self._margins: list[tuple[float, float]] = []  # (respond, jitter) margins each admission saw

    def runtime_stats(self) -> dict:
        """Counts and means of the simulated runtime calls (what a server's /metrics reports)."""
        return {"steps": self.steps, "mean_batch": self.step_rows / max(1, self.steps),
                "mean_step_ms": 1000 * self.step_s / max(1, self.steps), "decodes": self.decodes,
                "mean_decode_rows": self.decode_rows / max(1, self.decodes),
                "mean_decode_ms": 1000 * self.decode_s / max(1, self.decodes),
                "plans": self.plans, "iterations": self.iterations, "simulated_s": self.now,
                # what anytime_deadline_margin_seconds would show (admissions are Poisson: their
                # median is the median over time that bench/plan_validation.py samples)
                "margin_respond_ms": 1000 * _median([m[0] for m in self._margins]),
                "margin_jitter_ms": 1000 * _median([m[1] for m in self._margins])}

    def clock(self) -> float:
        return self.now

    def run(self, arrivals: list[Arrival]) -> list[Outcome]:
        """Serve the arrivals (in order of time) until every admitted one is answered."""
        self._arrivals, self._next = arrivals, 0
        sched = self.scheduler
        while True:
            self._take_new()
            if sched.has_work():
                self._iteration()
            elif (due := self._next_event()) is not None:  # the engine sleeps until something is due
                self._advance(max(self.now, due))
            else:
                return sorted(self.outcomes, key=lambda o: o.arrival.at)

    def _next_event(self) -> float | None:
        """When the next arrival, admission or respond observation is due (None: nothing is)."""
        due = [q[0][0] for q in (self._inbox, self._pending) if q]
        if self._next < len(self._arrivals):
            due.append(self._arrivals[self._next].at)
        return min(due, default=None)

    # ---- the frontend and the admitting thread ---------------------------------------------
    def _advance(self, to: float) -> None:
        """Let time pass until `to`, taking each arrival into its worker's loop and admitting
        each parsed request at its own time, in order of time."""
        arrivals, pending = self._arrivals, self._pending
        while True:
            arrival = arrivals[self._next].at if self._next < len(arrivals) else float("inf")
            admission = pending[0][0] if pending else float("inf")
            if min(arrival, admission) > to:
                break
            if arrival <= admission:
                a = arrivals[self._next]
                self._next += 1
                self.now = max(self.now, arrival)
                self._recent.append(a.at)
                self._enter(a, self._next % len(self._loops))
            else:
                _, _, a, worker = heapq.heappop(pending)
                self.now = max(self.now, admission)
                self._admit(a, worker)
        self.now = max(self.now, to)

    def _loop_work(self, worker: int, at: float, share: float) -> float:
        """`share` of a request's frontend time on `worker`'s loop, queued behind what it holds
        (in order of arrival: asyncio runs ready callbacks first in, first out); when it starts."""
        start = max(self._loops[worker], at)
        cost = self.cal.frontend_s * share
        self._loops[worker] = start + (self._as_loaded(cost) if cost else 0.0)
        return start

    def _enter(self, a: Arrival, worker: int) -> None:
        """A request reaches a worker (the kernel spreads connections over them: here in turn):
        shed at the door while the loop runs behind, else parsed and sent for admission, which
        happens the idle replica's arrival-to-admission time after the loop gets to it."""
        if sheds(self._loops[worker] - self.now, self.cal.shed_lag_s, a.deadline_ms / 1000):
            self._loop_work(worker, self.now, REFUSAL_SHARE)
            self.outcomes.append(Outcome(a, refused=SHED))
            return
        start = self._loop_work(worker, self.now, IN_SHARE)
        heapq.heappush(self._pending, (start + self.cal.admit_s, next(self._order), a, worker))

    def _admit(self, a: Arrival, worker: int) -> None:
        D = self.cal.D
        req = Request(model=self.cal.model, n=a.n, seed=a.seed, label=a.label, deadline_s=a.deadline_ms / 1000,
                      arrival=a.at, min_tokens=1, max_tokens=D)
        req.sequences = [Sequence(req, i, (0, i)) for i in range(a.n)]
        adm = self.scheduler.admit_request(req)
        self._margins.append((self.latency.respond(), self.latency.jitter()))
        if not adm.ok:
            self._loop_work(worker, self.now, REFUSAL_SHARE)
            self.outcomes.append(Outcome(a, refused=str(adm.reason)))
            return
        self._of[req.id], self._worker[req.id] = a, worker
        self._put(self.now, req)

    def _put(self, at: float, item) -> None:
        heapq.heappush(self._inbox, (at, next(self._order), item))

    # ---- the engine thread (Engine._take_new, Engine.iteration) -----------------------------
    def _take_new(self) -> None:
        while self._inbox and self._inbox[0][0] <= self.now:
            _, _, item = heapq.heappop(self._inbox)
            if isinstance(item, Request):
                self.scheduler.add(item)
            else:  # a response left the frontend: how long responding took
                self.latency.observe_respond(item)

    def _iteration(self) -> None:
        sched, started = self.scheduler, self.now
        self.iterations += 1
        if self._quiet.quiet_steps > 0 and self._still_quiet():
            self._quiet.quiet_steps -= 1
            self._step_and_learn(started, 0.0)
            self.latency.observe_iteration(self.now - started, 0)
            return
        self.plans += 1
        out = sched.schedule(started)
        if self.cal.plan_request_s:
            live = len(sched.running) + len(sched.waiting) + len(sched.paused)
            self._advance(self.now + self._overhead(live))
        copy_s = self._move_rows(len(out.moves))
        decode_s = self._decode(out) if out.finish or out.previews else 0.0
        self._quiet = dataclasses.replace(out.plan, start=[], budgets={}, finish=[], pause=[], resume=[])
        if sched.rows:
            self._step_and_learn(started, decode_s + copy_s)
        self.latency.observe_iteration(self.now - started, sum(r.n for r, _ in out.finish))

    def _still_quiet(self) -> bool:
        q = self._quiet
        return (not self.scheduler.has_news() and self.now <= q.quiet_until
                and self.latency.step.paced(len(self.scheduler.rows)) <= q.quiet_step_cost
                and self.scheduler.margin() <= q.quiet_margin)

    def _recent_requests(self) -> int:
        recent, cutoff = self._recent, self.now - 1.0
        while recent and recent[0] < cutoff:
            recent.popleft()
        return len(recent)

    def _cost(self, curve, size: int, contended: bool = True) -> float:
        """The runtime's cost now: the calibrated one, an engine iteration's slowed by the other
        work that the last second's requests bring to the replica's cores (Calibration.
        contention_s). Decodes are not: a measured replica's decode cost over its start-up
        profile stays flat from 0.5x to 2x load (bench/results/plan), while its step's grows."""
        return self._as_loaded(curve.profiled(size), contended)

    def _overhead(self, live: int) -> float:
        """The engine thread's work around the runtime calls of a planned iteration."""
        return self._as_loaded(self.cal.plan_request_s * live)

    def _as_loaded(self, c: float, contended: bool = True) -> float:
        """A calibrated cost as the loaded replica pays it: contention, then jitter."""
        if contended:
            c *= 1.0 + self.cal.contention_s * self._recent_requests()
        return c * float(self._rng.lognormal(0.0, self.jitter)) if self.jitter > 0 else c

    def _step_and_learn(self, started: float, decode_s: float) -> None:
        B = len(self.scheduler.rows)
        predicted = self.latency.step.paced(B)
        cost = self._cost(self.truth.step, B)
        self.steps, self.step_rows, self.step_s = self.steps + 1, self.step_rows + B, self.step_s + cost
        self._advance(self.now + cost)
        took = self.now - started - decode_s  # as the engine measures it: the iteration but its decode
        self.latency.jitter.observe(max(0.0, took - predicted))
        self.latency.step.observe(B, took)
        self.scheduler.update_from_output([0] * B, cost)

    def _move_rows(self, moves: int) -> float:
        if not moves:
            return 0.0
        cost = self._cost(self.truth.copy, moves)
        self._advance(self.now + cost)
        self.latency.copy.observe(moves, cost)
        return cost

    def _decode(self, out) -> float:
        """EngineOutputs._decode's order and chunks: deadline order, about DECODE_CHUNK_S each."""
        jobs = sorted(out.finish, key=lambda f: f[0].deadline) + [(r, None) for r in out.previews]
        chunk, rows, spent = [], 0, 0.0
        for job in jobs:
            n = job[0].samples_n
            if chunk and self.latency.decode(rows + n) > EngineOutputs.DECODE_CHUNK_S:
                spent += self._decode_chunk(chunk)
                chunk, rows = [], 0
            chunk.append(job)
            rows += n
        return spent + (self._decode_chunk(chunk) if chunk else 0.0)

    def _decode_chunk(self, jobs) -> float:
        """One batched decode. Rows stopped after one token come from the engine's first-token
        table (service/core/first_token.py), not the decoder: the table is taken as full (it
        holds at most K samples and fills with the first K one-token answers), so they cost
        nothing and, as in the engine, the latency model learns from decoder rows only."""
        rows = sum(r.samples_n for r, _ in jobs if r.tokens > 1)
        dt = 0.0
        if rows:
            predicted = self.latency.decode.paced(rows)
            dt = self._cost(self.truth.decode, rows, contended=False)
            self._advance(self.now + dt)
            self.latency.jitter.observe(max(0.0, dt - predicted))
            self.latency.decode.observe(rows, dt)
        self.decodes, self.decode_rows, self.decode_s = self.decodes + 1, self.decode_rows + rows, self.decode_s + dt
        for r, reason in jobs:
            self.scheduler.decoded(r, None, dt, reason)
            if reason is not None:
                self._answer(r)
        return dt

    def _answer(self, r: Request) -> None:
        """The samples are decoded now; the response is ready respond_s after the worker's loop
        gets to it, and the engine learns that time from the frontend's report
        (Engine.observe_respond)."""
        a = self._of.pop(r.id)
        start = self._loop_work(self._worker.pop(r.id), self.now, 1.0 - IN_SHARE)
        ready = start + self.cal.respond_s
        respond = ready - self.now
        k = r.tokens
        self.outcomes.append(Outcome(a, tokens=k, latency_s=ready - a.at, quality=float(self.quality[k])))
        self._put(ready, respond)


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else 0.0
