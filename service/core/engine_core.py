"""The engine core: every model's engine and the one metrics registry, behind the message API
of service/ipc.py. The same object serves in-process (service/inproc.py) and in its own
process (service/core/process.py); either way admission runs on one thread (the caller's) and
each model's generation on its engine thread."""
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
from .metrics import Metrics
from .model_dir import ModelDirError, discover, load_model_dir
from .request import FinishReason, Request, SamplingParams
from .runtime import make_runtime
from .scheduler import SchedulerConfig

log = logging.getLogger("anytime.core")

OnOutput = Callable[[ipc.Output, "np.ndarray | None"], None]  # called on an engine thread


class EngineCore:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.engines: dict[str, Engine] = {}
        self.default_model: str | None = None
        self.ready = False

    # ---- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        """Load, verify and warm up every model; raises ModelDirError with a clear message."""
        s = self.settings
        for path in discover(s.model_paths()):
            spec = load_model_dir(path, s.backend, verify=s.verify_checksums)
            if spec.name in self.engines:
                continue
            config = SchedulerConfig.from_settings(s)
            runtime = make_runtime(spec, s.backend, config.slots(), s.device, s.threads, s.ort_spin, s.ort_io_binding)
            spec.device = runtime.device
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
            raise ModelDirError(f"default model {self.default_model!r} is not among {sorted(self.engines)}")
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, whose pauses would otherwise land in request latencies.
        gc.collect()
        gc.freeze()
        self.ready = True
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
    def add(self, msg: ipc.AddRequest, on_output: OnOutput) -> tuple[ipc.Admitted, Request | None]:
        """Admit or refuse at once; an admitted request's previews and end reach on_output."""
        engine = self.engines.get(msg.model)
        if engine is None:
            return ipc.Admitted(msg.id, False, reason=Refusal.UNKNOWN_MODEL, message=f"unknown model {msg.model!r}"), None
        req = engine.new_request(n=msg.n, seed=msg.seed, label=msg.label, deadline_s=msg.deadline_s,
                                 arrival=msg.arrival, min_tokens=msg.min_tokens, max_tokens=msg.max_tokens,
                                 sampling=SamplingParams(msg.temperature, msg.top_k, msg.top_p),
                                 request_id=msg.request_id, preview_every=msg.preview_every,
                                 seeds=msg.seeds, labels=msg.labels, priority=msg.priority)
        rid, metrics = msg.id, self.metrics

        def done(r: Request) -> None:
            _count_unanswered(metrics, r)
            if lost := _load_lost(r):
                metrics.admission(msg.model, r.n, 0, lost, Refusal.EXPIRED if r.error_status == 503 else "")
            on_output(ipc.Output(rid, True, r.tokens, finish_reason=r.finish_reason.value, error=r.error,
                                 error_status=r.error_status, started=r.started, finished=r.finished,
                                 compute_s=r.compute_s), r.samples)

        req.on_done = done
        if msg.preview_every:
            req.on_preview = lambda r, k, samples: on_output(ipc.Output(rid, False, k), samples)
        adm = engine.admit(req)
        # an admitted request's loss is counted when it ends (_load_lost); a refusal loses it all
        metrics.admission(msg.model, msg.n, adm.idle_tokens, 0 if adm.ok else adm.idle_tokens, adm.reason)
        if not adm.ok:
            metrics.rejected(msg.model, adm.reason, msg.priority)
            return ipc.Admitted(rid, False, reason=adm.reason, message=adm.message,
                                retry_after_s=adm.retry_after_s), None
        return ipc.Admitted(rid, True, planned_tokens=adm.planned_tokens), req

    def cancel(self, req: Request) -> None:
        self.engines[req.model].cancel(req)

    def answered(self, msg: ipc.Answered) -> None:
        """A frontend answered a request: count it, and learn how long responding took."""
        engine = self.engines.get(msg.model)
        if engine is None:
            return
        engine.observe_respond(msg.respond_s)
        self.metrics.answered(msg.model, msg.latency_s, msg.deadline_s, msg.tokens, engine.spec.D, msg.quality,
                              msg.n, msg.reason, msg.respond_s)

    def rejected(self, model: str, reason: str) -> None:
        """A frontend refused a request itself (too many in flight): a load refusal, counted as
        the model's whole D (the request's own budget never reached the scheduler)."""
        self.metrics.rejected(model, reason)
        engine = self.engines.get(model)
        if engine is not None:
            self.metrics.admission(model, 1, engine.spec.D, engine.spec.D, reason)

    def metrics_text(self) -> bytes:
        return self.metrics.exposition()[0]


def _load_lost(r: Request) -> int:
    """Tokens per sample that load took from a finished request: what an idle replica would
    have planned minus what it got (a smaller budget, the quality knee under pressure, the
    deadline guard), all of it when it expired in the queue; none when cancelled or failed."""
    if r.finish_reason is FinishReason.CANCELLED or (r.finish_reason is FinishReason.ERROR and r.error_status != 503):
        return 0
    return max(0, r.idle_tokens - (0 if r.finish_reason is FinishReason.ERROR else r.tokens))


def _count_unanswered(metrics: Metrics, r: Request) -> None:
    """Outcomes the engine core knows without the frontend: cancelled, expired, failed."""
    if r.finish_reason is FinishReason.CANCELLED:
        metrics.outcome(r.model, "cancelled", r.n, "cancelled")
    elif r.finish_reason is FinishReason.ERROR and r.error_status == 503:
        metrics.rejected(r.model, Refusal.EXPIRED, r.priority)
    elif r.finish_reason is FinishReason.ERROR:
        metrics.outcome(r.model, "error", r.n, "error")
