"""One socket write per response: the header block uvicorn writes first waits for the body's
write (or the end of the event-loop step), and nothing is reordered or lost."""
import asyncio

from service.frontend.http_protocol import _HeadersHeld


class Recorder:
    """The transport's side: every write that reaches it, and whether it was closed."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_headers_and_body_leave_in_one_write_and_a_lone_header_block_by_the_end_of_the_step():
    async def go():
        loop = asyncio.get_running_loop()
        t = Recorder()
        held = _HeadersHeld(t, loop)
        held.write(HEAD)
        held.write(b"ok")
        assert t.writes == [HEAD + b"ok"]  # one write, in order
        held.write(HEAD)  # a stream: its headers, then nothing yet
        assert t.writes == [HEAD + b"ok"]
        await asyncio.sleep(0)  # the end of this loop step
        assert t.writes == [HEAD + b"ok", HEAD]
        held.write(b"chunk")  # later writes go straight through
        assert t.writes[-1] == b"chunk"
        held.write(HEAD)
        held.close()  # closing sends what is held first
        assert t.writes[-1] == HEAD and t.closed
        assert held.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's

    asyncio.run(go())
