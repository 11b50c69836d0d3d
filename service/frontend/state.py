"""A frontend worker's state: readiness, draining, requests in flight, and the generate flow
(validate -> admit in the engine core -> wait for outputs -> report) that the routes call."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

import numpy as np

from .. import ipc
from ..catalog import ModelCard
from ..refusals import Refusal
from ..settings import Settings
from . import encoding
from .core_client import EngineClient, Stream
from .errors import ApiError
from .validation import GenerateRequest, quality_of, to_core_request

log = logging.getLogger("anytime.frontend")


@dataclass
class Result:
    """A finished generation, ready to encode."""

    card: ModelCard
    request: ipc.AddRequest
    output: ipc.Output
    samples: np.ndarray
    quality: float
    latency_s: float | None = None  # set by FrontendState.answer, when the answer leaves
    deadline_met: bool | None = None


class FrontendState:
    def __init__(self, settings: Settings, client: EngineClient):
        self.settings = settings
        self.client = client
        self.started = False
        self.start_error: str | None = None  # why start() failed, for the supervisor
        self.draining = False
        self._inflight = 0

    async def start(self) -> None:
        await self.client.start()
        # first use of the encoders (imports, codec set-up) happens here, not in a request
        encoding.png(np.zeros((1, 8, 8), np.float32))
        encoding.npy(np.zeros((1, 8), np.float32))
        # What exists now (the app, the imported libraries) lives as long as the process: keep it
        # out of the garbage collector's full passes, which would otherwise stall every answer
        # this worker owes (tens of milliseconds at 2x load without this).
        gc.collect()
        gc.freeze()
        self.started = True

    def unavailable(self) -> str | None:
        """Why admission is closed (draining, the engine core gone, models loading), or None."""
        if self.draining:
            return "server is draining"
        if not self.client.alive:
            return "the engine core is not running"
        return None if self.started else "models are still loading"

    def start_draining(self) -> None:
        """Stop admission (readyz -> 503); in-flight work still completes."""
        self.draining = True

    @property
    def inflight(self) -> int:
        """HTTP requests admitted and not yet released."""
        return self._inflight

    def idle(self) -> bool:
        return self._inflight == 0

    async def wait_idle(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.idle():
            await asyncio.sleep(0.01)
        return self.idle()

    # ---- requests --------------------------------------------------------------------------
    def card(self, name: str | None) -> ModelCard:
        name = name or self.client.default_model
        card = self.client.cards.get(name)
        if card is None:
            raise ApiError(404, f"unknown model {name!r}; available: {', '.join(sorted(self.client.cards))}")
        return card

    def prepare(self, body: GenerateRequest, arrival: float, request_id: str, seeds: list[int] | None = None,
                labels: list | None = None) -> tuple[ModelCard, ipc.AddRequest]:
        """Readiness, then every validation rule; the engine core's message (with per-row seeds
        and labels for OIP requests)."""
        reason = self.unavailable()
        if reason:
            raise ApiError(503, reason, {"Retry-After": "1"})
        card = self.card(body.model)
        return card, to_core_request(body, card, self.client.next_id(), arrival, request_id, seeds, labels,
                                     self.settings.guidance_default)

    async def admit(self, card: ModelCard, msg: ipc.AddRequest) -> Stream:
        """Admitted by the engine core, or ApiError 503. Pair every admit with release()."""
        if self._inflight >= self.settings.max_inflight:
            self.client.rejected(card.name, Refusal.OVERLOADED)
            raise ApiError(503, f"overloaded: {self._inflight} requests in flight", {"Retry-After": "1"})
        self._inflight += 1
        try:
            adm, stream = await self.client.add(msg)
        except BaseException:
            self._inflight -= 1
            raise
        if not adm.ok:
            self._inflight -= 1
            raise _refused(adm)
        return stream

    def shed(self) -> None:
        """A generation request refused unread because this worker runs behind (the model is
        the default one: the body that names it was not parsed)."""
        if self.client.default_model is not None:
            self.client.rejected(self.client.default_model, Refusal.OVERLOADED)

    def release(self) -> None:
        self._inflight -= 1

    def outcome(self, card: ModelCard, msg: ipc.AddRequest, out: ipc.Output, samples) -> Result | None:
        """The finished request as a Result; None if cancelled; ApiError if it failed."""
        if out.finish_reason == "cancelled":
            return None
        if out.error_status:
            headers = {"Retry-After": "1"} if out.error_status == 503 else None
            raise ApiError(out.error_status, out.error or "generation failed", headers)
        return Result(card, msg, out, samples, quality_of(card, msg, out.tokens, out.guidance))

    async def generate(self, body: GenerateRequest, arrival: float, request_id: str, receive,
                       seeds: list[int] | None = None, labels: list | None = None) -> Result | None:
        """Admit, wait for the engine core, and return the result; None when the client went away.

        `receive` is the ASGI receive of the request (its body already read): it returns only
        when the client disconnects, so waiting on it costs nothing (no polling)."""
        card, msg = self.prepare(body, arrival, request_id, seeds, labels)
        stream = await self.admit(card, msg)
        first = stream.first()  # a non-streaming request gets one output
        gone = asyncio.ensure_future(_disconnected(receive))
        gone.add_done_callback(lambda _: first.done() or first.set_result(None))
        try:
            item = await first
            if item is None:  # the client went away first
                self.client.cancel(stream)  # the engine core frees its rows
                return None
            out, samples = item
            if type(out) is ipc.Admitted:  # a refusal of a request sent without ack (core_client.add)
                raise _refused(out)
            return self.outcome(card, msg, out, samples)
        finally:
            gone.cancel()
            self.release()

    def answer(self, result: Result) -> tuple[float, bool]:
        """The answer is encoded and leaves now: its latency, and whether it met its deadline,
        decided here once (the response says it, the report carries it to the metrics). The
        report's time since the engine finished teaches the scheduler how long responding takes."""
        out, msg = result.output, result.request
        now = time.monotonic()
        latency = now - msg.arrival
        met = latency <= msg.deadline_s
        result.latency_s, result.deadline_met = latency, met
        self.client.answered(ipc.Answered(result.card.name, latency, msg.deadline_s, out.tokens, result.quality,
                                          msg.n, out.finish_reason, now - (out.finished or now), met))
        return latency, met


def _refused(adm: ipc.Admitted) -> ApiError:
    status = _refusal_status(adm.reason)
    headers = {"Retry-After": str(max(1, round(adm.retry_after_s)))} if status == 503 else None
    return ApiError(status, adm.message, headers)


def _refusal_status(reason: str) -> int:
    """The HTTP status of an engine core's refusal (503 for a reason this frontend does not know)."""
    try:
        return Refusal(reason).status
    except ValueError:
        return 503


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
