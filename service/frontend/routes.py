"""HTTP routes: thin functions over FrontendState.

POST /generate is the hot path. Its route is a LeanRoute: the OpenAPI document, the error bodies
and the validation messages are FastAPI's, generated from the declared endpoint as for any
route, but a well-formed JSON body skips FastAPI's per-request work (the body read and parsed
into a dict and then validated, dependency solving): pydantic-core parses and validates it in
one pass, straight from the bytes the middleware already read. Anything else (another content
type, invalid JSON, a body that fails validation) goes through FastAPI's own handler, so errors
are exactly FastAPI's. Responses are written by msgspec (samples as base64 by the encoder)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from . import encoding
from .errors import ApiError
from .schemas import ErrorResponse, GenerateResponse, ModelInfo, ModelList
from .state import FrontendState, Result
from .validation import GenerateRequest, quality_of


async def get_state(request: Request) -> FrontendState:  # async: no threadpool hop per request
    return request.app.state.frontend


StateDep = Annotated[FrontendState, Depends(get_state)]
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 500, 503)}

router = APIRouter()
STALE_S = 0.02  # a preview queued this long while a newer event waits is skipped
STATIC = Path(__file__).resolve().parent.parent / "static"


class LeanRoute(APIRoute):
    """An APIRoute whose endpoint has a `lean` twin taking the Request alone; the twin returns
    None when the request needs FastAPI's full handling (errors, unusual bodies), which then
    runs the declared endpoint as usual."""

    def get_route_handler(self):
        full = super().get_route_handler()
        lean = self.endpoint.lean

        async def handler(request: Request) -> Response:
            response = await lean(request)
            return response if response is not None else await full(request)

        return handler


# ---- the response bodies (msgspec; the same fields and order as schemas.py's models) ------------
class SampleBody(msgspec.Struct, gc=False):
    data: bytes  # msgspec writes bytes as base64
    media_type: str


class GenerateBody(msgspec.Struct, gc=False):
    model: str
    tokens: int
    max_tokens: int
    quality: float
    latency_ms: float
    compute_ms: float
    engine_ms: float
    queue_ms: float
    deadline_ms: int
    deadline_met: bool
    seed: int
    label: str | None
    finish_reason: str
    request_id: str
    samples: list[SampleBody]
    guidance: float = 0.0


class PreviewBody(msgspec.Struct, gc=False):
    tokens: int
    max_tokens: int
    quality: float
    elapsed_ms: float
    samples: list[SampleBody]


_json = msgspec.json.Encoder().encode
JSON_TYPE = "application/json"


def _json_body(raw: bytes, content_type: str | None) -> GenerateRequest | None:
    """The body validated in one pass, or None when FastAPI should look at it (it reports why)."""
    if not raw or content_type is None or not content_type.startswith(JSON_TYPE):
        return None
    try:
        return GenerateRequest.model_validate_json(raw)
    except ValidationError:
        return None


def _content_type(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1")
    return None


async def _generate_lean(request: Request) -> Response | None:
    scope = request.scope
    state = scope["state"]
    body = _json_body(state.get("body", b""), _content_type(scope))
    if body is None:
        return None
    return await _generate(body, request, scope["app"].state.frontend)


async def generate(body: GenerateRequest, request: Request, state: StateDep):
    """Generate samples within deadline_ms; the server picks the token count k that fits."""
    return await _generate(body, request, state)


generate.lean = _generate_lean
router.add_api_route("/generate", generate, methods=["POST"], response_model=GenerateResponse,
                     route_class_override=LeanRoute, responses={
                         **ERRORS, 200: {"content": {"image/png": {}, "audio/wav": {}, "application/x-npy": {},
                                                     "text/event-stream": {}}}})


async def _generate(body: GenerateRequest, request: Request, state: FrontendState) -> Response:
    scope_state = request.scope["state"]
    arrival = scope_state["arrival"]
    if body.stream:
        return await _stream(body, request, state)
    result = await state.generate(body, arrival, scope_state["request_id"], request.receive)
    if result is None:  # client went away; nobody reads this
        return Response(status_code=499)
    scope_state["result"] = result  # for the trace span (service/frontend/tracing.py)
    return _encode(body, result, arrival, state)


def _samples(samples, card) -> list[SampleBody]:
    fmt = encoding.sample_format(card.modality)
    media = encoding.MEDIA_TYPES[fmt]
    if fmt == "png":
        return [SampleBody(encoding.png(s), media) for s in samples]
    return [SampleBody(encoding.wav(s, card.sample_rate), media) for s in samples]


def _body(body: GenerateRequest, result: Result, samples: list, latency: float, met: bool) -> GenerateBody:
    card, msg, out = result.card, result.request, result.output
    label = card.classes[msg.label] if msg.label is not None and card.classes else None
    started = out.started or out.finished or msg.arrival
    finished = out.finished or msg.arrival
    return GenerateBody(card.name, out.tokens, card.D, round(result.quality, 4), round(latency * 1000, 3),
                        round(out.compute_s * 1000, 3), round((finished - started) * 1000, 3),
                        round((started - msg.arrival) * 1000, 3), body.deadline_ms, met, msg.seed, label,
                        out.finish_reason, msg.request_id, samples, out.guidance)


HEADERS = [(field, "X-Anytime-" + field.replace("_", "-").title()) for field in
           ("model", "tokens", "max_tokens", "quality", "deadline_ms", "seed", "label", "finish_reason",
            "request_id", "compute_ms", "engine_ms", "queue_ms", "guidance")]


def _encode(body: GenerateRequest, result: Result, arrival: float, state: FrontendState) -> Response:
    samples, card = result.samples, result.card
    if body.format == "json":
        items = _samples(samples, card)
        latency, met = state.answer(result)
        return Response(_json(_body(body, result, items, latency, met)), media_type=JSON_TYPE)
    if body.format == "npy":
        data, media = encoding.npy(samples), encoding.MEDIA_TYPES["npy"]
    elif body.format == "png":
        data, media = encoding.png_grid(samples), encoding.MEDIA_TYPES["png"]
    else:
        data, media = encoding.wav(samples.reshape(-1), card.sample_rate), encoding.MEDIA_TYPES["wav"]
    latency, met = state.answer(result)
    meta = _body(body, result, [], latency, met)
    headers = {name: str(getattr(meta, field)) for field, name in HEADERS if getattr(meta, field) is not None}
    headers["X-Anytime-Latency-Ms"] = f"{latency * 1000:.3f}"
    headers["X-Anytime-Deadline-Met"] = "true" if met else "false"
    return Response(content=data, media_type=media, headers=headers)


def _sse(event: str, data) -> bytes:
    text = _json(data) if isinstance(data, msgspec.Struct) else json.dumps(data, separators=(",", ":")).encode()
    return b"event: " + event.encode() + b"\ndata: " + text + b"\n\n"


async def _stream(body: GenerateRequest, request: Request, state: FrontendState) -> StreamingResponse:
    """Server-sent events: `preview` every preview_every tokens, then `final` (or `error`).

    Admission errors are raised here, before the stream starts, as plain JSON errors."""
    arrival = request.scope["state"]["arrival"]
    card, msg = state.prepare(body, arrival, request.scope["state"]["request_id"])
    stream = await state.admit(card, msg)

    async def produce():
        finished = False
        try:
            while True:
                out, samples = await stream.events.get()
                while not out.final and not stream.events.empty() and time.monotonic() - out.received > STALE_S:
                    # previews are best effort: when this stream has fallen behind, only the
                    # newest is worth encoding (a busy event loop must not spend itself on stale ones)
                    out, samples = stream.events.get_nowait()
                if not out.final:
                    yield _sse("preview", PreviewBody(out.tokens, card.D, round(quality_of(card, msg, out.tokens, out.guidance), 4),
                                                      round((time.monotonic() - arrival) * 1000, 3),
                                                      _samples(samples, card)))
                    continue
                finished = True
                try:
                    result = state.outcome(card, msg, out, samples)
                except ApiError as e:
                    yield _sse("error", {"error": {"code": e.status, "message": e.message}})
                    return
                if result is not None:
                    request.scope["state"]["result"] = result
                    items = _samples(result.samples, card)
                    latency, met = state.answer(result)
                    yield _sse("final", _body(body, result, items, latency, met))
                return
        finally:
            if not finished:  # the client went away mid-stream: free its rows
                state.client.cancel(stream)
            state.release()

    return StreamingResponse(produce(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/models", response_model=ModelList)
async def list_models(state: StateDep):
    """The models this server serves."""
    return ModelList(models=[_info(state, name) for name in state.client.cards])


@router.get("/models/{name}", responses=ERRORS)
async def read_model(name: str, state: StateDep):
    """One model: its manifest, including the measured quality curve."""
    card = state.card(name)
    return {**_info(state, name).model_dump(), "manifest": card.manifest}


def _info(state: FrontendState, name: str) -> ModelInfo:
    c = state.client.cards[name]
    q = c.manifest["quality"]
    return ModelInfo(name=name, modality=c.modality, D=c.D, K=c.K, classes=c.classes, backend=c.backend,
                     device=c.device, default=name == state.client.default_model,
                     quality={"metric": q.get("metric", ""), "k": q["k"], "quality": q["quality"]},
                     output=c.manifest.get("output", {}), guidance=c.guidance)


@router.get("/", include_in_schema=False)
async def playground():
    """The browser playground (a single self-contained page, no external assets)."""
    return FileResponse(STATIC / "playground.html", media_type="text/html")


@router.get("/healthz")
async def healthz():
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(state: StateDep):
    """Ready: models loaded and warmed up in a live engine core, admission open (503 while
    loading or draining, or when the engine core is gone)."""
    reason = state.unavailable()
    if reason:
        raise ApiError(503, reason)
    return {"status": "ready", "models": sorted(state.client.cards)}


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep):
    """The engine core's registry: one set of series whichever worker answers the scrape."""
    try:
        data = await state.client.metrics()
    except (ConnectionError, TimeoutError) as e:
        raise ApiError(503, f"metrics unavailable: {e}") from None
    return Response(data, media_type=CONTENT_TYPE_LATEST)
