"""A real uvicorn server on loopback, in a thread of the test process (so tests can reach
the engine for fault hooks while talking HTTP to it)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn

from service.app import create_app
from service.settings import Settings
from service.state import ServiceState


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
