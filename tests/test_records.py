"""The repository speaks of the project only: no tracked file records work sessions, helpers or
the paths of a particular machine. Results say commit, date, machine and command instead.

The rule is about prose. In Python files only comments and strings with spaces in them (prose,
docstrings) are read: a name such as `sessions` or `onnx.helper` in code is code. Everywhere,
the technical senses of the words are allowed: ONNX Runtime's sessions (`ORT session`, `ONNX
Runtime session`, its `session.*` configuration keys) and `onnx.helper`."""
from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD_WORDS = re.compile(r"\bsessions?\b|\bhelpers?\b|/work/|/farm/|/root/|/home/\w", re.I)
TECHNICAL = re.compile(r"\b(?:ORT|ONNX Runtime)(?: \w+)? sessions?\b|\bsession\.[a-z_]|onnx\.helper\b|\bhelper\.", re.I)


def violations(text: str) -> list[str]:
    return [m.group(0) for m in RECORD_WORDS.finditer(TECHNICAL.sub(" ", text))]


def prose_of_python(source: str) -> str:
    """Comments and strings that contain a space (docstrings, messages) of a Python file."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and re.search(r"\s", tok.string)):
            out.append(tok.string)
    return "\n".join(out)


def tracked_text_files() -> list[str]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [f for f in files.decode().split("\0") if f]


def file_violations(name: str) -> list[str]:
    data = (ROOT / name).read_bytes() if (ROOT / name).is_file() else b""
    if b"\0" in data[:8192]:  # binary (graphs, checkpoints, images)
        return []
    text = data.decode("utf-8", errors="replace")
    return violations(prose_of_python(text) if name.endswith(".py") else text)


def test_the_rule_is_precise():
    assert violations("measured in session 4") == ["session"]
    assert violations("in this session's run") == ["session"]
    assert violations("a helper wrote this") == ["helper"]
    assert violations("--model-dirs /work/main/models/zoo") == ["/work/"]
    assert violations("the ORT session's device; ONNX Runtime sessions; session.force_spinning_stop=1") == []
    assert violations("built with onnx.helper; helper.make_node") == []
    code = "sessions = {}\nhelper.make_node('Gemm')\nx = 'session'  # a comment about this session\n"
    assert violations(prose_of_python(code)) == ["session"]


def test_no_tracked_file_speaks_of_sessions_helpers_or_machine_paths():
    found = {}
    for name in tracked_text_files():
        if name != "tests/test_records.py":
            if bad := file_violations(name):
                found[name] = sorted(set(bad))
    assert found == {}


def test_every_results_file_records_commit_date_machine_and_command():
    missing = {}
    for name in tracked_text_files():
        if name.startswith("bench/results/") and name.endswith(".md"):
            text = (ROOT / name).read_text()
            if "\n- command:" in text:  # a run's record (notes and narratives have none)
                lacks = [f for f in ("commit", "date", "machine") if f"\n- {f}:" not in text]
                # targets.md compares two evaluations: their dates and machines are in theirs
                if lacks and not (name.endswith("targets.md") and lacks == ["date", "machine"]):
                    missing[name] = lacks
    assert missing == {}
