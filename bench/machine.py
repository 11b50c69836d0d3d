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


def header(title: str) -> str:
    cmd = "anytime " + shlex.join(sys.argv[1:]) if sys.argv and "anytime" in sys.argv[0] else shlex.join(sys.argv)
    return "\n".join([
        f"# {title}", "",
        f"- command: `{cmd}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "",
    ])
