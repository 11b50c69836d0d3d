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



def test_arrival_is_when_the_bytes_were_read_not_when_the_app_started_on_them():
    """Two pipelined requests read at once, the first holding the loop for 0.2 s: the second's
    deadline started when its bytes were read, not when the app got to it."""
    import socket
    import threading
    import time

    import uvicorn

    from service.frontend.http_protocol import CoalescingHttpToolsProtocol
    from service.frontend.middleware import ArrivalAndLimits
    from tests.utils.server import free_port

    async def app(scope, receive, send):
        if scope["path"] == "/block":
            time.sleep(0.2)  # a busy loop: everything read meanwhile waits
        body = b"%.3f" % (time.monotonic() - scope["state"]["arrival"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(ArrivalAndLimits(app, 1 << 20), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False, http=CoalescingHttpToolsProtocol,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /block HTTP/1.1\r\nhost: x\r\n\r\nGET /age HTTP/1.1\r\nhost: x\r\n\r\n")
            reply, bodies = b"", []
            while len(bodies) < 2 or any(len(b) < 5 for b in bodies):  # "%.3f" of an age: 5 bytes at least
                reply += s.recv(4096)
                bodies = [part.partition(b"\r\n\r\n")[2] for part in reply.split(b"HTTP/1.1 ")[1:]]
        ages = [float(b[:5]) for b in bodies]
        assert ages[1] >= 0.19, reply  # stamped when read, before the first request held the loop
    finally:
        server.should_exit = True
        thread.join(5)
