"""`anytime serve`: run the HTTP service with uvicorn; SIGTERM drains before exiting."""
from __future__ import annotations

import argparse
import logging
import sys
import threading

from .settings import Settings

log = logging.getLogger("anytime.serve")


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

        def handle_exit(self, sig, frame):
            if self.draining:
                return super().handle_exit(sig, frame)
            self.draining = True
            state.start_draining()
            log.info("draining: admission closed, finishing in-flight requests")

            def finish():
                state.wait_idle(settings.drain_timeout_s)
                # a drained shutdown is a clean exit (0): do not re-raise the signal as uvicorn would
                self.should_exit = True

            threading.Thread(target=finish, daemon=True).start()

    app = create_app(settings, state)
    server = DrainingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                                           access_log=False, timeout_graceful_shutdown=5))
    server.run()
    return 0
