"""The frontend's handle on the engine core (vLLM v1's EngineCoreClient): `MPClient` talks to
an engine-core process over ZeroMQ (or a core on a thread of this process, service/inproc.py,
behind the same socket). It runs on the frontend's event loop: add (admission decision, then a
queue of outputs), cancel, answered, metrics."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import zmq
import zmq.asyncio

from .. import ipc
from ..catalog import ModelCard
from ..refusals import Refusal

log = logging.getLogger("anytime.frontend")

ENGINE_DEAD = "the engine core is not running"


class Stream:
    """An admitted request as the frontend sees it: its outputs arrive as (ipc.Output,
    samples), the last with `final` set; on `events`, or on the future first() gave. The queue
    is made only for a request that reads it (a stream): most requests take one output."""

    __slots__ = ("id", "_events", "_waiter")

    def __init__(self, id: int):
        self.id = id
        self._events: asyncio.Queue | None = None
        self._waiter: asyncio.Future | None = None

    @property
    def events(self) -> asyncio.Queue:
        if self._events is None:
            self._events = asyncio.Queue()
        return self._events

    def put(self, item) -> None:
        """Deliver an output (on the event loop): straight to a first() future, which wakes its
        request in the next loop iteration (a queue read raced against a disconnect through
        asyncio.wait takes three, each as long as a busy loop's iteration), else queued."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
        else:
            self.events.put_nowait(item)

    def first(self) -> asyncio.Future:
        """A future for the next output (a non-streaming request gets exactly one); resolving
        it with None elsewhere stops the wait."""
        fut = asyncio.get_running_loop().create_future()
        if self._events is None or self._events.empty():
            self._waiter = fut
        else:
            fut.set_result(self._events.get_nowait())
        return fut


class EngineClient:
    """What the frontend needs of an engine core. Outputs reach `_deliver` in batches (one call
    per engine decode), and each goes to the stream of its request."""

    cards: dict[str, ModelCard]
    default_model: str | None
    _streams: dict[int, Stream]

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, msg: ipc.AddRequest) -> tuple[ipc.Admitted, Stream | None]: ...

    def cancel(self, stream: Stream) -> None: ...

    def answered(self, msg: ipc.Answered) -> None: ...

    def rejected(self, model: str, reason: Refusal | str) -> None: ...

    async def metrics(self) -> bytes: ...

    async def headroom(self) -> dict[str, float]: ...

    def _set_cards(self, info: dict) -> None:
        self.default_model = info["default_model"]
        self.cards = {name: ModelCard.from_manifest(m["manifest"], m["backend"], m["device"])
                      for name, m in info["models"].items()}

    def _deliver(self, outputs: list[ipc.Output], samples: list) -> None:
        """One batch of outputs (on the event loop): each to its request's stream."""
        received = time.monotonic()
        streams = self._streams
        for out, data in zip(outputs, samples):
            stream = streams.get(out.id)
            if stream is None:  # cancelled meanwhile
                continue
            if out.final:
                del streams[out.id]
            out.received = received
            stream.put((out, data))


class MPClient(EngineClient):
    """An engine core in another process: one DEALER socket, one reader task that routes each
    reply to the request waiting for it. What one event-loop iteration has for the engine core
    (admissions, cancels, reports) leaves as one message at the end of that iteration. When the
    core process dies (watched through a pidfd), every waiting request ends with a 503 at once
    and new ones are refused."""

    REPORT_DELAY_S = 0.002  # reports alone wait this long for company (metrics, the respond margin)

    def __init__(self, address: str, core_pid: int | None = None):
        self.address, self.core_pid = address, core_pid
        self.cards, self.default_model = {}, None
        self._ids = itertools.count(1)
        self._admissions: dict[int, asyncio.Future] = {}
        self._streams: dict[int, Stream] = {}
        self._replies: dict[bytes, asyncio.Future] = {}  # metrics / info queries, one at a time each
        self._dead = False
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # named by pid: the engine core watches each frontend and cancels a dead one's requests
        self._sock.setsockopt(zmq.ROUTING_ID, ipc.frontend_identity(os.getpid()))
        self._reader: asyncio.Task | None = None
        self._pidfd: int | None = None
        self._batch = ipc.ToCore([], [], [], [])
        self._flush_at: asyncio.Handle | asyncio.TimerHandle | None = None
        self._flush_soon = False

    @property
    def alive(self) -> bool:
        return not self._dead

    def next_id(self) -> int:
        return next(self._ids)

    async def start(self, timeout: float = 30.0) -> None:
        self._sock.connect(self.address)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._watch_core()
        info = await asyncio.wait_for(self._query(ipc.INFO, ipc.INFO_REPLY), timeout)
        self._set_cards(info)

    async def close(self) -> None:
        self._flush()
        if self._reader:
            self._reader.cancel()
        if not self._dead:  # a clean exit: the engine core does not count it as a lost worker
            try:
                self._sock.send_multipart([ipc.BYE], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._sock.close(linger=200)  # long enough for the goodbye to leave
        self._ctx.term()

    # ---- to the engine core: batched per event-loop iteration ------------------------------
    def _soon(self) -> None:
        """Flush at the end of this loop iteration (call_soon runs after the callbacks already due)."""
        if not self._flush_soon:
            if self._flush_at is not None:
                self._flush_at.cancel()
            self._flush_soon = True
            self._flush_at = asyncio.get_running_loop().call_soon(self._flush)

    def _later(self) -> None:
        """Flush within REPORT_DELAY_S: reports need no hurry, and usually leave with admissions."""
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self.REPORT_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flush_at, self._flush_soon = None, False
        batch = self._batch
        if self._dead or not (batch.adds or batch.cancels or batch.answered or batch.rejected):
            return
        self._batch = ipc.ToCore([], [], [], [])
        self._sock.send_multipart([ipc.TO_CORE, ipc.encode(batch)])

    async def add(self, msg: ipc.AddRequest) -> tuple[ipc.Admitted, Stream | None]:
        if self._dead:
            return ipc.Admitted(msg.id, False, reason=Refusal.ENGINE_DEAD, message=ENGINE_DEAD,
                                retry_after_s=1), None
        stream = Stream(msg.id)
        self._streams[msg.id] = stream  # before sending: an output may follow the decision at once
        self._batch.adds.append(msg)
        self._soon()
        if not msg.ack:  # taken as admitted: a refusal arrives on the stream, as an ipc.Admitted
            return ipc.Admitted(msg.id, True), stream
        fut = asyncio.get_running_loop().create_future()
        self._admissions[msg.id] = fut
        adm = await fut
        if not adm.ok:
            self._streams.pop(msg.id, None)
            return adm, None
        return adm, stream

    def cancel(self, stream: Stream) -> None:
        if not self._dead and self._streams.pop(stream.id, None) is not None:
            self._batch.cancels.append(stream.id)
            self._soon()

    def answered(self, msg: ipc.Answered) -> None:
        if not self._dead:
            self._batch.answered.append(msg)
            self._later()

    def rejected(self, model: str, reason: Refusal | str) -> None:
        if not self._dead:
            self._batch.rejected.append(ipc.Rejected(model, reason))
            self._later()

    async def metrics(self) -> bytes:
        if self._dead:
            return b""
        return await asyncio.wait_for(self._query(ipc.METRICS, ipc.METRICS_TEXT), 10)

    async def headroom(self) -> dict[str, float]:
        if self._dead:
            return {}
        return await asyncio.wait_for(self._query(ipc.HEADROOM, ipc.HEADROOM_REPLY), 10)

    async def _query(self, kind: bytes, reply: bytes):
        fut = self._replies.get(reply)
        if fut is None or fut.done():  # concurrent queries share one round trip
            fut = self._replies[reply] = asyncio.get_running_loop().create_future()
            self._flush()  # what is batched goes first (the metrics include it)
            await self._sock.send_multipart([kind])
        return await asyncio.shield(fut)

    # ---- from the engine core --------------------------------------------------------------
    async def _read(self) -> None:
        sock = self._sock
        while True:
            self._dispatch(await sock.recv_multipart())
            # then everything else already here, in this loop iteration: one await per message
            # would leave answers queued in the socket behind new HTTP requests, where the
            # loop-lag probe (shedding.py) cannot see them
            # (asked through EVENTS, not by catching zmq.Again: each of those leaves a traceback
            # cycle for the garbage collector)
            while sock.get(zmq.EVENTS) & zmq.POLLIN:
                self._dispatch(sock.recv_multipart(zmq.NOBLOCK).result())

    def _dispatch(self, frames: list[bytes]) -> None:
        kind = frames[0]
        if kind == ipc.TO_FRONTEND:
            batch = ipc.decode(kind, frames[1])
            admissions = self._admissions
            for adm in batch.admitted:
                fut = admissions.pop(adm.id, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(adm)
                elif (stream := self._streams.pop(adm.id, None)) is not None:  # refused, not acked
                    stream.put((adm, None))
            if batch.outputs:
                self._deliver(batch.outputs, ipc.split_samples(batch.outputs, frames[2] if len(frames) > 2 else None))
        elif kind == ipc.METRICS_TEXT:
            self._resolve(kind, frames[1])
        elif kind in (ipc.INFO_REPLY, ipc.HEADROOM_REPLY):
            self._resolve(kind, ipc.decode(kind, frames[1]))

    def _resolve(self, kind: bytes, value) -> None:
        fut = self._replies.get(kind)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _watch_core(self) -> None:
        """End everything at once when the engine-core process exits: a pidfd becomes readable
        then (Linux >= 5.3); without one, a periodic check."""
        if self.core_pid is None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.core_pid)
            loop.add_reader(self._pidfd, self._core_died)
        except (AttributeError, OSError):
            loop.create_task(self._poll_core())

    async def _poll_core(self) -> None:
        while not self._dead:
            try:
                os.kill(self.core_pid, 0)
            except ProcessLookupError:
                self._core_died()
            await asyncio.sleep(0.05)

    def _core_died(self) -> None:
        if self._dead:
            return
        self._dead = True
        log.error("engine core exited; refusing requests", extra={"core_pid": self.core_pid})
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
        for fut in self._admissions.values():
            if not fut.done():
                fut.set_result(ipc.Admitted(0, False, reason=Refusal.ENGINE_DEAD, message=ENGINE_DEAD,
                                            retry_after_s=1))
        self._admissions.clear()
        for stream in self._streams.values():
            stream.put((ipc.Output(stream.id, True, 0, finish_reason="error", error=ENGINE_DEAD,
                                                 error_status=503), None))
        self._streams.clear()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(ConnectionError(ENGINE_DEAD))
