"""Reading an exported model directory: manifest, checksums, quality curve.

The directory format is the contract with `models/` (docs/model-format.md); nothing here
imports model code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..catalog import ModelCard
from .model_checks import startup_problems

SUPPORTED_FORMAT_VERSIONS = {2}
REQUIRED_FILES = {
    "torchscript": ("prior_step_torchscript", "decoder_torchscript"),
    "onnx": ("prior_step_onnx", "decoder_onnx"),
}


class ModelDirError(RuntimeError):
    """A model directory that cannot be served; the message names the file and the problem."""


@dataclass(kw_only=True)
class ModelSpec(ModelCard):
    """A model directory as the engine core serves it: the card plus what the runtimes need."""

    path: Path
    n_layer: int
    n_head: int
    head_dim: int
    start_token_base: int
    unconditional_token: int

    def file(self, role: str) -> Path:
        return self.path / self.manifest["files"][role]["path"]


def load_model_dir(path: Path, backend: str, verify: bool = True) -> ModelSpec:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise ModelDirError(f"{mf}: manifest.json is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelDirError(f"{mf}: not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelDirError(f"{mf}: format_version {version!r} is not supported (supported: "
                            f"{sorted(SUPPORTED_FORMAT_VERSIONS)}); re-export the model with `anytime export ...`")
    if backend not in REQUIRED_FILES:
        raise ModelDirError(f"unknown backend {backend!r}; choose torchscript or onnx")
    try:
        problems = startup_problems(manifest, path, REQUIRED_FILES[backend], verify_checksums=verify)
        if problems:  # the contract's cheap rules (service/core/model_checks.py), each naming its file
            raise ModelDirError("; ".join(map(str, problems)))
        prior = manifest["prior"]
        card = ModelCard.from_manifest(manifest, backend)
        return ModelSpec(**vars(card), path=path, n_layer=int(prior["n_layer"]), n_head=int(prior["n_head"]),
                         head_dim=int(prior["head_dim"]), start_token_base=int(prior["start_token_base"]),
                         unconditional_token=int(prior["unconditional_token"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{mf}: malformed manifest ({type(e).__name__}: {e})") from None


def discover(model_dirs: list[Path]) -> list[Path]:
    """Each path is a model directory (has manifest.json) or a zoo folder of model directories."""
    found = []
    for p in model_dirs:
        p = Path(p)
        if (p / "manifest.json").is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(d for d in p.iterdir() if (d / "manifest.json").is_file())
        else:
            raise ModelDirError(f"{p}: no such model directory")
    if not found:
        raise ModelDirError(f"no model directories (with manifest.json) under {', '.join(map(str, model_dirs))}")
    return found
