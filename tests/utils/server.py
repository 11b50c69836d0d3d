"""Real servers on loopback: uvicorn in a thread of the test process, talking to the engine
core through the production path (the ZeroMQ client, socket, messages and the core's message loop,
on a thread of this process: service/inproc.py), so tests can reach the engines to slow or fail
their steps while talking HTTP to them; or a whole `anytime serve` (supervisor, engine-core
process, frontend workers) for signals and process-level behaviour."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
import uvicorn

from bench.server_proc import free_port, wait_ready  # noqa: F401 (free_port: for the tests)
from service.frontend.app import create_app
from service.inproc import CoreThread
from service.settings import Settings
from tests.utils.faults import slow_engines, slow_server_env

ROOT = Path(__file__).resolve().parent.parent.parent


@contextmanager
def running_server(step_delay_ms: float = 0, **settings):
    """Yields (base_url, core): an HTTP server on loopback and the EngineCore behind its socket.
    `step_delay_ms`: every prior step sleeps that long first (tests/utils/faults.py)."""
    port = free_port()
    cfg = Settings(host="127.0.0.1", port=port, workers=0, **settings)
    core = CoreThread(cfg)
    with slow_engines(step_delay_ms) if step_delay_ms else nullcontext():
        core.start()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, core.client()), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_readiness(f"http://127.0.0.1:{port}", cfg)
        yield f"http://127.0.0.1:{port}", core.core
    finally:
        server.should_exit = True
        thread.join(10)
        core.stop()


def wait_for_readiness(base: str, cfg: Settings, timeout: float = 60) -> None:
    key = cfg.api_keys.split(",")[0].strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(base + "/readyz", timeout=1, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become ready")


@contextmanager
def serve_process(model_dir, *flags: str, log_path: Path, ready_timeout: float = 60, step_delay_ms: float = 0):
    """A real `anytime serve` on loopback, for tests that send it signals. Yields
    (base_url, Popen) once /readyz answers 200; the JSON log goes to log_path (a file, not a
    pipe: a chatty server must never block on a full pipe). Killed if still running at exit.
    `step_delay_ms`: every prior step sleeps that long first (tests/utils/faults.py)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(model_dir),
                                 "--port", str(port), *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=slow_server_env(step_delay_ms) if step_delay_ms else None)
        try:
            wait_ready(proc, base, ready_timeout, log_path)
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            _kill_children(proc.pid)


def _kill_children(pid: int) -> None:
    """A killed supervisor's engine core and workers exit by themselves soon; tests do not wait."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in out:
        subprocess.run(["kill", "-9", child], capture_output=True)
