"""Service state: the loaded models with their engines, readiness, draining, and the
generate flow (validate -> admit -> wait -> encode) that the routes call."""
from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from .engine import Engine
from .errors import ApiError
from .metrics import Metrics
from .model_dir import ModelSpec, discover, load_model_dir
from .request import FinishReason, Request, SamplingParams
from .runtime import make_runtime
from .scheduler import SchedulerConfig
from .schemas import GenerateRequest
from .settings import Settings

log = logging.getLogger("anytime.service")


@dataclass
class Result:
    """A finished generation, ready to encode."""

    request: Request
    spec: ModelSpec
    latency_s: float
    quality: float


class ServiceState:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.engines: dict[str, Engine] = {}
        self.default_model: str | None = None
        self.ready = False
        self.draining = False
        self._inflight = 0
        self._lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Load, verify and warm up every model; raises ModelDirError with a clear message."""
        s = self.settings
        for path in discover(s.model_paths()):
            spec = load_model_dir(path, s.backend, verify=s.verify_checksums)
            if spec.name in self.engines:
                continue
            runtime = make_runtime(spec, s.backend, s.max_batch, s.device, s.threads, s.ort_spin)
            config = SchedulerConfig(policy=s.policy, max_batch=s.max_batch, max_queue=s.max_queue,
                                     respond_margin_s=s.respond_margin_ms / 1000, safety=s.safety,
                                     quality_price=s.quality_price)
            engine = Engine(spec, runtime, config)
            if s.test_step_delay_ms:
                delay = s.test_step_delay_ms / 1000
                engine.fault_hook = lambda batch: time.sleep(delay)
            self.metrics.watch_engine(engine)
            engine.start()
            self.engines[spec.name] = engine
            log.info("model ready", extra={"model": spec.name, "backend": s.backend, "device": runtime.device,
                                           "D": spec.D})
        self.default_model = s.default_model or next(iter(self.engines))
        if self.default_model not in self.engines:
            from .model_dir import ModelDirError

            raise ModelDirError(f"default model {self.default_model!r} is not among {sorted(self.engines)}")
        # first use of the encoders (imports, codec set-up) happens here, not in a request
        import numpy as np

        from . import encoding

        encoding.png(np.zeros((1, 8, 8), np.float32))
        encoding.npy(np.zeros((1, 8), np.float32))
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, whose pauses would otherwise land in request latencies.
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)

    def start_draining(self) -> None:
        """Stop admission (readyz -> 503); in-flight work still completes."""
        self.draining = True
        self.metrics.ready.set(0)

    @property
    def inflight(self) -> int:
        """HTTP requests admitted and not yet released."""
        return self._inflight

    def idle(self) -> bool:
        return self._inflight == 0 and all(e.active_sequences == 0 and e.queued_sequences == 0
                                           for e in self.engines.values())

    def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(0.01)
        return self.idle()

    def shutdown(self) -> None:
        for e in self.engines.values():
            e.stop(timeout=5)

    # ---- requests --------------------------------------------------------------------------
    def engine(self, name: str | None) -> Engine:
        name = name or self.default_model
        if name not in self.engines:
            raise ApiError(404, f"unknown model {name!r}; available: {', '.join(sorted(self.engines))}")
        return self.engines[name]

    def prepare(self, body: GenerateRequest, arrival: float, request_id: str) -> tuple[Engine, Request]:
        """Validate against the model and build the Request (no engine state is touched)."""
        if not self.ready or self.draining:
            raise ApiError(503, "server is draining" if self.draining else "models are still loading",
                           {"Retry-After": "1"})
        engine = self.engine(body.model)
        spec = engine.spec
        try:
            label = spec.label_index(body.label)
        except KeyError as e:
            raise ApiError(404, e.args[0]) from None
        if body.format == "wav" and spec.modality != "audio":
            raise ApiError(422, f"format 'wav' needs an audio model; {spec.name!r} is {spec.modality}")
        if body.format == "png" and spec.modality != "image":
            raise ApiError(422, f"format 'png' needs an image model; {spec.name!r} is {spec.modality}")
        if body.min_tokens is not None and body.min_tokens > spec.D:
            raise ApiError(422, f"min_tokens={body.min_tokens} exceeds D={spec.D} of model {spec.name!r}")
        if body.top_k > spec.K:
            raise ApiError(422, f"top_k={body.top_k} exceeds the vocabulary K={spec.K}")
        seed = body.seed if body.seed is not None else secrets.randbits(63)
        req = engine.new_request(
            n=body.n, seed=seed, label=label, deadline_s=body.deadline_ms / 1000, arrival=arrival,
            min_tokens=body.min_tokens or 1, max_tokens=body.max_tokens or spec.D,
            sampling=SamplingParams(body.temperature, body.top_k, body.top_p), request_id=request_id)
        if body.stream:
            req.preview_every = body.preview_every or max(1, spec.D // 8)
        return engine, req

    def admit(self, engine: Engine, req: Request) -> asyncio.Queue:
        """Admit or raise 503; returns the queue of engine events: ("preview", tokens, samples)
        for streaming requests, then ("done", request). Pair every admit with release()."""
        if self._inflight >= self.settings.max_inflight:
            self.metrics.rejected(engine.spec.name, "overloaded")
            raise ApiError(503, f"overloaded: {self._inflight} requests in flight", {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.on_done = lambda r: loop.call_soon_threadsafe(events.put_nowait, ("done", r))
        if req.preview_every:
            req.on_preview = lambda r, k, samples: loop.call_soon_threadsafe(
                events.put_nowait, ("preview", k, samples.copy()))
        adm = engine.admit(req)
        if not adm.ok:
            self.metrics.rejected(engine.spec.name, adm.reason)
            raise ApiError(503, adm.message, {"Retry-After": str(max(1, round(adm.retry_after_s)))})
        with self._lock:
            self._inflight += 1
        return events

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1

    def outcome(self, engine: Engine, r: Request) -> Result | None:
        """The finished request as a Result; None if cancelled; ApiError if it failed."""
        spec = engine.spec
        if r.finish_reason is FinishReason.CANCELLED:
            self.metrics.outcome(spec.name, "cancelled", r.n, "cancelled")
            return None
        if r.finish_reason is FinishReason.ERROR and r.error_status == 503:
            self.metrics.rejected(spec.name, "expired")
            raise ApiError(503, r.error, {"Retry-After": "1"})
        if r.finish_reason is FinishReason.ERROR:
            self.metrics.outcome(spec.name, "error", r.n, "error")
            raise ApiError(r.error_status or 500, r.error or "generation failed")
        return Result(r, spec, time.monotonic() - r.arrival, spec.quality(r.tokens))

    async def generate(self, body: GenerateRequest, arrival: float, request_id: str, receive) -> Result | None:
        """Admit, wait for the engine, and return the result; None when the client went away.

        `receive` is the ASGI receive of the request (its body already read): it returns only
        when the client disconnects, so waiting on it costs nothing (no polling)."""
        engine, req = self.prepare(body, arrival, request_id)
        events = self.admit(engine, req)
        done = asyncio.ensure_future(events.get())  # a non-streaming request gets one event: done
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                engine.cancel(req)  # the engine frees its rows, then finishes it as cancelled
                await done
            return self.outcome(engine, req)
        finally:
            gone.cancel()
            done.cancel()
            self.release()

    def record(self, result: Result, latency_s: float) -> None:
        """Count an answered request; its time since leaving the engine teaches the scheduler
        how long responding takes right now."""
        r = result.request
        respond_s = time.monotonic() - r.finished
        self.engines[r.model].latency.observe_respond(respond_s)
        self.metrics.answered(r.model, latency_s, r.deadline_s, r.tokens, result.spec.D, result.quality, r.n,
                              r.finish_reason.value, respond_s)


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
