"""uvicorn's httptools protocol with one socket write per response instead of two.

uvicorn writes a response's status line and headers in one `transport.write` and its body in
another; with the transport empty each write is a `send` system call at once (and a segment on
the wire, and a wake-up of the client). On the small JSON answers of /generate that second
system call was the largest single item of the frontend's per-request CPU. Here the header
block is held back and joined with whatever the response writes next (a plain Response writes
its body in the same event-loop step), so the answer leaves in one call. Nothing is delayed
beyond the current loop step: a response that starts and then waits (a stream whose first
event comes later, a file being read) gets its headers written by a callback at the end of the
step, as before. Order is kept: every write of the connection goes through the holder.

It also stamps each request's arrival when its first bytes are read off the socket, not when
the app starts on it: in a burst the loop reads and parses every request at once and then runs
them one after another, so the later ones start after time their deadline has already spent
(docs/architecture.md has the measurement)."""
from __future__ import annotations

import asyncio
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

STATUS_LINE = b"HTTP/1."


class _HeadersHeld:
    """The connection's transport, with a response's header block held until the next write
    (or the end of the loop step). Everything else is the transport's own."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(STATUS_LINE) and data.endswith(b"\r\n\r\n"):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name):  # get_extra_info, pause_reading, abort, ...: the transport's
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    _read_at = 0.0

    def data_received(self, data: bytes) -> None:
        self._read_at = time.monotonic()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"]["arrival"] = self._read_at  # the middleware keeps it (middleware.py)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # flow control keeps the real transport
        self.transport = _HeadersHeld(transport, self.loop)  # type: ignore[assignment]
