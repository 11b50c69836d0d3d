"""What every process knows of a served model: the facts of its manifest that validation,
encoding and budgets need, and its quality curve. Built from the manifest alone, so the
frontend learns the models from the engine core without loading any graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def quality_table(curve: dict, D: int) -> np.ndarray:
    """Piecewise-linear quality for every k in 0..D from the manifest's grid (q(0) = 0),
    made non-decreasing so that a token is never worth less than nothing."""
    ks = np.asarray([0] + list(curve["k"]), dtype=np.float64)
    qs = np.asarray([0.0] + list(curve["quality"]), dtype=np.float64)
    table = np.interp(np.arange(D + 1), ks, qs)
    return np.maximum.accumulate(np.clip(table, 0.0, 1.0))


def guided_quality_tables(section: dict | None, D: int) -> tuple[np.ndarray, np.ndarray] | None:
    """prior.guidance.quality: the guidance values of its grid, ascending, and one quality table
    per value ([W, D + 1]); None when the manifest measured no guided curves."""
    if not section:
        return None
    ws = np.asarray(section["guidance"], dtype=np.float64)
    tables = np.stack([quality_table({"k": section["k"], "quality": q}, D) for q in section["quality"]])
    order = np.argsort(ws)
    return ws[order], tables[order]


@dataclass(kw_only=True)
class ModelCard:
    name: str
    manifest: dict = field(repr=False)
    modality: str
    D: int
    K: int
    classes: list[str]
    quality_k: np.ndarray = field(repr=False)  # [D + 1] quality estimate for k = 0..D
    sample_rate: int | None = None
    output_shape: tuple[int, ...] = ()
    backend: str = ""
    device: str = ""
    # classifier-free guidance (manifest prior.guidance): None when the prior does not support it;
    # else the guidance an "auto" request gets from this model (None: the server's default)
    guidance: dict | None = None
    # quality of labelled samples over k for each measured guidance (prior.guidance.quality): what
    # the engine core prices guidance with; None: not measured, "auto" is the default guidance
    guided_quality_k: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_manifest(cls, manifest: dict, backend: str = "", device: str = "") -> "ModelCard":
        """KeyError/TypeError/ValueError on a malformed manifest (the model directory reader
        turns those into a message naming the file)."""
        D = int(manifest["D"])
        out = manifest.get("output", {})
        guidance = manifest.get("prior", {}).get("guidance")
        return cls(name=manifest["name"], manifest=manifest, modality=manifest["modality"], D=D,
                   K=int(manifest["K"]), classes=list(manifest.get("classes", [])),
                   quality_k=quality_table(manifest["quality"], D), sample_rate=out.get("sample_rate"),
                   output_shape=tuple(out.get("shape", ())), backend=backend, device=device,
                   guidance=dict(guidance) if guidance else None,
                   guided_quality_k=guided_quality_tables((guidance or {}).get("quality"), D))

    def wire(self) -> dict:
        """What the engine core sends a frontend about this model."""
        return {"manifest": self.manifest, "backend": self.backend, "device": self.device}

    def quality(self, k: int, guidance: float | None = None) -> float:
        """The quality estimate of a sample stopped at k tokens. `guidance`: a labelled sample
        drawn with that guidance (interpolated between the measured ones), when the manifest
        measured guided curves; None, or no such curves: the manifest's own curve."""
        k = max(0, min(self.D, k))
        if guidance is None or self.guided_quality_k is None:
            return float(self.quality_k[k])
        ws, tables = self.guided_quality_k
        return float(np.interp(guidance, ws, tables[:, k]))

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
