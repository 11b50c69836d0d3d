"""The in-memory data set every loader returns and every training loop reads.

x [N, C, *shape] in [-1, 1] and y [N] int64 class ids (-1 when unlabelled), with the class
names alongside. Its own module so that the loaders (data.py, audio.py, spoken_digits.py) can
all return it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dataset:
    x: torch.Tensor  # [N, C, *shape] float32 in [-1, 1]
    y: torch.Tensor  # [N] int64, -1 when unlabelled
    classes: list[str]
    name: str
    sample_rate: int | None = None  # audio only: samples per second of x [N, 1, T]

    def __len__(self) -> int:
        return len(self.x)


def batches(ds: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    """Yield (x, y) mini-batches; the data set lives in memory so no DataLoader is needed."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield ds.x[idx], ds.y[idx]
