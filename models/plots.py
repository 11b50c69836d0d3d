"""Plots of the evaluation: quality curves vs k and sample grids at several k."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .audio import LogMel  # noqa: E402
from .codes import decode, sample_codes  # noqa: E402


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
                fractions=(0.1, 0.2, 0.4, 0.6, 0.8, 1.0)) -> list[Path]:
    """One class-conditional sample per class (rows), decoded at several k (columns).

    Images are drawn as they are; audio as log-mel spectrograms at `path` plus the waveforms
    at `<path stem>-waveforms.png`. Returns the files written.
    """
    n_cls = prior.config.num_classes
    labels = list(range(n_cls)) if n_cls else [None] * 10
    codes = sample_codes(prior, len(labels), labels, seed + 7)
    D = vqvae.config.D
    ks = [max(1, round(f * D)) for f in fractions]
    cols = [decode(vqvae, codes, k) for k in ks]
    if vqvae.config.dims == 1:
        waves = path.with_name(path.stem + "-waveforms.png")
        _audio_grid(cols, ks, labels, classes, path, waves, vqvae.config.sample_rate or 16000)
        return [path, waves]
    fig, axes = plt.subplots(len(labels), len(fractions), figsize=(1.3 * len(fractions), 1.3 * len(labels)))
    for r in range(len(labels)):
        for c, imgs in enumerate(cols):
            ax = axes[r, c]
            img = (imgs[r].numpy() + 1) / 2
            ax.imshow(np.clip(img.transpose(1, 2, 0).squeeze(-1), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"k={ks[c]}", fontsize=8)
            if c == 0 and labels[r] is not None:
                ax.set_ylabel(classes[labels[r]], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _audio_grid(cols: list[torch.Tensor], ks: list[int], labels: list[int | None], classes: list[str],
                spec_path: Path, wave_path: Path, sample_rate: int) -> None:
    """cols[c]: [rows, 1, T] waveforms in [-1, 1] decoded with ks[c] tokens."""
    logmel = LogMel(sample_rate, n_mels=64)
    T = cols[0].shape[-1]
    t = np.arange(T) / sample_rate
    for kind, path in (("spectrogram", spec_path), ("waveform", wave_path)):
        fig, axes = plt.subplots(len(labels), len(ks), figsize=(1.6 * len(ks), 0.9 * len(labels)), squeeze=False)
        for c, waves in enumerate(cols):
            feats = logmel(waves) if kind == "spectrogram" else None
            for r in range(len(labels)):
                ax = axes[r, c]
                if kind == "spectrogram":
                    ax.imshow(feats[r].numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                              extent=(0, T / sample_rate, 0, feats.shape[1]))
                else:
                    ax.plot(t, waves[r, 0].numpy(), lw=0.4, color="tab:blue")
                    ax.set_ylim(-1, 1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"k={ks[c]}", fontsize=8)
                if c == 0 and labels[r] is not None:
                    ax.set_ylabel(classes[labels[r]], fontsize=7)
        fig.suptitle(f"class-conditional samples at several k: {'log-mel spectrograms' if kind == 'spectrogram' else 'waveforms'}"
                     f" ({T / sample_rate:.2f} s at {sample_rate} Hz)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=80)  # spectrograms are noise-like and compress poorly; keep the PNG small
        plt.close(fig)
