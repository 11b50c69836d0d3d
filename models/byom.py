"""Bring your own model: export user-defined step and decoder modules as a servable directory.

    from models.byom import export_model_dir
    export_model_dir(my_step, my_decoder, "zoo/mine", name="mine", D=32, K=256,
                     n_layer=2, n_head=4, head_dim=16, classes=["cat", "dog"], quality_data=test_images)

The modules can be anything torch.jit.trace and torch.onnx.export(dynamo=True) accept; they
only have to keep the contract of docs/model-format.md (walked through in
docs/bring-your-own-model.md):

- step: forward(tokens [B] int64, positions [B] int64, k_cache_0..k_cache_{L-1},
  v_cache_0..v_cache_{L-1} [B, H, D, hd] float32) -> (logits [B, K], k_new_0..k_new_{L-1},
  v_new_0..v_new_{L-1} [B, H, hd]). Token ids K + c start a sample of class c, K + len(classes)
  an unconditional one; cache slots at or after a row's position hold garbage and must be masked.
- decoder: forward(codes [B, D] int64, lengths [B] int64) -> samples [B, *sample_shape] in
  [0, 1], every code at or past its row's length ignored (zero-filled) inside the module.

The directory is checked with every rule of `anytime check` before this returns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from model_format.contract import FILES

from .export import write_decoder_graph, write_manifest, write_step_graph
from .quality_curve import measure_quality_curve


class StepAdapter(torch.nn.Module):
    """Gives any step module the signature the exporter traces: forward(tokens, positions, *caches)."""

    def __init__(self, step: torch.nn.Module):
        super().__init__()
        self.step = step

    def forward(self, tokens, positions, *caches):
        return tuple(self.step(tokens, positions, *caches))


class DecoderAdapter(torch.nn.Module):
    """Names the decoder's inputs `codes` and `lengths` whatever the module calls them."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, codes, lengths):
        return self.decoder(codes, lengths)


def example_inputs(D: int, K: int, n_layer: int, n_head: int, head_dim: int, batch: int = 3):
    """Step and decoder inputs to trace with (random values, the contract's dtypes and shapes)."""
    g = torch.Generator().manual_seed(0)
    caches = [torch.randn(batch, n_head, D, head_dim, generator=g) for _ in range(2 * n_layer)]
    step_args = (torch.randint(0, K, (batch,), generator=g), torch.arange(batch) % D, *caches)
    decoder_args = (torch.randint(0, K, (batch, D), generator=g), torch.arange(1, batch + 1) % (D + 1))
    return step_args, decoder_args


def _probe(step, decoder, step_args, decoder_args, K: int, n_layer: int, n_head: int, head_dim: int) -> tuple:
    """Run both modules once before tracing, so a wrong signature fails with a readable message."""
    B = len(step_args[0])
    with torch.no_grad():
        try:
            out = step(*step_args)
        except Exception as e:
            raise ValueError(f"step(tokens, positions, *{2 * n_layer} caches) raised {type(e).__name__}: {e}") from e
        try:
            samples = decoder(*decoder_args)
        except Exception as e:
            raise ValueError(f"decoder(codes, lengths) raised {type(e).__name__}: {e}") from e
    out = out if isinstance(out, (tuple, list)) else (out,)
    want = [(B, K)] + [(B, n_head, head_dim)] * (2 * n_layer)
    got = [tuple(o.shape) for o in out]
    if got != want:
        raise ValueError(f"step returned shapes {got}; the contract needs logits [B, K] then {2 * n_layer} "
                         f"keys/values [B, H, hd]: {want}")
    if not isinstance(samples, torch.Tensor) or samples.shape[0] != B:
        raise ValueError("decoder must return one tensor [B, *sample_shape]")
    return tuple(samples.shape[1:])


def _given_curve(curve, D: int) -> dict:
    if isinstance(curve, dict):
        ks, qs = list(curve["k"]), list(curve["quality"])
    else:
        ks, qs = (list(t) for t in zip(*curve))
    return {"metric": "given by the exporter", "k": [int(k) for k in ks], "quality": [float(q) for q in qs]}


def export_model_dir(step: torch.nn.Module, decoder: torch.nn.Module, out_dir: str | Path, *, name: str, D: int,
                     K: int, n_layer: int, n_head: int, head_dim: int, classes: Sequence[str] = (),
                     sample_shape: Sequence[int] | None = None, sample_rate: int | None = None,
                     quality_curve: dict | Sequence[tuple[int, float]] | None = None,
                     quality_data: np.ndarray | None = None,
                     features: Callable[[np.ndarray], np.ndarray] | None = None, quality_samples: int = 500,
                     d_model: int | None = None, provenance: dict | None = None, check: bool = True) -> dict:
    """Write step and decoder graphs (TorchScript + ONNX) and manifest.json to `out_dir`.

    sample_shape: per-sample output shape ([C, H, W] images, [1, T] audio); read from the
    decoder's output when omitted and checked against it when given. sample_rate: makes it an
    audio model. Quality curve, one of: `quality_curve` ({"k": [...], "quality": [...]} or
    (k, quality) pairs, ending at k = D with quality 1); `quality_data` (real samples
    [N, *sample_shape] in [0, 1]: FD(D)/FD(k) of samples generated with the exported graphs, in
    `features` or a fixed random projection of the pixels); neither: the token fraction k/D.
    Returns the manifest; raises ValueError with the report if `anytime check` fails (check=True).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step, decoder = step.eval(), decoder.eval()
    step_args, decoder_args = example_inputs(D, K, n_layer, n_head, head_dim)
    shape = _probe(step, decoder, step_args, decoder_args, K, n_layer, n_head, head_dim)
    if sample_shape is not None and tuple(sample_shape) != shape:
        raise ValueError(f"decoder returns samples of shape {list(shape)}, sample_shape says {list(sample_shape)}")
    write_step_graph(StepAdapter(step).eval(), step_args, n_layer, out)
    write_decoder_graph(DecoderAdapter(decoder).eval(), decoder_args, out)
    prior = {"n_layer": n_layer, "n_head": n_head, "head_dim": head_dim, "d_model": d_model or n_head * head_dim}
    if quality_curve is not None:
        quality = _given_curve(quality_curve, D)
    elif quality_data is not None:
        quality = measure_quality_curve(out, np.asarray(quality_data), D=D, start_token=K + len(classes),
                                        prior=prior, features=features, samples=quality_samples)
    else:
        quality = {"metric": "token_fraction (no curve or data given)", "k": list(range(1, D + 1)),
                   "quality": [k / D for k in range(1, D + 1)]}
    output = {"shape": list(shape), "range": [0.0, 1.0], **({"sample_rate": sample_rate} if sample_rate else {})}
    manifest = write_manifest(out, name=name, modality="audio" if sample_rate else "image", D=D, K=K, output=output,
                              classes=list(classes), prior=prior, files=dict(FILES), quality=quality,
                              provenance={"exporter": "models.byom.export_model_dir", "step_module": type(step).__name__,
                                          "decoder_module": type(decoder).__name__, **(provenance or {})})
    if check:
        from .check import check_model_dir, report

        results = check_model_dir(out)
        if any(not r.ok for r in results):
            raise ValueError(f"the exported directory breaks the contract:\n{report(out, results)}")
    return manifest
