"""The process group of `anytime serve`: one engine-core process, W frontend workers.

The supervisor starts the engine core and waits until its models are warm, binds the port,
and starts the workers on the one listening socket it keeps open (the kernel hands each new
connection to whichever worker accepts first). It then watches them:

- a frontend worker that dies is replaced on the same socket at once; the others go on, and
  the engine core cancels the dead worker's requests itself (it watches each frontend's pid).
  A worker that fails before it serves, twice in a row, or more than `worker_deaths_limit`
  deaths within a minute, ends the server non-zero with the cause: a fault that repeats is not fixed
  by restarting forever, and the orchestrator must see it.
- the engine core that dies ends the server non-zero (its frontends answer 503 at once until
  then): it owns the device and every request's state, so the orchestrator restarts the whole
  group (docs/deployment.md).
- SIGTERM/SIGINT drain: workers close admission and answer what they hold, then the engine
  core finishes and exits; exit 0. A second signal kills everything (exit 1).

uvicorn's and gunicorn's own supervisors replace dead workers too, but neither starts a
process before the workers and stops it after them, nor tells it which worker died; this one
does both in a page (docs/architecture.md).
"""
from __future__ import annotations

import collections
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


class CannotStart(Exception):
    """The server cannot start (the message says why); exit status 2."""


class Worker:
    """A frontend worker process and the pipe on which it says `ready` (or why it failed)."""

    def __init__(self, proc: subprocess.Popen, ready_fd: int, go_fd: int = -1):
        self.proc, self.ready_fd, self.go_fd = proc, ready_fd, go_fd  # go_fd: a standby's start signal
        self.ready = False
        self.failure = ""  # what the worker wrote before it exited: the cause of a start-up failure

    def read_pipe(self) -> None:
        """Take what the worker wrote on its pipe (called when select() says it is readable)."""
        data = os.read(self.ready_fd, 4096).decode(errors="replace")
        if not data:  # the worker closed it (it exited)
            self.close_pipe()
            return
        for line in data.splitlines():
            if line == "ready":
                self.ready = True
            elif line.startswith("error: "):
                self.failure = line.removeprefix("error: ")

    def close_pipe(self) -> None:
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
            self.ready_fd = -1

    def go(self) -> None:
        """A standby starts serving."""
        os.write(self.go_fd, b"go\n")
        self.release()

    def release(self) -> None:
        """Close the start signal: a standby that has not started exits 0."""
        if self.go_fd >= 0:
            os.close(self.go_fd)
            self.go_fd = -1


class Supervisor:
    POLL_S = 0.05
    CORE_READY_TIMEOUT_S = 600.0
    DEATH_WINDOW_S = 60.0  # more worker deaths than settings.worker_deaths_limit in it: a crash loop
    STARTUP_FAILURES = 2  # workers in a row that die before serving: a start-up fault

    def __init__(self, settings: Settings):
        self.settings = settings
        self.env = {**os.environ, "ANYTIME_PROCESS_SETTINGS": settings.model_dump_json(),
                    SUPERVISOR_PID: str(os.getpid())}
        self.core: subprocess.Popen | None = None
        self.workers: list[Worker] = []
        # a worker that has imported everything and waits to take a dead one's place: a fresh
        # process needs seconds of imports on a loaded machine, the standby a fraction of one
        self.standby: Worker | None = None
        self.listener: socket.socket | None = None
        self.address = ""
        self.signals = 0
        self.deaths: collections.deque[float] = collections.deque()
        self.startup_failures = 0
        self.restarts = 0

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        with tempfile.TemporaryDirectory(prefix="anytime-") as tmp:
            self.address = f"ipc://{tmp}/core.sock"
            try:
                self._start_core()
                if self.signals:  # stopped while the models loaded
                    return self._stop_core(0)
                try:
                    self.listener = socket.create_server((self.settings.host, self.settings.port), backlog=2048)
                except OSError as e:
                    self._kill_all()
                    raise CannotStart(f"cannot listen on {self.settings.host}:{self.settings.port}: {e}") from None
                self.listener.set_inheritable(True)
                for _ in range(self.settings.workers):
                    self.workers.append(self._start_worker())
                self._start_standby()
                log.info("serving", extra={"workers": len(self.workers), "core_pid": self.core.pid,
                                           "address": f"{self.settings.host}:{self.settings.port}"})
                return self._supervise()
            finally:
                if self.listener is not None:
                    self.listener.close()
                for w in self._processes():
                    w.close_pipe()
                    w.release()

    # ---- children --------------------------------------------------------------------------
    def _spawn(self, module: str, *args: str, pass_fds=()) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env, pass_fds=pass_fds)

    def _start_core(self) -> None:
        """Start the engine core and wait until its models are warm (CannotStart otherwise)."""
        r, w = os.pipe()
        self.core = self._spawn("service.core.process", "--address", self.address, "--ready-fd", str(w),
                                pass_fds=(w,))
        os.close(w)
        with os.fdopen(r) as ready:
            end = time.monotonic() + self.CORE_READY_TIMEOUT_S
            while time.monotonic() < end:
                if select.select([ready], [], [], self.POLL_S)[0]:
                    line = ready.readline().strip()
                    if line == "ready":
                        return
                    self.core.wait(10)
                    raise CannotStart(line.removeprefix("error: ") or f"engine core exited with {self.core.poll()}")
                if self.signals > 1:
                    break
        self._kill_all()
        raise CannotStart("engine core did not become ready")

    def _start_worker(self, standby: bool = False) -> Worker:
        r, w = os.pipe()
        fd = self.listener.fileno()
        args = ["--fd", str(fd), "--address", self.address, "--core-pid", str(self.core.pid), "--ready-fd", str(w)]
        fds = [fd, w]
        go_r = go_w = -1
        if standby:
            go_r, go_w = os.pipe()
            args += ["--go-fd", str(go_r)]
            fds.append(go_r)
        proc = self._spawn("service.frontend.worker", *args, pass_fds=tuple(fds))
        os.close(w)
        if standby:
            os.close(go_r)
        return Worker(proc, r, go_w)

    def _processes(self) -> list[Worker]:
        """The workers and the standby."""
        return [*self.workers, *([self.standby] if self.standby is not None else [])]

    def _start_standby(self) -> None:
        self.standby = self._start_worker(standby=True) if self.settings.standby_worker else None

    # ---- watching ----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("draining: frontends close admission and finish in-flight requests, then the engine core stops")
        else:
            log.warning("second signal: exiting without finishing in-flight requests")
        if self.standby is not None:  # not needed any more: it exits 0 when released
            self.standby.release()
            if self.signals > 1 and self.standby.proc.poll() is None:
                self.standby.proc.kill()
        children = [w.proc for w in self.workers] + ([] if self.signals == 1 else [self.core])
        for p in children:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)

    def _supervise(self) -> int:
        """Replace dead workers until a drain (signal), an engine-core death or a crash loop;
        the exit status says which it was."""
        while True:
            pipes = [w.ready_fd for w in self._processes() if w.ready_fd >= 0]
            if pipes:
                readable = select.select(pipes, [], [], self.POLL_S)[0]
            else:
                readable = []
                time.sleep(self.POLL_S)
            for w in self._processes():
                if w.ready_fd in readable:
                    w.read_pipe()
            if self.core.poll() is not None and not (self.signals and self.core.returncode == 0):
                # (a signal to the whole process group drains the core too: it exits 0 once idle)
                log.error("engine core exited with %s; stopping the frontends", self.core.returncode)
                self._stop_workers(grace_s=1.0)
                return 1
            if self.signals:
                if all(w.proc.poll() is not None for w in self.workers):  # every frontend drained
                    return self._stop_core(max(w.proc.returncode for w in self.workers))
                continue
            for w in [w for w in self._processes() if w.proc.poll() is not None]:
                cause = self._replace(w)
                if cause:
                    log.error("stopping the server: %s", cause)
                    print(f"anytime serve: {cause}", file=sys.stderr)
                    self._stop_workers(grace_s=1.0)
                    self._stop_core(0)
                    return 1

    def _replace(self, dead: Worker) -> str | None:
        """Start a worker in place of a dead one; the reason to stop instead, if it is a loop."""
        if dead.ready_fd >= 0:  # what it wrote before it died (its start-up failure)
            readable = select.select([dead.ready_fd], [], [], 0)[0]
            if readable:
                dead.read_pipe()
            dead.close_pipe()
        dead.release()
        was_standby = dead is self.standby
        if was_standby:
            self.standby = None
        else:
            self.workers.remove(dead)
        status = _describe(dead.proc.returncode)
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - self.DEATH_WINDOW_S:
            self.deaths.popleft()
        if not dead.ready and (not was_standby or dead.failure):  # (a standby never said ready)
            self.startup_failures += 1
            cause = dead.failure or status
            if self.startup_failures >= self.STARTUP_FAILURES:
                return f"frontend workers fail at start-up ({self.startup_failures} in a row): {cause}"
        else:
            self.startup_failures = 0
        if len(self.deaths) > self.settings.worker_deaths_limit:
            return (f"{len(self.deaths)} frontend worker deaths within {self.DEATH_WINDOW_S:.0f} s "
                    f"(the last {status}): a crash loop")
        if was_standby:
            log.warning("standby frontend worker %d %s; starting another", dead.proc.pid, status)
            self._start_standby()
            return None
        self.restarts += 1
        new, self.standby = self.standby, None
        if new is not None and new.proc.poll() is None and new.go_fd >= 0:
            new.go()
        else:
            if new is not None:  # a standby that is dying itself: it is reaped as a worker next
                new.release()
                self.workers.append(new)
            new = self._start_worker()
        self.workers.append(new)
        self._start_standby()
        log.warning("frontend worker %d %s; worker %d serves in its place", dead.proc.pid, status, new.proc.pid,
                    extra={"restarts": self.restarts, "cause": dead.failure or status})
        return None

    # ---- stopping ----------------------------------------------------------------------------
    def _stop_workers(self, grace_s: float) -> None:
        procs = [w.proc for w in self._processes()]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace_s
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(self.POLL_S)
        for p in procs:
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
        for p in [*(w.proc for w in self._processes()), self.core]:
            if p is not None and p.poll() is None:
                p.kill()


def _describe(returncode: int) -> str:
    """'was killed by SIGKILL' or 'exited with status 3'."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"
