"""Convert an exported model directory to the current format in place: `anytime migrate DIR`.

Format 1 -> 2 changed only the prior step graph (one KV-cache input per layer instead of one
[B, L, H, D, hd] tensor). No training checkpoint is needed: the prior's weights are read back
from the directory's own TorchScript step graph (its state dict is the prior's, under `prior.`)
and its architecture from manifest.json. Only prior_step.ts, prior_step.onnx and the manifest's
`format_version`, their sha256 and the step graph's description change; the decoder, the
quality curve and the provenance stay as they are (the conversion is recorded under
`migrations`). Nothing is replaced unless the new graphs give the old graph's logits and keys /
values on the same inputs.

    python -m models.migrate models/zoo/fashion-mnist [--save-checkpoint runs/fashion-mnist/prior.pt]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .export import FILES, FORMAT_VERSION, export_step, sha256, step_graph_section
from .prior import Prior, PriorConfig

TOLERANCE = 1e-4  # max abs difference of logits / keys / values, old graph vs new


class MigrationError(RuntimeError):
    """The directory cannot be converted; nothing in it was changed."""


def prior_config(manifest: dict) -> PriorConfig:
    p = manifest["prior"]
    return PriorConfig(D=int(manifest["D"]), K=int(manifest["K"]),
                       num_classes=int(p["unconditional_token"]) - int(p["start_token_base"]),
                       n_layer=int(p["n_layer"]), n_head=int(p["n_head"]), d_model=int(p["d_model"]), dropout=0.0)


def prior_from_step_graph(path: Path, config: PriorConfig) -> Prior:
    """The eager prior whose weights a format-1 TorchScript step graph carries."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    weights = {k.removeprefix("prior."): v for k, v in state.items() if k.startswith("prior.")}
    weights.pop("slot_ids", None)  # a non-persistent buffer, which TorchScript saves too
    prior = Prior(config)
    try:
        prior.load_state_dict(weights)
    except RuntimeError as e:
        raise MigrationError(f"{path}: weights do not fit the manifest's prior {config}: {e}") from None
    return prior.eval()


def _v1_inputs(config: PriorConfig, batch: int, seed: int):
    """Random format-1 step inputs: rows at random positions (the first at 0 with a start token,
    the last at D-1) over random caches."""
    g = torch.Generator().manual_seed(seed)
    c = config
    shape = (batch, c.n_layer, c.n_head, c.D, c.head_dim)
    kc, vc = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    positions = torch.randint(0, c.D, (batch,), generator=g)
    positions[-1], positions[0] = c.D - 1, 0
    tokens = torch.randint(0, c.K, (batch,), generator=g)
    starts = torch.randint(c.K, c.vocab_in, (batch,), generator=g)  # class-conditional or unconditional
    tokens = torch.where(positions == 0, starts, tokens)
    return tokens, positions, kc, vc


def check_parity(old_ts: Path, new_dir: Path, config: PriorConfig, batches=(1, 7, 64)) -> dict[str, float]:
    """Max abs difference of the new TorchScript and ONNX step graphs from the old format-1 graph."""
    import onnxruntime as ort

    old = torch.jit.load(str(old_ts), map_location="cpu").eval()
    new_ts = torch.jit.load(str(new_dir / FILES["prior_step_torchscript"]), map_location="cpu").eval()
    sess = ort.InferenceSession(str(new_dir / FILES["prior_step_onnx"]), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    L = config.n_layer
    worst = {"torchscript": 0.0, "onnx": 0.0}
    for seed, B in enumerate(batches):
        tokens, positions, kc, vc = _v1_inputs(config, B, seed)
        args = (tokens, positions, *kc.unbind(1), *vc.unbind(1))
        args = tuple(a.contiguous() for a in args)
        with torch.inference_mode():
            logits, k_new, v_new = old(tokens, positions, kc, vc)
            want = [logits, *k_new.unbind(1), *v_new.unbind(1)]
            got_ts = new_ts(*args)
        got_ort = sess.run(None, dict(zip(names, (a.numpy() for a in args))))
        for backend, got in (("torchscript", [g.numpy() for g in got_ts]), ("onnx", got_ort)):
            diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
            worst[backend] = max(worst[backend], diff)
    return worst


def migrate(model_dir: Path, save_checkpoint: Path | None = None, command: str = "") -> dict:
    """Rewrite a format-1 directory's step graphs in format 2; returns the new manifest."""
    model_dir = Path(model_dir)
    mf = model_dir / "manifest.json"
    manifest = json.loads(mf.read_text())
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        raise MigrationError(f"{mf}: already format_version {FORMAT_VERSION}; nothing to do")
    if version != 1:
        raise MigrationError(f"{mf}: format_version {version!r} cannot be migrated (only 1 -> {FORMAT_VERSION})")
    config = prior_config(manifest)
    old_ts = model_dir / manifest["files"]["prior_step_torchscript"]["path"]
    if sha256(old_ts) != manifest["files"]["prior_step_torchscript"]["sha256"]:
        raise MigrationError(f"{old_ts}: checksum mismatch with manifest.json; refusing to migrate a modified graph")
    prior = prior_from_step_graph(old_ts, config)
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".migrate-") as tmp:
        tmp = Path(tmp)
        export_step(prior, tmp)
        diffs = check_parity(old_ts, tmp, config)
        if max(diffs.values()) > TOLERANCE:
            raise MigrationError(f"{model_dir}: the re-exported step differs from the old one by {diffs} "
                                 f"(> {TOLERANCE}); nothing was changed")
        for role in ("prior_step_torchscript", "prior_step_onnx"):
            manifest["files"][role] = {"path": FILES[role], "sha256": sha256(tmp / FILES[role])}
            os.replace(tmp / FILES[role], model_dir / FILES[role])
    manifest["format_version"] = FORMAT_VERSION
    manifest.setdefault("graphs", {})["prior_step"] = step_graph_section(config.n_layer)
    manifest.setdefault("migrations", []).append({
        "from_format_version": version, "to_format_version": FORMAT_VERSION, "command": command,
        "weights_from": f"{old_ts.name} (format {version})", "max_abs_diff_vs_old_step": diffs,
        "commit": checkpoint.git_commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
    })
    tmp_mf = mf.with_suffix(".json.tmp")
    tmp_mf.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp_mf, mf)
    if save_checkpoint:
        prov = manifest.get("provenance", {})
        checkpoint.save(save_checkpoint, kind="prior", config=config.to_dict(), model=prior.state_dict(),
                        history=prov.get("prior_history"),
                        meta={"command": prov.get("prior_command"), "dataset": prov.get("dataset"),
                              "classes": manifest.get("classes", []),
                              "recovered_from": f"{old_ts} by `{command}`"})
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "migrate":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="anytime migrate",
                                 description=f"convert exported model directories to format {FORMAT_VERSION} in place")
    ap.add_argument("model_dirs", type=Path, nargs="+")
    ap.add_argument("--save-checkpoint", type=Path, default=None,
                    help="also write the recovered prior as a training checkpoint (one model directory only)")
    a = ap.parse_args(argv)
    if a.save_checkpoint and len(a.model_dirs) > 1:
        ap.error("--save-checkpoint takes one model directory")
    command = "anytime migrate " + shlex.join(argv)
    status = 0
    for d in a.model_dirs:
        try:
            m = migrate(d, a.save_checkpoint, command)
        except (MigrationError, OSError, KeyError, json.JSONDecodeError) as e:
            print(f"anytime migrate: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{d}: format_version {m['format_version']}, step graphs within "
              f"{m['migrations'][-1]['max_abs_diff_vs_old_step']} of the old one")
    return status


if __name__ == "__main__":
    sys.exit(main())
