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
from .codes import decode, sample_codes
from .dataset import Dataset
from .frechet import frechet_distance, statistics
from .plots import plot_curves, sample_grid
from .train_vqvae import reconstruction_mse

FRACTIONS = [round(0.05 * i, 2) for i in range(1, 21)]


def k_grid(D: int, fractions=FRACTIONS) -> list[int]:
    return sorted({max(1, round(f * D)) for f in fractions})


COLD_TEMPERATURE = 0.7  # label accuracy is also measured for conditional samples at this temperature


def guided_curves(test_ds: Dataset, vqvae, prior, clf, conditional_samples: int, guidance: list[float], seed: int,
                  ks: list[int], ref: tuple) -> list[dict]:
    """Quality over k and guidance: for each guidance w (0 included, as the baseline), class-balanced
    conditional samples drawn with it at full length, and at every k the FD of those samples to the
    test split and how often they are recognised as their label. What the scheduler's pricing of
    guidance against tokens reads."""
    n_cls = prior.config.num_classes
    labels = [i % n_cls for i in range(conditional_samples)]
    want = torch.tensor(labels)
    out = []
    for i, w in enumerate(sorted({0.0, *guidance})):
        codes = sample_codes(prior, len(labels), labels, seed + 10 + i, guidance=w)
        rows = []
        for k in ks:
            feats, pred = classifier.predict(clf, decode(vqvae, codes, k))
            rows.append({"k": k, "fraction": round(k / prior.config.D, 4), "frechet": frechet_distance(*statistics(feats.numpy()), *ref),
                         "label_accuracy": (pred == want).float().mean().item()})
        print(f"guidance {w}: FD(D) {rows[-1]['frechet']:.3f} label acc {rows[-1]['label_accuracy']:.3f}")
        out.append({"guidance": w, "samples": len(labels), "curve": rows})
    return out


def evaluate_pipeline(test_ds: Dataset, vqvae, prior, clf, samples: int, conditional_samples: int,
                      seed: int, guidance: list[float] | None = None) -> dict:
    D = vqvae.config.D
    ks = k_grid(D)
    ref_mu, ref_sigma = statistics(classifier.predict(clf, test_ds.x)[0].numpy())
    mse = reconstruction_mse(vqvae, test_ds, ks)
    uncond = sample_codes(prior, samples, None, seed)
    n_cls = prior.config.num_classes
    cond_labels = [i % n_cls for i in range(conditional_samples)] if n_cls else []
    cond = sample_codes(prior, len(cond_labels), cond_labels, seed + 1) if cond_labels else None
    cold = (sample_codes(prior, len(cond_labels), cond_labels, seed + 2, temperature=COLD_TEMPERATURE)
            if cond_labels else None)
    # the classifier on the OVQ-VAE's own reconstructions of real test images: the ceiling that
    # the decoder's fidelity puts on the label accuracy of generated samples
    test_codes = torch.cat([vqvae.encode(test_ds.x[i : i + 1000].to(next(vqvae.parameters()).device)).cpu()
                            for i in range(0, len(test_ds), 1000)]) if test_ds.y.min() >= 0 else None
    rows = []
    for k in ks:
        feats, _ = classifier.predict(clf, decode(vqvae, uncond, k))
        fd = frechet_distance(*statistics(feats.numpy()), ref_mu, ref_sigma)
        acc = acc_cold = acc_recon = None
        if cond is not None:
            _, pred = classifier.predict(clf, decode(vqvae, cond, k))
            acc = (pred == torch.tensor(cond_labels)).float().mean().item()
            _, pred = classifier.predict(clf, decode(vqvae, cold, k))
            acc_cold = (pred == torch.tensor(cond_labels)).float().mean().item()
        if test_codes is not None:
            _, pred = classifier.predict(clf, decode(vqvae, test_codes, k))
            acc_recon = (pred == test_ds.y).float().mean().item()
        rows.append({"k": k, "fraction": round(k / D, 4), "frechet": fd, "mse": mse[k], "label_accuracy": acc,
                     "label_accuracy_cold": acc_cold, "reconstruction_accuracy": acc_recon})
        print(f"k={k:3d} frechet={fd:8.3f} mse={mse[k]:.5f} label_acc={acc} cold={acc_cold} recon={acc_recon}")
    result = {"D": D, "K": vqvae.config.K, "curve": rows, "unconditional_samples": samples,
              "conditional_samples": len(cond_labels), "cold_temperature": COLD_TEMPERATURE}
    if guidance and n_cls:
        result["guided"] = guided_curves(test_ds, vqvae, prior, clf, conditional_samples, guidance, seed, ks,
                                         (ref_mu, ref_sigma))
    return result


def quality_from_frechet(curve: list[dict]) -> list[float]:
    """Relative quality FD(D)/FD(k) in (0, 1], made non-decreasing in k (a token never hurts)."""
    best = curve[-1]["frechet"]
    q = [min(1.0, best / max(r["frechet"], 1e-9)) for r in curve]
    return list(np.maximum.accumulate(q))


def evaluate_pipelines(test_ds: Dataset, pipelines: list[tuple[str, str, str]], classifier_path: Path, out: Path,
                       samples: int = 5000, conditional_samples: int = 1000, seed: int = 0, command: str = "",
                       guidance: list[float] | None = None) -> dict:
    torch.manual_seed(seed)
    clf, clf_ck = classifier.load(classifier_path)
    result = {
        "command": command, "commit": checkpoint.git_commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "classifier_test_accuracy": clf_ck["test_accuracy"], "dataset": test_ds.name,
        "modality": "audio" if test_ds.x.dim() == 3 else "image", "test_samples": len(test_ds), "pipelines": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, vq_path, prior_path in pipelines:
        vqvae, _ = checkpoint.load_ovqvae(vq_path)
        prior, _ = checkpoint.load_prior(prior_path)
        print(f"== {name}")
        res = evaluate_pipeline(test_ds, vqvae, prior, clf, samples, conditional_samples, seed, guidance)
        res["quality"] = quality_from_frechet(res["curve"])
        res["vqvae"], res["prior"] = str(vq_path), str(prior_path)
        result["pipelines"][name] = res
        figures = sample_grid(vqvae, prior, out / f"samples-{name}.png", test_ds.classes, seed=seed)
        res["figures"] = [Path(f).name for f in figures or [out / f"samples-{name}.png"]]
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    plot_curves(result, out / "anytime-curve.png")
    (out / "evaluation.md").write_text(report_markdown(result))
    return result


def _at(curve: list[dict], fraction: float) -> dict:
    return min(curve, key=lambda r: abs(r["fraction"] - fraction))


def claims_markdown(result: dict) -> list[str]:
    """The paper's claims, checked on this run (needs pipelines named 'ordered' and 'plain')."""
    p = result["pipelines"]
    if not {"ordered", "plain"} <= set(p):
        return []
    o, b = p["ordered"]["curve"], p["plain"]["curve"]
    fd_d = o[-1]["frechet"]
    rows = [
        ("plain MSE / ordered MSE at k = D/2", _at(b, 0.5)["mse"] / _at(o, 0.5)["mse"], ">= 3"),
        ("FD(0.8 D) / FD(D), ordered", _at(o, 0.8)["frechet"] / fd_d, "<= 1.05"),
        ("FD(0.6 D) / FD(D), ordered", _at(o, 0.6)["frechet"] / fd_d, "<= 1.15"),
        ("FD(D) ordered / FD(D) plain", fd_d / b[-1]["frechet"], "<= 1.1"),
    ]
    if o[-1]["label_accuracy"] is not None:
        rows += [("label accuracy at k = D, temperature 1", o[-1]["label_accuracy"], ">= 0.8"),
                 (f"label accuracy at k = D, temperature {COLD_TEMPERATURE}", o[-1]["label_accuracy_cold"], ">= 0.8")]
    out = ["", "## Claims checked on this run", "", "| quantity | value | target |", "|---|---|---|"]
    out += [f"| {name} | {value:.3f} | {target} |" for name, value, target in rows]
    return out


def guided_markdown(result: dict) -> list[str]:
    """Per pipeline with guided curves: FD and label accuracy of conditional samples at a few k."""
    out = []
    for name, res in result["pipelines"].items():
        guided = res.get("guided")
        if not guided:
            continue
        fractions = (0.25, 0.5, 0.6, 0.8, 1.0)
        out += ["", f"## Classifier-free guidance, {name}: conditional samples ({guided[0]['samples']}, "
                    "class-balanced), FD / label accuracy", "",
                "| guidance | " + " | ".join(f"k = {_at(guided[0]['curve'], f)['k']}" for f in fractions) + " |",
                "|---|" + "---|" * len(fractions)]
        for g in guided:
            curve = g["curve"]
            out.append(f"| {g['guidance']:g} | " + " | ".join(
                f"{_at(curve, f)['frechet']:.2f} / {_at(curve, f)['label_accuracy']:.3f}" for f in fractions) + " |")
    return out


def report_markdown(result: dict) -> str:
    names = list(result["pipelines"])
    audio = result.get("modality") == "audio"
    unit, scale = ("clips", "[0, 1] sample scale") if audio else ("images", "[0, 1] pixels")
    lines = [
        f"# Anytime quality curve: {result['dataset']}", "",
        f"- command: `{result['command']}`", f"- commit: {result.get('commit', 'not recorded')}",
        f"- date: {result['date']}", f"- machine: {result['machine']}",
        f"- Frechet distance in the shipped classifier's feature space (test accuracy "
        f"{result['classifier_test_accuracy']:.4f}), {result['pipelines'][names[0]]['unconditional_samples']} "
        f"unconditional samples vs the {result['test_samples']} test {unit}; reconstruction MSE on the test split "
        f"({scale}); " + ("label accuracy: how often class-conditional samples are recognised as their label by "
                           "that classifier." if audio else "label accuracy of class-conditional samples."), "",
        f"- label acc: temperature 1; label acc T={COLD_TEMPERATURE}: conditional samples at temperature "
        f"{COLD_TEMPERATURE}; recon acc: the classifier on the OVQ-VAE's reconstructions of the real test "
        "split truncated to k (the ceiling the decoder's fidelity puts on label accuracy).", "",
        "| k | k/D | " + " | ".join(f"FD {n} | MSE {n} | label acc {n} | label acc T={COLD_TEMPERATURE} {n} | "
                                    f"recon acc {n}" for n in names) + " |",
        "|---|---|" + "---|---|---|---|---|" * len(names),
    ]
    curves = [result["pipelines"][n]["curve"] for n in names]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for i, row in enumerate(curves[0]):
        cells = []
        for c in curves:
            r = c[i]
            cells.append(f"{r['frechet']:.3f} | {r['mse']:.5f} | {fmt(r['label_accuracy'])} | "
                         f"{fmt(r.get('label_accuracy_cold'))} | {fmt(r.get('reconstruction_accuracy'))}")
        lines.append(f"| {row['k']} | {row['fraction']:.2f} | " + " | ".join(cells) + " |")
    lines += claims_markdown(result)
    lines += guided_markdown(result)
    lines += ["", "![anytime curve](anytime-curve.png)", ""]
    for n in names:
        for f in result["pipelines"][n].get("figures", [f"samples-{n}.png"]):
            lines.append(f"![samples {n}]({f})")
    return "\n".join(lines) + "\n"
