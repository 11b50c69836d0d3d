"""Prior step and decode time of two model directories in one run (old zoo vs a candidate).

    .venv/bin/python -m bench.zoo_compare --old models/zoo/fashion-mnist \
        --new runs/fashion-mnist-v2/export/fashion-mnist --out bench/results/fashion-mnist-v2

Rounds alternate old, new, old, new, ... so that drift in the machine's speed hits both alike;
the medians over all rounds are compared (issue 16: new step at batch 64 <= 1.3x old).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from service.core.model_dir import load_model_dir
from service.core.runtime import make_runtime


def time_ms(fn, repeats: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def compare(old: Path, new: Path, batch: int = 64, rounds: int = 10, repeats: int = 30) -> dict:
    times = {(which, backend, op): [] for which in ("old", "new") for backend in ("onnx", "torchscript")
             for op in ("step", "decode")}
    runtimes = {}
    for which, path in (("old", old), ("new", new)):
        for backend in ("onnx", "torchscript"):
            spec = load_model_dir(path, backend)
            runtimes[which, backend] = (spec, make_runtime(spec, backend, batch))
    for _ in range(rounds):
        for (which, backend), (spec, rt) in runtimes.items():
            tokens = np.full(batch, spec.unconditional_token, dtype=np.int64)
            positions = (np.arange(batch, dtype=np.int64) * 7) % spec.D  # a continuous batch: mixed positions
            codes = np.random.default_rng(0).integers(0, spec.K, (batch, spec.D)).astype(np.int64)
            lengths = np.full(batch, spec.D, dtype=np.int64)
            times[which, backend, "step"] += time_ms(lambda: rt.step(tokens, positions), repeats)
            times[which, backend, "decode"] += time_ms(lambda: rt.decode(codes, lengths), max(3, repeats // 5))
    med = {f"{w}/{b}/{op}": float(np.median(v)) for (w, b, op), v in times.items()}
    ratios = {f"{b}/{op}": med[f"new/{b}/{op}"] / med[f"old/{b}/{op}"]
              for b in ("onnx", "torchscript") for op in ("step", "decode")}
    return {"batch": batch, "rounds": rounds, "repeats": repeats, "median_ms": med, "ratio_new_over_old": ratios}


def markdown(res: dict, old: Path, new: Path, command: str) -> str:
    lines = [f"# Step and decode time at batch {res['batch']}: old zoo vs new", "",
             f"- command: `{command}`", f"- date: {res['date']}", f"- machine: {res['machine']}",
             f"- old: `{old}`; new: `{new}`; {res['rounds']} alternating rounds of {res['repeats']} steps "
             f"(decodes: a fifth of that) each, medians", "",
             "| backend | op | old ms | new ms | new / old |", "|---|---|---|---|---|"]
    for b in ("onnx", "torchscript"):
        for op in ("step", "decode"):
            m = res["median_ms"]
            lines.append(f"| {b} | {op} | {m[f'old/{b}/{op}']:.3f} | {m[f'new/{b}/{op}']:.3f} | "
                         f"{res['ratio_new_over_old'][f'{b}/{op}']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.zoo_compare")
    ap.add_argument("--old", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    command = "python -m bench.zoo_compare " + shlex.join(sys.argv[1:] if argv is None else argv)
    res = compare(args.old, args.new, args.batch, args.rounds)
    res.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               machine=f"{platform.machine()} {platform.node()} {len(__import__('os').sched_getaffinity(0))} cpus",
               command=command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step-compare.json").write_text(json.dumps(res, indent=1))
    (args.out / "step-compare.md").write_text(markdown(res, args.old, args.new, command))
    print((args.out / "step-compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
