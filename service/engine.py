"""The engine: one thread per model that owns all generation state.

Each iteration reads like the lifecycle: take new requests, schedule (finish / start),
decode the finished, execute one batched prior step over every running sequence, update
them with the sampled tokens. HTTP handlers only enqueue requests and wait on callbacks.
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

from .latency import LatencyModel
from .model_dir import ModelSpec
from .request import FinishReason, Request, SamplingParams, Sequence, Status
from .runtime import Runtime
from .profiling import profile_runtime
from .sampling import SamplingBatch, sequence_rng
from .scheduler import Admission, IterationPlan, Scheduler, SchedulerConfig

log = logging.getLogger("anytime.engine")


@dataclass
class StepStats:
    model: str
    backend: str
    batch: int
    seconds: float


@dataclass
class DecodeStats:
    model: str
    backend: str
    batch: int
    seconds: float


class Engine:
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
        self.inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.rows: list[Sequence] = []  # rows[i] is the sequence in KV cache row i
        # Per-row step inputs, rebuilt only when rows join or leave (most steps just advance them)
        self._rows_changed = True
        self._tokens = self._positions = np.zeros(0, dtype=np.int64)
        self._sampling: SamplingBatch | None = None
        self._quiet = IterationPlan()  # the last plan, and how long it holds (see iteration)
        self._cancels = self._cancels_planned = 0
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._stop = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.fault_hook = None  # tests: callable(batch_size) run before each step; may raise or sleep
        # Rows admitted but not yet running, as two single-writer counters (HTTP side adds,
        # engine thread removes) so no update is lost between threads.
        self._admitted_rows = 0
        self._dequeued_rows = 0

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        # The engine thread shares the GIL with the HTTP event loop; a short switch interval
        # bounds how long a ready step can wait for it (the default is 5 ms).
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
        for n in (1, 4):
            done = threading.Event()
            req = self.new_request(n=n, seed=n, label=None, deadline_s=60.0, arrival=time.monotonic(),
                                   min_tokens=1, max_tokens=self.spec.D, sampling=SamplingParams())
            req.on_done = lambda r: done.set()
            if self.admit(req).ok:
                done.wait(60)
        self.latency.reset_online()
        self.scheduler.pressure = 0.0
    def warmup(self) -> None:
        """Profile step and decode cost vs batch size; the latency model starts from it."""
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
    def active_sequences(self) -> int:
        return len(self.rows)

    @property
    def queued_sequences(self) -> int:
        return self._admitted_rows - self._dequeued_rows

    # ---- admission (called from HTTP threads) ----------------------------------------------
    def new_request(self, *, n: int, seed: int, label: int | None, deadline_s: float, arrival: float,
                    min_tokens: int, max_tokens: int, sampling: SamplingParams, request_id: str = "") -> Request:
        start = self.spec.unconditional_token if label is None else self.spec.start_token_base + label
        req = Request(model=self.spec.name, n=n, seed=seed, label=label, start_token=start, deadline_s=deadline_s,
                      arrival=arrival, min_tokens=min_tokens, max_tokens=min(max_tokens, self.spec.D),
                      sampling=sampling, request_id=request_id)
        req.sequences = [Sequence(req, i, sequence_rng(seed, i)) for i in range(n)]
        return req

    def admit(self, req: Request) -> Admission:
        """Plan a budget (or reject), then enqueue; the engine thread picks it up next iteration."""
        # rows decoded before it when they finish together: earlier deadlines (engine lists are
        # read without a lock; a snapshot a step old is as good a bound as any)
        ahead = sum(r.n for r in list(self.running) + list(self.waiting) if r.deadline < req.deadline)
        adm = self.scheduler.admit(req, time.monotonic(), len(self.rows), self.queued_sequences, ahead)
        if adm.ok:
            req.planned_tokens = adm.planned_tokens
            self._admitted_rows += req.n
            self.inbox.put(req)
            self._wake.set()
        return adm

    def cancel(self, req: Request) -> None:
        """Mark a request cancelled (client went away); its rows are freed next iteration."""
        req.cancelled = True
        self._cancels += 1
        self._wake.set()

    # ---- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._take_new()
            if not self.running and not self.waiting:
                if self._stop:
                    break
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                self.iteration()
            except Exception:  # never let one bad iteration kill the engine
                log.exception("engine iteration failed")
                self._fail(list(self.running), "internal engine error")
        self.stopped.set()

    def _take_new(self) -> None:
        while not self.inbox.empty():  # only this thread takes from the inbox
            self.waiting.append(self.inbox.get_nowait())

    def iteration(self) -> None:
        started = time.perf_counter()
        now = time.monotonic()
        if self._quiet.quiet_steps > 0 and self._still_quiet(now):
            self._quiet.quiet_steps -= 1
            self._step_and_learn(started, 0.0)
            self.latency.observe_iteration(time.perf_counter() - started, 0)
            return
        self._cancels_planned = self._cancels
        self._drop_cancelled()
        due = [r for r in self.running if r.preview_due()]
        plan = self.scheduler.plan(now, self.running, self.waiting, len(self.rows),
                                   preview_rows=sum(r.n for r in due))
        for r in plan.expire:
            self.waiting.remove(r)
            self._dequeued_rows += r.n
            self._finish_request(r, FinishReason.ERROR, status=503,
                                 error="by the time the request could start, its deadline no longer fit min_tokens")
        finishing = {r for r, _ in plan.finish}
        previews = [r for r in due if r not in finishing]
        decode_s = self._decode_and_finish(plan.finish, previews) if plan.finish or previews else 0.0
        for r in plan.start:
            self._start(r)
        self._quiet = dataclasses.replace(plan, start=[], finish=[], expire=[])  # holds no requests
        if self.rows:
            self._step_and_learn(started, decode_s)
        self.latency.observe_iteration(time.perf_counter() - started,
                                       sum(r.n for r, _ in plan.finish) + sum(r.n for r in previews))

    def _still_quiet(self, now: float) -> bool:
        """The last plan still holds: nothing arrived or was cancelled, the clock is before the
        first deadline-guard stop it foresaw, and steps and margins cost no more than it assumed."""
        q = self._quiet
        return (not self.waiting and self._cancels == self._cancels_planned and now <= q.quiet_until
                and self.latency.step.paced(len(self.rows)) <= q.quiet_step_cost
                and self.scheduler.margin() <= q.quiet_margin)

    def _step_and_learn(self, started: float, decode_s: float) -> None:
        B = len(self.rows)
        predicted = self.latency.step.paced(B)  # what the deadline guard counted on
        self._step()
        # The latency model learns the whole iteration but its decode: the runtime call plus
        # sampling, scheduling and any wait for the GIL, which deadlines pay for too.
        took = time.perf_counter() - started - decode_s
        self.latency.jitter.observe(max(0.0, took - predicted))
        self.latency.step.observe(B, took)

    def _start(self, r: Request) -> None:
        self.waiting.remove(r)
        self._dequeued_rows += r.n
        r.status = Status.RUNNING
        r.started = time.monotonic()
        self._rows_changed = True
        for s in r.sequences:
            s.slot = len(self.rows)
            s.status = Status.RUNNING
            self.rows.append(s)
        self.running.append(r)

    def _release_rows(self, r: Request) -> None:
        """Remove r's rows, moving the last rows into the holes so rows stay 0..B-1."""
        self._rows_changed = True
        for s in r.sequences:
            if s.slot < 0:
                continue
            last = self.rows.pop()
            if last is not s:
                self.runtime.move_row(last.slot, s.slot)
                last.slot = s.slot
                self.rows[s.slot] = last
            s.slot = -1
        if r in self.running:
            self.running.remove(r)

    def _drop_cancelled(self) -> None:
        for r in [r for r in self.running + self.waiting if getattr(r, "cancelled", False)]:
            if r in self.waiting:
                self.waiting.remove(r)
                self._dequeued_rows += r.n
            self._release_rows(r)
            self._finish_request(r, FinishReason.CANCELLED)

    DECODE_CHUNK_S = 0.002  # decode calls are split to about this cost so early deadlines go first

    def _decode_and_finish(self, finishing: list[tuple[Request, FinishReason]], previews: list[Request] = ()) -> float:
        """Decode the requests that finish now in deadline order, in chunks of about
        DECODE_CHUNK_S, answering each chunk as soon as it is decoded (a large decode of
        other requests never delays an earlier deadline); streaming previews go last.
        Returns the seconds spent decoding."""
        jobs = sorted(finishing, key=lambda f: f[0].deadline) + [(r, None) for r in previews]
        chunk, rows, spent = [], 0, 0.0
        for job in jobs:
            n = job[0].n
            if chunk and self.latency.decode(rows + n) > self.DECODE_CHUNK_S:
                spent += self._decode_chunk(chunk)
                chunk, rows = [], 0
            chunk.append(job)
            rows += n
        return spent + (self._decode_chunk(chunk) if chunk else 0.0)

    def _decode_chunk(self, jobs: list[tuple[Request, FinishReason | None]]) -> float:
        """One batched decode; finishes the requests with a reason, hands previews to the others."""
        D = self.spec.D
        seqs = [s for r, _ in jobs for s in r.sequences]
        codes = np.zeros((len(seqs), D), dtype=np.int64)
        lengths = np.zeros(len(seqs), dtype=np.int64)
        for i, s in enumerate(seqs):
            codes[i, : s.position] = s.codes
            lengths[i] = s.position
        predicted = self.latency.decode.paced(len(seqs))
        t = time.perf_counter()
        try:
            out = self.runtime.decode(codes, lengths)
        except Exception as e:  # a decoder failure fails only these requests
            log.exception("decode failed")
            for r, _ in jobs:
                self._release_rows(r)
                self._finish_request(r, FinishReason.ERROR, error=f"decoder failed: {type(e).__name__}",
                                     status=500)
            return time.perf_counter() - t
        dt = time.perf_counter() - t
        self.latency.jitter.observe(max(0.0, dt - predicted))
        self.latency.decode.observe(len(seqs), dt)
        self._emit(DecodeStats(self.spec.name, self.runtime.backend, len(seqs), dt))
        i = 0
        for r, reason in jobs:
            r.compute_s += dt
            samples = out[i : i + r.n]
            i += r.n
            if reason is not None:
                r.samples = samples
                self._release_rows(r)
                self._finish_request(r, reason)
                continue
            r.last_preview = r.tokens
            if r.on_preview is not None:
                try:
                    r.on_preview(r, r.tokens, samples)
                except Exception:
                    log.exception("on_preview callback failed")
        return dt

    def _step(self) -> None:
        B = len(self.rows)
        if self._rows_changed:
            self._tokens = np.array([s.codes[-1] if s.codes else s.request.start_token for s in self.rows],
                                    dtype=np.int64)
            self._positions = np.array([s.position for s in self.rows], dtype=np.int64)
            self._sampling = self._sampling_batch()
            self._rows_changed = False
        t = time.perf_counter()
        try:
            if self.fault_hook is not None:
                self.fault_hook(B)
            logits = self.runtime.step(self._tokens, self._positions)
        except Exception as e:  # fail the requests of this step only; the engine goes on
            log.exception("prior step failed")
            self._fail(list(self.running), f"runtime step failed: {type(e).__name__}")
            return
        dt = time.perf_counter() - t
        self._emit(StepStats(self.spec.name, self.runtime.backend, B, dt))
        sampling = self._sampling
        if not np.isfinite(logits.sum()):  # one reduction; the per-row check only when needed
            finite = np.isfinite(logits).all(axis=1)
            old_row = {id(s): i for i, s in enumerate(self.rows)}
            bad = {self.rows[i].request for i in np.nonzero(~finite)[0]}
            self._fail(list(bad), "non-finite logits from the model")
            if not self.rows:
                return
            logits = logits[[old_row[id(s)] for s in self.rows]]
            sampling = self._sampling_batch()
        new = sampling.sample(logits, np.array([s.rng.random() for s in self.rows]))
        for s, tok in zip(self.rows, new.tolist()):
            s.codes.append(tok)
        self._tokens, self._positions = new, self._positions + 1
        # a request's compute: the runtime step and the sampling of its token
        dt = time.perf_counter() - t
        for r in self.running:
            r.compute_s += dt

    def _sampling_batch(self) -> SamplingBatch:
        sp = [s.request.sampling for s in self.rows]
        return SamplingBatch(np.array([p.temperature for p in sp]), np.array([p.top_k for p in sp], dtype=np.int64),
                             np.array([p.top_p for p in sp]))

    def _fail(self, requests: list[Request], message: str) -> None:
        for r in requests:
            self._release_rows(r)
            self._finish_request(r, FinishReason.ERROR, error=message, status=500)

    def _finish_request(self, r: Request, reason: FinishReason, error: str | None = None,
                        status: int = 0) -> None:
        r.status = Status.FINISHED
        r.finish_reason = reason
        r.error = error
        r.error_status = status
        r.finished = time.monotonic()
        for s in r.sequences:
            s.status = Status.FINISHED
            s.finish_reason = reason
        if r.on_done is not None:
            try:
                r.on_done(r)
            except Exception:
                log.exception("on_done callback failed")

    def _emit(self, stats) -> None:
        for o in self.observers:
            o(stats)
