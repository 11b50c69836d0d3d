"""Reading an exported model directory: manifest, checksums, quality curve.

The directory format is the contract with `models/` (docs/model-format.md); nothing here
imports model code.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .model_checks import startup_problems

SUPPORTED_FORMAT_VERSIONS = {2}
REQUIRED_FILES = {
    "torchscript": ("prior_step_torchscript", "decoder_torchscript"),
    "onnx": ("prior_step_onnx", "decoder_onnx"),
}


class ModelDirError(RuntimeError):
    """A model directory that cannot be served; the message names the file and the problem."""


@dataclass
class ModelSpec:
    name: str
    path: Path
    manifest: dict
    modality: str
    D: int
    K: int
    classes: list[str]
    n_layer: int
    n_head: int
    head_dim: int
    start_token_base: int
    unconditional_token: int
    quality_k: np.ndarray = field(repr=False)  # [D + 1] quality estimate for k = 0..D
    sample_rate: int | None = None
    output_shape: tuple[int, ...] = ()

    def file(self, role: str) -> Path:
        return self.path / self.manifest["files"][role]["path"]

    def quality(self, k: int) -> float:
        return float(self.quality_k[max(0, min(self.D, k))])

    def label_index(self, label: str | int | None) -> int | None:
        """Class index for a label name or index; KeyError when the model has no such class."""
        if label is None:
            return None
        if isinstance(label, int) and not isinstance(label, bool):
            if 0 <= label < len(self.classes):
                return label
            raise KeyError(f"label index {label} out of range: model {self.name!r} has {len(self.classes)} classes")
        text = str(label).strip().lower()
        for i, c in enumerate(self.classes):
            if c.lower() == text:
                return i
        raise KeyError(f"unknown label {label!r} for model {self.name!r}; classes: {', '.join(self.classes) or 'none'}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quality_table(curve: dict, D: int) -> np.ndarray:
    """Piecewise-linear quality for every k in 0..D from the manifest's grid (q(0) = 0),
    made non-decreasing so that a token is never worth less than nothing."""
    ks = np.asarray([0] + list(curve["k"]), dtype=np.float64)
    qs = np.asarray([0.0] + list(curve["quality"]), dtype=np.float64)
    table = np.interp(np.arange(D + 1), ks, qs)
    return np.maximum.accumulate(np.clip(table, 0.0, 1.0))


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
    if version == 1:
        raise ModelDirError(f"{mf}: format_version 1 is no longer supported (format 2 takes one KV-cache input per "
                            f"layer); re-export the model with `anytime export ...`, or convert this directory in "
                            f"place with `anytime migrate {path}`")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelDirError(f"{mf}: format_version {version!r} is not supported (supported: {sorted(SUPPORTED_FORMAT_VERSIONS)})")
    if backend not in REQUIRED_FILES:
        raise ModelDirError(f"unknown backend {backend!r}; choose torchscript or onnx")
    try:
        problems = startup_problems(manifest, path, REQUIRED_FILES[backend], verify_checksums=verify)
        if problems:  # the contract's cheap rules (service/model_checks.py), each naming its file
            raise ModelDirError("; ".join(map(str, problems)))
        prior = manifest["prior"]
        D, K = int(manifest["D"]), int(manifest["K"])
        out = manifest.get("output", {})
        return ModelSpec(
            name=manifest["name"], path=path, manifest=manifest, modality=manifest["modality"], D=D, K=K,
            classes=list(manifest.get("classes", [])), n_layer=int(prior["n_layer"]), n_head=int(prior["n_head"]),
            head_dim=int(prior["head_dim"]), start_token_base=int(prior["start_token_base"]),
            unconditional_token=int(prior["unconditional_token"]), quality_k=quality_table(manifest["quality"], D),
            sample_rate=out.get("sample_rate"), output_shape=tuple(out.get("shape", ())),
        )
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
