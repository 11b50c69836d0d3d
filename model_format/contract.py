"""The model-directory contract (docs/model-format.md): file roles, graph signatures and the
cheap rules, the ones that need no graph loaded or run.

Three users, one set of rules and messages: the exporter checks what it wrote
(models/export.py), `anytime check DIR` runs these before its expensive rules (models/check.py),
and the service refuses to start on a directory that breaks them (service/core/model_dir.py).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

# 2: one KV-cache input per layer (v1 took one [B, L, H, D, hd] tensor and sliced it in the graph)
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (2,)
# role -> the file name the exporter gives it (a manifest may name its files otherwise)
FILES = {
    "prior_step_torchscript": "prior_step.ts",
    "prior_step_onnx": "prior_step.onnx",
    "decoder_torchscript": "decoder.ts",
    "decoder_onnx": "decoder.onnx",
}
GRAPH_ROLES = tuple(FILES)
BACKEND_ROLES = {
    "torchscript": ("prior_step_torchscript", "decoder_torchscript"),
    "onnx": ("prior_step_onnx", "decoder_onnx"),
}
MODALITIES = {"image": 3, "audio": 2}  # modality -> dimensions of one sample (C, H, W or 1, T)
DECODER_INPUTS = {"codes": "int64[B,D]", "lengths": "int64[B]"}
DECODER_OUTPUTS = {"samples": "float32[B,C,*shape] in [0,1]"}
MAX_GUIDANCE = 20.0  # the largest guidance scale a request may ask for


def guided_logits(cond, uncond, guidance):
    """Classifier-free guidance: the conditional logits pushed away from the unconditional
    (null-label) ones, `cond + w * (cond - uncond)`. w = 0 is plain conditional sampling
    (guidance off); in the other common convention this is scale s = 1 + w applied as
    `uncond + s * (cond - uncond)`. Works on numpy arrays and torch tensors alike (w a scalar,
    or one value per row shaped to broadcast); the one definition that the models' sampler, the
    exported-graph sampler and the service use."""
    return cond + guidance * (cond - uncond)


def step_signature(n_layer: int) -> tuple[dict, dict]:
    """The step graph's inputs and outputs (name -> declared shape), in order."""
    cache, new = "float32[B,H,D,hd]", "float32[B,H,hd]"
    inputs, outputs = {"tokens": "int64[B]", "positions": "int64[B]"}, {"logits": "float32[B,K]"}
    for kind in ("k", "v"):
        inputs.update({f"{kind}_cache_{i}": cache for i in range(n_layer)})
        outputs.update({f"{kind}_new_{i}": new for i in range(n_layer)})
    return inputs, outputs


def graphs_section(n_layer: int) -> dict:
    """The manifest's `graphs`: what the step and decoder graphs take and give."""
    inputs, outputs = step_signature(n_layer)
    return {"prior_step": {"inputs": inputs, "outputs": outputs},
            "decoder": {"inputs": dict(DECODER_INPUTS), "outputs": dict(DECODER_OUTPUTS)}}


@dataclass(frozen=True)
class Problem:
    rule: str  # manifest-fields | files | checksums | declared-shapes | quality-curve
    file: str  # relative to the model directory
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message} [rule {self.rule}]"


MANIFEST = "manifest.json"


def _is_int(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def read_manifest(path: Path) -> tuple[dict, list[Problem]]:
    """(the parsed manifest.json, []) or ({}, the reason it cannot be read)."""
    mf = Path(path) / MANIFEST
    if not mf.is_file():
        return {}, [Problem("manifest-fields", MANIFEST, "manifest.json is missing")]
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [Problem("manifest-fields", MANIFEST, f"not valid JSON ({e})")]
    if not isinstance(manifest, dict):
        return {}, [Problem("manifest-fields", MANIFEST, "malformed manifest: not a JSON object")]
    return manifest, []


def manifest_field_problems(manifest: dict) -> list[Problem]:
    """The format version and every field the service reads, with its type and the relations
    between them."""
    bad = []
    need = lambda ok, msg: ok or bad.append(Problem("manifest-fields", MANIFEST, msg))
    version = manifest.get("format_version")
    need(version in SUPPORTED_FORMAT_VERSIONS,
         f"format_version {version!r} is not supported (supported: {list(SUPPORTED_FORMAT_VERSIONS)}); "
         "re-export the model with `anytime export ...`")
    malformed = lambda ok, msg: need(ok, f"malformed manifest: {msg}")
    malformed(isinstance(manifest.get("name"), str) and manifest["name"] != "", "`name` must be a non-empty string")
    malformed(manifest.get("modality") in MODALITIES, "`modality` must be image or audio")
    D, K = manifest.get("D"), manifest.get("K")
    malformed(_is_int(D) and _is_int(K, 2), "`D` and `K` must be positive integers (K >= 2)")
    classes = manifest.get("classes", [])
    malformed(isinstance(classes, list) and all(isinstance(c, str) for c in classes)
              and len(set(classes)) == len(classes), "`classes` must be a list of distinct names")
    out = manifest.get("output")
    if malformed(isinstance(out, dict), "`output` is missing"):
        shape = out.get("shape")
        malformed(isinstance(shape, list) and len(shape) >= 1 and all(_is_int(s) for s in shape),
                  "`output.shape` must be a list of positive integers")
        rng = out.get("range")
        malformed(isinstance(rng, list) and len(rng) == 2 and all(isinstance(r, (int, float)) for r in rng)
                  and rng[0] < rng[1], "`output.range` must be [low, high]")
        if manifest.get("modality") == "audio":
            malformed(_is_int(out.get("sample_rate")), "audio needs `output.sample_rate`")
    prior = manifest.get("prior")
    if malformed(isinstance(prior, dict), "`prior` is missing"):
        malformed(all(_is_int(prior.get(f)) for f in ("n_layer", "n_head", "head_dim")),
                  "`prior.n_layer`, `n_head`, `head_dim` must be positive integers")
        if _is_int(K, 2) and isinstance(classes, list):
            malformed(prior.get("start_token_base") == K, f"`prior.start_token_base` must be K = {K}")
            malformed(prior.get("unconditional_token") == K + len(classes),
                      f"`prior.unconditional_token` must be K + number of classes = {K + len(classes)}")
            if "guidance" in prior:
                bad += guidance_problems(prior["guidance"], K + len(classes), classes)
    files = manifest.get("files")
    if malformed(isinstance(files, dict), "`files` is missing"):
        for role, entry in files.items():
            ok = isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)
            if malformed(ok, f"`files.{role}` must have `path` and `sha256`"):
                p = Path(entry["path"])
                malformed(not p.is_absolute() and ".." not in p.parts, f"`files.{role}.path` must stay inside the "
                                                                       "directory")
    malformed(isinstance(manifest.get("graphs"), dict), "`graphs` is missing")
    malformed(isinstance(manifest.get("quality"), dict), "`quality` is missing")
    return bad


def guidance_problems(guidance, null_token: int, classes: list) -> list[Problem]:
    """`prior.guidance` (optional): the prior supports classifier-free guidance. Its null label
    is the unconditional start token, and the prior saw it in place of the class some fraction
    of the time in training (label dropout), so the null-label logits are a trained
    unconditional model, not noise."""
    bad = []
    malformed = lambda ok, msg: ok or bad.append(Problem("manifest-fields", MANIFEST, f"malformed manifest: {msg}"))
    if not malformed(isinstance(guidance, dict), "`prior.guidance` must be an object"):
        return bad
    malformed(len(classes) > 0, "`prior.guidance` needs classes: guidance pushes a class away from the null label")
    malformed(guidance.get("null_token") == null_token,
              f"`prior.guidance.null_token` must be the unconditional token {null_token}")
    drop = guidance.get("label_dropout")
    malformed(isinstance(drop, (int, float)) and not isinstance(drop, bool) and 0 < drop < 1,
              "`prior.guidance.label_dropout` must be in (0, 1): the fraction of training rows with the null label")
    if "default" in guidance:
        d = guidance["default"]
        malformed(isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d <= MAX_GUIDANCE,
                  f"`prior.guidance.default` must be a number in [0, {MAX_GUIDANCE}]")
    if "quality" in guidance:
        bad += guided_quality_problems(guidance["quality"])
    return bad


def guided_quality_problems(section) -> list[Problem]:
    """`prior.guidance.quality` (optional): labelled samples' quality over k, one curve per
    guidance value, on one scale; the service prices guidance against tokens with it."""
    bad = []
    malformed = lambda ok, msg: ok or bad.append(Problem("manifest-fields", MANIFEST, f"malformed manifest: {msg}"))
    where = "`prior.guidance.quality`"
    if not malformed(isinstance(section, dict), f"{where} must be an object"):
        return bad
    ks, ws, qs = section.get("k"), section.get("guidance"), section.get("quality")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if not malformed(isinstance(ks, list) and ks and all(isinstance(k, int) and k > 0 for k in ks)
                     and ks == sorted(set(ks)), f"{where}.k must be ascending positive token counts"):
        return bad
    if not malformed(isinstance(ws, list) and ws and all(number(w) and 0 <= w <= MAX_GUIDANCE for w in ws)
                     and len(set(ws)) == len(ws), f"{where}.guidance must be distinct numbers in [0, {MAX_GUIDANCE}]"):
        return bad
    malformed(isinstance(qs, list) and len(qs) == len(ws) and all(
        isinstance(q, list) and len(q) == len(ks) and all(number(v) and 0 <= v <= 1 for v in q) for q in qs),
        f"{where}.quality must hold one curve per guidance value, one number in [0, 1] per k")
    return bad


def _checked_files(manifest: dict, roles, every_listed: bool) -> dict[str, dict]:
    files = manifest["files"]
    return dict(files) if every_listed else {r: files[r] for r in roles if r in files}


def missing_file_problems(manifest: dict, path: Path, roles=GRAPH_ROLES, every_listed: bool = False) -> list[Problem]:
    """Each role is listed in `files` and its file is present (every_listed: every listed file)."""
    bad = [Problem("files", MANIFEST, f"file role {r} is missing from `files`") for r in roles
           if r not in manifest["files"]]
    return bad + [Problem("files", e["path"], f"file is missing (role {role})")
                  for role, e in _checked_files(manifest, roles, every_listed).items()
                  if not (Path(path) / e["path"]).is_file()]


def checksum_problems(manifest: dict, path: Path, roles=GRAPH_ROLES, every_listed: bool = False) -> list[Problem]:
    """Each present file (of the roles, or every listed one) has the manifest's sha256."""
    bad = []
    for e in _checked_files(manifest, roles, every_listed).values():
        f = Path(path) / e["path"]
        if f.is_file():
            with open(f, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != e["sha256"]:
                    bad.append(Problem("checksums", e["path"], "checksum mismatch (sha256 differs from "
                                                               "manifest.json); the file is corrupt or from another export"))
    return bad


def declared_shape_problems(manifest: dict) -> list[Problem]:
    """`graphs` declares the contract's names and shapes, in order, for this many layers."""
    bad = []
    inputs, outputs = step_signature(manifest["prior"]["n_layer"])
    step, dec = manifest["graphs"].get("prior_step", {}), manifest["graphs"].get("decoder", {})
    for what, got, want in (("prior_step.inputs", step.get("inputs"), inputs),
                            ("prior_step.outputs", step.get("outputs"), outputs),
                            ("decoder.inputs", dec.get("inputs"), DECODER_INPUTS)):
        if not isinstance(got, dict) or list(got.items()) != list(want.items()):
            bad.append(Problem("declared-shapes", MANIFEST, f"`graphs.{what}` must be {want} in this order, "
                                                            f"found {got}"))
    if not isinstance(dec.get("outputs"), dict) or list(dec["outputs"]) != list(DECODER_OUTPUTS):
        bad.append(Problem("declared-shapes", MANIFEST, "`graphs.decoder.outputs` must be {samples: ...}"))
    dims = MODALITIES[manifest["modality"]]
    if len(manifest["output"]["shape"]) != dims:
        bad.append(Problem("declared-shapes", MANIFEST, f"`output.shape` of an {manifest['modality']} model has "
                                                        f"{dims} dimensions (C, H, W or 1, T), found "
                                                        f"{manifest['output']['shape']}"))
    return bad


def quality_curve_problems(manifest: dict) -> list[Problem]:
    """A grid of k in 1..D ending at D, with quality in [0, 1], non-decreasing, 1 at k = D."""
    q, D = manifest["quality"], manifest["D"]
    ks, qs = q.get("k"), q.get("quality")
    fail = lambda msg: [Problem("quality-curve", MANIFEST, f"quality curve {msg}")]
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


def cheap_problems(manifest: dict, path: Path, roles=GRAPH_ROLES, verify_checksums: bool = True) -> list[Problem]:
    """All cheap rules for the files of `roles`; the later rules run only on a manifest whose
    fields are sound."""
    bad = manifest_field_problems(manifest)
    if bad:
        return bad
    return (missing_file_problems(manifest, path, roles)
            + (checksum_problems(manifest, path, roles) if verify_checksums else [])
            + declared_shape_problems(manifest) + quality_curve_problems(manifest))
