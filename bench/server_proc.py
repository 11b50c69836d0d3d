"""Start and stop a real `anytime serve` process for a benchmark run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, base: str, timeout: float, log_path: Path | None = None) -> None:
    """Block until the server at `base` answers /readyz with 200; raise, with the tail of its
    log, if the process exits first or the timeout passes."""
    end = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise RuntimeError("server did not become ready")
        time.sleep(0.05)


@contextmanager
def serve(*flags: str, log_path: Path | None = None, env: dict | None = None, executable: str | None = None):
    """Yields the base URL of a ready server started with `anytime serve FLAGS` (its process
    id is available as `serve.last_pid` for memory sampling). `executable`: another
    checkout's `anytime` script (default: this checkout's code), run in that checkout (its
    supervisor starts the engine core and workers with `python -m`, which imports from there)."""
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    command = [executable] if executable else [sys.executable, "-m", "anytime_cli"]
    cwd = Path(executable).resolve().parents[2] if executable else ROOT
    proc = subprocess.Popen([*command, "serve", "--port", str(port), *flags],
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    serve.last_pid = proc.pid
    try:
        wait_ready(proc, base, 120.0, log_path)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if log_path:
            log.close()
