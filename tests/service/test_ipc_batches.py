"""Messages between a frontend and the engine core travel in batches: what one event-loop
iteration produces leaves as one message, and a batch's samples as one raw frame."""
import asyncio
import io
import time

import numpy as np
import zmq
from PIL import Image

from service import ipc
from service.frontend import encoding
from service.frontend.core_client import MPClient


def test_a_batch_of_outputs_and_its_samples_survive_the_wire():
    rng = np.random.default_rng(0)
    outputs = [ipc.Output(1, False, 4), ipc.Output(2, True, 8, finish_reason="budget"),
               ipc.Output(3, True, 0, finish_reason="error", error="boom", error_status=500),
               ipc.Output(4, True, 8, finish_reason="budget")]
    samples = [rng.random((1, 1, 4, 4), dtype=np.float32), rng.random((3, 1, 4, 4), dtype=np.float32), None,
               rng.random((2, 2, 3), dtype=np.float32)]
    frames = ipc.to_frontend_frames(ipc.ToFrontend(outputs=outputs), samples)
    assert len(frames) == 3  # kind, message, one samples frame for all
    batch = ipc.decode(frames[0], bytes(frames[1]))
    got = ipc.split_samples(batch.outputs, bytes(frames[2]))
    assert [o.id for o in batch.outputs] == [1, 2, 3, 4] and batch.outputs[2].error == "boom"
    assert got[2] is None
    for want, have in zip(samples, got):
        if want is not None:
            assert have.shape == want.shape and np.array_equal(have, want)
    assert len(ipc.to_frontend_frames(ipc.ToFrontend(admitted=[ipc.Admitted(1, True, 8)]), [])) == 2


def test_admissions_of_one_loop_iteration_leave_as_one_message(tmp_path):
    address = f"ipc://{tmp_path}/core.sock"
    ctx = zmq.Context()
    core = ctx.socket(zmq.ROUTER)  # stands in for the engine core: answers each batch at once
    core.bind(address)

    async def go():
        client = MPClient(address)
        client._sock.connect(address)
        client._reader = asyncio.get_running_loop().create_task(client._read())
        received = []

        async def serve():
            while len(received) < 1 or sum(len(b.adds) for b in received) < 20:
                while not core.poll(0):
                    await asyncio.sleep(0.001)
                frontend, kind, payload = core.recv_multipart()
                assert kind == ipc.TO_CORE
                batch = ipc.decode(kind, payload)
                received.append(batch)
                reply = ipc.ToFrontend(admitted=[ipc.Admitted(m.id, False, reason="queue_full", message="full")
                                                 for m in batch.adds])
                core.send_multipart([frontend, *ipc.to_frontend_frames(reply, [])])

        server = asyncio.create_task(serve())
        msgs = [ipc.AddRequest(client.next_id(), "m", 1, i, None, 1.0, time.monotonic(), 1, 8, 1.0, 0, 1.0, 0, "")
                for i in range(20)]
        decisions = await asyncio.wait_for(asyncio.gather(*(client.add(m) for m in msgs)), 10)
        await server
        client._reader.cancel()
        client._sock.close(0)
        return received, decisions

    try:
        received, decisions = asyncio.run(go())
    finally:
        core.close(0)
        ctx.term()
    assert len(received) == 1 and len(received[0].adds) == 20  # twenty requests, one message
    assert all(not adm.ok and adm.reason == "queue_full" and stream is None for adm, stream in decisions)


def test_a_request_sent_without_ack_is_admitted_by_its_output_and_refused_on_its_stream(tmp_path):
    """A non-streaming request (ack=False) needs no admission reply: the client hands out its
    stream at once; its output is the answer, and a refusal arrives on the stream."""
    address = f"ipc://{tmp_path}/core.sock"
    ctx = zmq.Context()
    core = ctx.socket(zmq.ROUTER)  # stands in for the engine core
    core.bind(address)

    async def go():
        client = MPClient(address)
        client._sock.connect(address)
        client._reader = asyncio.get_running_loop().create_task(client._read())
        msgs = [ipc.AddRequest(client.next_id(), "m", 1, i, None, 1.0, time.monotonic(), 1, 8, 1.0, 0, 1.0, 0, "",
                               ack=False) for i in range(2)]
        # both come back at once, before the engine core has said anything
        added = await asyncio.wait_for(asyncio.gather(*(client.add(m) for m in msgs)), 1)
        assert all(adm.ok and stream is not None for adm, stream in added)
        while not core.poll(0):
            await asyncio.sleep(0.001)
        frontend, kind, payload = core.recv_multipart()
        batch = ipc.decode(kind, payload)
        assert [m.ack for m in batch.adds] == [False, False]
        refused = ipc.ToFrontend(admitted=[ipc.Admitted(msgs[0].id, False, reason="deadline", message="too late",
                                                        retry_after_s=2.0)])
        core.send_multipart([frontend, *ipc.to_frontend_frames(refused, [])])
        answer = ipc.ToFrontend(outputs=[ipc.Output(msgs[1].id, True, 8, finish_reason="budget")])
        core.send_multipart([frontend, *ipc.to_frontend_frames(answer, [np.zeros((1, 1, 2, 2), np.float32)])])
        got = [await asyncio.wait_for(stream.first(), 5) for _, stream in added]
        client._reader.cancel()
        client._sock.close(0)
        return got, client

    try:
        (first, second), client = asyncio.run(go())
    finally:
        core.close(0)
        ctx.term()
    adm, samples = first
    assert isinstance(adm, ipc.Admitted) and not adm.ok and adm.message == "too late" and samples is None
    out, samples = second
    assert out.final and out.tokens == 8 and samples.shape == (1, 1, 2, 2)
    assert client._streams == {}  # nothing left waiting


def test_png_samples_decode_to_the_same_pixels():
    rng = np.random.default_rng(1)
    for shape in [(1, 28, 28), (28, 28), (3, 16, 12), (4, 5, 7), (1, 80, 80)]:  # the last is compressed
        a = rng.random(shape, dtype=np.float32) * 1.4 - 0.2
        img = np.asarray(Image.open(io.BytesIO(encoding.png(a))))
        b = np.clip(a, 0, 1)
        if b.ndim == 3:
            b = b[0] if b.shape[0] == 1 else b.transpose(1, 2, 0)
        assert np.array_equal(img, (b * 255 + 0.5).astype(np.uint8)), shape
