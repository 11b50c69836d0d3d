"""The request lifecycle: a Request holds its sequences (one per sample), each with an
explicit status; only the scheduler and engine change them."""
from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field

import numpy as np


class Status(enum.Enum):
    WAITING = "waiting"  # admitted, not yet in the batch
    RUNNING = "running"  # in the batch, generating
    PAUSED = "paused"  # has slack: not stepping for now, its KV-cache rows kept
    FINISHED = "finished"


class FinishReason(enum.Enum):
    BUDGET = "budget"  # reached the token budget planned at admission (or D / max_tokens)
    DEADLINE_GUARD = "deadline_guard"  # stopped early: only time left to decode and respond
    QUALITY = "quality"  # stopped at the quality knee because steps were scarce
    CANCELLED = "cancelled"  # the client went away or the server is shutting down
    ERROR = "error"  # the runtime failed or produced non-finite logits


_ids = itertools.count(1)


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(eq=False)  # identity: a sequence is one sample in flight
class Sequence:
    """One sample being generated. `slot` is its row in the runtime's KV cache; `start_token`
    is the first input of the prior (the class, or the unconditional token)."""

    request: "Request | None"  # None once the request has finished (Engine._done)
    index: int
    stream: tuple[int, int]  # (seed, index) of its random stream (service/core/streams.py)
    start_token: int = 0
    codes: list[int] = field(default_factory=list)
    slot: int = -1
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    # guided samples: the null-label row that steps beside this one (service/core/guidance.py)
    null_row: "Sequence | None" = None

    @property
    def position(self) -> int:
        return len(self.codes)


@dataclass(eq=False)
class Request:
    model: str
    n: int  # rows it steps: its samples, twice over when guided (each sample beside its null-label row)
    seed: int
    label: int | None
    deadline_s: float  # relative budget in seconds
    arrival: float  # time.monotonic() at arrival at the server
    min_tokens: int
    max_tokens: int  # cap (<= D)
    planned_tokens: int = 0  # the budget admission gave (written once, by the Admitter)
    budget: int = 0  # tokens it steps to at most: planned_tokens, lowered when it starts late (Lifecycle)
    idle_tokens: int = 0  # the budget an idle replica would have given (what load took is measured against it)
    # when admission expected it to get a row, had it to wait for one (NaN: rows were free);
    # written once, by the Admitter (service/core/queue_wait.py learns from it)
    start_by: float = math.nan
    sampling: SamplingParams = field(default_factory=SamplingParams)
    id: int = field(default_factory=lambda: next(_ids))
    request_id: str = ""
    sequences: list[Sequence] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: FinishReason | None = None
    error: str | None = None
    error_status: int = 0  # HTTP status for failed requests: 503 (deadline), 500 (runtime)
    cancelled: bool = False  # the client went away (set by the scheduler on a cancel command)
    compute_s: float = 0.0  # model time it took part in: batched steps with their sampling, decodes
    started: float | None = None  # first step
    finished: float | None = None
    samples: np.ndarray | None = None  # decoded [n, ...] in [0, 1]
    on_done: object = None  # callable(request), set by whoever waits for it
    preview_every: int = 0  # streaming: decode a preview every this many tokens (0: off)
    last_preview: int = 0
    last_preview_at: float = 0.0  # time.monotonic() of the last preview decode
    priority: str = "normal"  # high | normal | low: scales the quality price under load
    urgent: bool = False  # its laxity ran out, so it steps every iteration (the Planner's Stepping)
    on_preview: object = None  # callable(request, tokens, samples [n, ...])
    guidance: float = 0.0  # classifier-free guidance w (0: off); > 0 doubles the rows
    deadline: float = field(init=False)  # absolute (monotonic): arrival + deadline_s, sorted by often

    def __post_init__(self) -> None:
        self.deadline = self.arrival + self.deadline_s

    @property
    def samples_n(self) -> int:
        """Samples it returns: its rows, less the null-label rows of guided samples."""
        return self.n // 2 if self.guidance > 0 else self.n

    @property
    def sampled(self) -> list[Sequence]:
        """The sequences decoded into samples (the first samples_n; the null-label rows follow)."""
        return self.sequences[: self.samples_n]

    @property
    def tokens(self) -> int:
        # all sequences of a request start together and advance in the same steps
        return len(self.sequences[0].codes) if self.sequences else 0

    def preview_due(self) -> bool:
        k = self.tokens
        return (self.preview_every > 0 and 0 < k < self.budget and k % self.preview_every == 0
                and k != self.last_preview)
