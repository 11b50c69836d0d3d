"""What the benchmark ran on, for every report."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit(checkout=None) -> str:
    """The commit of the code being measured (short hash, `+changes` when the tree differs from
    it): this checkout's, or another checkout's (a path) measured beside it."""
    import subprocess
    from pathlib import Path

    root = Path(checkout) if checkout else Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev + (" +changes" if dirty else "")


def header(title: str) -> str:
    cmd = "anytime " + shlex.join(sys.argv[1:]) if sys.argv and "anytime" in sys.argv[0] else shlex.join(sys.argv)
    return "\n".join([
        f"# {title}", "",
        f"- command: `{cmd}`",
        f"- commit: {commit()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "",
    ])
