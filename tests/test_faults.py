"""The test-only step delay reaches a server's engine-core process and nothing else: the product
has no switch for it (tests/utils/faults.py, tests/utils/hooks/sitecustomize.py)."""
from __future__ import annotations

import subprocess
import sys

from service.settings import Settings
from tests.utils.faults import slow_server_env
from tests.utils.server import ROOT

PROBE = """
import sys
import service.frontend.app
assert "service.core.engine" not in sys.modules  # a frontend never imports the core, patched or not
from service.core.engine import Engine
print(Engine.warmup.__name__)
"""


def probe(env) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_delay_patches_the_engine_only_when_asked():
    assert probe(slow_server_env(5)) == "slow_warmup"
    assert probe(None) == "warmup"


def test_no_test_hook_in_the_settings():
    assert not [name for name in Settings.model_fields if name.startswith("test")]
