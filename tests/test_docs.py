"""The README stays short enough to read in five minutes, and every relative link in it and in
docs/ points at a file (and, for a `#fragment` into markdown, a heading) that exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in CODE_FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_anchor(re.sub(r"`", "", m.group(1)))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", CODE_FENCE.sub("", path.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment.lower() not in anchors(dest):
            broken.append(target)
    return broken


def test_anchor_rule_matches_github():
    assert github_anchor("The process group and its restarts") == "the-process-group-and-its-restarts"
    assert github_anchor("Mixed workloads: slack-aware scheduling (issue #10)") == "mixed-workloads-slack-aware-scheduling-issue-10"
    assert github_anchor("GPU check") == "gpu-check"


def test_the_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n[ok](a.md#title) [gone](b.md) [bad](a.md#nowhere) [web](https://x.org/y)\n")
    assert broken_links(tmp_path / "a.md") == ["b.md", "a.md#nowhere"]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"


def test_relative_links_resolve():
    broken = {str(p.relative_to(ROOT)): b for p in documents() if (b := broken_links(p))}
    assert not broken, f"links to files or headings that do not exist: {broken}"
