"""`anytime serve`: the whole server in one command.

By default this process supervises an engine-core process and `--workers` HTTP frontend
processes (service/supervisor.py); `--workers 0` runs the engine core inside the one HTTP
process instead.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .settings import Settings

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
    if settings.workers == 0:
        return serve_inprocess(settings)
    from .supervisor import CannotStart, Supervisor

    try:
        return Supervisor(settings).run()
    except CannotStart as e:
        return _cannot_start(str(e))


def serve_inprocess(settings: Settings) -> int:
    """`--workers 0`: one process, the engine core's message loop on a thread of it."""
    from .core.model_dir import ModelDirError
    from .frontend.app import create_app
    from .frontend.server import serve
    from .inproc import CoreThread

    core = CoreThread(settings)
    try:
        core.start()
    except ModelDirError as e:
        return _cannot_start(str(e))
    try:
        return serve(create_app(settings, core.client()), settings)
    finally:
        core.stop()


def _cannot_start(message: str) -> int:
    log.error("cannot start: %s", message)
    print(f"anytime serve: cannot start: {message}", file=sys.stderr)
    return 2
