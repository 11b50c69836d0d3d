"""Training checkpoints recovered from an exported model directory: its graphs carry the weights.

The v1 fashion-mnist zoo was exported while the decoder graph still held the whole OVQ-VAE
(`model.encoder`, `model.decoder`, `model.quantizer`), so its encoder and codebook, and the
prior (from the step graph, attention scale unfolded), come back exactly. Zoo v2 trains on them
(the same prior trained further; optionally a wider decoder on the same codes): the v1 runs/
folder is gone. Zoo v2's own decoder graph holds only the decoder, so `make zoo-v2` recovers from
v1's zoo as committed (the Makefile's V1_ZOO_REV, extracted to runs/fashion-mnist-v2/v1-zoo):

    anytime recover runs/fashion-mnist-v2/v1-zoo --vqvae runs/fashion-mnist-v2/v1_vqvae.pt \
        --prior runs/fashion-mnist-v2/v1_prior.pt
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .ovqvae import OVQVAE
from .presets import ovqvae_config
from .prior import Prior, PriorConfig


def prior_config(manifest: dict) -> PriorConfig:
    p = manifest["prior"]
    return PriorConfig(D=int(manifest["D"]), K=int(manifest["K"]),
                       num_classes=int(p["unconditional_token"]) - int(p["start_token_base"]),
                       n_layer=int(p["n_layer"]), n_head=int(p["n_head"]), d_model=int(p["d_model"]), dropout=0.0)


def prior_from_step_graph(path: Path, config: PriorConfig) -> Prior:
    """The eager prior whose weights a TorchScript step graph carries (under `prior.`)."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    weights = {k.removeprefix("prior."): v for k, v in state.items() if k.startswith("prior.")}
    weights.pop("slot_ids", None)  # a non-persistent buffer, which TorchScript saves too
    prior = Prior(config)
    try:
        prior.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the manifest's prior {config}: {e}") from None
    return prior.eval()


def ovqvae_from_decoder_graph(path: Path, preset: str, decoder_only: bool = False) -> OVQVAE:
    """The whole OVQ-VAE from a decoder graph that carries it under `model.` (v1 exports).
    decoder_only: from a later graph (decoder and codebook only), the decoder and codebook; the
    encoder keeps its random initial weights, so the checkpoint serves to export, to sample and
    decode (loudness matching), never to encode or train on."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    prefixes = ("model.", "decoder.", "quantizer.") if decoder_only else ("model.",)
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith(prefixes)}
    if not decoder_only and not any(k.startswith("encoder.") for k in weights):
        raise ValueError(f"{path}: this decoder graph carries no encoder weights; nothing to recover "
                         "(--decoder-only recovers its decoder and codebook)")
    model = OVQVAE(ovqvae_config(preset))
    missing, unexpected = model.load_state_dict(weights, strict=not decoder_only)
    if decoder_only and (unexpected or any(not k.startswith("encoder.") for k in missing)):
        raise ValueError(f"{path}: weights do not fit preset {preset!r} (missing {missing}, unexpected {unexpected})")
    return model.eval()


def unfold_attention_scale(prior) -> None:
    """Undo models.prior.fold_attention_scale in place (the exported step carries the scale in
    the query weights; training's full pass applies it itself)."""
    with torch.no_grad():
        for b in prior.blocks:
            C, scale = b.qkv.in_features, 1.0 / math.sqrt(b.head_dim)
            b.qkv.weight[:C] /= scale
            b.qkv.bias[:C] /= scale


def recover(model_dir: Path, vqvae_out: Path, prior_out: Path, preset: str, command: str,
            decoder_only: bool = False) -> dict:
    """Write both checkpoints; checks that they reproduce the directory's graphs (returns the differences).
    decoder_only: see ovqvae_from_decoder_graph."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    files = {role: model_dir / e["path"] for role, e in manifest["files"].items()}
    vq = ovqvae_from_decoder_graph(files["decoder_torchscript"], preset, decoder_only)
    pc = prior_config(manifest)
    prior = prior_from_step_graph(files["prior_step_torchscript"], pc)
    unfold_attention_scale(prior)
    # parity with the exported graphs: the decoder on random codes, the step on random rows
    g = torch.Generator().manual_seed(0)
    codes, lengths = torch.randint(0, pc.K, (4, pc.D), generator=g), torch.tensor([1, 16, 40, pc.D])
    with torch.no_grad():
        dec_ts = torch.jit.load(str(files["decoder_torchscript"]))(codes, lengths)
        dec_diff = float(((vq.decode(codes, lengths) + 1) / 2 - dec_ts).abs().max())
        from .export import example_step_inputs
        from .prior import PriorStep

        args = example_step_inputs(prior)
        step_diff = max(float((a - b).abs().max()) for a, b in
                        zip(PriorStep(prior)(*args), torch.jit.load(str(files["prior_step_torchscript"]))(*args)))
    if max(dec_diff, step_diff) > 1e-4:
        raise ValueError(f"recovered weights differ from the graphs: decoder {dec_diff:.3g}, step {step_diff:.3g}")
    prov = manifest.get("provenance", {})
    meta = {"dataset": prov.get("dataset"), "classes": manifest.get("classes", []),
            "recovered_from": str(model_dir), "command": command,
            **({"encoder": "not recovered (random weights): export and decode only"} if decoder_only else {})}
    checkpoint.save(vqvae_out, kind="ovqvae", config=vq.config.to_dict(), model=vq.state_dict(),
                    history=prov.get("vqvae_history"), epoch=0, stage="ordered", meta=meta)
    checkpoint.save(prior_out, kind="prior", config=pc.to_dict(), model=prior.state_dict(),
                    history=prov.get("prior_history"), epoch=0, meta=meta)
    return {"decoder_max_abs_diff": dec_diff, "step_max_abs_diff": step_diff}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "recover":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="anytime recover", description="training checkpoints from an exported directory")
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--preset", default="fashion-mnist", help="the OVQ-VAE preset the directory was trained with")
    ap.add_argument("--vqvae", type=Path, required=True)
    ap.add_argument("--prior", type=Path, required=True)
    ap.add_argument("--decoder-only", action="store_true",
                    help="a graph without the encoder (exports after v1): recover decoder, codebook and prior")
    a = ap.parse_args(argv)
    diffs = recover(a.model_dir, a.vqvae, a.prior, a.preset, "anytime recover " + shlex.join(argv), a.decoder_only)
    print(f"{a.vqvae}, {a.prior}: reproduce the graphs within {diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
