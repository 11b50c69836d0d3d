"""One evaluation from `anytime evaluate` runs of single pipelines (run side by side, one core each).

    python -m bench.model.evaluation_merge --out bench/results/fashion-mnist \
        runs/fashion-mnist-v2/eval-ordered runs/fashion-mnist-v2/eval-plain

Every pipeline's samples come from its own seeded generators, so a pipeline evaluated alone gives
the same rows as in a joint run; this writes the joint run's evaluation.json, evaluation.md,
anytime-curve.png and sample figures into --out.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from models.evaluate import report_markdown
from models.plots import plot_curves


def merge(runs: list[dict]) -> dict:
    """The first run's header; every run's pipelines, in order (names must not repeat)."""
    result = dict(runs[0], pipelines={})
    for run in runs:
        for name, res in run["pipelines"].items():
            if name in result["pipelines"]:
                raise ValueError(f"pipeline {name!r} is in more than one evaluation")
            result["pipelines"][name] = res
    result["command"] = " ; ".join(r["command"] for r in runs)
    result["date"] = " / ".join(r["date"] for r in runs)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model.evaluation_merge")
    ap.add_argument("runs", type=Path, nargs="+", help="folders of `anytime evaluate` runs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = merge([json.loads((d / "evaluation.json").read_text()) for d in args.runs])
    args.out.mkdir(parents=True, exist_ok=True)
    for d in args.runs:
        for f in {f for res in json.loads((d / "evaluation.json").read_text())["pipelines"].values()
                  for f in res.get("figures", [])}:
            if (d / f).resolve() != (args.out / f).resolve():
                shutil.copyfile(d / f, args.out / f)
    result["command"] += " ; python -m bench.model.evaluation_merge " + shlex.join(sys.argv[1:] if argv is None else argv)
    (args.out / "evaluation.json").write_text(json.dumps(result, indent=1))
    plot_curves(result, args.out / "anytime-curve.png")
    (args.out / "evaluation.md").write_text(report_markdown(result))
    print(args.out / "evaluation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
