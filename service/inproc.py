"""The engine core inside the HTTP process (`--workers 0`): the same message API as the
engine-core process, by direct calls. Admission runs on the event loop thread; outputs come
back from the engine threads through call_soon_threadsafe. Tests use it to reach the engines
(fault hooks) while talking HTTP to the server."""
from __future__ import annotations

import asyncio
import itertools

from . import ipc
from .core.engine_core import EngineCore
from .frontend.core_client import EngineClient, Stream


class InprocClient(EngineClient):
    def __init__(self, core: EngineCore):
        self.core = core
        self.cards, self.default_model = {}, None
        self._ids = itertools.count(1)
        self._streams: dict[int, Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def alive(self) -> bool:
        return True

    def next_id(self) -> int:
        return next(self._ids)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.core.sink = self._sink
        if not self.core.ready:
            self.core.load()
        self._set_cards(self.core.info())

    async def close(self) -> None:
        self.core.shutdown()

    def _sink(self, frontend, outputs: list[ipc.Output], samples: list) -> None:  # on an engine thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, outputs, samples)

    async def add(self, msg: ipc.AddRequest) -> tuple[ipc.Admitted, Stream | None]:
        self._loop = asyncio.get_running_loop()  # outputs go to the loop that waits for them
        stream = Stream(msg.id)
        self._streams[msg.id] = stream  # before admission: the engine may answer at once
        adm = self.core.add(msg)
        if not adm.ok:
            self._streams.pop(msg.id, None)
            return adm, None
        return adm, stream

    def cancel(self, stream: Stream) -> None:
        if self._streams.pop(stream.id, None) is not None:
            self.core.cancel(None, stream.id)

    def answered(self, msg: ipc.Answered) -> None:
        self.core.answered(msg)

    def rejected(self, model: str, reason: str) -> None:
        self.core.rejected(model, reason)

    async def metrics(self) -> bytes:
        return self.core.metrics_text()

    async def headroom(self) -> dict[str, float]:
        return self.core.headroom()
