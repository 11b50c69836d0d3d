"""HTTP routes: thin functions over ServiceState."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from . import encoding
from .errors import ApiError
from .schemas import ErrorResponse, GenerateRequest, GenerateResponse, ModelInfo, ModelList, Preview, Sample
from .state import Result, ServiceState


async def get_state(request: Request) -> ServiceState:  # async: no threadpool hop per request
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 413, 422, 500, 503)}

router = APIRouter()
STATIC = Path(__file__).resolve().parent / "static"


@router.post("/generate", response_model=GenerateResponse, responses={
    **ERRORS, 200: {"content": {"image/png": {}, "audio/wav": {}, "application/x-npy": {}, "text/event-stream": {}}}})
async def generate(body: GenerateRequest, request: Request, state: StateDep):
    """Generate samples within deadline_ms; the server picks the token count k that fits."""
    arrival = request.state.arrival
    if body.stream:
        return _stream(body, request, state)
    result = await state.generate(body, arrival, request.state.request_id, request.receive)
    if result is None:  # client went away; nobody reads this
        return Response(status_code=499)
    return _encode(body, result, arrival, state)


def _samples(samples, spec) -> list[Sample]:
    encoded = [encoding.encode_one(s, spec.modality, spec.sample_rate) for s in samples]
    return [Sample(data=encoding.b64(data), media_type=mt) for mt, data in encoded]


def _meta(body: GenerateRequest, result: Result) -> dict:
    r, spec = result.request, result.spec
    label = spec.classes[r.label] if r.label is not None and spec.classes else None
    return {"model": spec.name, "tokens": r.tokens, "max_tokens": spec.D, "quality": round(result.quality, 4),
            "deadline_ms": body.deadline_ms, "seed": r.seed, "label": label,
            "finish_reason": r.finish_reason.value, "request_id": r.request_id,
            "compute_ms": round(r.compute_s * 1000, 3),
            "engine_ms": round(((r.finished or r.arrival) - (r.started or r.finished or r.arrival)) * 1000, 3),
            "queue_ms": round(((r.started or r.finished or r.arrival) - r.arrival) * 1000, 3)}


def _json_payload(body: GenerateRequest, result: Result, arrival: float, state: ServiceState) -> GenerateResponse:
    items = _samples(result.request.samples, result.spec)
    latency = time.monotonic() - arrival
    state.record(result, latency)
    return GenerateResponse(**_meta(body, result), latency_ms=round(latency * 1000, 3),
                            deadline_met=latency <= result.request.deadline_s, samples=items)


def _encode(body: GenerateRequest, result: Result, arrival: float, state: ServiceState) -> Response:
    r, spec = result.request, result.spec
    samples = r.samples
    meta = _meta(body, result)
    if body.format == "json":
        return JSONResponse(_json_payload(body, result, arrival, state).model_dump())
    if body.format == "npy":
        data, media = encoding.npy(samples), encoding.MEDIA_TYPES["npy"]
    elif body.format == "png":
        data, media = encoding.png_grid(samples), encoding.MEDIA_TYPES["png"]
    else:
        data, media = encoding.wav(samples.reshape(-1), spec.sample_rate or 16000), encoding.MEDIA_TYPES["wav"]
    latency = time.monotonic() - arrival
    headers = {f"X-Anytime-{k.replace('_', '-').title()}": str(v) for k, v in meta.items() if v is not None}
    headers["X-Anytime-Latency-Ms"] = f"{latency * 1000:.3f}"
    headers["X-Anytime-Deadline-Met"] = str(latency <= r.deadline_s).lower()
    state.record(result, latency)
    return Response(content=data, media_type=media, headers=headers)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(body: GenerateRequest, request: Request, state: ServiceState) -> StreamingResponse:
    """Server-sent events: `preview` every preview_every tokens, then `final` (or `error`).

    Admission errors are raised here, before the stream starts, as plain JSON errors."""
    arrival = request.state.arrival
    engine, req = state.prepare(body, arrival, request.state.request_id)
    events = state.admit(engine, req)
    spec = engine.spec

    async def produce():
        finished = False
        try:
            while True:
                kind, *payload = await events.get()
                if kind == "preview":
                    k, samples = payload
                    yield _sse("preview", Preview(tokens=k, max_tokens=spec.D, quality=round(spec.quality(k), 4),
                                                  elapsed_ms=round((time.monotonic() - arrival) * 1000, 3),
                                                  samples=_samples(samples, spec)).model_dump())
                    continue
                finished = True
                try:
                    result = state.outcome(engine, req)
                except ApiError as e:
                    yield _sse("error", {"error": {"code": e.status, "message": e.message}})
                    return
                if result is not None:
                    yield _sse("final", _json_payload(body, result, arrival, state).model_dump())
                return
        finally:
            if not finished:  # the client went away mid-stream: free its rows
                engine.cancel(req)
            state.release()

    return StreamingResponse(produce(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/models", response_model=ModelList)
async def list_models(state: StateDep):
    """The models this server serves."""
    return ModelList(models=[_info(state, name) for name in state.engines])


@router.get("/models/{name}", responses=ERRORS)
async def read_model(name: str, state: StateDep):
    """One model: its manifest, including the measured quality curve."""
    engine = state.engine(name)
    return {**_info(state, name).model_dump(), "manifest": engine.spec.manifest}


def _info(state: ServiceState, name: str) -> ModelInfo:
    e = state.engines[name]
    q = e.spec.manifest["quality"]
    return ModelInfo(name=name, modality=e.spec.modality, D=e.spec.D, K=e.spec.K, classes=e.spec.classes,
                     backend=e.runtime.backend, device=e.runtime.device, default=name == state.default_model,
                     quality={"metric": q.get("metric", ""), "k": q["k"], "quality": q["quality"]},
                     output=e.spec.manifest.get("output", {}))


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
    """Ready: models loaded and warmed up, admission open (503 while loading or draining)."""
    if state.draining:
        raise ApiError(503, "draining")
    if not state.ready:
        raise ApiError(503, "loading models")
    return {"status": "ready", "models": sorted(state.engines)}


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep):
    data, content_type = state.metrics.exposition()
    return Response(data, media_type=content_type)
