"""The engine core: every model's engine and the one metrics registry, behind the message API
of service/ipc.py, served by process.py's message loop: in its own process, or on a thread of
the one process with `--workers 0` (service/inproc.py); either way admission runs on one thread and
each model's generation on its engine thread. Outputs leave through one `sink` call per
frontend per engine decode (usually once per iteration), never one per request."""
from __future__ import annotations

import gc
import logging
import time
from typing import Callable

import numpy as np

from .. import ipc
from ..refusals import Refusal
from ..settings import Settings
from .engine import Engine
from .guidance_pricing import choose_guidance
from .headroom import HeadroomCollector, replica_headroom
from .metrics import Metrics
from .model_dir import ModelDirError, discover, load_model_dir
from .request import FinishReason, Request, SamplingParams
from .runtime import make_runtime
from .scheduler import SchedulerConfig

log = logging.getLogger("anytime.core")

# (frontend, outputs, their samples): called on an engine thread once per frontend per decode
Sink = Callable[[object, "list[ipc.Output]", "list[np.ndarray | None]"], None]


class EngineCore:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, sink: Sink | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.sink = sink
        self.engines: dict[str, Engine] = {}
        self.default_model: str | None = None
        self.ready = False
        # admitted requests by (frontend, its id), for cancels and the drain; and the route of
        # each admitted request by the engine's id, for its outputs (the engine thread pops both)
        self.live: dict[tuple[object, int], Request] = {}
        self._routes: dict[int, tuple[object, int]] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Load, verify and warm up every model; raises ModelDirError with a clear message."""
        s = self.settings
        for path in discover(s.model_paths()):
            spec = load_model_dir(path, s.backend, verify=s.verify_checksums)
            if spec.name in self.engines:
                continue
            config = SchedulerConfig.from_settings(s)
            runtime = make_runtime(spec, s.backend, config.slots(), s.device, s.threads, s.ort_spin, s.ort_io_binding,
                                   s.decode_threads)
            spec.device = runtime.device
            engine = Engine(spec, runtime, config)
            self.metrics.watch_engine(engine)
            engine.on_outputs = self._outputs
            engine.start()
            self.engines[spec.name] = engine
            log.info("model ready", extra={"model": spec.name, "backend": s.backend, "device": runtime.device,
                                           "D": spec.D})
        self.default_model = s.default_model or next(iter(self.engines))
        if self.default_model not in self.engines:
            raise ModelDirError(f"default model {self.default_model!r} is not among {sorted(self.engines)}")
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, whose pauses would otherwise land in request latencies.
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.registry.register(HeadroomCollector(self))
        self.metrics.ready.set(1)
        self.metrics.core_start.set(time.time())

    def info(self) -> dict:
        """What a frontend needs to know of the served models."""
        return {"default_model": self.default_model,
                "models": {name: e.spec.wire() for name, e in self.engines.items()}}

    def idle(self) -> bool:
        return all(e.active_sequences == 0 and e.queued_sequences == 0 for e in self.engines.values())

    def shutdown(self) -> None:
        for e in self.engines.values():
            e.stop(timeout=5)

    # ---- requests (the admitting thread) ---------------------------------------------------
    def add(self, msg: ipc.AddRequest, frontend: object = None) -> ipc.Admitted:
        """Admit or refuse at once; an admitted request's previews and end reach the sink with
        `frontend` and msg.id."""
        engine = self.engines.get(msg.model)
        if engine is None:
            return ipc.Admitted(msg.id, False, reason=Refusal.UNKNOWN_MODEL, message=f"unknown model {msg.model!r}")
        make = lambda w: engine.new_request(
            n=msg.n, seed=msg.seed, label=msg.label, deadline_s=msg.deadline_s, arrival=msg.arrival,
            min_tokens=msg.min_tokens, max_tokens=msg.max_tokens,
            sampling=SamplingParams(msg.temperature, msg.top_k, msg.top_p), request_id=msg.request_id,
            preview_every=msg.preview_every, seeds=msg.seeds, labels=msg.labels, priority=msg.priority, guidance=w)
        if msg.guidance_auto and msg.guidance > 0 and engine.spec.guided_quality_k is not None:
            req = choose_guidance(engine, make, msg.guidance)
        else:
            req = make(msg.guidance)
        route = (frontend, msg.id)
        # routed before admission: the engine thread may finish the request before admit returns
        self._routes[req.id] = route
        self.live[route] = req
        adm = engine.admit(req)
        # an admitted request's loss is counted when it ends (_load_lost); a refusal loses it all
        self.metrics.admission(msg.model, msg.n, adm.idle_tokens, 0 if adm.ok else adm.idle_tokens, adm.reason)
        if not adm.ok:
            del self._routes[req.id], self.live[route]
            self.metrics.rejected(msg.model, adm.reason, msg.priority)
            return ipc.Admitted(msg.id, False, reason=adm.reason, message=adm.message, retry_after_s=adm.retry_after_s)
        self.metrics.guidance(msg.model, req.guidance, msg.n)
        return ipc.Admitted(msg.id, True, planned_tokens=adm.planned_tokens)

    def cancel(self, frontend: object, rid: int) -> None:
        req = self.live.pop((frontend, rid), None)
        if req is not None:
            self.engines[req.model].cancel(req)

    # ---- outputs (an engine thread) --------------------------------------------------------
    def _outputs(self, finished: list[Request], previews: list) -> None:
        """One decode's finished requests and previews: one sink call per frontend."""
        by_frontend: dict[object, tuple[list, list]] = {}
        routes = self._routes
        for r, k, samples in previews:
            route = routes.get(r.id)
            if route is not None:
                outs, data = by_frontend.get(route[0]) or by_frontend.setdefault(route[0], ([], []))
                outs.append(ipc.Output(route[1], False, k, guidance=r.guidance))
                data.append(samples)
        for r in finished:
            self._count_finished(r)
            route = routes.pop(r.id, None)
            if route is None:  # the warm-up's own requests
                continue
            self.live.pop(route, None)
            outs, data = by_frontend.get(route[0]) or by_frontend.setdefault(route[0], ([], []))
            outs.append(ipc.Output(route[1], True, r.tokens, finish_reason=r.finish_reason.value, error=r.error,
                                   error_status=r.error_status, started=r.started, finished=r.finished,
                                   compute_s=r.compute_s, guidance=r.guidance))
            data.append(r.samples)
        if self.sink is not None:
            for frontend, (outs, data) in by_frontend.items():
                self.sink(frontend, outs, data)

    def _count_finished(self, r: Request) -> None:
        """What the engine core counts of a finished request without the frontend: cancelled,
        expired and failed outcomes, and the tokens load took from it."""
        if r.finish_reason is FinishReason.CANCELLED:
            self.metrics.outcome(r.model, "cancelled", r.samples_n, "cancelled")
            return
        if r.finish_reason is FinishReason.ERROR:
            if r.error_status == 503:
                self.metrics.rejected(r.model, Refusal.EXPIRED, r.priority)
            else:
                self.metrics.outcome(r.model, "error", r.samples_n, "error")
                return
        if lost := _load_lost(r):
            self.metrics.admission(r.model, r.samples_n, 0, lost, Refusal.EXPIRED if r.error_status == 503 else "")

    def answered(self, msg: ipc.Answered) -> None:
        """A frontend answered a request: count it, and learn how long responding took."""
        engine = self.engines.get(msg.model)
        if engine is None:
            return
        engine.observe_respond(msg.respond_s)
        self.metrics.answered(msg.model, msg.latency_s, msg.deadline_s, msg.tokens, engine.spec.D, msg.quality,
                              msg.n, msg.reason, msg.respond_s, msg.deadline_met)

    def rejected(self, model: str, reason: str) -> None:
        """A frontend refused a request itself (too many in flight): a load refusal, counted as
        the model's whole D (the request's own budget never reached the scheduler)."""
        self.metrics.rejected(model, reason)
        engine = self.engines.get(model)
        if engine is not None:
            self.metrics.admission(model, 1, engine.spec.D, engine.spec.D, reason)

    def headroom(self) -> dict[str, float]:
        """Each model's headroom (service/core/headroom.py); on the admitting thread."""
        return replica_headroom(self)

    def metrics_text(self) -> bytes:
        return self.metrics.exposition()[0]


def _load_lost(r: Request) -> int:
    """Tokens per sample that load took from a finished request: what an idle replica would
    have planned minus what it got (a smaller budget, the quality knee under pressure, the
    deadline guard), all of it when it expired in the queue; none when cancelled or failed."""
    if r.finish_reason is FinishReason.CANCELLED or (r.finish_reason is FinishReason.ERROR and r.error_status != 503):
        return 0
    return max(0, r.idle_tokens - (0 if r.finish_reason is FinishReason.ERROR else r.tokens))
