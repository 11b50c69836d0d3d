"""Measure an exported model's quality curve from real data, with the exported graphs alone.

The project's own models are evaluated in a trained classifier's features (models/evaluate.py);
a user's model may come with no classifier, so the features are theirs to give, or by default
a fixed random projection of the samples. The curve is the same relative quality FD(D)/FD(k).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from model_format.contract import FILES

from .evaluate import k_grid, quality_from_frechet
from .frechet import frechet_distance, statistics
from .graphs import generate, open_graph

PROJECTION_DIM = 64  # few enough dimensions for a covariance from a few hundred samples


def random_projection(x: np.ndarray, dim: int = PROJECTION_DIM) -> np.ndarray:
    """[N, ...] -> [N, dim]: the flattened samples times a fixed Gaussian matrix (seed 0)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    if flat.shape[1] <= dim:
        return flat
    proj = np.random.default_rng(0).standard_normal((flat.shape[1], dim)) / np.sqrt(flat.shape[1])
    return flat @ proj


def measure_quality_curve(model_dir: Path, data: np.ndarray, *, D: int, start_token: int, prior: dict,
                          features: Callable[[np.ndarray], np.ndarray] | None = None, samples: int = 500,
                          seed: int = 0) -> dict:
    """Unconditional samples drawn once at full length with the TorchScript graphs, decoded at
    every k of the grid; FD to `data` ([N, *sample_shape] in [0, 1]) in `features`."""
    features = features or random_projection
    step = open_graph(Path(model_dir) / FILES["prior_step_torchscript"], "torchscript")
    decoder = open_graph(Path(model_dir) / FILES["decoder_torchscript"], "torchscript")
    codes = generate(step, np.full(samples, start_token, np.int64), D=D, n_layer=prior["n_layer"],
                     n_head=prior["n_head"], head_dim=prior["head_dim"], seed=seed)
    ref = statistics(features(data))
    rows = []
    for k in k_grid(D):
        gen = decoder(codes, np.full(samples, k, np.int64))[0]
        rows.append({"k": k, "frechet": frechet_distance(*statistics(features(gen)), *ref)})
    name = getattr(features, "__name__", type(features).__name__)
    return {"metric": f"relative quality FD(D)/FD(k), Frechet distance in features `{name}` against "
                      f"{len(data)} real samples, {samples} generated", "k": [r["k"] for r in rows],
            "quality": [float(q) for q in quality_from_frechet(rows)], "frechet": [r["frechet"] for r in rows]}
