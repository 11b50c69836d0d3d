"""Factories: tiny random-weight pipelines exported exactly as the real ones are."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from models import checkpoint
from models.export import export_model
from models.ovqvae import OVQVAE, OVQVAEConfig
from models.prior import Prior, PriorConfig

CLASSES = ["zero", "one", "two"]


def tiny_configs(D: int = 8, K: int = 16):
    vc = OVQVAEConfig(dims=2, in_channels=1, input_shape=(8, 8), widths=(8,), res_blocks=1, D=D, K=K)
    pc = PriorConfig(D=D, K=K, num_classes=len(CLASSES), n_layer=2, n_head=2, d_model=16, dropout=0.0)
    return vc, pc


def write_checkpoints(folder: Path, D: int = 8, K: int = 16, seed: int = 0) -> tuple[Path, Path]:
    torch.manual_seed(seed)
    vc, pc = tiny_configs(D, K)
    vq, prior = OVQVAE(vc), Prior(pc)
    with torch.no_grad():  # sharper logits than the 0.02 init, so sampling is not uniform noise
        prior.head.weight.normal_(0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    vq_path, prior_path = folder / "vqvae.pt", folder / "prior.pt"
    checkpoint.save(vq_path, kind="ovqvae", config=vc.to_dict(), model=vq.state_dict(), meta={"command": "test"})
    checkpoint.save(prior_path, kind="prior", config=pc.to_dict(), model=prior.state_dict(),
                    meta={"command": "test", "dataset": "tiny", "classes": CLASSES})
    return vq_path, prior_path


GUIDED_BASE_FD = {0.0: 2.0, 1.5: 1.0}  # guidance w -> FD at full length: guidance halves it


def write_evaluation(path: Path, D: int, guided: bool = False) -> Path:
    """A quality curve of the usual concave shape: q(k) = 1 - (1 - k/D)^2. guided: also guided
    curves FD(k, w) = base(w) + 30 (1 - k/D)^2, so that a guided sample at half length (FD 8.5)
    is worth less than an unguided one at full length (FD 2)."""
    ks = list(range(1, D + 1))
    curve = [{"k": k, "fraction": k / D, "frechet": 1.0, "mse": 0.0, "label_accuracy": None} for k in ks]
    quality = [1 - (1 - k / D) ** 2 for k in ks]
    ordered = {"curve": curve, "quality": quality}
    if guided:
        ordered["guided"] = [{"guidance": w, "samples": 30, "curve": [
            {"k": k, "fraction": k / D, "frechet": base + 30 * (1 - k / D) ** 2, "label_accuracy": 0.5} for k in ks]}
            for w, base in GUIDED_BASE_FD.items()]
    path.write_text(json.dumps({"command": "test", "date": "", "pipelines": {"ordered": ordered}}))
    return path


def build_model_dir(root: Path, name: str = "tiny", D: int = 8, K: int = 16,
                    guidance_default: float | None = None) -> Path:
    """guidance_default: export the prior as trained with label dropout 0.1 (it supports
    classifier-free guidance), with this default for "auto" requests."""
    vq, prior = write_checkpoints(root / "ckpt", D, K)
    guided = guidance_default is not None
    ev = write_evaluation(root / "evaluation.json", D, guided)
    out = root / name
    export_model(name, vq, prior, out, evaluation=ev, command="test", label_dropout=0.1 if guided else None,
                 guidance_default=guidance_default)
    return out
