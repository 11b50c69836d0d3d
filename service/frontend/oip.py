"""Open Inference Protocol v2 (KServe v2 / Triton) REST routes beside /generate: the same
FrontendState, engine core, scheduler, deadline semantics, auth and metrics.

The model takes `seed` INT64 [n] (one sample per seed) and optionally `label` INT64 [n] or BYTES
[n] (class names); the request parameters carry `deadline_ms` (required) and /generate's
sampling controls. One request with n seeds is one engine request of n rows (one admission, one
deadline); row i is the sample POST /generate gives for seed = seed[i], n = 1, at the same k.
It answers `samples` FP32 [n, ...sample shape], `tokens` INT32 [n] and `quality` FP32 [n], with
`deadline_met`, `latency_ms` and `finish_reason` as response parameters. Errors are
`{"error": "..."}` (errors.py) with /generate's status codes."""
from __future__ import annotations


import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..catalog import ModelCard
from .errors import ApiError
from .oip_tensors import (BINARY_EXTENSION, HEADER_LENGTH, REQUEST_SCHEMA, InferRequest, OutputTensor,
                          encode_outputs, parse_request, response_body)
from .routes import StateDep
from .schemas import OipErrorResponse
from .state import FrontendState, Result
from .validation import oip_request

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
OIP_ERRORS = {code: {"model": OipErrorResponse} for code in (401, 404, 413, 422, 503)}
EMPTY_OK = {200: {"description": "true (the body is empty)", "content": {}}}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": REQUEST_SCHEMA},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "JSON of Inference-Header-Content-Length bytes, "
                                                           "then the binary tensors"}}}}}
INFER_OK = {200: {"description": "the outputs (application/octet-stream: JSON of Inference-Header-Content-Length "
                                 "bytes, then the binary outputs)",
                  "content": {"application/json": {}, "application/octet-stream": {}}}}
INPUTS = {"seed": ("INT64",), "label": ("INT64", "BYTES")}
OUTPUTS = ("samples", "tokens", "quality")


@router.get("", responses=OIP_ERRORS)
async def server_metadata(request: Request):
    """Server metadata: name, version and the protocol extensions served."""
    return {"name": "anytime", "version": request.app.version, "extensions": [BINARY_EXTENSION]}


@router.get("/health/live", response_class=Response, responses=EMPTY_OK)
async def server_live():
    """Live: the process answers (200, empty body)."""
    return Response(status_code=200)


@router.get("/health/ready", response_class=Response, responses={**EMPTY_OK, **OIP_ERRORS})
async def server_ready(state: StateDep):
    """Ready: models warm in a live engine core and admission open (else 503)."""
    _check_ready(state)
    return Response(status_code=200)


@router.get("/models/{model}", responses=OIP_ERRORS)
async def model_metadata(model: str, state: StateDep):
    """Model metadata: the input and output tensors (-1: one per seed)."""
    card = state.card(model)
    return {"name": card.name, "platform": f"anytime_{card.backend}",
            "inputs": [{"name": "seed", "datatype": "INT64", "shape": [-1]},
                       {"name": "label", "datatype": "BYTES" if card.classes else "INT64", "shape": [-1],
                        "optional": True}],
            "outputs": [{"name": "samples", "datatype": "FP32", "shape": [-1, *card.output_shape]},
                        {"name": "tokens", "datatype": "INT32", "shape": [-1]},
                        {"name": "quality", "datatype": "FP32", "shape": [-1]}]}


@router.get("/models/{model}/ready", response_class=Response, responses={**EMPTY_OK, **OIP_ERRORS})
async def model_ready(model: str, state: StateDep):
    """Model ready: 200 when it is served and the server is ready; 404 unknown; 503 not ready."""
    state.card(model)
    _check_ready(state)
    return Response(status_code=200)


@router.post("/models/{model}/infer", response_class=Response, responses={**INFER_OK, **OIP_ERRORS},
             openapi_extra=INFER_BODY)
async def infer(model: str, request: Request, state: StateDep):
    """Inference: one sample per seed within the `deadline_ms` parameter; JSON or binary tensors."""
    arrival = request.state.arrival
    card = state.card(model)
    req, inputs = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    seeds, labels = _rows(req, inputs)
    parameters = dict(req.parameters)
    binary_default = parameters.pop("binary_data_output", False)
    binary = _binary_outputs(req, binary_default)
    body = oip_request(card.name, parameters, seeds, labels)
    result = await state.generate(body, arrival, request.state.request_id, request.receive, seeds, labels)
    if result is None:  # client went away; nobody reads this
        return Response(status_code=499)
    return _respond(req, result, binary, arrival, state)


def _check_ready(state: FrontendState) -> None:
    reason = state.unavailable()
    if reason:
        raise ApiError(503, reason, {"Retry-After": "1"})


def _rows(req: InferRequest, inputs: dict) -> tuple[list[int], list | None]:
    """The seed and label inputs as Python lists, after the name, datatype and shape rules."""
    for t in req.inputs:
        if t.name not in INPUTS:
            raise ApiError(422, f"unknown input {t.name!r}; inputs: seed (INT64 [n]), label (INT64 or BYTES [n])")
        if t.datatype not in INPUTS[t.name]:
            raise ApiError(422, f"input {t.name!r} must be {' or '.join(INPUTS[t.name])}, got {t.datatype!r}")
        if len(t.shape) != 1:
            raise ApiError(422, f"input {t.name!r} must have shape [n], got {t.shape}")
    if "seed" not in inputs:
        raise ApiError(422, "input 'seed' (INT64 [n], one sample per seed) is required")
    seeds, labels = inputs["seed"].tolist(), inputs.get("label")
    return seeds, labels.tolist() if isinstance(labels, np.ndarray) else labels


def _binary_outputs(req: InferRequest, default) -> dict[str, bool]:
    """Which outputs to send, and whether each goes as binary data (the per-output
    `binary_data` parameter, else the request's `binary_data_output`)."""
    if not isinstance(default, bool):
        raise ApiError(422, "parameter 'binary_data_output' must be a boolean")
    if req.outputs is None:
        return {name: default for name in OUTPUTS}
    chosen = {}
    for o in req.outputs:
        if o.name not in OUTPUTS:
            raise ApiError(422, f"unknown output {o.name!r}; outputs: {', '.join(OUTPUTS)}")
        unsupported = sorted(set(o.parameters) - {"binary_data"})
        if unsupported:
            raise ApiError(422, f"output {o.name!r}: parameter {unsupported[0]!r} is not supported")
        flag = o.parameters.get("binary_data", default)
        if not isinstance(flag, bool):
            raise ApiError(422, f"output {o.name!r}: binary_data must be a boolean")
        chosen[o.name] = flag
    return chosen


def _tensors(result: Result, names) -> list[OutputTensor]:
    card: ModelCard = result.card
    n, k = result.request.n, result.output.tokens
    made = {"samples": lambda: OutputTensor("samples", "FP32", result.samples),
            "tokens": lambda: OutputTensor("tokens", "INT32", np.full(n, k, np.int32)),
            "quality": lambda: OutputTensor("quality", "FP32", np.full(n, result.quality, np.float32))}
    return [made[name]() for name in names]


def _respond(req: InferRequest, result: Result, binary: dict[str, bool], arrival: float,
             state: FrontendState) -> Response:
    tensors, chunks = encode_outputs(_tensors(result, binary), binary)
    latency, met = state.answer(result)
    header = {"model_name": result.card.name, "parameters": {
        "deadline_met": met, "latency_ms": round(latency * 1000, 3),
        "finish_reason": result.output.finish_reason}}
    if req.id is not None:
        header["id"] = req.id
    body, header_length = response_body(header, tensors, chunks)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})

