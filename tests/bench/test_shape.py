"""bench/ keeps its shape (bench/__init__.py): each top-level module is a command of `anytime
bench`, part of the layer the commands share, or one of the two entry points. A new one-off
script belongs in bench/results/ as a report, not here."""
from __future__ import annotations

import re
from pathlib import Path

from bench.cli import build_parser

BENCH = Path(__file__).resolve().parents[2] / "bench"
COMMANDS = {"engine": "engine_bench", "load": "load_bench", "sweep": "policy_sweep", "mixed": "mixed",
            "interactive": "interactive", "priority": "priority", "overhead": "overhead", "cost": "cost",
            "oip": "oip_cost", "tracing": "tracing", "soak": "soak", "chaos": "chaos", "threads": "thread_modes",
            "split": "split", "split-sweep": "split_sweep", "peers": "peers", "fleet": "fleet",
            "guidance": "guidance_sweep", "plan": "plan_validation"}
SHARED = {"server_proc", "loadgen", "summary", "tables", "machine", "checkouts", "fleet_proc", "process_cpu"}
ENTRY_POINTS = {"__init__", "cli", "gpu_check"}


def test_every_module_has_a_place():
    modules = {p.stem for p in BENCH.glob("*.py")}
    assert modules - set(COMMANDS.values()) - SHARED - ENTRY_POINTS == set()
    packages = {p.name for p in BENCH.iterdir() if (p / "__init__.py").exists()}
    assert packages == {"peers", "model"}


def test_every_command_is_a_module_the_cli_runs():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands == set(COMMANDS)
    cli = (BENCH / "cli.py").read_text()
    for module in COMMANDS.values():
        assert re.search(rf"from \.{module}(\.\w+)? import", cli), module
        assert (BENCH / f"{module}.py").exists() or (BENCH / module / "__init__.py").exists()
