"""Iteration-level (continuous) batching of full-length generation, for LitServe's
ContinuousBatchingLoop: requests join between steps and leave when their D tokens are decoded.

Rows 0..B-1 of one static cache hold the running samples (compacted when a request leaves), so
each step hands ONNX Runtime each layer's contiguous prefix without a copy, as Anytime's engine
does. Requests are added from LitServe's scheduling task while a step runs on another thread, so
they wait in `pending` (under a lock) until the next step takes them in."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .generator import FullLengthGenerator, SampleSpec, inverse_cdf, sample_rng


@dataclass
class Finished:
    uid: str
    samples: np.ndarray  # [n, *sample_shape]


class ContinuousStepper:
    def __init__(self, generator: FullLengthGenerator, rows: int):
        g = self.g = generator
        self.slots = rows
        shape = (rows, g.n_head, g.D, g.head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(g.n_layer)]
        self.v = [np.zeros(shape, np.float32) for _ in range(g.n_layer)]
        self.tokens = np.zeros(rows, np.int64)
        self.positions = np.zeros(rows, np.int64)
        self.codes = np.zeros((rows, g.D), np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * rows
        self.owner: list[str | None] = [None] * rows  # request uid of each row
        self.B = 0
        self.pending: list[tuple[str, list[SampleSpec]]] = []
        self.lock = threading.Lock()

    def rows_wanted(self) -> int:
        with self.lock:
            return self.B + sum(len(specs) for _, specs in self.pending)

    def add(self, uid: str, specs: list[SampleSpec]) -> None:
        with self.lock:
            self.pending.append((uid, specs))

    def has_work(self) -> bool:
        with self.lock:
            return self.B > 0 or bool(self.pending)

    def _admit(self) -> None:
        with self.lock:
            while self.pending and self.B + len(self.pending[0][1]) <= self.slots:
                uid, specs = self.pending.pop(0)
                for s in specs:
                    r = self.B
                    self.tokens[r] = self.g.unconditional if s.label is None else self.g.start_base + s.label
                    self.positions[r] = 0
                    self.rngs[r], self.owner[r] = sample_rng(s.seed, s.index), uid
                    self.B += 1

    def step(self) -> list[Finished]:
        """One prior step over every running row; the requests whose rows reached D, decoded."""
        self._admit()
        B, L, g = self.B, len(self.k), self.g
        if B == 0:
            return []
        tokens, positions = self.tokens[:B], self.positions[:B]
        feeds = {"tokens": tokens, "positions": positions}
        for i in range(L):
            feeds[f"k_cache_{i}"], feeds[f"v_cache_{i}"] = self.k[i][:B], self.v[i][:B]
        out = g.step_sess.run(None, feeds)
        rows = np.arange(B)
        for i in range(L):  # new key/value [B, H, hd] at each row's position
            self.k[i][rows, :, positions] = out[1 + i]
            self.v[i][rows, :, positions] = out[1 + L + i]
        new = inverse_cdf(out[0], np.array([self.rngs[r].random() for r in range(B)]))
        self.codes[rows, positions] = new
        self.tokens[:B] = new
        self.positions[:B] += 1
        done_rows = np.nonzero(self.positions[:B] == g.D)[0]
        if len(done_rows) == 0:
            return []
        samples = g.decode_sess.run(None, {"codes": self.codes[done_rows],
                                           "lengths": np.full(len(done_rows), g.D, dtype=np.int64)})[0]
        finished: dict[str, list[np.ndarray]] = {}
        for r, s in zip(done_rows, samples):
            finished.setdefault(self.owner[r], []).append(s)
        for r in sorted(done_rows, reverse=True):
            self._free(int(r))
        return [Finished(uid, np.stack(parts)) for uid, parts in finished.items()]

    def _free(self, r: int) -> None:
        """Row r's sample is done: the last running row moves into it (rows stay a prefix)."""
        last = self.B - 1
        if r != last:
            for c in self.k + self.v:
                c[r] = c[last]
            self.tokens[r], self.positions[r], self.codes[r] = self.tokens[last], self.positions[last], self.codes[last]
            self.rngs[r], self.owner[r] = self.rngs[last], self.owner[last]
        self.rngs[last] = self.owner[last] = None
        self.B = last
