"""`anytime serve`: run the HTTP service with uvicorn; SIGTERM drains before exiting."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time

from .settings import Settings

log = logging.getLogger("anytime.serve")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anytime serve", description="Serve exported models over HTTP. Every flag "
                                 "can also be set as an ANYTIME_<NAME> environment variable (HOST and PORT too).")
    fields = Settings.model_fields
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        kind = f.annotation
        help_text = (f.description or "") + f" (default: {f.default})"
        if kind is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            ap.add_argument(flag, default=None, help=help_text)
    return ap


def settings_from_args(argv: list[str]) -> Settings:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    settings = settings_from_args(argv)
    from .logs import configure

    configure(settings.log_level)
    import uvicorn

    from .app import create_app
    from .model_dir import ModelDirError
    from .state import ServiceState

    state = ServiceState(settings)
    try:
        state.load()
    except ModelDirError as e:
        log.error("cannot start: %s", e)
        print(f"anytime serve: cannot start: {e}", file=sys.stderr)
        return 2

    class DrainingServer(uvicorn.Server):
        """First SIGTERM/SIGINT: readiness off and admission closed at once; exit when in-flight
        work is answered (or after drain_timeout_s). A second signal exits immediately."""

        draining = False
        drained = False

        @contextlib.contextmanager
        def capture_signals(self):
            # Signals reach handle_exit as event-loop callbacks, not as Python signal handlers
            # that interrupt whatever the loop thread is doing: those could run between a
            # request's readiness check and its admission, or re-enter a lock it holds (metrics,
            # logging, thread start) and hang the process.
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in SIGNALS:
                    loop.remove_signal_handler(sig)

        def handle_exit(self, sig, frame):
            if self.draining:  # second signal: stop now, without waiting for connections
                log.warning("second signal: exiting without finishing in-flight requests",
                            extra={"in_flight": state.inflight})
                self.should_exit = self.force_exit = True
                return
            self.draining = True
            state.start_draining()
            load = {"in_flight": state.inflight,
                    "active_sequences": sum(e.active_sequences for e in state.engines.values()),
                    "queued_sequences": sum(e.queued_sequences for e in state.engines.values())}
            log.info("draining: admission closed, finishing %d in-flight requests", load["in_flight"], extra=load)
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(time.monotonic(), load["in_flight"]))

        async def _drain(self, started: float, in_flight: int) -> None:
            end = started + settings.drain_timeout_s
            while not state.idle() and time.monotonic() < end and not self.force_exit:
                await asyncio.sleep(0.01)
            # Admission closed on this loop at the signal, so nothing joined since: in_flight is
            # exactly the requests this drain answered (or abandoned, on timeout).
            self.drained = state.idle()
            seconds = round(time.monotonic() - started, 3)
            extra = {"drained": in_flight - state.inflight, "remaining": state.inflight, "seconds": seconds}
            if self.drained:
                log.info("drained %d in-flight requests in %.3f s", in_flight, seconds, extra=extra)
            else:
                log.error("drain incomplete after %.3f s: %d requests not answered", seconds, state.inflight,
                          extra={**extra, "timeout_s": settings.drain_timeout_s})
            self.should_exit = True

    app = create_app(settings, state)
    server = DrainingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                                           access_log=False, timeout_graceful_shutdown=5))
    server.run()
    # a drained shutdown is a clean exit (0); a timed-out drain or a second signal is not
    return 0 if server.drained or not server.draining else 1
