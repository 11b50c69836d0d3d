"""Test-only fault injection: slow or failing prior steps, in this process or in a server the
tests start. Nothing here is part of the product: the engine has no hook for it, the tests wrap
the runtime's `step` from outside."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from tests.utils.hooks.sitecustomize import STEP_DELAY_ENV, slow_steps

HOOKS_DIR = Path(__file__).resolve().parent / "hooks"


def set_step_hook(engine, hook) -> None:
    """Run `hook(batch_size)` before each of the engine's prior steps, inside the step's timing
    (None: stop). It may sleep (a slow step, which the latency model sees) or raise (a failed step,
    which fails that step's requests alone)."""
    runtime = engine.runtime
    real = vars(runtime).setdefault("_unhooked_step", runtime.step)
    if hook is None:
        runtime.step = real
        return

    def step(tokens, positions):
        hook(len(tokens))
        return real(tokens, positions)

    runtime.step = step


@contextmanager
def slow_engines(delay_ms: float):
    """Engines that start inside this block sleep `delay_ms` before every prior step once profiled
    (this process: an in-process server)."""
    from service.core.engine import Engine

    warmup = slow_steps(Engine, delay_ms / 1000)
    try:
        yield
    finally:
        Engine.warmup = warmup


def slow_server_env(delay_ms: float) -> dict[str, str]:
    """Environment for `anytime serve` whose engine steps each sleep `delay_ms` (see hooks/)."""
    path = os.pathsep.join(p for p in (str(HOOKS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, STEP_DELAY_ENV: str(delay_ms)}
