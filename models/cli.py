"""CLI for the models side: `anytime train|evaluate|export|check ...`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _command_line(argv: list[str]) -> str:
    return "anytime " + shlex.join(argv)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | folder | spoken-digits | wav-folder")
    p.add_argument("--data-dir", default=None, help="folder of the data set (defaults per data set)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N examples of each split (smoke runs)")


def _steps_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="stop every epoch after this many steps (smoke runs; default: the whole split)")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _guidance_default(text: str) -> float | str:
    return "best" if text.strip().lower() == "best" else float(text)


def _load(args, split: str):
    from .data import load_dataset
    from .dataset import Dataset

    ds = load_dataset(args.dataset, split, args.data_dir)
    if args.limit:
        ds = Dataset(ds.x[: args.limit], ds.y[: args.limit], ds.classes, ds.name, ds.sample_rate)
    return ds


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anytime")
    sub = ap.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="what", required=True)
    v = train.add_parser("vqvae", help="OVQ-VAE: --stage plain, then --stage ordered --init PLAIN.pt")
    _dataset_args(v)
    v.add_argument("--preset", default="fashion-mnist")
    v.add_argument("--stage", choices=["plain", "ordered", "decoder"], default="plain",
                   help="decoder: a new decoder (the preset's) on the frozen encoder and codebook of --init")
    v.add_argument("--init", type=Path, default=None, help="checkpoint to fine-tune from")
    v.add_argument("--epochs", type=int, default=10, help="total epochs of this stage (resume continues to it)")
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--batch-size", type=int, default=128)
    v.add_argument("--min-cut", type=int, default=1, help="smallest nested-dropout cut")
    v.add_argument("--init-decoder", action="store_true",
                   help="stage decoder: start from --init's decoder (same widths) instead of a new one")
    v.add_argument("--feature-classifier", type=Path, default=None,
                   help="frozen classifier whose features the reconstructions must match (not the one the "
                        "evaluation measures with)")
    v.add_argument("--feature-weight", type=float, default=0.0, help="weight of the feature-matching loss")
    _steps_arg(v)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", type=Path, required=True)

    p = train.add_parser("prior", help="Transformer prior over the codes of a trained OVQ-VAE")
    _dataset_args(p)
    p.add_argument("--vqvae", type=Path, required=True)
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--init", type=Path, default=None, help="prior checkpoint to start from (same tokens)")
    _steps_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)

    c = train.add_parser("classifier", help="evaluation classifier (features for the Frechet distance)")
    _dataset_args(c)
    c.add_argument("--epochs", type=int, default=4)
    c.add_argument("--seed", type=int, default=0)
    _steps_arg(c)
    c.add_argument("--out", type=Path, required=True)

    e = sub.add_parser("evaluate", help="quality vs k for one or more pipelines")
    _dataset_args(e)
    e.add_argument("--pipeline", nargs=3, action="append", metavar=("NAME", "VQVAE", "PRIOR"), required=True)
    e.add_argument("--classifier", type=Path, required=True)
    e.add_argument("--samples", type=int, default=5000)
    e.add_argument("--conditional-samples", type=int, default=1000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--guidance", type=_floats, default=[],
                   help="comma-separated guidance values: label accuracy and FD of guided conditional samples "
                        "at every k for each (the quality curves over k and guidance)")
    e.add_argument("--out", type=Path, required=True, help="folder for the markdown report, JSON and plots")

    d = sub.add_parser("data", help="build a data set").add_subparsers(dest="what", required=True)
    sd = d.add_parser("spoken-digits", help="words spoken by espeak-ng voices, split by speaker")
    sd.add_argument("--out", type=Path, default=Path("data/spoken-digits"))
    sd.add_argument("--renditions", type=int, default=6, help="clips per speaker and word")
    sd.add_argument("--test-fraction", type=float, default=0.2, help="fraction of speakers held out")
    sd.add_argument("--words", default=None, help="comma-separated words (default: the ten digits)")
    sd.add_argument("--seed", type=int, default=0)

    x = sub.add_parser("export", help="TorchScript + ONNX model directory")
    x.add_argument("--name", required=True)
    x.add_argument("--vqvae", type=Path, required=True)
    x.add_argument("--prior", type=Path, required=True)
    x.add_argument("--evaluation", type=Path, default=None, help="evaluation JSON with the quality curve")
    x.add_argument("--pipeline-name", default="ordered", help="pipeline of the evaluation JSON to ship")
    x.add_argument("--classifier", type=Path, default=None, help="evaluation classifier to ship alongside")
    x.add_argument("--label-dropout", type=float, default=None,
                   help="the prior's training label dropout, for a checkpoint that predates recording it")
    x.add_argument("--guidance-default", type=_guidance_default, default=None,
                   help="guidance the server uses for labelled \"auto\" requests (manifest prior.guidance.default); "
                        "'best': the one worth the most at full length by the evaluation's guided curves")
    x.add_argument("--match-loudness", action="store_true",
                   help="audio: measure the decoder gain that matches the training clips' level (--dataset)")
    _dataset_args(x)
    x.add_argument("--out", type=Path, required=True)

    k = sub.add_parser("check", help="check model directories against the contract (docs/model-format.md)")
    k.add_argument("dirs", type=Path, nargs="+", metavar="DIR")
    k.add_argument("--tolerance", type=float, default=1e-4, help="largest |a - b| / (1 + max |b|) between runs")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cmd = _command_line(argv)
    if args.command == "train" and args.what == "vqvae":
        from .presets import ovqvae_config
        from .train_vqvae import train

        ds = _load(args, "train")
        train(ds, args.out, ovqvae_config(args.preset), stage=args.stage, epochs=args.epochs, init=args.init,
              lr=args.lr, batch_size=args.batch_size, seed=args.seed, min_cut=args.min_cut,
              init_decoder=args.init_decoder, feature_classifier=args.feature_classifier,
              feature_weight=args.feature_weight, steps_per_epoch=args.steps_per_epoch,
              meta={"command": cmd, "dataset": ds.name, "classes": ds.classes})
    elif args.command == "train" and args.what == "prior":
        from .train_prior import train

        ds = _load(args, "train")
        train(ds, args.vqvae, args.out, preset=args.preset, epochs=args.epochs, lr=args.lr,
              batch_size=args.batch_size, label_dropout=args.label_dropout, seed=args.seed, init=args.init,
              steps_per_epoch=args.steps_per_epoch, meta={"command": cmd, "dataset": ds.name, "classes": ds.classes})
    elif args.command == "train" and args.what == "classifier":
        from .classifier import train

        train(_load(args, "train"), _load(args, "test"), args.out, epochs=args.epochs, seed=args.seed,
              steps_per_epoch=args.steps_per_epoch, meta={"command": cmd})
    elif args.command == "evaluate":
        from .evaluate import evaluate_pipelines

        evaluate_pipelines(_load(args, "test"), args.pipeline, args.classifier,
                           args.out, samples=args.samples, conditional_samples=args.conditional_samples,
                           seed=args.seed, command=cmd, guidance=args.guidance)
    elif args.command == "data":
        from .spoken_digits import build

        meta = build(args.out, renditions=args.renditions, test_fraction=args.test_fraction, seed=args.seed,
                     words=args.words.split(",") if args.words else None, command=cmd)
        print(f"{args.out}: {meta['clips']} clips, {len(meta['speakers']['train'])} train / "
              f"{len(meta['speakers']['test'])} test speakers")
    elif args.command == "check":
        from . import check

        return check.main(args.dirs, args.tolerance)
    elif args.command == "export":
        from .export import export_model

        reference = _load(args, "train").x if args.match_loudness else None
        export_model(args.name, args.vqvae, args.prior, args.out, evaluation=args.evaluation,
                     pipeline=args.pipeline_name, command=cmd,
                     extra_files={"classifier": args.classifier} if args.classifier else None,
                     label_dropout=args.label_dropout, guidance_default=args.guidance_default,
                     loudness_reference=reference)
    return 0
