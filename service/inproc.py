"""The engine core inside the HTTP process (`--workers 0`): the same message API as the
engine-core process, by direct calls. Admission runs on the event loop thread; outputs come
back from the engine threads through call_soon_threadsafe. Tests use it to reach the engines
(fault hooks) while talking HTTP to the server."""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from . import ipc
from .core.engine_core import EngineCore
from .core.request import Request
from .frontend.core_client import EngineClient, Stream


@dataclass
class InprocStream(Stream):
    request: Request | None = None


class InprocClient(EngineClient):
    def __init__(self, core: EngineCore):
        self.core = core
        self.cards, self.default_model = {}, None
        self._ids = itertools.count(1)

    @property
    def alive(self) -> bool:
        return True

    def next_id(self) -> int:
        return next(self._ids)

    async def start(self) -> None:
        if not self.core.ready:
            self.core.load()
        self._set_cards(self.core.info())

    async def close(self) -> None:
        self.core.shutdown()

    async def add(self, msg: ipc.AddRequest) -> tuple[ipc.Admitted, Stream | None]:
        loop = asyncio.get_running_loop()
        stream = InprocStream(msg.id)
        put = stream.put

        def on_output(out: ipc.Output, samples) -> None:  # on an engine thread
            out.received = time.monotonic()
            if not loop.is_closed():
                loop.call_soon_threadsafe(put, (out, samples))

        adm, req = self.core.add(msg, on_output)
        if not adm.ok:
            return adm, None
        stream.request = req
        return adm, stream

    def cancel(self, stream: Stream) -> None:
        self.core.cancel(stream.request)

    def answered(self, msg: ipc.Answered) -> None:
        self.core.answered(msg)

    def rejected(self, model: str, reason: str) -> None:
        self.core.rejected(model, reason)

    async def metrics(self) -> bytes:
        return self.core.metrics_text()
