"""uvicorn with Anytime's drain: the first SIGTERM/SIGINT closes admission and readiness at
once and exits when this process's in-flight requests are answered (or after drain_timeout_s);
a second signal exits immediately."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

import uvicorn

from .http_protocol import CoalescingHttpToolsProtocol
from .state import FrontendState

log = logging.getLogger("anytime.serve")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: FrontendState, drain_timeout_s: float,
                 signals: tuple[signal.Signals, ...] = SIGNALS, on_started=None):
        super().__init__(config)
        self.state, self.drain_timeout_s, self.signals = state, drain_timeout_s, signals
        self.on_started = on_started
        self.draining = self.drained = False

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    @contextlib.contextmanager
    def capture_signals(self):
        # Signals reach handle_exit as event-loop callbacks, not as Python signal handlers
        # that interrupt whatever the loop thread is doing: those could run between a
        # request's readiness check and its admission, or re-enter a lock it holds (metrics,
        # logging, thread start) and hang the process.
        loop = asyncio.get_running_loop()
        for sig in self.signals:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in self.signals:
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig, frame):
        state = self.state
        if self.draining:  # second signal: stop now, without waiting for connections
            log.warning("second signal: exiting without finishing in-flight requests",
                        extra={"in_flight": state.inflight})
            self.should_exit = self.force_exit = True
            return
        self.draining = True
        state.start_draining()
        log.info("draining: admission closed, finishing %d in-flight requests", state.inflight,
                 extra={"in_flight": state.inflight})
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(time.monotonic(), state.inflight))

    async def _drain(self, started: float, in_flight: int) -> None:
        state = self.state
        await state.wait_idle(self.drain_timeout_s)
        # Admission closed on this loop at the signal, so nothing joined since: in_flight is
        # exactly the requests this drain answered (or abandoned, on timeout).
        self.drained = state.idle()
        seconds = round(time.monotonic() - started, 3)
        extra = {"drained": in_flight - state.inflight, "remaining": state.inflight, "seconds": seconds}
        if self.drained:
            log.info("drained %d in-flight requests in %.3f s", in_flight, seconds, extra=extra)
        else:
            log.error("drain incomplete after %.3f s: %d requests not answered", seconds, state.inflight,
                      extra={**extra, "timeout_s": self.drain_timeout_s})
        self.should_exit = True


def serve(app, settings, sockets=None, supervised: bool = False, on_started=None) -> int:
    """Run until drained; 0 after a clean drain (or no signal), 1 otherwise.

    A supervised worker drains on SIGTERM only: a terminal's Ctrl-C reaches the whole process
    group, and the supervisor turns it into the one SIGTERM each worker needs (taking the
    terminal's SIGINT too would count as a second signal and exit without draining)."""
    if supervised:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, http=CoalescingHttpToolsProtocol)
    server = DrainingServer(config, app.state.frontend, settings.drain_timeout_s,
                            (signal.SIGTERM,) if supervised else SIGNALS, on_started)
    server.run(sockets=sockets)
    if not server.started:  # start-up failed (the lifespan raised, or the port is taken)
        return 2
    return 0 if server.drained or not server.draining else 1
