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
from ..refusals import Refusal
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
        core.sink = self.send_outputs
        self.draining = False
        self.stopped = threading.Event()  # set by another thread: the loop ends (service/inproc.py)
        self.poller = zmq.Poller()
        # each frontend's pid, watched through a pidfd: a worker that dies (kill -9, OOM) sends
        # no cancels, so its requests are cancelled here and their rows freed
        self.frontends: dict[bytes, int] = {}  # routing id -> pidfd (-1: not watchable)
        self._watched: dict[int, bytes] = {}  # pidfd -> routing id
        self._admitted: dict[bytes, list[ipc.Admitted]] = {}  # decisions of this drain, by frontend

    def send_outputs(self, frontend: bytes, outputs: list[ipc.Output], samples: list) -> None:
        """The engine core's sink, on an engine thread: one message per frontend per decode,
        to the IPC thread (which alone may use the ROUTER)."""
        sock = getattr(self._push, "sock", None)
        if sock is None:
            sock = self._push.sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(OUTPUTS)
        sock.send_multipart([frontend, *ipc.to_frontend_frames(ipc.ToFrontend(outputs=outputs), samples)],
                            copy=False)

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
            if self.stopped.is_set():
                return
            if self.draining and not self.core.live and self.core.idle():
                log.info("engine core drained")
                return

    def _forward(self) -> None:
        outputs, router = self.outputs, self.router
        while outputs.get(zmq.EVENTS) & zmq.POLLIN:  # asked, not caught: a zmq.Again leaves a cycle
            router.send_multipart(outputs.recv_multipart(copy=False), copy=False)

    def _serve(self) -> None:
        router = self.router
        while router.get(zmq.EVENTS) & zmq.POLLIN:
            frontend, kind, *rest = router.recv_multipart()
            if frontend not in self.frontends:
                self._watch(frontend)
            try:
                self._handle(frontend, kind, rest)
            except Exception:  # a malformed or failing message costs only its own request
                log.exception("engine core: message failed", extra={"kind": kind.decode(errors="replace")})
        # every decision of this drain, one message per frontend
        for frontend, admitted in self._admitted.items():
            router.send_multipart([frontend, ipc.TO_FRONTEND, ipc.encode(ipc.ToFrontend(admitted=admitted))])
        self._admitted.clear()

    def _admit(self, frontend: bytes, msg: ipc.AddRequest) -> None:
        if self.draining:
            adm = ipc.Admitted(msg.id, False, reason=Refusal.DRAINING, message="server is draining", retry_after_s=1)
        else:
            try:
                adm = self.core.add(msg, frontend)
            except Exception:  # this request's failure only (say, rows the engine cannot build)
                log.exception("engine core: admission failed", extra={"request_id": msg.request_id})
                adm = ipc.Admitted(msg.id, False, reason=Refusal.ERROR, message="the engine core could not take the request")
        if adm.ok and not msg.ack:
            return  # its output will say so
        admitted = self._admitted.get(frontend)
        if admitted is None:
            admitted = self._admitted[frontend] = []
        admitted.append(adm)

    def _handle(self, frontend: bytes, kind: bytes, rest: list[bytes]) -> None:
        core = self.core
        if kind == ipc.TO_CORE:
            batch = ipc.decode(kind, rest[0])
            for msg in batch.adds:
                self._admit(frontend, msg)
            for rid in batch.cancels:
                core.cancel(frontend, rid)
            for msg in batch.answered:
                core.answered(msg)
            for msg in batch.rejected:
                core.rejected(msg.model, msg.reason)
        elif kind == ipc.ADD:
            self._admit(frontend, ipc.decode(kind, rest[0]))
        elif kind == ipc.CANCEL:
            core.cancel(frontend, ipc.decode(kind, rest[0]).id)
        elif kind == ipc.ANSWERED:
            core.answered(ipc.decode(kind, rest[0]))
        elif kind == ipc.REJECTED:
            msg = ipc.decode(kind, rest[0])
            core.rejected(msg.model, msg.reason)
        elif kind == ipc.METRICS:
            self.router.send_multipart([frontend, ipc.METRICS_TEXT, core.metrics_text()])
        elif kind == ipc.HEADROOM:  # the draining core has none: a load balancer should send nothing
            headroom = dict.fromkeys(core.engines, 0.0) if self.draining else core.headroom()
            self.router.send_multipart([frontend, ipc.HEADROOM_REPLY, ipc.encode(headroom)])
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
        lost = [rid for owner, rid in list(self.core.live) if owner == frontend]
        for rid in lost:
            self.core.cancel(frontend, rid)
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
