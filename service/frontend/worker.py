"""One HTTP frontend worker process:
`python -m service.frontend.worker --fd N --address ... --core-pid P [--ready-fd R] [--go-fd G]`.

It serves the listening socket it inherits from the supervisor (the kernel hands each new
connection to whichever worker accepts first) and reaches the engine core over ZeroMQ. On the
ready pipe it writes `ready` once it serves, or `error: <cause>` when it cannot start, so the
supervisor can tell a start-up fault (stop the server, say why) from a crash (replace it).

With a go pipe it is the supervisor's standby: it imports everything and builds the app, then
waits until the supervisor writes `go` (a worker died: it takes the dead one's place within a
fraction of a second, where a fresh process needs seconds of imports) or closes the pipe (not
needed after all: it exits 0)."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from ..settings import Settings, die_with_parent, name_process


class ReadyPipe:
    def __init__(self, fd: int | None):
        self.file = os.fdopen(fd, "w") if fd is not None else None

    def say(self, line: str) -> None:
        if self.file is not None and not self.file.closed:
            try:
                self.file.write(line + "\n")
                self.file.close()
            except OSError:  # the supervisor is gone; the parent-death signal follows
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="anytime-frontend")
    ap.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    ap.add_argument("--address", required=True, help="the engine core's ZeroMQ address")
    ap.add_argument("--core-pid", type=int, required=True)
    ap.add_argument("--ready-fd", type=int, default=None, help="written 'ready' once serving, or the error")
    ap.add_argument("--go-fd", type=int, default=None, help="standby: serve once 'go' is read from it")
    args = ap.parse_args(argv)
    die_with_parent()
    # a terminal's Ctrl-C reaches the whole process group: the supervisor turns it into one
    # SIGTERM per worker, so a worker takes no SIGINT of its own (service/frontend/server.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name_process("anytime-standby" if args.go_fd is not None else "anytime-worker")
    ready = ReadyPipe(args.ready_fd)
    app = None
    try:
        from ..logs import configure
        from .app import create_app
        from .core_client import MPClient
        from .server import serve

        settings = Settings.model_validate_json(os.environ["ANYTIME_PROCESS_SETTINGS"])
        configure(settings.log_level)
        app = create_app(settings, MPClient(args.address, args.core_pid))
        if args.go_fd is not None:
            if not _wait_for_go(args.go_fd):
                return 0
            name_process("anytime-worker")
        status = serve(app, settings, sockets=[socket.socket(fileno=args.fd)], supervised=True,
                       on_started=lambda: ready.say("ready"))
    except Exception as e:
        ready.say(f"error: {type(e).__name__}: {e}")
        raise
    except SystemExit as e:  # uvicorn's exit when the app's start-up (lifespan) failed
        cause = getattr(app.state.frontend, "start_error", None) if app is not None else None
        ready.say(f"error: {cause or f'start-up failed (exit status {e.code})'}")
        raise
    ready.say(f"error: exited with status {status} before serving")  # no-op once 'ready' was said
    return status


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop


def _wait_for_go(fd: int) -> bool:
    """Block until the supervisor says `go` (True), or closes the pipe or sends SIGTERM (False)."""
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with os.fdopen(fd, "rb") as pipe:
            return pipe.readline().strip() == b"go"
    except _Stop:
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
