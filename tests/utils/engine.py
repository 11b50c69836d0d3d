"""Functions that drive a real engine without HTTP."""
from __future__ import annotations

import threading
import time

from service.core.engine import Engine
from service.core.model_dir import load_model_dir
from service.core.request import Request, SamplingParams
from service.core.runtime import make_runtime
from service.core.scheduler import SchedulerConfig


def make_engine(model_dir, backend="onnx", policy="anytime", max_batch=16, ort_io_binding="auto", **kw) -> Engine:
    spec = load_model_dir(model_dir, backend)
    config = SchedulerConfig(policy=policy, max_batch=max_batch, **kw)
    engine = Engine(spec, make_runtime(spec, backend, config.slots(), ort_io_binding=ort_io_binding), config)
    engine.start()
    return engine


def submit(engine: Engine, seed=0, n=1, deadline_ms=5000, max_tokens=None, min_tokens=1, label=None,
           sampling: SamplingParams | None = None, seeds=None, labels=None,
           guidance: float = 0.0) -> tuple[Request, threading.Event]:
    done = threading.Event()
    req = engine.new_request(n=n, seed=seed, label=label, deadline_s=deadline_ms / 1000, arrival=time.monotonic(),
                             min_tokens=min_tokens, max_tokens=max_tokens or engine.spec.D,
                             sampling=sampling or SamplingParams(), seeds=seeds, labels=labels, guidance=guidance)
    req.on_done = lambda r: done.set()
    adm = engine.admit(req)
    assert adm.ok, adm.message
    return req, done


def run(engine: Engine, **kw) -> Request:
    req, done = submit(engine, **kw)
    assert done.wait(30), "request did not finish"
    return req
