"""Reading an exported model directory: manifest, checksums, quality curve.

The directory format is the contract with `models/` (docs/model-format.md); its rules live in
model_format.contract, which the exporter and `anytime check` use too. Nothing here imports
model code.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from model_format.contract import BACKEND_ROLES, cheap_problems, read_manifest

from ..catalog import ModelCard


# backend -> the package that runs it and the install that brings it (pyproject.toml's extras)
BACKEND_PACKAGES = {
    "onnx": ("onnxruntime", "pip install 'anytime[cpu]' (or 'anytime[gpu]' for CUDA)"),
    "torchscript": ("torch", "pip install 'anytime[torch]'"),
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
    """The directory as the engine core serves it with `backend`; ModelDirError naming the file
    and the rule when it breaks the contract's cheap rules (verify: checksums too)."""
    path = Path(path)
    if backend not in BACKEND_ROLES:
        raise ModelDirError(f"unknown backend {backend!r}; choose torchscript or onnx")
    package, install = BACKEND_PACKAGES[backend]
    if importlib.util.find_spec(package) is None:  # the base install names no runtime (pyproject.toml)
        raise ModelDirError(f"the {backend} backend needs the {package} package, which is not installed: {install}")
    manifest, problems = read_manifest(path)
    if not problems:
        problems = cheap_problems(manifest, path, BACKEND_ROLES[backend], verify_checksums=verify)
    if problems:
        raise ModelDirError("; ".join(f"{path / p.file}: {p.message} [rule {p.rule}]" for p in problems))
    try:
        prior = manifest["prior"]
        card = ModelCard.from_manifest(manifest, backend)
        return ModelSpec(**vars(card), path=path, n_layer=int(prior["n_layer"]), n_head=int(prior["n_head"]),
                         head_dim=int(prior["head_dim"]), start_token_base=int(prior["start_token_base"]),
                         unconditional_token=int(prior["unconditional_token"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{path / 'manifest.json'}: malformed manifest ({type(e).__name__}: {e})") from None


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
