"""The cheap rules of the model-directory contract (docs/model-format.md), run at start-up.

Pure functions of the parsed manifest and the directory: no graph is loaded or run. The full
checker (`anytime check DIR`, models/check.py) runs the same rules and the expensive ones
(graphs load and agree, dynamic batch, mixed positions, zero-fill, determinism); service/ may
not import models/ nor models/ service/, so each side keeps its own copy of these rules and
tests/models/test_check.py checks that they fail on the same broken directories.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

GRAPH_ROLES = ("prior_step_torchscript", "prior_step_onnx", "decoder_torchscript", "decoder_onnx")


@dataclass(frozen=True)
class Problem:
    rule: str  # manifest-fields | files | checksums | declared-shapes | quality-curve
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message} [rule {self.rule}]"


def _is_int(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def manifest_field_problems(manifest: dict, mf: str) -> list[Problem]:
    """Every field the service reads, with its type and the relations between them."""
    bad = []
    need = lambda ok, msg: ok or bad.append(Problem("manifest-fields", mf, f"malformed manifest: {msg}"))
    need(isinstance(manifest.get("name"), str) and manifest["name"] != "", "`name` must be a non-empty string")
    need(manifest.get("modality") in ("image", "audio"), "`modality` must be image or audio")
    D, K = manifest.get("D"), manifest.get("K")
    need(_is_int(D) and _is_int(K, 2), "`D` and `K` must be positive integers (K >= 2)")
    classes = manifest.get("classes", [])
    need(isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(set(classes)) == len(classes),
         "`classes` must be a list of distinct names")
    out = manifest.get("output")
    if need(isinstance(out, dict), "`output` is missing"):
        shape = out.get("shape")
        need(isinstance(shape, list) and len(shape) >= 1 and all(_is_int(s) for s in shape),
             "`output.shape` must be a list of positive integers")
        rng = out.get("range")
        need(isinstance(rng, list) and len(rng) == 2 and all(isinstance(r, (int, float)) for r in rng) and rng[0] < rng[1],
             "`output.range` must be [low, high]")
        if manifest.get("modality") == "audio":
            need(_is_int(out.get("sample_rate")), "audio needs `output.sample_rate`")
    prior = manifest.get("prior")
    if need(isinstance(prior, dict), "`prior` is missing"):
        need(all(_is_int(prior.get(f)) for f in ("n_layer", "n_head", "head_dim")),
             "`prior.n_layer`, `n_head`, `head_dim` must be positive integers")
        if _is_int(K, 2) and isinstance(classes, list):
            need(prior.get("start_token_base") == K, f"`prior.start_token_base` must be K = {K}")
            need(prior.get("unconditional_token") == K + len(classes),
                 f"`prior.unconditional_token` must be K + number of classes = {K + len(classes)}")
    files = manifest.get("files")
    if need(isinstance(files, dict), "`files` is missing"):
        for role, entry in files.items():
            ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)
            if need(ok, f"`files.{role}` must have `path` and `sha256`"):
                p = Path(entry["path"])
                need(not p.is_absolute() and ".." not in p.parts, f"`files.{role}.path` must stay inside the directory")
    need(isinstance(manifest.get("graphs"), dict), "`graphs` is missing")
    need(isinstance(manifest.get("quality"), dict), "`quality` is missing")
    return bad


def file_problems(manifest: dict, path: Path, roles=GRAPH_ROLES, verify_checksums: bool = True) -> list[Problem]:
    """Each role's file is present and (with verify_checksums) has the manifest's sha256."""
    bad, files = [], manifest.get("files", {})
    for role in roles:
        if role not in files:
            bad.append(Problem("files", str(path / "manifest.json"), f"file role {role} is missing from `files`"))
            continue
        f = path / files[role]["path"]
        if not f.is_file():
            bad.append(Problem("files", str(f), f"file is missing (role {role})"))
        elif verify_checksums:
            with open(f, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            if digest != files[role]["sha256"]:
                bad.append(Problem("checksums", str(f), "checksum mismatch (sha256 differs from manifest.json); the "
                                                        "file is corrupt or from another export"))
    return bad


def step_signature(n_layer: int) -> tuple[dict, dict]:
    """The step graph's inputs and outputs (name -> declared shape), in order."""
    cache, new = "float32[B,H,D,hd]", "float32[B,H,hd]"
    inputs, outputs = {"tokens": "int64[B]", "positions": "int64[B]"}, {"logits": "float32[B,K]"}
    for kind in ("k", "v"):
        inputs.update({f"{kind}_cache_{i}": cache for i in range(n_layer)})
        outputs.update({f"{kind}_new_{i}": new for i in range(n_layer)})
    return inputs, outputs


DECODER_INPUTS = {"codes": "int64[B,D]", "lengths": "int64[B]"}


def declared_shape_problems(manifest: dict, mf: str) -> list[Problem]:
    """`graphs` declares the contract's names and shapes, in order, for this many layers."""
    bad = []
    inputs, outputs = step_signature(manifest["prior"]["n_layer"])
    step, dec = manifest["graphs"].get("prior_step", {}), manifest["graphs"].get("decoder", {})
    for what, got, want in (("prior_step.inputs", step.get("inputs"), inputs),
                            ("prior_step.outputs", step.get("outputs"), outputs),
                            ("decoder.inputs", dec.get("inputs"), DECODER_INPUTS)):
        if not isinstance(got, dict) or list(got.items()) != list(want.items()):
            bad.append(Problem("declared-shapes", mf, f"`graphs.{what}` must be {want} in this order, found {got}"))
    if not isinstance(dec.get("outputs"), dict) or list(dec["outputs"]) != ["samples"]:
        bad.append(Problem("declared-shapes", mf, "`graphs.decoder.outputs` must be {samples: ...}"))
    dims = {"image": 3, "audio": 2}[manifest["modality"]]
    if len(manifest["output"]["shape"]) != dims:
        bad.append(Problem("declared-shapes", mf, f"`output.shape` of an {manifest['modality']} model has {dims} "
                                                  f"dimensions (C, H, W or 1, T), found {manifest['output']['shape']}"))
    return bad


def quality_curve_problems(manifest: dict, mf: str) -> list[Problem]:
    """A grid of k in 1..D ending at D, with quality in [0, 1], non-decreasing, 1 at k = D."""
    q, D = manifest["quality"], manifest["D"]
    ks, qs = q.get("k"), q.get("quality")
    fail = lambda msg: [Problem("quality-curve", mf, f"quality curve {msg}")]
    if not isinstance(ks, list) or not isinstance(qs, list) or not ks or len(ks) != len(qs):
        return fail("needs `quality.k` and `quality.quality`, two non-empty lists of the same length")
    if not all(_is_int(k) and k <= D for k in ks) or any(b <= a for a, b in zip(ks, ks[1:])):
        return fail(f"`k` must be increasing integers in 1..{D}")
    if ks[-1] != D:
        return fail(f"must end at k = D = {D} (found {ks[-1]})")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in qs):
        return fail("values must be finite and in [0, 1]")
    if any(b < a - 1e-9 for a, b in zip(qs, qs[1:])):
        return fail("must be non-decreasing in k (the service never values a token below zero)")
    if abs(qs[-1] - 1.0) > 1e-6:
        return fail(f"must be 1 at k = D (relative to the full-length sample), found {qs[-1]}")
    return []


def startup_problems(manifest: dict, path: Path, roles=GRAPH_ROLES, verify_checksums: bool = True) -> list[Problem]:
    """All cheap rules; later rules run only on a manifest whose fields are sound."""
    mf = str(Path(path) / "manifest.json")
    bad = manifest_field_problems(manifest, mf)
    if bad:
        return bad
    return (file_problems(manifest, Path(path), roles, verify_checksums) + declared_shape_problems(manifest, mf)
            + quality_curve_problems(manifest, mf))
