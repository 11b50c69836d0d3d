"""The repository speaks of the project only: no tracked file records how its work was
organised (the words WORK_WORDS below) or the paths of a particular machine. Results say commit,
date, machine and command instead.

The rule is about prose. In Python files only comments and strings with spaces in them (prose,
docstrings) are read: a variable or a module of those names in code is code. Everywhere, the
technical senses of the words are allowed: ONNX Runtime's inference objects (`ORT ...`,
`ONNX Runtime ...`, their configuration keys) and ONNX's graph-building module. The words are
assembled here rather than written, so that this file obeys the rule it checks."""
from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITTING_WORD, ASSISTANT_WORD, WORK_DIR = "sess" + "ion", "hel" + "per", "/" + "work" + "/"
WORK_WORDS = (SITTING_WORD, ASSISTANT_WORD)
RECORD_WORDS = re.compile(rf"\b{SITTING_WORD}s?\b|\b{ASSISTANT_WORD}s?\b|{WORK_DIR}|/farm/|/root/|/home/\w", re.I)
TECHNICAL = re.compile(rf"\b(?:ORT|ONNX Runtime)(?: \w+)? {SITTING_WORD}s?\b|\b{SITTING_WORD}\.[a-z_]|onnx\.{ASSISTANT_WORD}\b|"
                       rf"\b{ASSISTANT_WORD}\.", re.I)


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
    S, H = SITTING_WORD, ASSISTANT_WORD
    assert violations(f"measured in {S} 4") == [S]
    assert violations(f"in this {S}'s run") == [S]
    assert violations(f"a {H} wrote this") == [H]
    assert violations(f"--model-dirs {WORK_DIR}main/models/zoo") == [WORK_DIR]
    assert violations(f"the ORT {S}'s device; ONNX Runtime {S}s; {S}.force_spinning_stop=1") == []
    assert violations(f"built with onnx.{H}; {H}.make_node") == []
    code = f"{S}s = {{}}\n{H}.make_node('Gemm')\nx = '{S}'  # a comment about this {S}\n"
    assert violations(prose_of_python(code)) == [S]


def test_no_tracked_file_speaks_of_how_its_work_was_organised_or_of_machine_paths():
    found = {}
    for name in tracked_text_files():  # this file too: it assembles the words it looks for
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
