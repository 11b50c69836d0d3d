"""The fleet benchmark's round-robin balancer is the shipped config minus exactly the agent and
the retries (bench/fleet.py): still valid for haproxy, health checks kept."""
import os
import shutil
import subprocess

import pytest

from bench.fleet import round_robin_config
from bench.fleet_proc import HAPROXY_CFG

ENV = {"ANYTIME_LB_BIND": "127.0.0.1:8080", "ANYTIME_LB_STATS": "/tmp/unused.sock", "ANYTIME_REPLICA_1": "127.0.0.1:1",
       "ANYTIME_REPLICA_2": "127.0.0.1:2", "ANYTIME_AGENT_1": "3", "ANYTIME_AGENT_2": "4"}


def directives(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_round_robin_config_drops_only_the_agent_and_the_retries(tmp_path):
    rr = directives(round_robin_config(tmp_path / "rr.cfg").read_text())
    shipped = directives(HAPROXY_CFG.read_text())
    assert not [d for d in rr if "agent" in d or d.startswith(("retry-on", "option redispatch"))]
    assert "retries 0" in rr and "retries 1" in shipped
    assert "option httpchk GET /readyz" in rr and "balance roundrobin" in rr
    dropped = [d for d in shipped if d not in rr]
    assert sorted(dropped) == sorted(d for d in shipped if "agent" in d or d.startswith(
        ("retry-on", "option redispatch", "retries")))
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make apt)")
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "rr.cfg")], env={**os.environ, **ENV}, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
