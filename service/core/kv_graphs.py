"""The two small graphs that keep ONNX Runtime's KV cache on the device (service/core/ort_device.py).

Built at load time with onnx.helper from the manifest's shapes, so the zoo's step graph and its
contract (docs/model-format.md) stay as they are:

- *scatter*: writes each row's new key/value at its position, `cache[b, :, positions[b]] = new[b]`;
- *move*: copies whole cache rows (compaction when a sequence finishes).

Both are ScatterND on the cache, whose output the runtime binds to the same memory as the input:
ORT's ScatterND kernels (CPU and CUDA) skip the input-to-output copy when the two are the same
buffer, so only the rows written move, on the device.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .model_dir import ModelSpec

OPSET = 18  # ScatterND-18 (reduction "none"): ORT has CPU and CUDA kernels for it


def cache_names(n_layer: int) -> list[str]:
    return [f"{kind}_cache_{i}" for kind in "kv" for i in range(n_layer)]


def new_names(n_layer: int) -> list[str]:
    return [f"{kind}_new_{i}" for kind in "kv" for i in range(n_layer)]


def scatter_graph(n_layer: int, n_head: int, D: int, head_dim: int) -> onnx.ModelProto:
    """positions [B], {k,v}_cache_i [B, H, D, hd], {k,v}_new_i [B, H, hd] ->
    {k,v}_out_i [B, H, D, hd] = cache with cache[b, :, positions[b]] = new[b]."""
    B, H = "B", n_head
    i64 = lambda name, vals: helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["positions"], ["b_len"]),
        helper.make_node("Squeeze", ["b_len", "zero_axis"], ["b_scalar"]),
        helper.make_node("Range", ["zero", "b_scalar", "one"], ["rows"]),                 # [B]
        helper.make_node("Reshape", ["rows", "col"], ["rows_col"]),                       # [B, 1, 1]
        helper.make_node("Reshape", ["positions", "col"], ["pos_col"]),                   # [B, 1, 1]
        helper.make_node("Concat", ["b_len", "heads_one"], ["grid"], axis=0),             # [B, H, 1]
        helper.make_node("Expand", ["rows_col", "grid"], ["rows_grid"]),
        helper.make_node("Expand", ["heads", "grid"], ["heads_grid"]),
        helper.make_node("Expand", ["pos_col", "grid"], ["pos_grid"]),
        helper.make_node("Concat", ["rows_grid", "heads_grid", "pos_grid"], ["index"], axis=2),  # [B, H, 3]
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("one", TensorProto.INT64, [], [1]),
        i64("zero_axis", [0]),
        i64("col", [-1, 1, 1]),
        i64("heads_one", [H, 1]),
        helper.make_tensor("heads", TensorProto.INT64, [1, H, 1], list(range(H))),
    ]
    cache_t = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, H, D, head_dim])  # noqa: E731
    inputs = [helper.make_tensor_value_info("positions", TensorProto.INT64, [B])]
    outputs = []
    for cache, new in zip(cache_names(n_layer), new_names(n_layer)):
        out = cache.replace("_cache_", "_out_")
        nodes.append(helper.make_node("ScatterND", [cache, "index", new], [out]))
        inputs += [cache_t(cache), helper.make_tensor_value_info(new, TensorProto.FLOAT, [B, H, head_dim])]
        outputs.append(cache_t(out))
    graph = helper.make_graph(nodes, "kv_scatter", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def move_graph(n_layer: int, n_head: int, D: int, head_dim: int) -> onnx.ModelProto:
    """src [M], dst [M], {k,v}_cache_i [S, H, D, hd] -> {k,v}_out_i: cache with rows dst = rows src.
    Gather reads the source rows before ScatterND writes, so the output may alias the input."""
    nodes = [helper.make_node("Unsqueeze", ["dst", "last_axis"], ["dst_index"])]  # [M, 1]
    inits = [helper.make_tensor("last_axis", TensorProto.INT64, [1], [1])]
    cache_t = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["S", n_head, D, head_dim])  # noqa: E731
    inputs = [helper.make_tensor_value_info("src", TensorProto.INT64, ["M"]),
              helper.make_tensor_value_info("dst", TensorProto.INT64, ["M"])]
    outputs = []
    for cache in cache_names(n_layer):
        out, rows = cache.replace("_cache_", "_out_"), cache + "_rows"
        nodes += [helper.make_node("Gather", [cache, "src"], [rows], axis=0),
                  helper.make_node("ScatterND", [cache, "dst_index", rows], [out])]
        inputs.append(cache_t(cache))
        outputs.append(cache_t(out))
    graph = helper.make_graph(nodes, "kv_move", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def cache_graphs(spec: ModelSpec) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(scatter, move) for a model's cache shapes."""
    shape = spec.n_layer, spec.n_head, spec.D, spec.head_dim
    return scatter_graph(*shape), move_graph(*shape)
