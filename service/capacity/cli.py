"""`anytime plan`: the replicas a traffic needs, from a simulation of the real scheduler over a
replica's measured costs (service/capacity/__init__.py, docs/scaling-out.md)."""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .calibration import Calibration
from .fleet import LB_MODELS, Traffic
from .traffic import parse_deadlines, parse_mix

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "zoo" / "fashion-mnist"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anytime plan", description="How many replicas for this traffic: simulates "
                                 "the scheduler's own code over a replica's measured costs.")
    ap.add_argument("--rate", type=float, required=True, help="requests/s to the whole fleet")
    ap.add_argument("--deadlines", default="loguniform:50:1000",
                    help="deadline distribution in ms: loguniform:LO:HI, uniform:LO:HI, fixed:MS, choice:MS,MS,...")
    ap.add_argument("--n-mix", default="1", help="samples per request, N:WEIGHT,... (e.g. 1:0.8,4:0.2)")
    ap.add_argument("--quality-floor", type=float, default=0.8,
                    help="mean delivered quality to reach, as a fraction of the model's curve (1 = k = D)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--calibration", type=Path, help="a calibration JSON (from --save-calibration)")
    src.add_argument("--server", metavar="URL", help="measure an idle running replica through its API")
    ap.add_argument("--model-dir", type=Path, help="profile this model's runtime here (default: the default "
                    "zoo model), as the engine does at start-up; with --server, only its decode is taken from "
                    "this profile (the API cannot separate a decode from the plan before it)")
    ap.add_argument("--gpu", metavar="PRESET", help="project a GPU replica from the model's roofline "
                     "(service/capacity/gpu.py presets; a projection, not a measurement)")
    ap.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"], help="with --model-dir")
    ap.add_argument("--api-key", default=None, help="with --server, when the replica requires one")
    ap.add_argument("--frontend-workers", type=int, default=None, help="frontend workers per replica (default: the "
                    "calibration's, or as many as the measured replica ran; a GPU projection: 8)")
    ap.add_argument("--save-calibration", type=Path, help="write the calibration used as JSON")
    ap.add_argument("--replicas", default="", help="comma-separated counts to simulate besides the search's")
    ap.add_argument("--duration", type=float, default=20.0, help="simulated seconds of arrivals per count")
    ap.add_argument("--seed", type=int, default=0, help="seed of the arrivals (and of --jitter)")
    ap.add_argument("--lb", default="round-robin", choices=LB_MODELS, help="how the balancer spreads requests")
    ap.add_argument("--jitter", type=float, default=None, help="sigma of a log-normal noise on every simulated cost "
                    "(default: the calibration's, fitted by `anytime bench plan`)")
    ap.add_argument("--out", type=Path, default=Path("plan"), help="directory for plan.md, plan.json, plan.png")
    ap.add_argument("--title", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plan":
        argv = argv[1:]
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        parse_deadlines(args.deadlines)
        parse_mix(args.n_mix)
        counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    except ValueError as e:
        ap.error(str(e))
    if args.model_dir and args.calibration:
        ap.error("--model-dir and --calibration: a calibration file already holds its costs")
    if args.gpu and (args.calibration or args.server):
        ap.error("--gpu projects from a model directory (--model-dir), not from --calibration or --server")
    if args.rate <= 0 or not 0 < args.quality_floor <= 1 or args.duration <= 0 or any(c < 1 for c in counts):
        ap.error("--rate and --duration must be positive, --quality-floor in (0, 1], --replicas at least 1")
    if args.frontend_workers is not None and not 1 <= args.frontend_workers <= 64:
        ap.error("--frontend-workers must be in 1..64 (anytime serve --workers)")
    try:
        cal = calibration(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"anytime plan: {e}", file=sys.stderr)
        return 2
    if args.frontend_workers is not None:
        cal.frontend_workers = args.frontend_workers
    if args.save_calibration:
        cal.save(args.save_calibration)
    from .fleet import plan
    from .report import write

    p = plan(cal, Traffic(args.rate, args.deadlines, args.n_mix), args.quality_floor, args.duration, args.seed,
             args.lb, args.jitter, counts)
    title = args.title or f"Capacity plan: {args.rate:g} requests/s, quality floor {args.quality_floor:g}"
    print(write(p, cal, args.out, title, header(argv), vars_of(args)))
    return 0


def calibration(args) -> Calibration:
    from . import calibration as c

    if args.calibration:
        return Calibration.load(args.calibration)
    if args.server:
        cal = c.from_server(args.server, api_key=args.api_key)
        return cal.with_profile_decode(c.from_profile(args.model_dir, args.backend)) if args.model_dir else cal
    if args.gpu:
        from .gpu import project

        return project(args.model_dir or DEFAULT_MODEL, args.gpu)
    return c.from_profile(args.model_dir or DEFAULT_MODEL, args.backend)


def vars_of(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}


def header(argv: list[str]) -> list[str]:
    from .calibration import machine

    m = machine()
    return [f"- command: `anytime plan {shlex.join(argv)}`", f"- commit: {version()}", f"- date: {m['date']}",
            f"- machine: {m['machine']} (where it was planned)"]


def version() -> str:
    """The commit when this is a git checkout, else the installed version."""
    try:
        v = metadata.version("anytime")
    except metadata.PackageNotFoundError:
        v = "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            return f"{rev.stdout.strip()} (anytime {v})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"none (anytime {v}, not a git checkout)"
