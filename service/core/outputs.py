"""The engine's outputs path: decode the requests that finish (and the previews due) in
batched runtime calls, then hand everything one decode produced to the engine core at once.
Engine (engine.py) mixes this in; the scheduler only changes request state and lists what
finished, and nothing here runs once per request per event."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .request import FinishReason, Request
from .scheduler import SchedulerOutput

log = logging.getLogger("anytime.engine")


@dataclass
class DecodeStats:
    model: str
    backend: str
    batch: int
    seconds: float
    previews_skipped: int = 0  # nominal stream previews the requests of this decode passed over


class EngineOutputs:
    """The outputs half of Engine (it provides spec, runtime, scheduler, latency, _fail, _emit)."""

    DECODE_CHUNK_S = 0.002  # decode calls are split to about this cost so early deadlines go first

    def _decode(self, out: SchedulerOutput) -> float:
        """Decode the requests that finish now in deadline order, in chunks of about
        DECODE_CHUNK_S, answering each chunk as soon as it is decoded (a large decode of
        other requests never delays an earlier deadline); streaming previews go last.
        Returns the seconds it took, all of it: the decoder calls, the rows' codes gathered for
        them, and the answers handed to the outputs hook (the step's latency model must not
        learn them as step time; the decode model learns the decoder calls alone)."""
        jobs = sorted(out.finish, key=lambda f: f[0].deadline) + [(r, None) for r in out.previews]
        chunk, rows, spent = [], 0, 0.0
        for job in jobs:
            n = job[0].samples_n  # rows decoded: a guided request's null-label rows are not
            if chunk and self.latency.decode(rows + n) > self.DECODE_CHUNK_S:
                spent += self._decode_chunk(chunk)
                chunk, rows = [], 0
            chunk.append(job)
            rows += n
        return spent + (self._decode_chunk(chunk) if chunk else 0.0)

    def _decode_chunk(self, jobs: list[tuple[Request, FinishReason | None]]) -> float:
        """One batched decode; finishes the requests with a reason, hands previews to the others.
        Returns the seconds the chunk took (see _decode)."""
        began = time.perf_counter()
        D = self.spec.D
        seqs = [s for r, _ in jobs for s in r.sampled]  # guided requests: not their null-label rows
        codes = np.zeros((len(seqs), D), dtype=np.int64)
        lengths = np.zeros(len(seqs), dtype=np.int64)
        for i, s in enumerate(seqs):
            codes[i, : s.position] = s.codes
            lengths[i] = s.position
        t = time.perf_counter()
        try:
            out, decoded, predicted = self._decode_rows(codes, lengths)
        except Exception as e:  # a decoder failure fails only these requests
            log.exception("decode failed")
            self._fail([r for r, _ in jobs], f"decoder failed: {type(e).__name__}")
            return time.perf_counter() - began
        dt = time.perf_counter() - t
        if decoded:  # the latency model learns from decoder calls only, not table copies
            self.latency.jitter.observe(max(0.0, dt - predicted))
            self.latency.decode.observe(decoded, dt)
        skipped_before = self.scheduler.previews_skipped
        i = 0
        for r, reason in jobs:
            samples = out[i : i + r.samples_n]
            i += r.samples_n
            self.scheduler.decoded(r, samples, dt, reason)
            if reason is not None:
                self._done(r)
            else:
                self._previews.append((r, r.tokens, samples))
        self._flush_outputs()  # this chunk's answers leave now, before the next chunk's decode
        self._emit(DecodeStats(self.spec.name, self.runtime.backend, len(seqs), dt,
                               self.scheduler.previews_skipped - skipped_before))
        return time.perf_counter() - began

    def _decode_rows(self, codes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int, float]:
        """Samples for these rows: one-token rows whose code the decoder has seen come from the
        table (service/core/first_token.py), the others from one decoder call. Returns the
        samples, how many rows the decoder ran and the cost predicted for them."""
        table = self.first_tokens
        hit = table.hits_among(codes, lengths) if table is not None else None
        if hit is None or not hit.any():
            predicted = self.latency.decode.paced(len(codes))
            out = self.runtime.decode(codes, lengths)
            if table is not None and not table.fill(codes, lengths, out):
                log.warning("decoder samples %s do not match the manifest's output shape %s: no one-token "
                            "table", out.shape[1:], table.samples.shape[1:])
                self.first_tokens = None
            return out, len(codes), predicted
        out = np.empty((len(codes), *table.samples.shape[1:]), dtype=np.float32)
        out[hit] = table.samples[codes[hit, 0]]
        table.hits += int(hit.sum())
        miss = ~hit
        decoded = int(miss.sum())
        predicted = self.latency.decode.paced(decoded) if decoded else 0.0
        if decoded:
            rest = self.runtime.decode(codes[miss], lengths[miss])
            table.fill(codes[miss], lengths[miss], rest)
            out[miss] = rest
        return out, decoded, predicted

    def _done(self, r: Request) -> None:
        """r has finished: it leaves with the next flush of outputs."""
        self._finished.append(r)

    def _flush_outputs(self) -> None:
        """Hand every request finished and every preview decoded since the last flush to the
        outputs hook in one call (and to per-request callbacks where a request has them)."""
        finished, previews = self._finished, self._previews
        if not finished and not previews:
            return
        self._finished, self._previews = [], []
        if self.on_outputs is not None:
            try:
                self.on_outputs(finished, previews)
            except Exception:
                log.exception("outputs hook failed")
        for r, k, samples in previews:
            if r.on_preview is not None:
                try:
                    r.on_preview(r, k, samples)
                except Exception:
                    log.exception("on_preview callback failed")
        for r in finished:
            if r.on_done is not None:
                try:
                    r.on_done(r)
                except Exception:
                    log.exception("on_done callback failed")
            # Break the request <-> sequence cycle, so that reference counting frees a finished
            # request as soon as nobody holds it. Left to the cyclic garbage collector, finished
            # requests pile up until a full pass, and that pass stalls the engine thread and the
            # IPC thread together (tens of milliseconds at 2x load).
            for s in r.sequences:
                s.request = None

