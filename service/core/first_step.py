"""A step of rows that each take one token and start from nothing comes from a table.

At position 0 the prior sees its start token alone (the class label, or the null label): the
cache holds nothing it may attend to (the contract's "rows that do not see each other"), so
the first step's logits are a function of the start token, one vector per class and one for
the null label. A step whose rows are all at position 0 and all finish after this token (a
budget of one: deadlines so tight, or `max_tokens: 1`) needs no runtime call: their logits are
copied from the table, and each row still samples with its own random stream, so a seed gives
the same sample as before. The cache is not written, which is why every row must finish: a
row that goes on needs its keys and values at position 0 from a real step.

The table fills from real steps, the first time a start token is seen at position 0; like
service/core/first_token.py, a hit is bitwise what that first step gave (a runtime whose
results move in the last bits with the batch makes later hits equal to the first).
"""
from __future__ import annotations

import numpy as np


class FirstStepTable:
    def __init__(self, start_tokens: int):
        self.logits: dict[int, np.ndarray] = {}
        self.start_tokens = start_tokens  # how many there can be: classes + the null label
        self.hits = 0  # steps answered from the table (for tests and stats)

    def answer(self, tokens: np.ndarray, positions: np.ndarray, rows) -> np.ndarray | None:
        """The step's logits [B, K] from the table, or None when it needs the runtime."""
        if positions.any() or any(s.request.budget > 1 for s in rows):
            return None
        table = self.logits
        try:
            logits = np.stack([table[t] for t in tokens.tolist()])
        except KeyError:
            return None
        self.hits += 1
        return logits

    def fill(self, tokens: np.ndarray, positions: np.ndarray, logits: np.ndarray) -> None:
        """Keep the logits of a real step's rows at position 0 (finite ones only)."""
        table = self.logits
        if len(table) >= self.start_tokens:
            return
        for i in np.flatnonzero(positions == 0).tolist():
            t = int(tokens[i])
            if t not in table and np.isfinite(logits[i]).all():
                table[t] = logits[i].copy()
