"""HTTP API schemas (pydantic): what each field of the contract means and accepts."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**63 - 1


class GenerateRequest(BaseModel):
    """Body of POST /generate."""

    model_config = ConfigDict(extra="forbid")

    deadline_ms: int = Field(..., ge=1, le=60000, description="budget from arrival at the server to response ready")
    model: str | None = Field(None, max_length=128, description="model name; the default model when omitted")
    n: int = Field(1, ge=1, le=64, description="samples in this request")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="reproducible sampling; random when omitted")
    label: str | int | None = Field(None, description="class to condition on (name or index)")
    min_tokens: int | None = Field(None, ge=1, le=65536, description="floor on k; 503 when even this cannot fit")
    max_tokens: int | None = Field(None, ge=1, le=65536, description="cap on k (default: D)")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="softmax temperature")
    top_k: int = Field(0, ge=0, le=65536, description="sample from the k most likely tokens (0: off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1: off)")
    format: Literal["json", "png", "wav", "npy"] = Field("json", description="response body")
    stream: bool = Field(False, description="answer text/event-stream: `preview` events of the decoded prefix, "
                                           "then a `final` event with the JSON response")
    preview_every: int | None = Field(None, ge=1, le=65536, description="tokens between previews (default D/8)")

    @model_validator(mode="after")
    def _floor_below_cap(self):
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        if isinstance(self.label, str) and len(self.label) > 128:
            raise ValueError("label is too long")
        if self.stream and self.format != "json":
            raise ValueError("stream needs format 'json' (previews carry base64 samples)")
        return self


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


class ModelList(BaseModel):
    models: list[ModelInfo]
