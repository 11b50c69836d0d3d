"""Export a trained pipeline to the model directory the service loads (see docs/model-format.md).

Writes the prior step graph and the decoder graph in TorchScript and ONNX, then
`manifest.json` with checksums, shapes, classes, the quality curve and provenance.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path

import torch

from model_format.contract import DECODER_INPUTS, DECODER_OUTPUTS, FILES, FORMAT_VERSION, cheap_problems, graphs_section

from . import checkpoint
from .ovqvae import DecoderGraph
from .prior import PriorStep, empty_cache, step_input_names, step_output_names


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def example_step_inputs(prior, batch: int = 3) -> tuple:
    """(tokens, positions, k_cache_0.., v_cache_0..) in the exported step's input order."""
    c = prior.config
    kc, vc = empty_cache(c, batch)
    for t in kc + vc:
        t.normal_()
    tokens = torch.randint(0, c.K, (batch,))
    positions = torch.arange(batch) % c.D
    return (tokens, positions, *kc, *vc)


def example_decoder_inputs(vqvae, batch: int = 3):
    c = vqvae.config
    return torch.randint(0, c.K, (batch, c.D)), torch.arange(1, batch + 1) % (c.D + 1)


def _onnx(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes):
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    program.save(str(path), external_data=False)


def write_step_graph(step: torch.nn.Module, args: tuple, n_layer: int, out: Path) -> None:
    """Trace any step module (the contract's signature, batch dynamic) to TorchScript and ONNX."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    # forward(tokens, positions, *caches): the caches are one tuple argument for torch.export
    shapes = ({0: batch}, {0: batch}, tuple({0: batch} for _ in range(2 * n_layer)))
    with torch.no_grad():
        torch.jit.trace(step, args, check_trace=False).save(str(out / FILES["prior_step_torchscript"]))
        _onnx(step, args, out / FILES["prior_step_onnx"], step_input_names(n_layer), step_output_names(n_layer), shapes)


def write_decoder_graph(decoder: torch.nn.Module, args: tuple, out: Path) -> None:
    """Trace any decoder module (codes [B, D], lengths [B] -> samples) to TorchScript and ONNX."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.jit.trace(decoder, args, check_trace=False).save(str(out / FILES["decoder_torchscript"]))
        _onnx(decoder, args, out / FILES["decoder_onnx"], list(DECODER_INPUTS), list(DECODER_OUTPUTS),
              {"codes": {0: batch}, "lengths": {0: batch}})


def export_step(prior, out: Path) -> None:
    """Write the prior step graph in TorchScript and ONNX (docs/model-format.md, "Prior step graph")."""
    write_step_graph(PriorStep(prior.eval()).eval(), example_step_inputs(prior), prior.config.n_layer, out)


def export_graphs(vqvae, prior, out: Path, gain: float = 1.0) -> dict[str, str]:
    """Write the four graph files into `out`; returns {role: filename}. `gain`: the decoder's
    output gain (audio loudness matching; 1 for images)."""
    out.mkdir(parents=True, exist_ok=True)
    export_step(prior, out)
    write_decoder_graph(DecoderGraph(vqvae.eval(), gain).eval(), example_decoder_inputs(vqvae), out)
    return dict(FILES)


def quality_section(evaluation: Path | None, pipeline: str, D: int) -> dict:
    """The quality curve the scheduler uses: relative quality FD(D)/FD(k) at a grid of k."""
    if evaluation is None:
        ks = list(range(1, D + 1))
        return {"metric": "token_fraction (no evaluation given)", "k": ks, "quality": [k / D for k in ks]}
    ev = json.loads(Path(evaluation).read_text())
    res = ev["pipelines"][pipeline]
    curve = res["curve"]
    return {
        "metric": "relative quality FD(D)/FD(k), Frechet distance in the shipped classifier's features",
        "k": [r["k"] for r in curve],
        "quality": res["quality"],
        "frechet": [r["frechet"] for r in curve],
        "mse": [r["mse"] for r in curve],
        "label_accuracy": [r["label_accuracy"] for r in curve],
        "evaluation_command": ev.get("command"),
        "evaluation_date": ev.get("date"),
    }


def guided_quality(evaluation: Path | None, pipeline: str) -> dict | None:
    """`prior.guidance.quality` from the evaluation's guided curves (models/evaluate.py
    guided_curves), or None when it measured none: the worth of a class-balanced conditional
    sample at k tokens and guidance w, on one scale over the whole grid, so that the server can
    weigh fewer tokens against less guidance (service/core/guidance_pricing.py). A labelled
    sample is worth its fidelity only when it shows the label asked for, so the worth is
    (FD_min / FD(k, w)) * (acc(k, w) / acc_max): FD_min and acc_max the best of the grid. On FD
    alone, guidance that sharpens the label but costs a little FD would never be chosen."""
    if evaluation is None:
        return None
    guided = json.loads(Path(evaluation).read_text())["pipelines"][pipeline].get("guided")
    if not guided:
        return None
    rows = [r for g in guided for r in g["curve"]]
    best_fd = min(r["frechet"] for r in rows)
    accs = [r["label_accuracy"] for r in rows if r.get("label_accuracy") is not None]
    best_acc = max(accs) if accs else None
    label_weight = lambda r: 1.0 if not best_acc or r.get("label_accuracy") is None else r["label_accuracy"] / best_acc
    return {"metric": "worth of class-balanced conditional samples: relative quality FD_min/FD(k, w) times relative "
                      "label accuracy acc(k, w)/acc_max (Frechet distance and accuracy of the shipped classifier; "
                      "FD_min, acc_max: the best of the grid)",
            "k": [r["k"] for r in guided[0]["curve"]], "guidance": [float(g["guidance"]) for g in guided],
            "quality": [[min(1.0, best_fd / r["frechet"]) * label_weight(r) for r in g["curve"]] for g in guided],
            "frechet": [[r["frechet"] for r in g["curve"]] for g in guided],
            "label_accuracy": [[r["label_accuracy"] for r in g["curve"]] for g in guided]}


def best_guidance(quality: dict | None) -> float | None:
    """The guidance whose full-length sample is worth the most by guided_quality's curves (the
    default an "auto" request gets when the server has tokens to spare); None without curves."""
    if not quality:
        return None
    worth = [q[-1] for q in quality["quality"]]
    return float(quality["guidance"][max(range(len(worth)), key=worth.__getitem__)])


def guidance_section(K: int, classes: list[str], label_dropout: float | None, default: float | None,
                     quality: dict | None = None) -> dict | None:
    """The manifest's `prior.guidance`, or None: a prior supports classifier-free guidance when it
    has classes and was trained with label dropout (its null-label logits are then a trained
    unconditional model). `default`: the guidance the server uses for `guidance: "auto"`;
    `quality`: guided_quality's curves."""
    if not classes or not label_dropout:
        return None
    section = {"null_token": K + len(classes), "label_dropout": float(label_dropout)}
    if default is not None:
        section["default"] = float(default)
    if quality is not None:
        section["quality"] = quality
    return section


def write_manifest(out: Path, *, name: str, modality: str, D: int, K: int, output: dict, classes: list[str],
                   prior: dict, files: dict[str, str], quality: dict, provenance: dict,
                   guidance: dict | None = None) -> dict:
    """Write manifest.json for the graph files in `out` (role -> file name); returns the manifest.
    `prior` holds n_layer, n_head, head_dim, d_model; the start-token ids follow from K and classes;
    `guidance` from guidance_section (None: the prior does not support guidance)."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "modality": modality,
        "D": D,
        "K": K,
        "output": output,
        "classes": list(classes),
        "prior": {**prior, "start_token_base": K, "unconditional_token": K + len(classes),
                  **({"guidance": guidance} if guidance else {})},
        "graphs": graphs_section(prior["n_layer"]),
        "files": {role: {"path": fn, "sha256": sha256(out / fn)} for role, fn in files.items()},
        "quality": quality,
        "provenance": {**provenance, "commit": checkpoint.git_commit(),
                       "exported": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    problems = cheap_problems(manifest, out)  # what the service would refuse at start-up
    if problems:
        raise ValueError(f"{out}: the export breaks the model-directory contract: " + "; ".join(map(str, problems)))
    return manifest


def export_model(name: str, vqvae_path: Path, prior_path: Path, out: Path, evaluation: Path | None = None,
                 pipeline: str = "ordered", command: str = "", extra_files: dict[str, Path] | None = None,
                 label_dropout: float | None = None, guidance_default: float | str | None = None,
                 loudness_reference=None) -> dict:
    """label_dropout: the prior's training label dropout, for a checkpoint that predates recording
    it (default: the checkpoint's). guidance_default: the manifest's guidance for "auto" requests;
    "best": the guidance worth the most at full length by the evaluation's guided curves.
    loudness_reference: audio clips [N, 1, T] in [-1, 1] (the training split) whose loudness the
    exported decoder matches (models/loudness.py)."""
    vqvae, vq_ck = checkpoint.load_ovqvae(vqvae_path)
    prior, pr_ck = checkpoint.load_prior(prior_path)
    vc, pc = vqvae.config, prior.config
    if (vc.D, vc.K) != (pc.D, pc.K):
        raise ValueError(f"prior (D={pc.D}, K={pc.K}) does not match the OVQ-VAE (D={vc.D}, K={vc.K})")
    gain, loudness = 1.0, None
    if loudness_reference is not None and vc.dims == 1:
        from .loudness import match_loudness

        gain, loudness = match_loudness(vqvae, prior, loudness_reference)
    files = export_graphs(vqvae, prior, out, gain=gain)
    for role, src in (extra_files or {}).items():
        shutil.copyfile(src, out / Path(src).name)
        files[role] = Path(src).name
    meta = pr_ck.get("meta", {})
    dropout = label_dropout if label_dropout is not None else pr_ck.get("label_dropout")
    classes = list(meta.get("classes", []))[: pc.num_classes]
    output = {"shape": [vc.in_channels, *vc.input_shape], "range": [0.0, 1.0]}
    if vc.dims == 1:
        output["sample_rate"] = vc.sample_rate or 16000
    if loudness is not None:
        output["loudness"] = loudness
    prior_section = {"n_layer": pc.n_layer, "n_head": pc.n_head, "head_dim": pc.head_dim, "d_model": pc.d_model}
    provenance = {
        "dataset": meta.get("dataset"),
        "vqvae_command": vq_ck.get("meta", {}).get("command"),
        "vqvae_history": vq_ck.get("history"),
        "prior_command": meta.get("command"),
        "prior_history": pr_ck.get("history"),
        "export_command": command,
    }
    guided = guided_quality(evaluation, pipeline)
    if guidance_default == "best":
        guidance_default = best_guidance(guided)
        if guidance_default is None:
            raise ValueError("--guidance-default best needs an evaluation with guided curves (evaluate --guidance)")
    manifest = write_manifest(out, name=name, modality="image" if vc.dims == 2 else "audio", D=vc.D, K=vc.K,
                              output=output, classes=classes, prior=prior_section, files=files,
                              quality=quality_section(evaluation, pipeline, vc.D), provenance=provenance,
                              guidance=guidance_section(vc.K, classes, dropout, guidance_default, guided))
    return manifest
