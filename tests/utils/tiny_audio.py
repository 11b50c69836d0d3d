"""Factories for the audio path: tiny signals and a tiny 1-D model exported exactly as the real one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import checkpoint
from models.export import export_model
from models.ovqvae import OVQVAE, OVQVAEConfig
from models.prior import Prior, PriorConfig
from tests.utils.tiny_model import write_evaluation

SAMPLE_RATE = 16000
CLASSES = ["low", "mid", "high"]
FREQS = [300.0, 900.0, 2700.0]  # one tone per class


def tone(freq: float, length: int = 4096, sample_rate: int = SAMPLE_RATE, phase: float = 0.0) -> np.ndarray:
    """A Hann-windowed sine burst, peak 0.9: a stand-in for a spoken word."""
    t = np.arange(length) / sample_rate
    return (0.9 * np.sin(2 * np.pi * freq * t + phase) * np.hanning(length)).astype(np.float32)


def tiny_audio_configs(D: int = 8, K: int = 16, length: int = 256):
    # the real model's layout in miniature: STFT-like first layer (kernel 32, stride 16) mirrored by
    # the inverse-STFT decoder head, then a stride-2 layer -> 8 frames per channel token
    vc = OVQVAEConfig(dims=1, in_channels=1, input_shape=(length,), widths=(8, 8), kernel=(32, 4), stride=(16, 2),
                      res_blocks=1, D=D, K=K, sample_rate=SAMPLE_RATE, decoder_head="stft")
    pc = PriorConfig(D=D, K=K, num_classes=len(CLASSES), n_layer=2, n_head=2, d_model=16, dropout=0.0)
    return vc, pc


def write_audio_checkpoints(folder: Path, D: int = 8, K: int = 16, seed: int = 0) -> tuple[Path, Path]:
    torch.manual_seed(seed)
    vc, pc = tiny_audio_configs(D, K)
    vq, prior = OVQVAE(vc), Prior(pc)
    with torch.no_grad():
        prior.head.weight.normal_(0, 0.5)
        vq.quantizer.codebook.normal_(0, 1.0)  # louder codes, so decoded signals are not near-constant
    folder.mkdir(parents=True, exist_ok=True)
    vq_path, prior_path = folder / "vqvae.pt", folder / "prior.pt"
    checkpoint.save(vq_path, kind="ovqvae", config=vc.to_dict(), model=vq.state_dict(), meta={"command": "test"})
    checkpoint.save(prior_path, kind="prior", config=pc.to_dict(), model=prior.state_dict(),
                    meta={"command": "test", "dataset": "tones", "classes": CLASSES})
    return vq_path, prior_path


def build_audio_model_dir(root: Path, name: str = "tiny-audio", D: int = 8, K: int = 16) -> Path:
    vq, prior = write_audio_checkpoints(root / "ckpt", D, K)
    ev = write_evaluation(root / "evaluation.json", D)
    out = root / name
    export_model(name, vq, prior, out, evaluation=ev, command="test")
    return out


_BUILT: dict[str, Path] = {}


def cached_audio_model_dir(tmp_path_factory) -> Path:
    """One tiny exported audio model per test run, shared by every module that asks."""
    if "dir" not in _BUILT:
        _BUILT["dir"] = build_audio_model_dir(tmp_path_factory.mktemp("audio-zoo"))
    return _BUILT["dir"]
