"""Why a request was refused: one enum that both processes import, and that responses and
metrics use as it is. A refusal happens at the door (the frontend, or the engine core's
admission), never after a request was admitted."""
from __future__ import annotations

import enum


class Refusal(str, enum.Enum):
    """The reason of a refusal; its value is the wire form, the metric label and the log field."""

    DEADLINE = "deadline"  # not even min_tokens fit before the deadline at the current load
    QUEUE_FULL = "queue_full"  # the waiting queue is at max_queue
    FAIR_SHARE = "fair_share"  # under load, n is more than a fair share of the batch
    OVERLOADED = "overloaded"  # the frontend: too many in flight, or its event loop runs behind
    EXPIRED = "expired"  # admitted, then could not start in time (the scheduler must keep this at 0)
    DRAINING = "draining"  # shutting down: admission is closed
    ENGINE_DEAD = "engine_dead"  # the engine core is gone
    TOO_LARGE = "too_large"  # n can never fit this server's batch
    UNKNOWN_MODEL = "unknown_model"
    ERROR = "error"  # the engine core failed to take the request

    # str() and format() give the value (a metric label, a log field), not "Refusal.DEADLINE"
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def status(self) -> int:
        """The HTTP status a refusal for this reason answers with."""
        return _STATUS.get(self, 503)

    @property
    def is_load(self) -> bool:
        """Load took the request away: an idle replica would have admitted it (autoscaling signal)."""
        return self in LOAD_REFUSALS


_STATUS = {Refusal.TOO_LARGE: 422, Refusal.UNKNOWN_MODEL: 404, Refusal.ERROR: 500}
LOAD_REFUSALS = (Refusal.DEADLINE, Refusal.QUEUE_FULL, Refusal.EXPIRED, Refusal.OVERLOADED)
