"""One HTTP frontend worker process: `python -m service.frontend.worker --fd N --address ... --core-pid P`.

It serves the listening socket it inherits from the supervisor (the kernel hands each new
connection to whichever worker accepts first) and reaches the engine core over ZeroMQ."""
from __future__ import annotations

import argparse
import os
import socket
import sys

from ..logs import configure
from ..settings import Settings, die_with_parent
from .app import create_app
from .core_client import MPClient
from .server import serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="anytime-frontend")
    ap.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    ap.add_argument("--address", required=True, help="the engine core's ZeroMQ address")
    ap.add_argument("--core-pid", type=int, required=True)
    args = ap.parse_args(argv)
    die_with_parent()
    settings = Settings.model_validate_json(os.environ["ANYTIME_PROCESS_SETTINGS"])
    configure(settings.log_level)
    sock = socket.socket(fileno=args.fd)
    app = create_app(settings, MPClient(args.address, args.core_pid))
    return serve(app, settings, sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
