"""Every rule a generation request must pass, in one place: the body size (checked by the
middleware before parsing), the body's fields and their cross-field rules (pydantic), and the
rules that depend on the model (labels, formats, token bounds). A request that passes becomes
the engine core's `AddRequest`; nothing after this point re-checks or clamps it."""
from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..catalog import ModelCard
from ..ipc import AddRequest
from .errors import ApiError

MAX_SEED = 2**63 - 1


def body_too_large(content_length: bytes | None, received: int, limit: int) -> bool:
    """413 rule: a declared or received body over `limit` bytes (an unparsable length counts)."""
    if content_length is not None:
        try:
            if int(content_length) > limit:
                return True
        except ValueError:
            return True
    return received > limit


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
    priority: Literal["high", "normal", "low"] = Field(
        "normal", description="under load, high pays half the quality price for its steps and low twice: "
                              "high gets more tokens when steps are scarce")

    @model_validator(mode="after")
    def _floor_below_cap(self):
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        if isinstance(self.label, str) and len(self.label) > 128:
            raise ValueError("label is too long")
        if self.stream and self.format != "json":
            raise ValueError("stream needs format 'json' (previews carry base64 samples)")
        return self




def to_core_request(body: GenerateRequest, card: ModelCard, rid: int, arrival: float, request_id: str) -> AddRequest:
    """The model-dependent rules (404 unknown label, 422 otherwise), then the core's message."""
    try:
        label = card.label_index(body.label)
    except KeyError as e:
        raise ApiError(404, e.args[0]) from None
    if body.format == "wav" and card.modality != "audio":
        raise ApiError(422, f"format 'wav' needs an audio model; {card.name!r} is {card.modality}")
    if body.format == "png" and card.modality != "image":
        raise ApiError(422, f"format 'png' needs an image model; {card.name!r} is {card.modality}")
    if body.min_tokens is not None and body.min_tokens > card.D:
        raise ApiError(422, f"min_tokens={body.min_tokens} exceeds D={card.D} of model {card.name!r}")
    if body.top_k > card.K:
        raise ApiError(422, f"top_k={body.top_k} exceeds the vocabulary K={card.K}")
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    preview_every = (body.preview_every or max(1, card.D // 8)) if body.stream else 0
    return AddRequest(id=rid, model=card.name, n=body.n, seed=seed, label=label, deadline_s=body.deadline_ms / 1000,
                      arrival=arrival, min_tokens=body.min_tokens or 1, max_tokens=min(body.max_tokens or card.D, card.D),
                      temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, preview_every=preview_every, priority=body.priority,
                      request_id=request_id)
