"""A fleet on one machine: several `anytime serve` replicas and the shipped HAProxy config in
front of them (deploy/haproxy/haproxy.cfg), for the fleet tests and the fleet benchmark.

Each replica is a process group of its own (supervisor, engine core, frontend workers), so
`kill9()` ends a whole replica at once, as a machine or container dying would."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.server_proc import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    port: int
    agent_port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        """SIGKILL to the whole replica (its process group): nothing drains, connections reset."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@contextmanager
def replicas(model_dir, count: int, *flags: str, log_dir: Path, ready_timeout: float = 120, env: dict | None = None):
    """`count` replicas of `anytime serve --model-dirs model_dir FLAGS --agent-port ...`
    (environment `env`, default this process's), started side by side; yields them once all
    answer /readyz."""
    started: list[Replica] = []
    try:
        for i in range(1, count + 1):
            port, agent = free_port(), free_port()
            log = open(Path(log_dir) / f"replica{i}.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(model_dir),
                                     "--port", str(port), "--agent-port", str(agent), *flags],
                                    cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            log.close()
            started.append(Replica(f"replica{i}", proc, port, agent))
        for r in started:
            wait_ready(r.proc, r.base, ready_timeout, Path(log_dir) / f"{r.name}.log")
        yield started
    finally:
        for r in started:
            if r.proc.poll() is None:
                r.kill9()


class HAProxy:
    def __init__(self, proc: subprocess.Popen, port: int, stats: Path):
        self.proc, self.port, self.stats = proc, port, stats

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        """One command of HAProxy's runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats))
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def weight(self, server: str) -> int:
        """The server's current weight (`get weight` says 'current (initial N)')."""
        return int(self.command(f"get weight anytime/{server}").split()[0])

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: UP, DOWN, DRAIN, ..."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "anytime" and r["svname"] not in
                ("FRONTEND", "BACKEND")}


@contextmanager
def haproxy(servers: list[Replica], log_path: Path, config: Path = HAPROXY_CFG, ready_timeout: float = 20):
    """HAProxy (Debian's `haproxy`, in the foreground) with `config`, its replicas from the
    environment the config reads; yields once every replica is UP."""
    port = free_port()
    # the stats socket in a temporary directory, never beside the logs (a results directory would
    # keep a dead socket); absolute: HAProxy reads anything else as host:port
    sock_dir = tempfile.mkdtemp(prefix="anytime-haproxy-")
    stats = Path(sock_dir) / "stats.sock"
    env = {**os.environ, "ANYTIME_LB_BIND": f"127.0.0.1:{port}", "ANYTIME_LB_STATS": str(stats)}
    for i, r in enumerate(servers, 1):
        env[f"ANYTIME_REPLICA_{i}"] = f"127.0.0.1:{r.port}"
        env[f"ANYTIME_AGENT_{i}"] = str(r.agent_port)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        log = stack.enter_context(open(log_path, "wb"))
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT)
        lb = HAProxy(proc, port, stats)
        try:
            end = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited with {proc.returncode}: "
                                       f"{Path(log_path).read_text(errors='replace')[-2000:]}")
                try:
                    if stats.exists() and set(lb.states().values()) == {"UP"} and \
                            httpx.get(lb.base + "/readyz", timeout=1).status_code == 200:
                        break
                except (OSError, httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > end:
                    raise RuntimeError("haproxy did not see every replica up")
                time.sleep(0.1)
            yield lb
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
