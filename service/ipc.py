"""Where the frontend and the engine core meet: the messages they exchange and their wire form.

In-process, the messages are passed as they are. Between processes they travel over ZeroMQ
(`ipc://` sockets: a ROUTER in the engine core, one DEALER per frontend worker) as multipart
messages: one kind byte, the message as msgpack (msgspec). Messages travel in batches, not one
per request: a frontend sends everything one event-loop iteration produced as one `ToCore`; the
engine core answers each frontend with one `ToFrontend` per drain of its socket (admissions)
and per engine iteration (outputs), the samples of all its outputs as one raw float32 frame
beside it (vLLM v1 sends tensors the same way). Every message and send costs a system call and a
wake-up of ZeroMQ's I/O thread on both sides; per request, that was most of the IPC's CPU.
"""
from __future__ import annotations

import msgspec
import numpy as np


class AddRequest(msgspec.Struct, array_like=True, gc=False):
    """A validated generation request; `arrival` is CLOCK_MONOTONIC (system-wide) at the frontend."""

    id: int  # unique per frontend connection
    model: str
    n: int
    seed: int
    label: int | None
    deadline_s: float
    arrival: float
    min_tokens: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    preview_every: int
    request_id: str
    # Per-row inputs (the Open Inference Protocol's seed and label tensors): row i is sampled
    # as row 0 of a request with seed seeds[i] (and start token of labels[i]); `seed` and
    # `label` are then unused. None: rows 0..n-1 of `seed` with `label`, as /generate does.
    seeds: list[int] | None = None
    labels: list[int] | None = None
    priority: str = "normal"  # high | normal | low
    # True: the engine core answers the admission either way (a stream starts its response on
    # it). False: only a refusal is answered; the request's output is its admission (one
    # message per request fewer each way)
    ack: bool = True
    # classifier-free guidance w, resolved by the frontend ("auto" is sent as the default w with
    # guidance_auto); 0: off; > 0 the model supports it (manifest prior.guidance) and each sample
    # steps two rows
    guidance: float = 0.0
    # the request left guidance to the server: the engine core may run it unguided when the
    # tokens that frees buy more quality (service/core/guidance_pricing.py)
    guidance_auto: bool = False


class Admitted(msgspec.Struct, array_like=True, gc=False):
    """The engine core's admission decision: a token budget, or a refusal with its reason."""

    id: int
    ok: bool
    planned_tokens: int = 0
    reason: str = ""  # refusals: deadline | queue_full | unknown_model
    message: str = ""
    retry_after_s: float = 0.0


class Output(msgspec.Struct, array_like=True, gc=False):
    """A preview or the end of a request. Samples (float32 `shape`) travel beside it."""

    id: int
    final: bool
    tokens: int
    shape: tuple[int, ...] = ()
    finish_reason: str = ""
    error: str | None = None
    error_status: int = 0
    started: float | None = None
    finished: float | None = None
    compute_s: float = 0.0
    received: float = 0.0  # when the frontend got it (set there; how long it has been queued)
    guidance: float = 0.0  # the guidance the samples were drawn with (the core's choice for "auto")


class Answered(msgspec.Struct, array_like=True, gc=False):
    """What a frontend reports of an answered request: the metrics, and the time the answer
    spent in the frontend (the scheduler keeps that much time free: the respond margin).
    `deadline_met` is decided once, where the answer leaves the server; metrics use it as it is."""

    model: str
    latency_s: float
    deadline_s: float
    tokens: int
    quality: float
    n: int
    reason: str
    respond_s: float
    deadline_met: bool = True


class Cancel(msgspec.Struct, array_like=True, gc=False):
    id: int


class Rejected(msgspec.Struct, array_like=True, gc=False):
    """A refusal the frontend decided itself (too many requests in flight), for the metrics."""

    model: str
    reason: str


class ToCore(msgspec.Struct, array_like=True, gc=False):
    """Everything a frontend has for the engine core after one event-loop iteration."""

    adds: list[AddRequest] = []
    cancels: list[int] = []
    answered: list[Answered] = []
    rejected: list[Rejected] = []


class ToFrontend(msgspec.Struct, array_like=True, gc=False):
    """Admission decisions and outputs for one frontend; the outputs' samples, in order, are the
    raw frame beside it (each output's `shape` says how many floats are its own)."""

    admitted: list[Admitted] = []
    outputs: list[Output] = []


# frame 0 of every message: what follows
ADD, CANCEL, ANSWERED, REJECTED, METRICS, INFO = b"A", b"C", b"R", b"X", b"M", b"I"  # frontend -> core
TO_CORE = b"B"  # frontend -> core: a ToCore batch (the single-message kinds above still decode)
BYE = b"Q"  # frontend -> core: a clean exit (not counted as a lost worker)
ADMITTED, OUTPUT, METRICS_TEXT, INFO_REPLY = b"a", b"o", b"m", b"i"  # core -> frontend
HEADROOM, HEADROOM_REPLY = b"H", b"h"  # frontend -> core: each model's headroom, asked; the reply: {model: fraction}
TO_FRONTEND = b"b"  # core -> frontend: a ToFrontend batch (+ one samples frame)

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
DECODERS = {ADD: msgspec.msgpack.Decoder(AddRequest), CANCEL: msgspec.msgpack.Decoder(Cancel),
            ANSWERED: msgspec.msgpack.Decoder(Answered), REJECTED: msgspec.msgpack.Decoder(Rejected),
            ADMITTED: msgspec.msgpack.Decoder(Admitted),
            OUTPUT: msgspec.msgpack.Decoder(Output),
            TO_CORE: msgspec.msgpack.Decoder(ToCore), TO_FRONTEND: msgspec.msgpack.Decoder(ToFrontend)}
_any = msgspec.msgpack.Decoder()


def frontend_identity(pid: int) -> bytes:
    """A frontend's ZeroMQ routing id: its pid, so the engine core can watch it die."""
    return b"frontend-%d" % pid


def frontend_pid(identity: bytes) -> int | None:
    """The pid in a routing id from frontend_identity (None for any other peer)."""
    if identity.startswith(b"frontend-"):
        try:
            return int(identity[len(b"frontend-"):])
        except ValueError:
            return None
    return None


def decode(kind: bytes, payload) -> object:
    decoder = DECODERS.get(kind)
    return decoder.decode(payload) if decoder else _any.decode(payload)


def output_frames(out: Output, samples: np.ndarray | None) -> list:
    """An output as frames; the samples buffer is sent as it is (the caller passes copy=False)."""
    if samples is None:
        return [OUTPUT, encode(out)]
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    out.shape = samples.shape
    return [OUTPUT, encode(out), memoryview(samples).cast("B")]


def to_frontend_frames(batch: ToFrontend, samples: list) -> list:
    """A ToFrontend as frames: the samples of its outputs (None for outputs without) as one
    float32 frame after the message; each output's shape is set from its samples."""
    parts = []
    for out, s in zip(batch.outputs, samples):
        if s is not None:
            s = np.ascontiguousarray(s, dtype=np.float32)
            out.shape = s.shape
            parts.append(s.reshape(-1))
    if not parts:
        return [TO_FRONTEND, encode(batch)]
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return [TO_FRONTEND, encode(batch), memoryview(flat).cast("B")]


def split_samples(outputs: list[Output], frame) -> list[np.ndarray | None]:
    """Each output's samples from the batch's raw frame (views of the received buffer, no copy)."""
    if frame is None:
        return [None] * len(outputs)
    flat = np.frombuffer(frame, dtype=np.float32)
    result, at = [], 0
    for out in outputs:
        if not out.shape:
            result.append(None)
            continue
        size = 1
        for d in out.shape:
            size *= d
        result.append(flat[at:at + size].reshape(out.shape))
        at += size
    return result


def samples_from(out: Output, frame) -> np.ndarray | None:
    """The samples of an output from its raw frame (no copy: a view of the received buffer)."""
    if frame is None or not out.shape:
        return None
    return np.frombuffer(frame, dtype=np.float32).reshape(out.shape)
