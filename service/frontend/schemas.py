"""HTTP API response schemas (pydantic). The request body and every rule on it live in
validation.py."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Sample(BaseModel):
    data: str = Field(..., description="base64 of the encoded sample")
    media_type: str


class GenerateResponse(BaseModel):
    model: str
    tokens: int = Field(..., description="k, tokens generated per sample")
    max_tokens: int = Field(..., description="D, tokens of a full-length sample")
    quality: float = Field(..., description="quality estimate at k from the model's curve (1 = full length)")
    latency_ms: float = Field(..., description="arrival at the server to response ready")
    compute_ms: float = Field(..., description="model time this request took part in: the batched prior steps with their token sampling, and the decodes")
    engine_ms: float = Field(..., description="time from its first step to its decoded samples, in the engine loop")
    queue_ms: float = Field(..., description="time from arrival to its first step")
    deadline_ms: int
    deadline_met: bool
    seed: int
    label: str | None = None
    finish_reason: str = Field(..., description="budget | deadline_guard | quality")
    request_id: str
    samples: list[Sample]
    guidance: float = Field(0.0, description="classifier-free guidance w the samples were drawn with (0: off)")


class Preview(BaseModel):
    """Data of a streamed `preview` event: the decoded prefix so far."""

    tokens: int
    max_tokens: int
    quality: float
    elapsed_ms: float
    samples: list[Sample]


class ErrorBody(BaseModel):
    code: int
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class OipErrorResponse(BaseModel):
    """Errors on the Open Inference Protocol's routes (/v2...), in its own shape."""

    error: str


class QualityCurve(BaseModel):
    metric: str
    k: list[int]
    quality: list[float]


class ModelInfo(BaseModel):
    name: str
    modality: str
    D: int
    K: int
    classes: list[str]
    backend: str
    device: str
    default: bool
    quality: QualityCurve
    output: dict
    guidance: dict | None = Field(None, description="the prior supports classifier-free guidance: its null token, "
                                  "training label dropout and default guidance (null: it does not)")


class ModelList(BaseModel):
    models: list[ModelInfo]
