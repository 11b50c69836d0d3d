"""Where the time of one prior step goes in ONNX Runtime: per-operator totals from ORT's
profiler at a given batch, next to each operator's FLOPs where it is a matmul.

    python -m bench.profile_step --model-dir models/zoo/fashion-mnist --batch 64
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np

from .machine import header


def profile(model_dir: Path, batch: int, steps: int = 200) -> dict:
    import onnxruntime as ort

    manifest = json.loads((model_dir / "manifest.json").read_text())
    p = manifest["prior"]
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model_dir / manifest["files"]["prior_step_onnx"]["path"]), opts,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"tokens": np.full(batch, p["unconditional_token"], dtype=np.int64),
             "positions": (np.arange(batch, dtype=np.int64) * 7) % manifest["D"]}
    for i in sess.get_inputs()[2:]:  # k_cache_0.., v_cache_0..: [B, H, D, hd]
        feeds[i.name] = rng.standard_normal([batch, *i.shape[1:]]).astype(np.float32)
    for _ in range(20):
        sess.run(None, feeds)
    t = time.perf_counter()
    for _ in range(steps):
        sess.run(None, feeds)
    wall_ms = (time.perf_counter() - t) / steps * 1000
    trace_path = Path(sess.end_profiling())
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    per_op, nodes = collections.Counter(), collections.Counter()
    run_total = 0.0
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"]
            nodes[ev["args"]["op_name"]] += 1
        if ev.get("cat") == "Session" and ev["name"] == "model_run":
            run_total += ev["dur"]
    runs = steps + 20
    return {"batch": batch, "wall_ms": wall_ms, "model_run_ms": run_total / runs / 1000,
            "kernel_ms": sum(per_op.values()) / runs / 1000,
            "ops": {op: {"ms": us / runs / 1000, "nodes": nodes[op] // runs} for op, us in per_op.most_common()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=Path("models/zoo/fashion-mnist"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--out", type=Path, default=Path("bench/results/engine/profile.md"))
    a = ap.parse_args()
    lines = [header("Where a prior step's time goes (ONNX Runtime profiler, CPU)")]
    results = [profile(a.model_dir, b) for b in a.batch]
    for r in results:
        lines += [f"## batch {r['batch']}", "",
                  f"wall time per step {r['wall_ms']:.3f} ms (profiling on); ORT model_run {r['model_run_ms']:.3f} ms; "
                  f"sum of kernel times {r['kernel_ms']:.3f} ms (the rest is ORT's per-node dispatch).", "",
                  "| op type | nodes | ms per step | share of kernel time |", "|---|---|---|---|"]
        for op, v in list(r["ops"].items())[:12]:
            lines.append(f"| {op} | {v['nodes']} | {v['ms']:.3f} | {v['ms'] / r['kernel_ms']:.0%} |")
        lines.append("")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    (a.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print(a.out.read_text())


if __name__ == "__main__":
    main()
