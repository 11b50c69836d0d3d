"""What a perfect prior would score: FD and label accuracy of real training images and of their
reconstructions truncated to k, against the test split, in the evaluation's feature space.

    python -m bench.zoo_ceiling --classifier models/zoo/fashion-mnist/classifier.pt \
        --vqvae v1=runs/fashion-mnist-v2/v1_vqvae.pt --vqvae v2=runs/fashion-mnist-v2/vqvae_ordered.pt \
        --out bench/results/fashion-mnist-v2/ceiling.md

Real images give the FD noise floor for this many samples; reconstructions give the FD that the
decoder alone leaves (samples whose tokens came from real images). The gap between those and the
evaluation's FD(D) is the prior's share.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
from pathlib import Path

import torch

from models import checkpoint, classifier
from models.data import load_dataset
from models.evaluate import decode
from models.frechet import frechet_distance, statistics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", type=Path, required=True)
    ap.add_argument("--vqvae", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--samples", type=int, default=5000, help="training images (the evaluation's sample count)")
    ap.add_argument("--k", type=int, nargs="+", default=[13, 32, 51, 64])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    clf, _ = classifier.load(args.classifier)
    test, train = load_dataset("fashion-mnist", "test"), load_dataset("fashion-mnist", "train")
    ref = statistics(classifier.predict(clf, test.x)[0].numpy())
    idx = torch.randperm(len(train))[: args.samples]
    x, y = train.x[idx], train.y[idx]

    def score(images: torch.Tensor) -> tuple[float, float]:
        feats, pred = classifier.predict(clf, images)
        return frechet_distance(*statistics(feats.numpy()), *ref), (pred == y).float().mean().item()

    fd, acc = score(x)
    rows = [f"| real training images | - | {fd:.2f} | {acc:.3f} |"]
    for spec in args.vqvae:
        name, path = spec.split("=", 1)
        vq, _ = checkpoint.load_ovqvae(path)
        with torch.no_grad():
            codes = torch.cat([vq.encode(x[i : i + 1000]) for i in range(0, len(x), 1000)])
        for k in args.k:
            fd, acc = score(decode(vq, codes, k))
            rows.append(f"| {name} reconstructions (`{path}`) | {k} | {fd:.2f} | {acc:.3f} |")
            print(rows[-1], flush=True)
    cmd = "python -m bench.zoo_ceiling " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.write_text("\n".join([
        "# FD and label accuracy a perfect prior would reach", "",
        f"- command: `{cmd}`", f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()} {torch.get_num_threads()} threads",
        f"- {args.samples} random training images (seed 0), or their reconstructions from the first k tokens, "
        "against the 10000 test images in the shipped classifier's feature space (as `anytime evaluate`); "
        "label accuracy: the classifier's prediction equals the image's label.", "",
        "| images | k | FD | label accuracy |", "|---|---|---|---|", *rows, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
