"""Where the time of one prior step goes in ONNX Runtime: per-operator totals from ORT's
profiler at a given batch, and a wall-time breakdown without the profiler (the step's Gemm
nodes alone and its attention products over the cache alone, timed as graphs of their own).

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


def _session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()  # as service/core/runtime.py sets them (spinning: ORT's default)
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def gemm_graph(step_path: Path):
    """The step graph's Gemm nodes (same weights and attributes), each fed from an input of its own."""
    import onnx
    from onnx import TensorProto, helper

    g = onnx.load(str(step_path)).graph
    inits = {i.name: i for i in g.initializer}
    nodes, inputs, outputs, used = [], [], [], []
    for n in (n for n in g.node if n.op_type == "Gemm"):
        w = inits[n.input[1]]
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        width, out = (w.dims[1], w.dims[0]) if trans_b else (w.dims[0], w.dims[1])
        x, y = f"x{len(nodes)}", f"y{len(nodes)}"
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", width]))
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, ["B", out]))
        nodes.append(helper.make_node("Gemm", [x, *n.input[1:]], [y], name=n.name, attribute=None))
        nodes[-1].attribute.extend(n.attribute)
        used += [inits[i] for i in n.input[1:] if i in inits]
    opset = [o for o in onnx.load(str(step_path)).opset_import if o.domain in ("", "ai.onnx")]
    model = helper.make_model(helper.make_graph(nodes, "gemms", inputs, outputs, list({i.name: i for i in used}.values())),
                              opset_imports=opset)
    return model.SerializeToString(), len(nodes)


def attention_graph(n_layer: int, n_head: int, D: int, hd: int):
    """The step's 2 L batched products over the cache: q [B,H,1,hd] x k_cache^T and w [B,H,1,D] x v_cache."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes, inputs, outputs = [], [], []
    for i in range(n_layer):
        inputs += [helper.make_tensor_value_info(f"q{i}", f, ["B", n_head, 1, hd]),
                   helper.make_tensor_value_info(f"w{i}", f, ["B", n_head, 1, D]),
                   helper.make_tensor_value_info(f"k_cache_{i}", f, ["B", n_head, D, hd]),
                   helper.make_tensor_value_info(f"v_cache_{i}", f, ["B", n_head, D, hd])]
        nodes += [helper.make_node("Transpose", [f"k_cache_{i}"], [f"kt{i}"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", [f"q{i}", f"kt{i}"], [f"s{i}"]),
                  helper.make_node("MatMul", [f"w{i}", f"v_cache_{i}"], [f"y{i}"])]
        outputs += [helper.make_tensor_value_info(f"s{i}", f, None), helper.make_tensor_value_info(f"y{i}", f, None)]
    model = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def breakdown(model_dir: Path, batch: int, rounds: int = 15, repeats: int = 40) -> dict:
    """Median wall time (no profiler) of the whole step, of its Gemms alone and of its attention
    products over the cache alone; the three are timed round-robin and each keeps its best
    round, so that other load on the machine does not land on one of them only."""
    import os

    manifest = json.loads((model_dir / "manifest.json").read_text())
    p, D = manifest["prior"], manifest["D"]
    threads = int(os.environ.get("ANYTIME_THREADS", "0")) or (os.cpu_count() or 1)
    step_path = model_dir / manifest["files"]["prior_step_onnx"]["path"]
    gemms, n_gemm = gemm_graph(step_path)
    sessions = {"step": _session(str(step_path), threads), "gemms": _session(gemms, threads),
                "attention": _session(attention_graph(p["n_layer"], p["n_head"], D, p["head_dim"]), threads)}
    rng = np.random.default_rng(0)
    feeds = {}
    for name, sess in sessions.items():
        feeds[name] = {}
        for i in sess.get_inputs():
            if i.name == "tokens":
                feeds[name][i.name] = np.full(batch, p["unconditional_token"], dtype=np.int64)
            elif i.name == "positions":
                feeds[name][i.name] = (np.arange(batch, dtype=np.int64) * 7) % D
            else:
                feeds[name][i.name] = rng.standard_normal([batch, *i.shape[1:]]).astype(np.float32)
    best = {name: float("inf") for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(5):
                sess.run(None, feeds[name])
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                sess.run(None, feeds[name])
                times.append(time.perf_counter() - t)
            best[name] = min(best[name], float(np.median(times)) * 1000)
    cache_mb = 2 * p["n_layer"] * batch * p["n_head"] * D * p["head_dim"] * 4 / 2**20
    return {"batch": batch, "threads": threads, "gemm_nodes": n_gemm, "cache_mb": cache_mb, **{f"{k}_ms": v for k, v in best.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=Path("models/zoo/fashion-mnist"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--out", type=Path, default=Path("bench/results/engine/profile.md"))
    a = ap.parse_args()
    lines = [header("Where a prior step's time goes (ONNX Runtime profiler, CPU)")]
    results = [profile(a.model_dir, b) for b in a.batch]
    parts = [breakdown(a.model_dir, b) for b in a.batch]
    lines += ["## Wall time without the profiler", "",
              "Each graph timed round-robin with the others, best of 15 rounds of the median of 40 runs; "
              f"{parts[0]['threads']} intra-op threads. `Gemms alone`: the step's {parts[0]['gemm_nodes']} Gemm "
              "nodes with their weights, each fed its own input. `Attention products alone`: the 2 L batched "
              "MatMuls over the cache (`q @ k_cache^T`, `w @ v_cache`), which read the whole cache.", "",
              "| batch | step | Gemms alone | attention products alone | rest (other ops, dispatch) | cache read per step |",
              "|---|---|---|---|---|---|"]
    for r in parts:
        rest = r["step_ms"] - r["gemms_ms"] - r["attention_ms"]
        lines.append(f"| {r['batch']} | {r['step_ms']:.3f} ms | {r['gemms_ms']:.3f} ms | {r['attention_ms']:.3f} ms "
                     f"| {rest:.3f} ms | {r['cache_mb']:.1f} MB |")
    lines.append("")
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
    (a.out.with_suffix(".json")).write_text(json.dumps({"profile": results, "wall": parts}, indent=1))
    print(a.out.read_text())


if __name__ == "__main__":
    main()
