"""Anytime quality curves: Frechet distance, reconstruction MSE and label accuracy vs k.

Samples are drawn once at full length; truncating a sample to its first k tokens is exactly
what anytime sampling with budget k returns for the same random draws, so every k is
measured on the same samples.
"""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, classifier
from .data import Dataset
from .frechet import frechet_distance, statistics
from .prior import sample
from .train_vqvae import reconstruction_mse

FRACTIONS = [round(0.05 * i, 2) for i in range(1, 21)]


def k_grid(D: int, fractions=FRACTIONS) -> list[int]:
    return sorted({max(1, round(f * D)) for f in fractions})


@torch.no_grad()
def sample_codes(prior, n: int, labels: list[int | None] | None, seed: int, batch: int = 500) -> torch.Tensor:
    gen = torch.Generator(device=next(prior.parameters()).device).manual_seed(seed)
    labels = labels if labels is not None else [None] * n
    return torch.cat([sample(prior, labels[i : i + batch], generator=gen).cpu() for i in range(0, n, batch)])


@torch.no_grad()
def decode(vqvae, codes: torch.Tensor, k: int, batch: int = 1000) -> torch.Tensor:
    """Decode the first k tokens of every row -> [-1, 1] samples."""
    dev = next(vqvae.parameters()).device
    out = []
    for i in range(0, len(codes), batch):
        c = codes[i : i + batch].to(dev)
        out.append(vqvae.decode(c, torch.full((len(c),), k, device=dev)).cpu())
    return torch.cat(out)


def evaluate_pipeline(test_ds: Dataset, vqvae, prior, clf, samples: int, conditional_samples: int,
                      seed: int) -> dict:
    D = vqvae.config.D
    ks = k_grid(D)
    ref_mu, ref_sigma = statistics(classifier.predict(clf, test_ds.x)[0].numpy())
    mse = reconstruction_mse(vqvae, test_ds, ks)
    uncond = sample_codes(prior, samples, None, seed)
    n_cls = prior.config.num_classes
    cond_labels = [i % n_cls for i in range(conditional_samples)] if n_cls else []
    cond = sample_codes(prior, len(cond_labels), cond_labels, seed + 1) if cond_labels else None
    rows = []
    for k in ks:
        feats, _ = classifier.predict(clf, decode(vqvae, uncond, k))
        fd = frechet_distance(*statistics(feats.numpy()), ref_mu, ref_sigma)
        acc = None
        if cond is not None:
            _, pred = classifier.predict(clf, decode(vqvae, cond, k))
            acc = (pred == torch.tensor(cond_labels)).float().mean().item()
        rows.append({"k": k, "fraction": round(k / D, 4), "frechet": fd, "mse": mse[k], "label_accuracy": acc})
        print(f"k={k:3d} frechet={fd:8.3f} mse={mse[k]:.5f} label_acc={acc}")
    return {"D": D, "K": vqvae.config.K, "curve": rows, "unconditional_samples": samples,
            "conditional_samples": len(cond_labels)}


def quality_from_frechet(curve: list[dict]) -> list[float]:
    """Relative quality FD(D)/FD(k) in (0, 1], made non-decreasing in k (a token never hurts)."""
    best = curve[-1]["frechet"]
    q = [min(1.0, best / max(r["frechet"], 1e-9)) for r in curve]
    return list(np.maximum.accumulate(q))


def evaluate_pipelines(test_ds: Dataset, pipelines: list[tuple[str, str, str]], classifier_path: Path, out: Path,
                       samples: int = 5000, conditional_samples: int = 1000, seed: int = 0, command: str = "") -> dict:
    from .plots import plot_curves, sample_grid

    torch.manual_seed(seed)
    clf, clf_ck = classifier.load(classifier_path)
    result = {
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "classifier_test_accuracy": clf_ck["test_accuracy"], "dataset": test_ds.name,
        "modality": "audio" if test_ds.x.dim() == 3 else "image", "test_samples": len(test_ds), "pipelines": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, vq_path, prior_path in pipelines:
        vqvae, _ = checkpoint.load_ovqvae(vq_path)
        prior, _ = checkpoint.load_prior(prior_path)
        print(f"== {name}")
        res = evaluate_pipeline(test_ds, vqvae, prior, clf, samples, conditional_samples, seed)
        res["quality"] = quality_from_frechet(res["curve"])
        res["vqvae"], res["prior"] = str(vq_path), str(prior_path)
        result["pipelines"][name] = res
        figures = sample_grid(vqvae, prior, out / f"samples-{name}.png", test_ds.classes, seed=seed)
        res["figures"] = [Path(f).name for f in figures or [out / f"samples-{name}.png"]]
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    plot_curves(result, out / "anytime-curve.png")
    (out / "evaluation.md").write_text(report_markdown(result))
    return result


def report_markdown(result: dict) -> str:
    names = list(result["pipelines"])
    audio = result.get("modality") == "audio"
    unit, scale = ("clips", "[0, 1] sample scale") if audio else ("images", "[0, 1] pixels")
    lines = [
        f"# Anytime quality curve: {result['dataset']}", "",
        f"- command: `{result['command']}`", f"- date: {result['date']}", f"- machine: {result['machine']}",
        f"- Frechet distance in the shipped classifier's feature space (test accuracy "
        f"{result['classifier_test_accuracy']:.4f}), {result['pipelines'][names[0]]['unconditional_samples']} "
        f"unconditional samples vs the {result['test_samples']} test {unit}; reconstruction MSE on the test split "
        f"({scale}); " + ("label accuracy: how often class-conditional samples are recognised as their label by "
                           "that classifier." if audio else "label accuracy of class-conditional samples."), "",
        "| k | k/D | " + " | ".join(f"FD {n} | MSE {n} | label acc {n}" for n in names) + " |",
        "|---|---|" + "---|---|---|" * len(names),
    ]
    curves = [result["pipelines"][n]["curve"] for n in names]
    for i, row in enumerate(curves[0]):
        cells = []
        for c in curves:
            r = c[i]
            acc = "-" if r["label_accuracy"] is None else f"{r['label_accuracy']:.3f}"
            cells.append(f"{r['frechet']:.3f} | {r['mse']:.5f} | {acc}")
        lines.append(f"| {row['k']} | {row['fraction']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "![anytime curve](anytime-curve.png)", ""]
    for n in names:
        for f in result["pipelines"][n].get("figures", [f"samples-{n}.png"]):
            lines.append(f"![samples {n}]({f})")
    return "\n".join(lines) + "\n"
