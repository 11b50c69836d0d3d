"""Servers from other checkouts of this repository, side by side with this one in one run:
`--checkout NAME=DIR` names a checkout (its own venv in DIR/.venv), and a sweep entry
`NAME:POLICY[+switch...]` starts that checkout's `anytime serve`. Reports name a checkout by
its commit, never by where it lies on the machine."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Checkout:
    name: str
    path: Path
    commit: str

    @property
    def executable(self) -> str:
        return str(self.path / ".venv" / "bin" / "anytime")


def parse_checkouts(specs: list[str]) -> dict[str, Checkout]:
    """NAME=DIR entries -> checkouts, each with the commit its work tree is at."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkout wants NAME=DIR, got {spec!r}")
        p = Path(path).resolve()
        if not (p / ".venv" / "bin" / "anytime").exists():
            raise ValueError(f"checkout {name!r} has no .venv/bin/anytime")
        commit = subprocess.run(["git", "-C", str(p), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        out[name] = Checkout(name, p, commit)
    return out


def split_entry(entry: str) -> tuple[str | None, str]:
    """`NAME:policy+switches` -> (NAME, `policy+switches`); no NAME: this checkout (None)."""
    name, sep, rest = entry.partition(":")
    return (name, rest) if sep else (None, entry)


def this_commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def scrub(text: str, checkouts: dict[str, Checkout]) -> str:
    """A report's text without machine paths: checkouts by name, this one as `.`."""
    for c in checkouts.values():
        text = text.replace(str(c.path), f"<{c.name} checkout>")
    return text.replace(str(ROOT), ".")
