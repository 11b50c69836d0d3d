"""Start and stop each server under test as its own process, and how the load generator's body
reaches it. Anytime starts through the `anytime serve` command line (bench.server_proc), so it
runs in whatever process layout that command sets up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from ..loadgen import anytime_request
from ..server_proc import ROOT, free_port, serve as serve_anytime

SERVERS = ("anytime", "litserve", "litserve-continuous", "ray-serve", "bentoml")
# peers.json names servers anytime | litserve | ray-serve | bentoml; LitServe's two loops are variants
SERVER_NAME = {"litserve-continuous": "litserve"}
VARIANT = {"litserve": "batch loop", "litserve-continuous": "continuous batching loop"}


def _same_body(body: dict) -> tuple[str, dict, dict]:
    return "/generate", body, {}


def _ray_request(body: dict) -> tuple[str, dict, dict]:
    """The request's deadline as Ray Serve's per-request timeout (408 when it passes)."""
    return "/generate", body, {"x-request-timeout-seconds": f"{body['deadline_ms'] / 1000:.3f}"}


def _bentoml_request(body: dict) -> tuple[str, dict, dict]:
    from .bentoml_service import request_specs  # needs bentoml only when it is the server under test

    return "/generate", {"specs": request_specs(body)}, {}


@dataclass(frozen=True)
class Peer:
    name: str
    command: Callable[[int], list[str]]
    request_for: Callable[[dict], tuple[str, dict, dict]]
    startup_s: float = 180.0  # Ray starts a whole local cluster


PEERS = {
    "litserve": Peer("litserve", lambda port: [sys.executable, "-m", "bench.peers.litserve_app", "--port", str(port)],
                     _same_body),
    "litserve-continuous": Peer("litserve-continuous", lambda port: [sys.executable, "-m",
                                                            "bench.peers.litserve_continuous_app", "--port", str(port)],
                                _same_body),
    "ray-serve": Peer("ray-serve", lambda port: [sys.executable, "-m", "bench.peers.ray_serve_app", "--port", str(port)],
                      _ray_request),
    "bentoml": Peer("bentoml", lambda port: [sys.executable, "-m", "bentoml", "serve",
                                             "bench.peers.bentoml_service:FullLength", "--port", str(port)],
                    _bentoml_request),
}


def request_for(server: str) -> Callable[[dict], tuple[str, dict, dict]]:
    return anytime_request if server == "anytime" else PEERS[server].request_for


def _answers(base: str, request_for: Callable) -> bool:
    """A real generate request answered with 200: the model is loaded and the route is up."""
    path, payload, headers = request_for({"deadline_ms": 60000, "n": 1, "seed": 0, "format": "npy"})
    try:
        return httpx.post(base + path, json=payload, headers=headers, timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the server and everything it started (Ray's daemons and actors and BentoML's
    worker run in process groups of their own), then SIGKILL whatever is left."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


@contextmanager
def serve_peer(name: str, log_path: Path, settings: dict | None = None):
    """Yields the base URL of a peer server that has answered one generate request."""
    import json

    peer = PEERS[name]
    port = free_port()
    env = {**os.environ, "ANYTIME_PEER_SETTINGS": json.dumps(settings or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(peer.command(port), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            end = time.monotonic() + peer.startup_s
            while not _answers(base, peer.request_for):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: "
                                       + log_path.read_text(errors="replace")[-2000:])
                if time.monotonic() > end:
                    raise RuntimeError(f"{name} did not answer within {peer.startup_s:.0f} s")
                time.sleep(0.5)
            yield base
        finally:
            _stop_tree(proc)


@contextmanager
def serve_server(name: str, log_path: Path, anytime_flags: list[str] = (), settings: dict | None = None):
    """Anytime through `anytime serve FLAGS`, or a peer."""
    if name == "anytime":
        with serve_anytime(*anytime_flags, log_path=log_path) as url:
            yield url
    else:
        with serve_peer(name, log_path, settings) as url:
            yield url
