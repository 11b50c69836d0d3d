"""Test-only: slow down the prior steps of a server process the tests start.

The product has no delay switch; a test that needs a server whose steps cost a known time
(drain under load, overload, autoscaling signals) starts it with this directory on PYTHONPATH
and TESTS_STEP_DELAY_MS set (tests/utils/faults.py: `slow_server_env`). Python imports
`sitecustomize` at start-up in every process of the group (the supervisor hands its environment
on), and this one patches the engine class when, and only if, the process imports it: a frontend
worker, which never imports the engine core, stays untouched."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time

STEP_DELAY_ENV = "TESTS_STEP_DELAY_MS"
ENGINE_MODULE = "service.core.engine"


def slow_steps(engine_cls, delay_s: float):
    """From now on, every engine that finishes its start-up profile sleeps `delay_s` before each
    prior step. The profile stays the runtime's own; every later step (the warm-up generations
    included) is measured slow, as on a machine where something else takes the CPU, and the
    latency model learns it online. Returns the original `warmup` to undo the patch."""
    warmup = engine_cls.warmup

    def slow_warmup(self):
        warmup(self)
        step = self.runtime.step

        def slow_step(tokens, positions):
            time.sleep(delay_s)
            return step(tokens, positions)

        self.runtime.step = slow_step

    engine_cls.warmup = slow_warmup
    return warmup


class _PatchEngineOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def find_spec(self, name, path=None, target=None):
        if name != ENGINE_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            slow_steps(module.Engine, self.delay_s)

        spec.loader.exec_module = exec_and_patch
        return spec


if __name__ == "sitecustomize" and float(os.environ.get(STEP_DELAY_ENV) or 0) > 0:
    sys.meta_path.insert(0, _PatchEngineOnImport(float(os.environ[STEP_DELAY_ENV]) / 1000))
