"""Plots of the evaluation: quality curves vs k and sample grids at several k."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def plot_curves(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, res in result["pipelines"].items():
        frac = [r["fraction"] for r in res["curve"]]
        axes[0].plot(frac, [r["frechet"] for r in res["curve"]], "o-", label=name)
        axes[1].plot(frac, [r["mse"] for r in res["curve"]], "o-", label=name)
        if res["curve"][0]["label_accuracy"] is not None:
            axes[2].plot(frac, [r["label_accuracy"] for r in res["curve"]], "o-", label=name)
    axes[0].set(title="Frechet distance (lower is better)", xlabel="k / D", yscale="log")
    axes[1].set(title="test reconstruction MSE", xlabel="k / D", yscale="log")
    axes[2].set(title="conditional samples classified as their label", xlabel="k / D", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result['dataset']}: anytime sampling quality vs tokens generated")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def sample_grid(vqvae, prior, path: Path, classes: list[str], seed: int = 0,
                fractions=(0.1, 0.2, 0.4, 0.6, 0.8, 1.0)) -> None:
    """One class-conditional sample per class (rows), decoded at several k (columns)."""
    from .evaluate import decode, sample_codes

    n_cls = prior.config.num_classes
    labels = list(range(n_cls)) if n_cls else [None] * 10
    codes = sample_codes(prior, len(labels), labels, seed + 7)
    D = vqvae.config.D
    cols = [decode(vqvae, codes, max(1, round(f * D))) for f in fractions]
    fig, axes = plt.subplots(len(labels), len(fractions), figsize=(1.3 * len(fractions), 1.3 * len(labels)))
    for r in range(len(labels)):
        for c, imgs in enumerate(cols):
            ax = axes[r, c]
            img = (imgs[r].numpy() + 1) / 2
            ax.imshow(np.clip(img.transpose(1, 2, 0).squeeze(-1), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"k={max(1, round(fractions[c] * D))}", fontsize=8)
            if c == 0 and labels[r] is not None:
                ax.set_ylabel(classes[labels[r]], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
