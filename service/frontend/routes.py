"""HTTP routes: thin functions over FrontendState."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import encoding
from .errors import ApiError
from .schemas import ErrorResponse, GenerateResponse, ModelInfo, ModelList, Preview, Sample
from .state import FrontendState, Result
from .validation import GenerateRequest


async def get_state(request: Request) -> FrontendState:  # async: no threadpool hop per request
    return request.app.state.frontend


StateDep = Annotated[FrontendState, Depends(get_state)]
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 500, 503)}

router = APIRouter()
STALE_S = 0.02  # a preview queued this long while a newer event waits is skipped
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.post("/generate", response_model=GenerateResponse, responses={
    **ERRORS, 200: {"content": {"image/png": {}, "audio/wav": {}, "application/x-npy": {}, "text/event-stream": {}}}})
async def generate(body: GenerateRequest, request: Request, state: StateDep):
    """Generate samples within deadline_ms; the server picks the token count k that fits."""
    arrival = request.state.arrival
    if body.stream:
        return await _stream(body, request, state)
    result = await state.generate(body, arrival, request.state.request_id, request.receive)
    if result is None:  # client went away; nobody reads this
        return Response(status_code=499)
    request.state.result = result  # for the trace span (service/frontend/tracing.py)
    return _encode(body, result, arrival, state)


def _samples(samples, card) -> list[Sample]:
    encoded = [encoding.encode_one(s, card.modality, card.sample_rate) for s in samples]
    return [Sample(data=encoding.b64(data), media_type=mt) for mt, data in encoded]


def _meta(body: GenerateRequest, result: Result) -> dict:
    card, msg, out = result.card, result.request, result.output
    label = card.classes[msg.label] if msg.label is not None and card.classes else None
    started = out.started or out.finished or msg.arrival
    finished = out.finished or msg.arrival
    return {"model": card.name, "tokens": out.tokens, "max_tokens": card.D, "quality": round(result.quality, 4),
            "deadline_ms": body.deadline_ms, "seed": msg.seed, "label": label,
            "finish_reason": out.finish_reason, "request_id": msg.request_id,
            "compute_ms": round(out.compute_s * 1000, 3),
            "engine_ms": round((finished - started) * 1000, 3),
            "queue_ms": round((started - msg.arrival) * 1000, 3)}


def _json_payload(body: GenerateRequest, result: Result, arrival: float, state: FrontendState) -> GenerateResponse:
    items = _samples(result.samples, result.card)
    latency = time.monotonic() - arrival
    state.record(result, latency)
    return GenerateResponse(**_meta(body, result), latency_ms=round(latency * 1000, 3),
                            deadline_met=latency <= result.request.deadline_s, samples=items)


def _encode(body: GenerateRequest, result: Result, arrival: float, state: FrontendState) -> Response:
    samples, card = result.samples, result.card
    meta = _meta(body, result)
    if body.format == "json":  # pydantic-core writes the JSON: no dict and json.dumps in between
        return Response(_json_payload(body, result, arrival, state).model_dump_json(), media_type="application/json")
    if body.format == "npy":
        data, media = encoding.npy(samples), encoding.MEDIA_TYPES["npy"]
    elif body.format == "png":
        data, media = encoding.png_grid(samples), encoding.MEDIA_TYPES["png"]
    else:
        data, media = encoding.wav(samples.reshape(-1), card.sample_rate), encoding.MEDIA_TYPES["wav"]
    latency = time.monotonic() - arrival
    headers = {f"X-Anytime-{k.replace('_', '-').title()}": str(v) for k, v in meta.items() if v is not None}
    headers["X-Anytime-Latency-Ms"] = f"{latency * 1000:.3f}"
    headers["X-Anytime-Deadline-Met"] = str(latency <= result.request.deadline_s).lower()
    state.record(result, latency)
    return Response(content=data, media_type=media, headers=headers)


def _sse(event: str, data) -> str:
    text = data.model_dump_json() if hasattr(data, "model_dump_json") else json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n"


async def _stream(body: GenerateRequest, request: Request, state: FrontendState) -> StreamingResponse:
    """Server-sent events: `preview` every preview_every tokens, then `final` (or `error`).

    Admission errors are raised here, before the stream starts, as plain JSON errors."""
    arrival = request.state.arrival
    card, msg = state.prepare(body, arrival, request.state.request_id)
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
                    yield _sse("preview", Preview(tokens=out.tokens, max_tokens=card.D,
                                                  quality=round(card.quality(out.tokens), 4),
                                                  elapsed_ms=round((time.monotonic() - arrival) * 1000, 3),
                                                  samples=_samples(samples, card)))
                    continue
                finished = True
                try:
                    result = state.outcome(card, msg, out, samples)
                except ApiError as e:
                    yield _sse("error", {"error": {"code": e.status, "message": e.message}})
                    return
                if result is not None:
                    request.state.result = result
                    yield _sse("final", _json_payload(body, result, arrival, state))
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
                     output=c.manifest.get("output", {}))


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
