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

from . import checkpoint
from .ovqvae import DecoderGraph
from .prior import PriorStep, empty_cache

FORMAT_VERSION = 1
FILES = {
    "prior_step_torchscript": "prior_step.ts",
    "prior_step_onnx": "prior_step.onnx",
    "decoder_torchscript": "decoder.ts",
    "decoder_onnx": "decoder.onnx",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def example_step_inputs(prior, batch: int = 3):
    c = prior.config
    kc, vc = empty_cache(c, batch)
    kc.normal_()
    vc.normal_()
    tokens = torch.randint(0, c.K, (batch,))
    positions = torch.arange(batch) % c.D
    return tokens, positions, kc, vc


def example_decoder_inputs(vqvae, batch: int = 3):
    c = vqvae.config
    return torch.randint(0, c.K, (batch, c.D)), torch.arange(1, batch + 1) % (c.D + 1)


def _onnx(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_batch_inputs):
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {n: {0: batch} for n in dynamic_batch_inputs}
    program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                dynamic_shapes=shapes, optimize=True, verbose=False)
    program.save(str(path), external_data=False)


def export_graphs(vqvae, prior, out: Path) -> dict[str, str]:
    """Write the four graph files into `out`; returns {role: filename}."""
    out.mkdir(parents=True, exist_ok=True)
    step = PriorStep(prior.eval()).eval()
    dec = DecoderGraph(vqvae.eval()).eval()
    step_args = example_step_inputs(prior)
    dec_args = example_decoder_inputs(vqvae)
    with torch.no_grad():
        torch.jit.trace(step, step_args, check_trace=False).save(str(out / FILES["prior_step_torchscript"]))
        torch.jit.trace(dec, dec_args, check_trace=False).save(str(out / FILES["decoder_torchscript"]))
        _onnx(step, step_args, out / FILES["prior_step_onnx"], ["tokens", "positions", "k_cache", "v_cache"],
              ["logits", "k_new", "v_new"], ["tokens", "positions", "k_cache", "v_cache"])
        _onnx(dec, dec_args, out / FILES["decoder_onnx"], ["codes", "lengths"], ["samples"], ["codes", "lengths"])
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


def export_model(name: str, vqvae_path: Path, prior_path: Path, out: Path, evaluation: Path | None = None,
                 pipeline: str = "ordered", command: str = "", extra_files: dict[str, Path] | None = None) -> dict:
    vqvae, vq_ck = checkpoint.load_ovqvae(vqvae_path)
    prior, pr_ck = checkpoint.load_prior(prior_path)
    vc, pc = vqvae.config, prior.config
    if (vc.D, vc.K) != (pc.D, pc.K):
        raise ValueError(f"prior (D={pc.D}, K={pc.K}) does not match the OVQ-VAE (D={vc.D}, K={vc.K})")
    files = export_graphs(vqvae, prior, out)
    for role, src in (extra_files or {}).items():
        shutil.copyfile(src, out / Path(src).name)
        files[role] = Path(src).name
    meta = pr_ck.get("meta", {})
    classes = list(meta.get("classes", []))[: pc.num_classes]
    output = {"shape": [vc.in_channels, *vc.input_shape], "range": [0.0, 1.0]}
    if vc.dims == 1:
        output["sample_rate"] = vc.sample_rate or 16000
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "modality": "image" if vc.dims == 2 else "audio",
        "D": vc.D,
        "K": vc.K,
        "output": output,
        "classes": classes,
        "prior": {"n_layer": pc.n_layer, "n_head": pc.n_head, "head_dim": pc.head_dim, "d_model": pc.d_model,
                  "start_token_base": pc.K, "unconditional_token": pc.start_token(None)},
        "graphs": {
            "prior_step": {"inputs": {"tokens": "int64[B]", "positions": "int64[B]",
                                      "k_cache": "float32[B,L,H,D,hd]", "v_cache": "float32[B,L,H,D,hd]"},
                           "outputs": {"logits": "float32[B,K]", "k_new": "float32[B,L,H,hd]",
                                       "v_new": "float32[B,L,H,hd]"}},
            "decoder": {"inputs": {"codes": "int64[B,D]", "lengths": "int64[B]"},
                        "outputs": {"samples": "float32[B,C,*shape] in [0,1]"}},
        },
        "files": {role: {"path": fn, "sha256": sha256(out / fn)} for role, fn in files.items()},
        "quality": quality_section(evaluation, pipeline, vc.D),
        "provenance": {
            "dataset": meta.get("dataset"),
            "vqvae_command": vq_ck.get("meta", {}).get("command"),
            "vqvae_history": vq_ck.get("history"),
            "prior_command": meta.get("command"),
            "prior_history": pr_ck.get("history"),
            "export_command": command,
            "commit": checkpoint.git_commit(),
            "exported": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
