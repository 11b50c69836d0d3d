"""Checkpoints that carry their own config, so every later stage rebuilds from the file alone.

Loading uses `torch.load(weights_only=True)`: nothing is ever unpickled.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save(path: str | Path, **payload) -> None:
    """Write atomically (tmp file + rename) so an interrupted run never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | Path, map_location="cpu") -> dict:
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def load_ovqvae(path: str | Path, map_location="cpu"):
    from .ovqvae import OVQVAE, OVQVAEConfig

    ck = load(path, map_location)
    model = OVQVAE(OVQVAEConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval(), ck


def load_prior(path: str | Path, map_location="cpu"):
    from .prior import Prior, PriorConfig

    ck = load(path, map_location)
    model = Prior(PriorConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval(), ck
