"""`anytime serve`: the whole server in one command.

By default a supervisor (this process) starts the engine-core process, waits until its models
are warm, binds the port and starts `--workers` HTTP frontend processes that share it. It
forwards SIGTERM/SIGINT as a drain (frontends first, then the engine core) and exits non-zero
as soon as any child dies unexpectedly, so an orchestrator restarts the whole server.
`--workers 0` runs the engine core inside the one HTTP process instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .settings import SUPERVISOR_PID, Settings

log = logging.getLogger("anytime.serve")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anytime serve", description="Serve exported models over HTTP. Every flag "
                                 "can also be set as an ANYTIME_<NAME> environment variable (HOST and PORT too).")
    for name, f in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = f.default_factory() if f.default_factory else f.default
        help_text = (f.description or "") + f" (default: {default})"
        if f.annotation is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            ap.add_argument(flag, default=None, help=help_text)
    return ap


def settings_from_args(argv: list[str]) -> Settings:
    args = build_parser().parse_args(argv)
    return Settings(**{k: v for k, v in vars(args).items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    settings = settings_from_args(argv)
    from .logs import configure

    configure(settings.log_level)
    from .frontend.tracing import TracingConfigError, check

    try:
        check()
    except TracingConfigError as e:
        return _cannot_start(str(e))
    return serve_inprocess(settings) if settings.workers == 0 else Supervisor(settings).run()


def serve_inprocess(settings: Settings) -> int:
    from .core.engine_core import EngineCore
    from .core.model_dir import ModelDirError
    from .frontend.app import create_app
    from .frontend.server import serve
    from .inproc import InprocClient

    core = EngineCore(settings)
    try:
        core.load()
    except ModelDirError as e:
        return _cannot_start(str(e))
    return serve(create_app(settings, InprocClient(core)), settings)


def _cannot_start(message: str) -> int:
    log.error("cannot start: %s", message)
    print(f"anytime serve: cannot start: {message}", file=sys.stderr)
    return 2


class Supervisor:
    POLL_S = 0.05
    CORE_READY_TIMEOUT_S = 600.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self.env = {**os.environ, "ANYTIME_PROCESS_SETTINGS": settings.model_dump_json(),
                    SUPERVISOR_PID: str(os.getpid())}
        self.core: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.signals = 0

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        with tempfile.TemporaryDirectory(prefix="anytime-") as tmp:
            address = f"ipc://{tmp}/core.sock"
            error = self._start_core(address)
            if error:
                return _cannot_start(error)
            if self.signals:  # stopped while the models loaded
                return self._stop_core(0)
            try:
                listener = socket.create_server((self.settings.host, self.settings.port), backlog=2048)
            except OSError as e:
                self._kill_all()
                return _cannot_start(f"cannot listen on {self.settings.host}:{self.settings.port}: {e}")
            listener.set_inheritable(True)
            for i in range(self.settings.workers):
                self.workers.append(self._spawn("service.frontend.worker", "--fd", str(listener.fileno()),
                                                "--address", address, "--core-pid", str(self.core.pid),
                                                pass_fds=(listener.fileno(),)))
            listener.close()  # the workers hold it now
            log.info("serving", extra={"workers": len(self.workers), "core_pid": self.core.pid,
                                       "address": f"{self.settings.host}:{self.settings.port}"})
            return self._supervise()

    def _spawn(self, module: str, *args: str, pass_fds=()) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env, pass_fds=pass_fds)

    def _start_core(self, address: str) -> str | None:
        """Start the engine core and wait until its models are warm; the error text otherwise."""
        r, w = os.pipe()
        self.core = self._spawn("service.core.process", "--address", address, "--ready-fd", str(w), pass_fds=(w,))
        os.close(w)
        with os.fdopen(r) as ready:
            end = time.monotonic() + self.CORE_READY_TIMEOUT_S
            while time.monotonic() < end:
                if select.select([ready], [], [], self.POLL_S)[0]:
                    line = ready.readline().strip()
                    if line == "ready":
                        return None
                    self.core.wait(10)
                    return line.removeprefix("error: ") or f"engine core exited with {self.core.poll()}"
                if self.signals > 1:
                    break
        self._kill_all()
        return "engine core did not become ready"

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("draining: frontends close admission and finish in-flight requests, then the engine core stops")
        else:
            log.warning("second signal: exiting without finishing in-flight requests")
        children = self.workers if self.signals == 1 else [*self.workers, self.core]
        for p in children:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)

    def _supervise(self) -> int:
        """Wait for a drain (signal) or a death; the exit status says which it was."""
        while True:
            time.sleep(self.POLL_S)
            if self.core.poll() is not None and not (self.signals and self.core.returncode == 0):
                # (a signal to the whole process group drains the core too: it exits 0 once idle)
                log.error("engine core exited with %s; stopping the frontends", self.core.returncode)
                self._stop_workers(grace_s=1.0)
                return 1
            dead = [p for p in self.workers if p.poll() is not None]
            if dead and not self.signals:
                log.error("a frontend worker exited with %s; stopping the server", dead[0].returncode)
                self._stop_workers(grace_s=1.0)
                self._stop_core(0)
                return 1
            if self.signals and len(dead) == len(self.workers):  # every frontend drained
                status = max(p.returncode for p in self.workers)
                return self._stop_core(status)

    def _stop_workers(self, grace_s: float) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(p.poll() is None for p in self.workers):
            time.sleep(self.POLL_S)
        for p in self.workers:
            if p.poll() is None:
                p.kill()

    def _stop_core(self, status: int) -> int:
        """Drain the engine core (nothing is in flight once the frontends are gone) and stop it."""
        if self.core.poll() is None:
            self.core.send_signal(signal.SIGTERM)
            try:
                self.core.wait(10)
            except subprocess.TimeoutExpired:
                self.core.kill()
                return 1
        return status if self.core.returncode == 0 else 1

    def _kill_all(self) -> None:
        for p in [*self.workers, self.core]:
            if p is not None and p.poll() is None:
                p.kill()
