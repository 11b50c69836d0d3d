"""The engine core on a thread of this process (`--workers 0`, and the servers of the tests),
behind the same ZeroMQ socket, messages and message loop (core/process.py's CoreServer) as the
engine-core process, reached through the same client (frontend/core_client.py's MPClient). Only
the process boundary is missing: what runs here is what `anytime serve` runs, so a test of the
HTTP path also tests the IPC and the core's loop."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading

from .core.engine_core import EngineCore
from .core.process import CoreServer
from .frontend.core_client import MPClient
from .settings import Settings


class CoreThread:
    """`start()` loads and warms the models (raises ModelDirError), binds the socket and runs the
    core's message loop on a thread; `client()` is a frontend's handle on it; `stop()` ends both."""

    def __init__(self, settings: Settings | EngineCore):
        self.core = settings if isinstance(settings, EngineCore) else EngineCore(settings)
        self._dir = tempfile.mkdtemp(prefix="anytime-core-")
        self.address = f"ipc://{self._dir}/core.sock"
        self._server: CoreServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CoreThread:
        if not self.core.ready:
            self.core.load()
        # bound here, before any client connects; used only by the loop's thread from then on
        # (starting a thread is the memory barrier ZeroMQ asks for when a socket changes threads)
        self._server = CoreServer(self.core, self.address)
        self._thread = threading.Thread(target=self._server.run, args=(os.getppid(),), name="anytime-core-ipc",
                                        daemon=True)
        self._thread.start()
        return self

    def client(self) -> MPClient:
        return MPClient(self.address)

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.stopped.set()
            thread.join(timeout)
        self.core.shutdown()
        if server is not None:
            for fd in server.frontends.values():
                if fd >= 0:
                    os.close(fd)
            server.ctx.destroy(linger=0)  # the engine threads' output sockets too; they have stopped
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> CoreThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
