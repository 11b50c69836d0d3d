"""The engine: one thread per model that executes what its scheduler plans.

Each iteration reads like the lifecycle: take new requests, schedule (the scheduler finishes,
starts, pauses and resumes requests and moves rows), decode the finished, execute one batched prior
step over every running sequence, update the scheduler with the sampled tokens. Request state
belongs to the scheduler; the runtime (KV cache, graphs) to this thread. Others only admit
requests and put commands in the inbox; results leave once per decode (usually once per
iteration) through `on_outputs`, every finished request and preview of it together.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from .first_step import FirstStepTable
from .first_token import FirstTokenTable
from .guidance import GuidedRows
from .latency import LatencyModel
from .outputs import DecodeStats, EngineOutputs
from .model_dir import ModelSpec
from .request import FinishReason, Request, SamplingParams, Sequence, Status
from .runtime import Runtime
from .profiling import profile_runtime
from .step_threads import choose_one_thread_below
from .sampling import SamplingBatch
from .scheduler import Admission, IterationPlan, Scheduler, SchedulerConfig, SchedulerOutput
from .streams import SlotStreams

log = logging.getLogger("anytime.engine")


@dataclass
class StepStats:
    model: str
    backend: str
    batch: int
    seconds: float


class Engine(EngineOutputs):
    def __init__(self, spec: ModelSpec, runtime: Runtime, config: SchedulerConfig, observers=(),
                 profile_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256)):
        self.spec = spec
        self.runtime = runtime
        self.config = config
        self.observers = list(observers)
        self.profile_sizes = [b for b in profile_sizes if b <= config.max_batch] or [1]
        if self.profile_sizes[-1] != config.max_batch:
            self.profile_sizes.append(config.max_batch)
        self.scheduler: Scheduler | None = None
        self.latency: LatencyModel | None = None
        # Requests and commands for the engine thread: a Request (admitted), ("cancel", r),
        # ("respond", seconds), ("reset",). Only the engine thread takes from it.
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        # Per-row step inputs, rebuilt only when rows join or leave (most steps just advance them)
        self._tokens = self._positions = np.zeros(0, dtype=np.int64)
        self._sampling: SamplingBatch | None = None
        self._guided: GuidedRows | None = None  # the guided pairs among the rows (None: none)
        # each KV-cache slot's random stream, moved with its cache row (streams.py)
        self._streams = SlotStreams(config.slots())
        self.first_tokens = FirstTokenTable.for_model(spec.K, spec.output_shape)  # one-token samples (outputs.py)
        self.first_step = FirstStepTable(len(spec.classes) + 1)  # steps of one-token rows from nothing
        self._quiet = IterationPlan()  # the last plan, and how long it holds (see iteration)
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._stop = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # The engine core's one outputs hook: callable(finished requests, previews as (request,
        # tokens, samples)), called on the engine thread once per decode chunk (and once for
        # requests that end without a decode), never once per request. A request may also carry
        # its own on_done / on_preview (tests, the warm-up).
        self.on_outputs = None
        self._finished: list[Request] = []
        self._previews: list[tuple[Request, int, np.ndarray]] = []

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        # The engine thread shares the GIL with the IPC thread (or the event loop in-process);
        # a short switch interval bounds how long a ready step can wait for it (default 5 ms).
        sys.setswitchinterval(0.0005)
        profiled = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            # The start-up profile runs on the engine thread too: a runtime's thread pool belongs
            # to the thread that first calls it (a torch OpenMP team created by another thread
            # made every TorchScript step 2-3x slower on the engine thread).
            try:
                self.warmup()
            except BaseException as e:  # re-raised by start() in the caller's thread
                failure.append(e)
                return
            finally:
                profiled.set()
            self._loop()

        self._thread = threading.Thread(target=run, name=f"engine-{self.spec.name}", daemon=True)
        self._thread.start()
        profiled.wait()
        if failure:
            raise failure[0]
        self._warm_loop()

    def _warm_loop(self) -> None:
        """Run a few full generations through the loop before readiness, so the first real
        request does not pay for cold code paths; then forget what they taught the online model."""
        for n in sorted({1, min(4, self.config.max_batch)}):  # a request wider than the batch never starts
            done = threading.Event()
            req = self.new_request(n=n, seed=n, label=None, deadline_s=60.0, arrival=time.monotonic(),
                                   min_tokens=1, max_tokens=self.spec.D, sampling=SamplingParams())
            req.on_done = lambda r: done.set()
            if self.admit(req).ok:
                done.wait(60)
        self.inbox.put(("reset",))
        self.scheduler.pressure = 0.0  # this (the admitting) thread's state

    def warmup(self) -> None:
        """Profile step and decode cost vs batch size; the latency model starts from it."""
        choose_one_thread_below(self.runtime, self.spec, self.profile_sizes)
        self.latency = profile_runtime(self.runtime, self.spec, self.profile_sizes)
        self.scheduler = Scheduler(self.config, self.latency, self.spec.D, self.spec.quality_k)
        self.ready.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after in-flight and queued work is answered (admission is closed by the caller)."""
        self._stop = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def rows(self) -> list[Sequence]:
        return self.scheduler.rows if self.scheduler else []

    @property
    def active_sequences(self) -> int:
        return len(self.scheduler.rows) if self.scheduler else 0

    @property
    def paused_sequences(self) -> int:
        return self.scheduler.table.paused if self.scheduler else 0

    @property
    def queued_sequences(self) -> int:
        return self.scheduler.queued_rows() if self.scheduler else 0

    # ---- admission (the admitting thread) --------------------------------------------------
    def new_request(self, *, n: int, seed: int, label: int | None, deadline_s: float, arrival: float,
                    min_tokens: int, max_tokens: int, sampling: SamplingParams, request_id: str = "",
                    preview_every: int = 0, seeds: list[int] | None = None,
                    labels: list[int] | None = None, priority: str = "normal", guidance: float = 0.0) -> Request:
        """Rows 0..n-1 of `seed`, all with `label`; or, with per-row `seeds` (and `labels`), row
        i sampled exactly as row 0 of a request with seed seeds[i]: one request, one deadline,
        the same samples as n requests of one row each. ValueError on inconsistent rows.
        guidance w > 0: classifier-free guidance; each sample draws what it would unguided
        (the same random stream) from the guided logits, beside a null-label row of its own:
        the request has 2n rows (service/core/guidance.py)."""
        if guidance > 0 and self.spec.guidance is None:
            raise ValueError(f"model {self.spec.name!r} does not support guidance")
        rows = 2 * n if guidance > 0 else n
        req = Request(model=self.spec.name, n=rows, seed=seed, label=label, deadline_s=deadline_s,
                      arrival=arrival, min_tokens=min_tokens, max_tokens=max_tokens, sampling=sampling,
                      request_id=request_id, preview_every=preview_every, priority=priority, guidance=guidance)
        if seeds is None and labels is None:
            start = self._start_token(label)
            req.sequences = [Sequence(req, i, (seed, i), start) for i in range(n)]
        else:
            seeds = seeds if seeds is not None else [seed] * n
            labels = labels if labels is not None else [label] * n
            if len(seeds) != n or len(labels) != n:
                raise ValueError(f"{len(seeds)} seeds and {len(labels)} labels for {n} rows")
            req.sequences = [Sequence(req, i, (s, 0), self._start_token(c))
                             for i, (s, c) in enumerate(zip(seeds, labels))]
        if guidance > 0:
            for s in list(req.sequences):
                # its tokens are copied from s, so its own stream is never used for a draw that matters
                s.null_row = Sequence(req, n + s.index, (seed, n + s.index), self.spec.unconditional_token)
                req.sequences.append(s.null_row)
        return req

    def _start_token(self, label: int | None) -> int:
        if label is None:
            return self.spec.unconditional_token
        if not 0 <= label < len(self.spec.classes):
            raise ValueError(f"label {label} out of range for model {self.spec.name!r}")
        return self.spec.start_token_base + label

    def admit(self, req: Request) -> Admission:
        """Plan a budget (or refuse) from the load the engine last published (the scheduler's
        Admitter), then hand the request to the engine thread, which takes it before its next
        iteration."""
        adm = self.scheduler.admit_request(req)
        if adm.ok:
            self.inbox.put(req)  # from here on the request belongs to the engine thread
            self._wake.set()
        return adm

    def probe(self, req: Request) -> Admission:
        """What admit() would decide for `req` now, changing nothing (on the admitting thread)."""
        return self.scheduler.probe_request(req)

    def token_price(self, priority: str = "normal") -> float:
        """What a row's step costs in quality at the current pressure (0 when nothing is short)."""
        sched = self.scheduler
        return sched.budget.token_price(sched.pressure, priority)

    def cancel(self, req: Request) -> None:
        """The client went away: the scheduler frees its rows next iteration."""
        self.inbox.put(("cancel", req))
        self._wake.set()

    def observe_respond(self, seconds: float) -> None:
        """A request's time from leaving the engine to its response being ready (frontend side)."""
        self.inbox.put(("respond", seconds))

    # ---- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._take_new()
            if not self.scheduler.has_work():
                if self._stop:
                    break
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                self.iteration()
            except Exception:  # never let one bad iteration kill the engine
                log.exception("engine iteration failed")
                self._fail(list(self.scheduler.running), "internal engine error")
        self.stopped.set()

    def _take_new(self) -> None:
        while not self.inbox.empty():  # only this thread takes from the inbox
            item = self.inbox.get_nowait()
            if isinstance(item, Request):
                self.scheduler.add(item)
            elif item[0] == "cancel":
                self.scheduler.cancel(item[1])
            elif item[0] == "respond":
                self.latency.observe_respond(item[1])
            elif item[0] == "reset":
                self.latency.reset_online()

    def iteration(self) -> None:
        started = time.perf_counter()
        now = time.monotonic()
        if self._quiet.quiet_steps > 0 and self._still_quiet(now):
            self._quiet.quiet_steps -= 1
            self._step_and_learn(started, 0.0)
            self.latency.observe_iteration(time.perf_counter() - started, 0)
            return
        out = self.scheduler.schedule(now)
        copy_s = self._move_rows(out.moves)
        if out.plan.start:
            self._start_streams(out.plan.start)
        for r in out.answered:
            self._done(r)
        decode_s = self._decode(out) if out.finish or out.previews else 0.0
        flushed = time.perf_counter()
        self._flush_outputs()
        decode_s += time.perf_counter() - flushed  # answers leaving are not step time either
        self._quiet = dataclasses.replace(out.plan, start=[], budgets={}, finish=[], pause=[], resume=[])  # holds no requests
        if self.scheduler.rows:
            self._step_and_learn(started, decode_s + copy_s)
        self.latency.observe_iteration(time.perf_counter() - started,
                                       sum(r.n for r, _ in out.finish) + sum(r.n for r in out.previews))

    def _still_quiet(self, now: float) -> bool:
        """The last plan still holds: nothing arrived or was cancelled, the clock is before the
        first deadline-guard stop it foresaw, and steps and margins cost no more than it assumed."""
        q = self._quiet
        return (not self.scheduler.has_news() and now <= q.quiet_until
                and self.latency.step.paced(len(self.scheduler.rows)) <= q.quiet_step_cost
                and self.scheduler.margin() <= q.quiet_margin)

    def _step_and_learn(self, started: float, decode_s: float) -> None:
        B = len(self.scheduler.rows)
        predicted = self.latency.step.paced(B)  # what the deadline guard counted on
        if not self._step():
            return  # from the first-step table: no runtime call to learn (first_step.py)
        # The latency model learns the whole iteration but its decode: the runtime call plus
        # sampling, scheduling and any wait for the GIL, which deadlines pay for too.
        took = time.perf_counter() - started - decode_s
        self.latency.jitter.observe(max(0.0, took - predicted))
        self.latency.step.observe(B, took)

    def _move_rows(self, moves: list[tuple[int, int]]) -> float:
        """KV-cache row copies; the latency model learns their cost (the planner counts the
        copies of pauses and resumes in the deadline guard). Returns the seconds they took."""
        if not moves:
            return 0.0
        t = time.perf_counter()
        for src, dst in moves:
            self.runtime.move_row(src, dst)
            self._streams.move(src, dst)
        dt = time.perf_counter() - t
        self.latency.copy.observe(len(moves), dt)
        return dt

    def _start_streams(self, started: list[Request]) -> None:
        """The rows that joined this iteration start their streams in their slots (after the
        iteration's row copies, which may have moved a paused row out of the way)."""
        seqs = [s for r in started for s in r.sequences]
        self._streams.start([s.slot for s in seqs], [s.stream for s in seqs])

    def _step(self) -> bool:
        """One token for every active row; False when no runtime call was made (the logits
        came from the first-step table)."""
        rows = self.scheduler.rows
        B = len(rows)
        if self.scheduler.take_rows_changed():
            self._tokens = np.array([s.codes[-1] if s.codes else s.start_token for s in rows],
                                    dtype=np.int64)
            self._positions = np.array([s.position for s in rows], dtype=np.int64)
            self._sampling = self._sampling_batch()
            self._guided = GuidedRows.of(rows)
        t = time.perf_counter()
        logits = self.first_step.answer(self._tokens, self._positions, rows)
        ran = logits is None
        if ran:
            try:
                logits = self.runtime.step(self._tokens, self._positions)
            except Exception as e:  # fail the requests of this step only; the engine goes on
                log.exception("prior step failed")
                self._fail(list(self.scheduler.running), f"runtime step failed: {type(e).__name__}")
                return True
            self._emit(StepStats(self.spec.name, self.runtime.backend, B, time.perf_counter() - t))
            self.first_step.fill(self._tokens, self._positions, logits)
        sampling, guided = self._sampling, self._guided
        if not np.isfinite(logits.sum()):  # one reduction; the per-row check only when needed
            finite = np.isfinite(logits).all(axis=1)
            old_row = {id(s): i for i, s in enumerate(rows)}
            bad = {rows[i].request for i in np.nonzero(~finite)[0]}
            self._fail(list(bad), "non-finite logits from the model")
            rows = self.scheduler.rows
            if not rows:
                return ran
            logits = logits[[old_row[id(s)] for s in rows]]
            sampling = self._sampling_batch()
            guided = GuidedRows.of(rows)
        if guided is not None:
            logits = guided.mix(logits)
        new = sampling.sample(logits, self._streams.draw(len(rows)))
        if guided is not None:
            guided.follow(new)
        self._tokens, self._positions = new, self._positions + 1
        # a request's compute: the runtime step and the sampling of its token
        self.scheduler.update_from_output(new.tolist(), time.perf_counter() - t)
        return ran

    def _sampling_batch(self) -> SamplingBatch:
        sp = [s.request.sampling for s in self.scheduler.rows]
        return SamplingBatch(np.array([p.temperature for p in sp]), np.array([p.top_k for p in sp], dtype=np.int64),
                             np.array([p.top_p for p in sp]))

    def _fail(self, requests: list[Request], message: str) -> None:
        live = [r for r in requests if r.status is not Status.FINISHED]
        self._move_rows(self.scheduler.fail(live, message))
        for r in live:
            self._done(r)
        self._flush_outputs()

    def _emit(self, stats) -> None:
        for o in self.observers:
            o(stats)
