"""The engine-core process: `python -m service.core.process --address ipc://... --ready-fd N`.

Its main thread is the IPC thread (vLLM v1's EngineCoreProc has the same shape): it decodes
frontend messages, decides admission at once from the state the engines publish (a 503 never
waits for an engine iteration), and forwards outputs that engine threads push to it over an
inproc socket. Each model's engine runs on its own thread. SIGTERM: refuse new requests, finish
the admitted ones, exit 0. It exits by itself when its parent (the supervisor) is gone.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

import zmq

from .. import ipc
from ..logs import configure
from ..settings import Settings, die_with_parent, name_process
from .engine_core import EngineCore
from .model_dir import ModelDirError

log = logging.getLogger("anytime.core")
OUTPUTS = "inproc://outputs"


class CoreServer:
    """The IPC thread: one ROUTER for every frontend worker, one PULL for every engine thread."""

    def __init__(self, core: EngineCore, address: str):
        self.core = core
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a frontend that went away drops its outputs
        self.router.bind(address)
        self.outputs = self.ctx.socket(zmq.PULL)
        self.outputs.bind(OUTPUTS)
        self._push = threading.local()  # one PUSH socket per engine thread
        self.live: dict[tuple[bytes, int], object] = {}  # (frontend, id) -> Request, for cancels
        self.draining = False
        self.poller = zmq.Poller()
        # each frontend's pid, watched through a pidfd: a worker that dies (kill -9, OOM) sends
        # no cancels, so its requests are cancelled here and their rows freed
        self.frontends: dict[bytes, int] = {}  # routing id -> pidfd (-1: not watchable)
        self._watched: dict[int, bytes] = {}  # pidfd -> routing id

    def on_output(self, frontend: bytes):
        """The callback an engine thread runs for each preview or end of a request."""
        def push(out: ipc.Output, samples) -> None:
            sock = getattr(self._push, "sock", None)
            if sock is None:
                sock = self._push.sock = self.ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(OUTPUTS)
            # a leading frame tells the IPC thread which request ended (its id; empty for a
            # preview), so it forwards without decoding the message
            ended = str(out.id).encode() if out.final else b""
            sock.send_multipart([frontend, ended, *ipc.output_frames(out, samples)], copy=False)
        return push

    def run(self, parent: int) -> None:
        poller = self.poller
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.outputs, zmq.POLLIN)
        while True:
            events = dict(poller.poll(100))
            if self.outputs in events:
                self._forward()
            if self.router in events:
                self._serve()
            for fd in [fd for fd in events if type(fd) is int and fd in self._watched]:
                self._frontend_gone(self._watched[fd], clean=False)
            if os.getppid() != parent:
                log.error("supervisor is gone; engine core exits")
                return
            if self.draining and not self.live and self.core.idle():
                log.info("engine core drained")
                return

    def _forward(self) -> None:
        while True:
            try:
                frames = self.outputs.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ended = frames.pop(1).bytes
            if ended:
                self.live.pop((frames[0].bytes, int(ended)), None)
            self.router.send_multipart(frames, copy=False)

    def _serve(self) -> None:
        while True:
            try:
                frontend, kind, *rest = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frontend not in self.frontends:
                self._watch(frontend)
            try:
                self._handle(frontend, kind, rest)
            except Exception:  # a malformed or failing message costs only its own request
                log.exception("engine core: message failed", extra={"kind": kind.decode(errors="replace")})
                if kind == ipc.ADD and rest:
                    try:
                        rid = ipc.decode(kind, rest[0]).id
                    except Exception:
                        continue
                    self.router.send_multipart([frontend, ipc.ADMITTED, ipc.encode(ipc.Admitted(
                        rid, False, reason="error", message="the engine core could not take the request"))])

    def _handle(self, frontend: bytes, kind: bytes, rest: list[bytes]) -> None:
        core = self.core
        if kind == ipc.ADD:
            msg = ipc.decode(kind, rest[0])
            if self.draining:
                adm = ipc.Admitted(msg.id, False, reason="draining", message="server is draining",
                                   retry_after_s=1)
            else:
                adm, req = core.add(msg, self.on_output(frontend))
                if req is not None:
                    self.live[(frontend, msg.id)] = req
            self.router.send_multipart([frontend, ipc.ADMITTED, ipc.encode(adm)])
        elif kind == ipc.CANCEL:
            req = self.live.pop((frontend, ipc.decode(kind, rest[0]).id), None)
            if req is not None:
                core.cancel(req)
        elif kind == ipc.ANSWERED:
            core.answered(ipc.decode(kind, rest[0]))
        elif kind == ipc.REJECTED:
            msg = ipc.decode(kind, rest[0])
            core.rejected(msg.model, msg.reason)
        elif kind == ipc.METRICS:
            self.router.send_multipart([frontend, ipc.METRICS_TEXT, core.metrics_text()])
        elif kind == ipc.INFO:
            self.router.send_multipart([frontend, ipc.INFO_REPLY, ipc.encode(core.info())])
        elif kind == ipc.BYE:
            self._frontend_gone(frontend, clean=True)

    # ---- frontends ---------------------------------------------------------------------------
    def _watch(self, frontend: bytes) -> None:
        pid, fd = ipc.frontend_pid(frontend), -1
        if pid is not None:
            try:
                fd = os.pidfd_open(pid)
            except (AttributeError, OSError):  # gone already, or no pidfd (Linux < 5.3)
                fd = -1
        self.frontends[frontend] = fd
        if fd >= 0:
            self._watched[fd] = frontend
            self.poller.register(fd, zmq.POLLIN)
        self.core.metrics.frontends.set(len(self.frontends))

    def _frontend_gone(self, frontend: bytes, clean: bool) -> None:
        """A frontend said goodbye (clean) or its process exited: cancel what it still had."""
        fd = self.frontends.pop(frontend, -1)
        if fd >= 0:
            self.poller.unregister(fd)
            del self._watched[fd]
            os.close(fd)
        lost = [key for key in self.live if key[0] == frontend]
        for key in lost:
            self.core.cancel(self.live.pop(key))
        self.core.metrics.frontends.set(len(self.frontends))
        if not clean:
            self.core.metrics.frontends_lost.inc()
            log.warning("frontend worker exited without a clean shutdown; its requests are cancelled",
                        extra={"frontend": frontend.decode(errors="replace"), "cancelled": len(lost)})

    def close(self) -> None:
        self.router.close(0)
        self.outputs.close(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="anytime-core")
    ap.add_argument("--address", required=True)
    ap.add_argument("--ready-fd", type=int, required=True, help="written 'ready' (or the error) once models are warm")
    args = ap.parse_args(argv)
    die_with_parent()
    name_process("anytime-core")
    settings = Settings.model_validate_json(os.environ["ANYTIME_PROCESS_SETTINGS"])
    configure(settings.log_level)
    parent = os.getppid()
    # The supervisor coordinates shutdown: a terminal's Ctrl-C reaches it (and the workers) too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready = os.fdopen(args.ready_fd, "w")
    core = EngineCore(settings)
    try:
        core.load()
    except ModelDirError as e:
        ready.write(f"error: {e}\n")
        ready.close()
        return 2
    server = CoreServer(core, args.address)

    def drain(signum, frame):
        server.draining = True
        core.metrics.ready.set(0)

    signal.signal(signal.SIGTERM, drain)
    ready.write("ready\n")
    ready.close()
    log.info("engine core ready", extra={"address": args.address, "models": sorted(core.engines)})
    try:
        server.run(parent)
    finally:
        core.shutdown()
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
