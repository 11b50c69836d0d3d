"""Issue 16's zoo targets, measured: a new evaluation against the old one and the step timing.

    python -m bench.model.zoo_targets --new bench/results/fashion-mnist-v2 --old bench/results/fashion-mnist \
        --out bench/results/fashion-mnist-v2/targets.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def row_at(curve: list[dict], fraction: float) -> dict:
    return min(curve, key=lambda r: abs(r["fraction"] - fraction))


def targets(new: dict, old: dict, step: dict | None) -> list[tuple[str, str, str, bool | None]]:
    """(claim, measured, target, met) rows."""
    o = new["pipelines"]["ordered"]["curve"]
    # the plain baseline of the new evaluation, else the old one's (when it was not retrained)
    p = (new if "plain" in new["pipelines"] else old)["pipelines"]["plain"]["curve"]
    plain_note = "" if "plain" in new["pipelines"] else " (old plain pipeline, not retrained)"
    old_fd = row_at(old["pipelines"]["ordered"]["curve"], 1.0)["frechet"]
    fd = row_at(o, 1.0)["frechet"]
    acc = row_at(o, 1.0)["label_accuracy"]
    rows = [
        ("label accuracy at k = D, T = 1 (ordered)", f"{acc:.3f}", ">= 0.82", acc >= 0.82),
        ("FD(D) ordered", f"{fd:.2f}", f"<= 0.75 x {old_fd:.2f} = {0.75 * old_fd:.2f}", fd <= 0.75 * old_fd),
        ("FD(0.8 D) / FD(D)", f"{row_at(o, 0.8)['frechet'] / fd:.3f}", "<= 1.05", row_at(o, 0.8)["frechet"] / fd <= 1.05),
        ("FD(0.6 D) / FD(D)", f"{row_at(o, 0.6)['frechet'] / fd:.3f}", "<= 1.10", row_at(o, 0.6)["frechet"] / fd <= 1.10),
        (f"FD(D) ordered / FD(D) plain{plain_note}", f"{fd / row_at(p, 1.0)['frechet']:.3f}", "<= 1",
         fd <= row_at(p, 1.0)["frechet"]),
    ]
    if step:
        for backend in ("onnx", "torchscript"):
            r = step["ratio_new_over_old"][f"{backend}/step"]
            rows.append((f"prior step at batch {step['batch']}, {backend}, new / old (one run)", f"{r:.3f}", "<= 1.3",
                         r <= 1.3))
    cold = row_at(o, 1.0).get("label_accuracy_cold")
    recon = row_at(o, 1.0).get("reconstruction_accuracy")
    old_o = row_at(old["pipelines"]["ordered"]["curve"], 1.0)
    rows += [
        ("label accuracy at k = D, T = 0.7 (ordered)", f"{cold:.3f} (old {old_o['label_accuracy_cold']:.3f})", "-", None),
        ("classifier on full-length reconstructions (decoder ceiling)",
         f"{recon:.3f} (old {old_o['reconstruction_accuracy']:.3f})", "-", None),
        ("MSE at k = D (ordered)", f"{row_at(o, 1.0)['mse']:.5f} (old {old_o['mse']:.5f})", "-", None),
        (f"plain MSE / ordered MSE at k = D/2{plain_note}", f"{row_at(p, 0.5)['mse'] / row_at(o, 0.5)['mse']:.3f}",
         "-", None),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model.zoo_targets")
    ap.add_argument("--new", type=Path, required=True, help="folder with the new evaluation.json")
    ap.add_argument("--old", type=Path, required=True, help="folder with the old evaluation.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    new = json.loads((args.new / "evaluation.json").read_text())
    old = json.loads((args.old / "evaluation.json").read_text())
    step_file = args.new / "step-compare.json"
    step = json.loads(step_file.read_text()) if step_file.exists() else None
    lines = ["# Zoo v2 targets (issue 16)", "",
             f"- command: `python -m bench.model.zoo_targets {shlex.join(sys.argv[1:] if argv is None else argv)}`",
             f"- new evaluation: `{new['command']}` ({new['date']}, {new['machine']})",
             f"- old evaluation: `{old['command']}` ({old['date']})",
             f"- step timing: {'`' + step['command'] + '` (' + step['date'] + ')' if step else 'not measured'}", "",
             "| claim | measured | target | met |", "|---|---|---|---|"]
    for claim, measured, target, met in targets(new, old, step):
        lines.append(f"| {claim} | {measured} | {target} | {'-' if met is None else ('yes' if met else 'no')} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
