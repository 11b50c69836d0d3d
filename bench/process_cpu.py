"""CPU time of a server's processes, from /proc: each process's user + system seconds, the
process tree under a supervisor, and the role each process plays in it (engine core, frontend
worker, supervisor). Shared by `bench cost`, `bench oip` and `bench tracing`, which measure CPU
per request this way because it does not depend on what else shares the cores."""
from __future__ import annotations

import os
from pathlib import Path

ROLES = ("core", "frontend", "supervisor")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def role_of(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "gone"
    if b"service.core.process" in cmd:
        return "core"
    if b"service.frontend.worker" in cmd:
        return "frontend"
    return "supervisor"


def is_standby(pid: int) -> bool:
    """A frontend worker held in reserve (it waits for `go` and serves nothing; it renames
    itself anytime-worker when it starts serving)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "anytime-standby"
    except OSError:
        return True


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def snapshot(root: int) -> dict[int, tuple[str, float]]:
    return {p: (role_of(p), cpu_s(p)) for p in descendants(root)}


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, t) in after.items():
        if role in spent:
            spent[role] += t - before.get(pid, (role, 0.0))[1]
    return spent


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    return sum(cpu_s(p) for p in descendants(pid))
