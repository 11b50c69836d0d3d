"""Real servers on loopback: uvicorn in a thread of the test process (so tests can reach the
engine for fault hooks while talking HTTP to it), or an `anytime serve` process (for signals)."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from bench.server_proc import wait_ready
from service.app import create_app
from service.settings import Settings
from service.state import ServiceState

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(**settings):
    port = free_port()
    cfg = Settings(host="127.0.0.1", port=port, **settings)
    state = ServiceState(cfg)
    app = create_app(cfg, state)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    key = cfg.api_keys.split(",")[0].strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while time.monotonic() < end:
        try:
            if httpx.get(base + "/readyz", timeout=1, headers=headers).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        raise RuntimeError("server did not become ready")
    try:
        yield base, state
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serve_process(model_dir, *flags: str, log_path: Path, ready_timeout: float = 60):
    """A real `anytime serve` process on loopback, for tests that send it signals. Yields
    (base_url, Popen) once /readyz answers 200; the JSON log goes to log_path (a file, not a
    pipe: a chatty server must never block on a full pipe). Killed if still running at exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(model_dir),
                                 "--port", str(port), *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, base, ready_timeout, log_path)
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
