"""`anytime bench ...`: engine micro-benchmark, load test of one server, policy sweep."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "zoo" / "fashion-mnist"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anytime bench")
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("engine", help="step/decode latency vs batch per backend, vs the FLOP bound")
    e.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    e.add_argument("--prior", type=Path, default=None, help="prior checkpoint, to time eager PyTorch too")
    e.add_argument("--out", type=Path, default=Path("bench/results/engine"))
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both backends run")

    for name, text in (("load", "open-loop load against one server"), ("sweep", "policies x offered loads"),
                       ("overhead", "HTTP + scheduling overhead on an idle server"),
                       ("tracing", "idle overhead and CPU per request with OpenTelemetry tracing off and on"),
                       ("soak", "minutes at a multiple of capacity: memory, health, attainment"),
                       ("threads", "ONNX Runtime thread modes (spinning, count) under the same load"),
                       ("split", "in-process vs engine-core process + frontend workers: throughput ratios, overhead"),
                       ("split-sweep", "the anytime policy in-process and split at the same offered loads"),
                       ("guidance", "labelled requests with guidance off, pinned, and priced by the server, same arrivals"),
                       ("mixed", "interactive, bulk and streaming classes: schedulers side by side on the same arrivals"),
                       ("interactive", "30 interactive 150 ms requests beside two bulk n=64 streams, three rounds"),
                       ("priority", "high-priority 150 ms requests beside a flood of low-priority ones that cannot shrink"),
                       ("oip", "frontend CPU per request: Open Inference Protocol (JSON, binary) vs /generate"),
                       ("peers", "the same model behind LitServe, Ray Serve and BentoML vs Anytime (extra `peers`)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
        p.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
        p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per run")
        p.add_argument("--deadlines", default="loguniform:20:1000", help="deadline distribution in ms")
        p.add_argument("--n-mix", default="1:0.5,4:0.3,16:0.2", help="samples per request: value:weight,...")
        p.add_argument("--server-flag", action="append", default=[], help="extra `anytime serve` flag (repeat)")
        p.add_argument("--out", type=Path, required=True)
    load = sub.choices["load"]
    load.add_argument("--url", default=None, help="a running server; default: start one")
    load.add_argument("--rate", type=float, default=None, help="requests/s (default: --load x measured capacity)")
    load.add_argument("--load", type=float, default=1.0, help="offered load as a multiple of full-length capacity")
    soak = sub.choices["soak"]
    soak.add_argument("--load", type=float, default=2.0, help="multiple of full-length capacity")
    soak.add_argument("--sample-every", type=float, default=1.0,
                      help="seconds between samples of the server's RSS, open files and /healthz latency")
    sub.choices["threads"].add_argument("--load", type=float, default=2.0, help="multiple of full-length capacity")
    peers = sub.choices["peers"]
    peers.add_argument("--servers", default="anytime,litserve,ray-serve,bentoml",
                       help="measure these (anytime first: the others also run at 2x its capacity)")
    peers.add_argument("--report-only", action="store_true", help="rebuild the report from OUT/raw only")
    peers.add_argument("--tune", default=None, help="comma-separated peers: try their batch sizes (needs OUT/raw/anytime.json)")
    chaos = sub.add_parser("chaos", help="mixed traffic while frontend workers are killed at random; memory by process")
    chaos.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    chaos.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    chaos.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    chaos.add_argument("--kill-every", type=float, default=10.0, help="seconds between kills (0: none, a memory soak)")
    chaos.add_argument("--workers", type=int, default=2)
    chaos.add_argument("--clients", type=int, default=6, help="closed-loop clients")
    chaos.add_argument("--warmup", type=float, default=60.0, help="memory growth is judged after this")
    chaos.add_argument("--server-flag", action="append", default=[], help="extra `anytime serve` flag (repeat)")
    chaos.add_argument("--out", type=Path, required=True)
    fleet = sub.add_parser("fleet", help="two replicas behind HAProxy, one loaded by bulk work: headroom routing "
                           "+ retry vs round robin on the same interactive arrivals")
    fleet.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    fleet.add_argument("--rate", type=float, default=20.0, help="interactive requests/s through the balancer")
    fleet.add_argument("--duration", type=float, default=12.0, help="seconds of interactive arrivals per run")
    fleet.add_argument("--rounds", type=int, default=4, help="runs per balancer (alternating which goes first)")
    fleet.add_argument("--deadlines", default="loguniform:100:400", help="interactive deadlines in ms")
    fleet.add_argument("--min-tokens", type=int, default=32, help="interactive quality floor (of D=64 by default)")
    fleet.add_argument("--bulk-clients", type=int, default=16, help="closed-loop bulk clients on replica 1")
    fleet.add_argument("--bulk-n", type=int, default=16)
    fleet.add_argument("--bulk-deadline-ms", type=int, default=600)
    fleet.add_argument("--server-flag", action="append", default=[], help="extra `anytime serve` flag (repeat)")
    fleet.add_argument("--out", type=Path, default=Path("bench/results/fleet"))
    plan = sub.add_parser("plan", help="the capacity planner (anytime plan) against a measured replica on the "
                          "same arrivals, at multiples of its n=1 capacity")
    plan.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    plan.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    plan.add_argument("--loads", default="0.5,1,2", help="multiples of the replica's full-length n=1 capacity")
    plan.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per load")
    plan.add_argument("--deadlines", default="loguniform:50:1000", help="deadline distribution in ms")
    plan.add_argument("--n-mix", default="1", help="samples per request: value:weight,...")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--jitter", type=float, default=None, help="the simulation's cost noise (anytime plan --jitter; "
                      "default: fitted with the contention)")
    plan.add_argument("--repeats", type=int, default=1, help="measured runs of each load (their mean is compared)")
    plan.add_argument("--server-flag", action="append", default=[], help="extra `anytime serve` flag (repeat)")
    plan.add_argument("--out", type=Path, default=Path("bench/results/plan"))
    cost = sub.add_parser("cost", help="CPU per request by process role and request shape (--baseline: vs another checkout)")
    cost.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    cost.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    cost.add_argument("--workers", type=int, default=1, help="frontend workers of the servers started")
    cost.add_argument("--server-flag", action="append", default=[], help="extra `anytime serve` flag (repeat)")
    cost.add_argument("--seconds", type=float, default=4.0, help="seconds of load per cell")
    cost.add_argument("--rounds", type=int, default=3, help="rounds per cell (alternating servers); medians")
    cost.add_argument("--baseline", type=Path, default=None, help="a checkout of another commit: its server "
                      "(its own .venv when it has one) is measured beside this one")
    cost.add_argument("--url", default=None, help="attach to a running server instead (with --pid)")
    cost.add_argument("--pid", type=int, default=None, help="the attached server's supervisor process id")
    cost.add_argument("--baseline-url", default=None, help="attach to a running baseline server (with --baseline-pid)")
    cost.add_argument("--baseline-pid", type=int, default=None)
    cost.add_argument("--shapes", default=None, help="comma-separated shape names (default: all)")
    cost.add_argument("--profile", default="", help="comma-separated shape names: py-spy flame graphs of the "
                      "engine core and a frontend worker of each server under that load")
    cost.add_argument("--ratios", type=int, default=0, metavar="ROUNDS", help="also measure each server's "
                      "throughput ratios (n=1/n=64, 1-token/healthz) in this many rounds")
    cost.add_argument("--out", type=Path, default=Path("bench/results/cost"))
    sweep = sub.choices["sweep"]
    sweep.add_argument("--loads", default="0.25,0.5,1,2,4")
    sweep.add_argument("--rounds", type=int, default=1,
                       help="run every cell this many times, the entries' order rotated each round; rows pool them")
    sub.choices["split-sweep"].add_argument("--loads", default="0.25,0.5,1,2,4")
    sub.choices["guidance"].add_argument("--loads", default="0.5,1,2,4")
    sub.choices["mixed"].add_argument("--loads", default="1,2")
    sub.choices["mixed"].add_argument("--schedulers", default="anytime",
                                      help="comma-separated sweep entries ([CHECKOUT:]policy[+switch...]) to compare")
    sweep.add_argument("--policies", default="anytime,fixed,drop,static",
                       help="comma-separated; a policy may carry serve switches after + (anytime+no-slack) and "
                            "name another checkout before : (base:anytime+no-slack, with --checkout base=DIR)")
    inter = sub.choices["interactive"]
    inter.add_argument("--schedulers", default="anytime", help="comma-separated sweep entries to check")
    inter.add_argument("--repeats", type=int, default=1, help="servers started per scheduler")
    prio = sub.choices["priority"]
    prio.add_argument("--schedulers", default="anytime", help="comma-separated sweep entries to compare")
    prio.add_argument("--load", type=float, default=2.0, help="low-priority offered load, x capacity")
    for what in ("sweep", "mixed", "interactive", "priority"):
        sub.choices[what].add_argument("--checkout", action="append", default=[], metavar="NAME=DIR",
                                       help="another checkout of this repository (with DIR/.venv) whose server "
                                            "an entry NAME:... runs (repeat)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.what == "engine":
        from .engine_bench import run

        run(args.model_dir, args.out, args.prior, device=args.device)
        print((args.out / "engine.md").read_text())
        return 0
    if args.what == "fleet":
        from .fleet import run

        flags = ["--workers", "1", "--no-standby-worker", "--threads", "1", *args.server_flag]
        run(args.model_dir, args.out, args.rate, args.duration, args.rounds, args.deadlines, args.min_tokens,
            args.bulk_clients,
            args.bulk_n, args.bulk_deadline_ms, flags)
        print((args.out / "fleet.md").read_text())
        return 0
    if args.what == "plan":
        from .plan_validation import run

        run(["--model-dirs", str(args.model_dir), "--backend", args.backend, *args.server_flag], args.out,
            [float(x) for x in args.loads.split(",")], args.duration, args.deadlines, args.n_mix, args.seed, args.jitter,
            model_dir=args.model_dir, backend=args.backend, repeats=args.repeats)
        print((args.out / "validation.md").read_text())
        return 0
    if args.what == "cost":
        from .cost import report, run

        if bool(args.url) != bool(args.pid) or bool(args.baseline_url) != bool(args.baseline_pid):
            build_parser().error("--url needs --pid (and --baseline-url needs --baseline-pid)")
        flags = ["--model-dirs", str(args.model_dir.resolve()), "--backend", args.backend, "--workers",
                 str(args.workers), *args.server_flag]
        res = run(flags, args.out, args.seconds, args.rounds, args.baseline, args.url, args.pid, args.baseline_url,
                  args.baseline_pid, args.shapes.split(",") if args.shapes else None,
                  [s for s in args.profile.split(",") if s], args.ratios)
        print(report(res))
        return 0
    flags = ["--model-dirs", str(args.model_dir), "--backend", args.backend, *args.server_flag]
    if args.what == "chaos":
        from .chaos import run_cli

        run_cli(flags, args)
        print((args.out / "chaos.md").read_text())
        return 0
    if args.what == "overhead":
        from .overhead import run
        from .server_proc import serve

        args.out.mkdir(parents=True, exist_ok=True)
        with serve(*flags, log_path=args.out / "server.log") as url:
            run(url, args.out, title=f"HTTP + scheduling overhead on an idle server ({args.backend})")
        print((args.out / "overhead.md").read_text())
        return 0
    if args.what == "tracing":
        from .tracing import run

        run(flags, args.out)
        print((args.out / "tracing.md").read_text())
        return 0
    if args.what == "soak":
        import asyncio

        from .load_bench import measure_capacity
        from .loadgen import parse_mix
        from .server_proc import serve
        from .soak import run

        args.out.mkdir(parents=True, exist_ok=True)
        with serve(*flags, "--policy", "fixed") as cap_url:
            capacity = asyncio.run(measure_capacity(cap_url, args.n_mix))
        values, weights = parse_mix(args.n_mix)
        rate = args.load * capacity / (sum(v * w for v, w in zip(values, weights)) / sum(weights))
        with serve(*flags, log_path=args.out / "server.log") as url:
            run(url, serve.last_pid, rate, args.load, args.duration, args.deadlines, args.n_mix, args.out,
                args.sample_every)
        print((args.out / "soak.md").read_text())
        return 0
    if args.what == "split-sweep":
        from .split_sweep import run

        run(flags, [float(x) for x in args.loads.split(",")], args.duration, args.deadlines, args.n_mix, args.out)
        print((args.out / "split-sweep.md").read_text())
        return 0
    if args.what == "guidance":
        from .guidance_sweep import run

        run(flags, [float(x) for x in args.loads.split(",")], args.duration, args.deadlines, args.n_mix, args.out)
        print((args.out / "guidance.md").read_text())
        return 0
    if args.what == "priority":
        from .checkouts import parse_checkouts
        from .priority import run

        run(flags, args.out, args.schedulers.split(","), args.load, args.duration, parse_checkouts(args.checkout))
        print((args.out / "priority.md").read_text())
        return 0
    if args.what == "interactive":
        from .checkouts import parse_checkouts
        from .interactive import run

        run(flags, args.out, args.schedulers.split(","), parse_checkouts(args.checkout), args.repeats)
        print((args.out / "interactive.md").read_text())
        return 0
    if args.what == "mixed":
        from .checkouts import parse_checkouts
        from .mixed import run

        run(flags, [float(x) for x in args.loads.split(",")], args.duration, args.out,
            schedulers=args.schedulers.split(","), checkouts=parse_checkouts(args.checkout))
        print((args.out / "mixed.md").read_text())
        return 0
    if args.what == "split":
        from .split import run

        run(flags, args.model_dir, args.out)
        print((args.out / "split.md").read_text())
        return 0
    if args.what == "oip":
        import json

        from .oip_cost import run

        run(flags, json.loads((args.model_dir / "manifest.json").read_text())["name"], args.out)
        print((args.out / "oip-cost.md").read_text())
        return 0
    if args.what == "threads":
        from .thread_modes import run

        run(flags, args.load, args.duration, args.deadlines, args.n_mix, args.out)
        print((args.out / "modes.md").read_text())
        return 0
    if args.what == "peers":
        from .peers.report import write_report
        from .peers.run import run_server

        if args.tune:
            from .peers.tuning import tune

            tune(args.tune.split(","), args.out, args.duration, args.deadlines, args.n_mix)
            print((args.out / "tuning.md").read_text())
            return 0
        servers = [] if args.report_only else args.servers.split(",")
        for server in servers:
            try:
                run_server(server, args.out, args.duration, args.deadlines, args.n_mix, flags,
                           model_dir=args.model_dir)
                (args.out / "raw" / f"{server}.blocked").unlink(missing_ok=True)
            except Exception as e:  # a peer that cannot run here is reported, the others compared
                if server == "anytime":
                    raise
                (args.out / "raw").mkdir(parents=True, exist_ok=True)
                (args.out / "raw" / f"{server}.blocked").write_text(f"{type(e).__name__}: {e}\n")
                print(f"{server}: not measured: {e}")
        write_report(args.out)
        print((args.out / "peers.md").read_text())
        return 0
    if args.what == "sweep":
        from .policy_sweep import run

        from .checkouts import parse_checkouts

        run(flags, [float(x) for x in args.loads.split(",")], args.policies.split(","), args.duration,
            args.deadlines, args.n_mix, args.out, checkouts=parse_checkouts(args.checkout), rounds=args.rounds)
        print((args.out / "sweep.md").read_text())
        return 0
    import asyncio
    import json

    from .load_bench import measure_capacity, run
    from .loadgen import parse_mix
    from .server_proc import serve

    model = json.loads((args.model_dir / "manifest.json").read_text())
    title = f"Load test: {model['name']} on {args.backend}, policy anytime"
    values, weights = parse_mix(args.n_mix)
    mean_n = sum(v * w for v, w in zip(values, weights)) / sum(weights)

    def go(url: str) -> None:
        rate = args.rate
        if rate is None:
            with serve(*flags, "--policy", "fixed") as cap_url:
                capacity = asyncio.run(measure_capacity(cap_url, args.n_mix))
            rate = args.load * capacity / mean_n
            print(f"capacity {capacity:.1f} samples/s -> {rate:.1f} requests/s at {args.load}x")
        s = run(url, rate, args.duration, args.deadlines, args.n_mix, args.out, title,
                label_count=len(model.get("classes", [])))
        print((args.out / "load.md").read_text())

    if args.url:
        go(args.url)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        with serve(*flags, log_path=args.out / "server.log") as url:
            go(url)
    return 0
