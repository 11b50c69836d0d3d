"""Settings is the one reader of the environment in service/ (service/settings.py)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Readers still outside settings.py, each for a stated reason; shrink this, never grow it.
#  - ANYTIME_PROCESS_SETTINGS: the supervisor hands its Settings (as JSON) to the processes it starts
#  - tracing.py: OpenTelemetry's own OTEL_* variables, passed on to its SDK untouched
KNOWN = {"service/supervisor.py", "service/frontend/worker.py", "service/core/process.py", "service/frontend/tracing.py"}


def environment_reads(path: Path) -> list[int]:
    """Lines that read os.environ / os.getenv (or hand os.environ on as a default)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "environb"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in ("environ", "getenv") for a in node.names):
            lines.append(node.lineno)
    return lines


def test_the_scan_sees_environment_reads(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom os import getenv\nx = os.environ.get('A')\ny = os.getenv('B')\n")
    assert sorted(environment_reads(f)) == [2, 3, 4]


def test_only_settings_reads_the_environment():
    readers = {str(p.relative_to(ROOT)) for p in (ROOT / "service").rglob("*.py") if environment_reads(p)}
    assert readers - KNOWN == {"service/settings.py"}
    assert "service/core/runtime.py" not in readers
