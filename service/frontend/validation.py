"""Every rule a generation request must pass, in one place: the body size (checked by the
middleware before parsing), the body's fields and their cross-field rules (pydantic), and the
rules that depend on the model (labels, formats, token bounds). A request that passes becomes
the engine core's `AddRequest`; nothing after this point re-checks or clamps it. The Open
Inference Protocol's requests (oip.py) pass the same rules: their parameters become a
GenerateRequest, their seed and label tensors the per-row seeds and labels."""
from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_format.contract import MAX_GUIDANCE

from ..catalog import ModelCard
from ..ipc import AddRequest
from .errors import ApiError, describe

MAX_SEED = 2**63 - 1
MAX_SAMPLES = 64
# what an OIP inference request may set through its `parameters`, with /generate's meaning
OIP_PARAMETERS = ("deadline_ms", "min_tokens", "max_tokens", "temperature", "top_k", "top_p", "priority",
                  "guidance")
Guidance = Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False, strict=True)] | Literal["auto"]


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
    n: int = Field(1, ge=1, le=MAX_SAMPLES, description="samples in this request")
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
    guidance: Guidance = Field(
        "auto", description=f"classifier-free guidance w, 0 to {MAX_GUIDANCE:g}: sample from cond + w (cond - "
                            "uncond), the label's logits pushed away from the null label's (0: off). A guided "
                            "sample steps two rows, so it costs about twice the compute of an unguided one. "
                            "\"auto\": the model's default for labelled requests, off otherwise, and under load "
                            "off when the tokens that frees buy more quality; a number > 0 "
                            "needs a label and a model whose prior supports guidance")

    @model_validator(mode="after")
    def _floor_below_cap(self):
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        if isinstance(self.label, str) and len(self.label) > 128:
            raise ValueError("label is too long")
        if self.stream and self.format != "json":
            raise ValueError("stream needs format 'json' (previews carry base64 samples)")
        return self


def oip_request(model: str, parameters: dict, seeds: list[int], labels: list | None) -> GenerateRequest:
    """An OIP request's parameters and rows under /generate's rules (422 with the reason)."""
    unknown = sorted(set(parameters) - set(OIP_PARAMETERS))
    if unknown:
        raise ApiError(422, f"unknown parameter {unknown[0]!r}; parameters: {', '.join(OIP_PARAMETERS)}")
    if not 1 <= len(seeds) <= MAX_SAMPLES:
        raise ApiError(422, f"input 'seed' has {len(seeds)} elements; one sample per seed, 1 to {MAX_SAMPLES}")
    if min(seeds) < 0:
        raise ApiError(422, f"input 'seed' must be >= 0, got {min(seeds)}")
    if labels is not None and len(labels) != len(seeds):
        raise ApiError(422, f"input 'label' has {len(labels)} elements; 'seed' has {len(seeds)}")
    if labels is not None and any(isinstance(c, str) and len(c) > 128 for c in labels):
        raise ApiError(422, "input 'label': a class name is too long")
    try:
        return GenerateRequest(model=model, n=len(seeds), seed=seeds[0], format="npy", **parameters)
    except ValidationError as e:
        raise ApiError(422, "invalid request: " + describe(e.errors(), "parameters.")) from None


def resolve_guidance(body: GenerateRequest, card: ModelCard, labelled: bool, default_guidance: float) -> float:
    """The guidance w a request runs with: "auto" is the model's default (else `default_guidance`,
    the server's) for a labelled request to a model that supports guidance, and 0 otherwise; a
    number > 0 needs both (422 with the reason)."""
    if body.guidance == "auto":
        if card.guidance is None or not labelled:
            return 0.0
        return float(card.guidance.get("default", default_guidance))
    w = float(body.guidance)
    if w > 0 and card.guidance is None:
        raise ApiError(422, f"model {card.name!r} does not support guidance: its prior was not trained with label "
                            "dropout (no prior.guidance in its manifest); send guidance 0 or \"auto\"")
    if w > 0 and not labelled:
        raise ApiError(422, "guidance > 0 needs a label: it pushes a class away from the null label")
    return w


def is_labelled(label: int | None, labels: list[int | None] | None) -> bool:
    """Every sample of the request has a label (the one label, or one per row)."""
    return label is not None or (labels is not None and all(c is not None for c in labels))


def quality_of(card: ModelCard, msg: AddRequest, tokens: int, guidance: float) -> float:
    """A sample's quality estimate: a labelled one's from the guided curves (if measured) at the
    guidance it was drawn with, an unlabelled one's from the model's curve."""
    return card.quality(tokens, guidance if is_labelled(msg.label, msg.labels) else None)


def to_core_request(body: GenerateRequest, card: ModelCard, rid: int, arrival: float, request_id: str,
                    seeds: list[int] | None = None, labels: list | None = None,
                    default_guidance: float = 0.0) -> AddRequest:
    """The model-dependent rules (404 unknown label, 422 otherwise), then the core's message;
    per-row `seeds` and `labels` (names or indices) for OIP requests; `default_guidance` for
    "auto" where the model's manifest names none."""
    try:
        label = card.label_index(body.label)
        row_labels = [card.label_index(c) for c in labels] if labels is not None else None
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
    guidance = resolve_guidance(body, card, is_labelled(label, row_labels), default_guidance)
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    preview_every = (body.preview_every or max(1, card.D // 8)) if body.stream else 0
    return AddRequest(id=rid, model=card.name, n=body.n, seed=seed, label=label, deadline_s=body.deadline_ms / 1000,
                      arrival=arrival, min_tokens=body.min_tokens or 1, max_tokens=min(body.max_tokens or card.D, card.D),
                      temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, preview_every=preview_every,
                      request_id=request_id, seeds=seeds, labels=row_labels, priority=body.priority,
                      ack=body.stream, guidance=guidance, guidance_auto=body.guidance == "auto" and guidance > 0)
