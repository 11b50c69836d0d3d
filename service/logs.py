"""Structured JSON logs (one object per line), never with request payloads."""
from __future__ import annotations

import logging
import time

import msgspec

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_encode = msgspec.json.Encoder(enc_hook=str).encode  # str() for what JSON has no type for


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Every HTTP request writes one (the access log), so this is
    kept cheap: the timestamp is formatted once per second, msgspec writes the JSON."""

    _second, _stamp = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out = {"time": self._stamp, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in _STANDARD:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _encode(out).decode()


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
