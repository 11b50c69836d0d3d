"""`anytime check DIR`: does a model directory keep the contract in docs/model-format.md?

Each rule names the file it failed on. The cheap rules (manifest fields, files, checksums,
declared shapes, quality curve) are model_format.contract's, the same the service runs at
start-up and the exporter runs on what it wrote. The other rules load both formats and run them
as the service would: any batch size, rows at different positions, zero-fill past `lengths`,
TorchScript and ONNX agreeing, the same seed giving the same tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from model_format.contract import (BACKEND_ROLES, DECODER_INPUTS, DECODER_OUTPUTS, GRAPH_ROLES, Problem,
                                   checksum_problems, declared_shape_problems, manifest_field_problems,
                                   missing_file_problems, quality_curve_problems, read_manifest, step_signature)

from .graphs import Graph, empty_caches, generate, open_graph, write_new

TOLERANCE = 1e-4  # on |a - b| / (1 + max |b|): float rounding differs between runtimes and batch sizes
BACKENDS = ("torchscript", "onnx")
# (backend, graph) -> the file role the manifest lists it under
ROLES = {(backend, graph): role for backend, roles in BACKEND_ROLES.items()
         for graph, role in zip(("step", "decoder"), roles)}


@dataclass
class Finding:
    file: str  # relative to the model directory
    message: str


@dataclass
class RuleResult:
    rule: str
    description: str
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None  # the failed rule this one needs

    @property
    def ok(self) -> bool:
        return not self.findings and self.skipped is None


class GraphFailed(Exception):
    """A graph raised while a rule ran it; the rule reports it against the graph's file."""

    def __init__(self, file: str, error: Exception):
        super().__init__(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
        self.file = file


class Context:
    """The directory under check: its manifest, the loaded graphs and the tolerance."""

    def __init__(self, path: Path, tolerance: float):
        self.path, self.tolerance = Path(path), tolerance
        self.manifest: dict = {}
        self.graphs: dict[tuple[str, str], Graph] = {}

    @property
    def m(self) -> dict:
        return self.manifest

    def file(self, backend: str, graph: str) -> str:
        return self.m["files"][ROLES[backend, graph]]["path"]

    def run(self, backend: str, graph: str, *arrays) -> list[np.ndarray]:
        try:
            return self.graphs[backend, graph](*arrays)
        except Exception as e:  # a broken graph fails in its own way; report, do not crash
            raise GraphFailed(self.file(backend, graph), e) from None

    def close(self, a: np.ndarray, b: np.ndarray) -> float | None:
        """None when a matches b within tolerance, else the largest difference."""
        if a.shape != b.shape:
            return math.inf
        diff = float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
        return None if diff <= self.tolerance * (1 + float(np.max(np.abs(b), initial=0.0))) else diff

    def random_step_inputs(self, positions: list[int], seed: int = 0) -> tuple[np.ndarray, ...]:
        m, rng = self.m, np.random.default_rng(seed)
        p = m["prior"]
        tokens = rng.integers(0, m["K"], len(positions))
        tokens[np.asarray(positions) == 0] = p["unconditional_token"]
        caches = [rng.standard_normal(c.shape).astype(np.float32)
                  for c in empty_caches(p["n_layer"], len(positions), p["n_head"], m["D"], p["head_dim"])]
        return (tokens.astype(np.int64), np.asarray(positions, np.int64), *caches)

    def random_codes(self, batch: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, self.m["K"], (batch, self.m["D"])).astype(np.int64)


# --- the cheap rules: model_format.contract's, as the service runs them at start-up ---

def _findings(problems: list[Problem]) -> list[Finding]:
    return [Finding(p.file, p.message) for p in problems]


def manifest_fields(ctx: Context) -> list[Finding]:
    ctx.manifest, bad = read_manifest(ctx.path)
    return _findings(bad or manifest_field_problems(ctx.manifest))


def files_present(ctx: Context) -> list[Finding]:
    return _findings(missing_file_problems(ctx.m, ctx.path, GRAPH_ROLES, every_listed=True))


def checksums(ctx: Context) -> list[Finding]:
    return _findings(checksum_problems(ctx.m, ctx.path, GRAPH_ROLES, every_listed=True))


def declared_shapes(ctx: Context) -> list[Finding]:
    return _findings(declared_shape_problems(ctx.m))


def quality_curve(ctx: Context) -> list[Finding]:
    return _findings(quality_curve_problems(ctx.m))


# --- the rules that load and run the graphs ---

def loads(ctx: Context) -> list[Finding]:
    bad = []
    inputs, outputs = step_signature(ctx.m["prior"]["n_layer"])
    names = {"step": (list(inputs), list(outputs)), "decoder": (list(DECODER_INPUTS), list(DECODER_OUTPUTS))}
    for (backend, graph), role in ROLES.items():
        f = ctx.file(backend, graph)
        try:
            g = ctx.graphs[backend, graph] = open_graph(ctx.path / f, backend)
        except Exception as e:
            bad.append(Finding(f, f"does not load as {backend}: {GraphFailed(f, e)}"))
            continue
        if backend == "onnx" and (g.input_names, g.output_names) != names[graph]:
            bad.append(Finding(f, f"ONNX inputs/outputs are {g.input_names} -> {g.output_names}, the contract "
                                  f"names {names[graph][0]} -> {names[graph][1]}"))
    return bad


def dynamic_batch(ctx: Context) -> list[Finding]:
    bad, D = [], ctx.m["D"]
    for backend in BACKENDS:
        for B in (1, 2, 5):
            for graph, args in (("step", ctx.random_step_inputs([b % D for b in range(B)], seed=B)),
                                ("decoder", (ctx.random_codes(B), np.arange(B, dtype=np.int64) % (D + 1)))):
                try:
                    out = ctx.run(backend, graph, *args)
                except GraphFailed as e:
                    bad.append(Finding(e.file, f"fails at batch {B}: {e}"))
                    continue
                if any(o.shape[:1] != (B,) for o in out):
                    bad.append(Finding(ctx.file(backend, graph), f"batch {B} in, output batch sizes "
                                                                 f"{[o.shape[:1] for o in out]} out"))
    return bad


def kv_shapes(ctx: Context) -> list[Finding]:
    m, p, bad = ctx.m, ctx.m["prior"], []
    B, L, H, hd = 3, p["n_layer"], p["n_head"], p["head_dim"]
    lo, hi = m["output"]["range"]
    for backend in BACKENDS:
        f = ctx.file(backend, "step")
        out = ctx.run(backend, "step", *ctx.random_step_inputs([0, min(1, m["D"] - 1), m["D"] - 1]))
        want = [(B, m["K"])] + [(B, H, hd)] * (2 * L)
        got = [tuple(o.shape) for o in out]
        if got != want:
            bad.append(Finding(f, f"outputs have shapes {got}; the manifest declares logits [B, K] and "
                                  f"{2 * L} keys/values [B, H, hd] = {want}"))
        elif any(o.dtype != np.float32 or not np.isfinite(o).all() for o in out):
            bad.append(Finding(f, "outputs must be finite float32"))
        f = ctx.file(backend, "decoder")
        (samples,) = ctx.run(backend, "decoder", ctx.random_codes(B), np.array([0, 1, m["D"]], np.int64))[:1]
        if tuple(samples.shape) != (B, *m["output"]["shape"]) or samples.dtype != np.float32:
            bad.append(Finding(f, f"samples {samples.dtype}{list(samples.shape)}, the manifest declares "
                                  f"float32{[B, *m['output']['shape']]}"))
        elif not (np.isfinite(samples).all() and samples.min() >= lo - 1e-4 and samples.max() <= hi + 1e-4):
            bad.append(Finding(f, f"samples span [{samples.min():.4g}, {samples.max():.4g}], outside `output.range` "
                                  f"[{lo}, {hi}]"))
    return bad


def mixed_positions(ctx: Context) -> list[Finding]:
    """Each row stepped alone to its own position, then all rows in one batch whose cache slots
    at and after each row's position hold noise: the same logits and keys/values."""
    m, p, bad = ctx.m, ctx.m["prior"], []
    D, L, H, hd = m["D"], p["n_layer"], p["n_head"], p["head_dim"]
    positions = sorted({0, D // 3, (2 * D) // 3, D - 1})
    history = np.random.default_rng(1).integers(0, m["K"], (len(positions), D)).astype(np.int64)
    noise = np.random.default_rng(2)
    for backend in BACKENDS:
        alone, caches = [], []
        for r, pos in enumerate(positions):
            cache = empty_caches(L, 1, H, D, hd)
            for t in range(pos + 1):
                token = np.array([p["unconditional_token"] if t == 0 else history[r, t - 1]], np.int64)
                out = ctx.run(backend, "step", token, np.array([t], np.int64), *cache)
                if t < pos:
                    write_new(cache, out[1:], np.array([t]))
            alone.append(out)
            for c in cache:
                c[0, :, pos:] = noise.standard_normal(c[0, :, pos:].shape) * 10  # must be masked
            caches.append(cache)
        tokens = np.array([p["unconditional_token"] if pos == 0 else history[r, pos - 1]
                           for r, pos in enumerate(positions)], np.int64)
        batched = ctx.run(backend, "step", tokens, np.array(positions, np.int64),
                          *[np.concatenate(layer) for layer in zip(*caches)])
        for r, pos in enumerate(positions):
            diffs = [ctx.close(b[r], a[0]) for b, a in zip(batched, alone[r])]
            if any(d is not None for d in diffs):
                bad.append(Finding(ctx.file(backend, "step"), f"row at position {pos} in a batch at positions "
                                   f"{positions} differs from the same row stepped alone (largest difference "
                                   f"{max(d for d in diffs if d is not None):.3g}): rows must not see each other nor "
                                   f"cache slots at or after their position"))
                break
    return bad


def zero_fill(ctx: Context) -> list[Finding]:
    """Decoding codes with length k equals decoding them with everything after k replaced (by code
    0, or by other codes); each row's length applies to that row alone."""
    D, bad = ctx.m["D"], []
    codes = ctx.random_codes(4, seed=3)
    lengths = np.array([0, 1, D // 2, D - 1], np.int64)
    for backend in BACKENDS:
        f = ctx.file(backend, "decoder")
        (out,) = ctx.run(backend, "decoder", codes, lengths)[:1]
        for name, fill in (("code 0", np.zeros_like(codes)), ("other codes", ctx.random_codes(4, seed=4))):
            cut = np.where(np.arange(D)[None, :] < lengths[:, None], codes, fill)
            (other,) = ctx.run(backend, "decoder", cut, lengths)[:1]
            for r, k in enumerate(lengths):
                d = ctx.close(other[r], out[r])
                if d is not None:
                    bad.append(Finding(f, f"decoding with length {k} changes (by {d:.3g}) when the codes after {k} "
                                          f"become {name}: the graph must zero-fill channels at and past `lengths`"))
                    break
        for r, k in enumerate(lengths):
            (alone,) = ctx.run(backend, "decoder", codes[r:r + 1], lengths[r:r + 1])[:1]
            d = ctx.close(out[r], alone[0])
            if d is not None:
                bad.append(Finding(f, f"row with length {k} decodes differently in a batch with other lengths "
                                      f"(by {d:.3g}): lengths must apply per row"))
                break
    return bad


def backend_agreement(ctx: Context) -> list[Finding]:
    D, bad = ctx.m["D"], []
    args = ctx.random_step_inputs([0, D // 2, D - 1], seed=5)
    ts, ox = ctx.run("torchscript", "step", *args), ctx.run("onnx", "step", *args)
    names = ["logits"] + [f"{kind}_new_{i}" for kind in "kv" for i in range(ctx.m["prior"]["n_layer"])]
    for name, a, b in zip(names, ox, ts):
        d = ctx.close(a, b)
        if d is not None:
            bad.append(Finding(ctx.file("onnx", "step"), f"`{name}` differs from {ctx.file('torchscript', 'step')} "
                                                         f"by {d:.3g} (tolerance {ctx.tolerance:g} relative)"))
            break
    codes, lengths = ctx.random_codes(3, seed=6), np.array([1, D // 2, D], np.int64)
    d = ctx.close(ctx.run("onnx", "decoder", codes, lengths)[0], ctx.run("torchscript", "decoder", codes, lengths)[0])
    if d is not None:
        bad.append(Finding(ctx.file("onnx", "decoder"), f"samples differ from {ctx.file('torchscript', 'decoder')} by "
                                                        f"{d:.3g} (tolerance {ctx.tolerance:g} relative)"))
    return bad


def determinism(ctx: Context) -> list[Finding]:
    """Sampling twice with the same seed gives the same tokens (the service promises it)."""
    m, p, bad = ctx.m, ctx.m["prior"], []
    starts = np.array([p["unconditional_token"]] + ([p["start_token_base"]] if m["classes"] else []), np.int64)
    for backend in BACKENDS:
        step = lambda *a, b=backend: ctx.run(b, "step", *a)
        kw = dict(D=m["D"], n_layer=p["n_layer"], n_head=p["n_head"], head_dim=p["head_dim"], seed=7)
        first, second = generate(step, starts, **kw), generate(step, starts, **kw)
        if not np.array_equal(first, second):
            r, t = np.argwhere(first != second)[0]
            bad.append(Finding(ctx.file(backend, "step"), f"the same seed gave different tokens (row {r}, first at "
                                                          f"position {t}): the step is not a pure function of its inputs"))
    return bad


Rule = Callable[[Context], list[Finding]]
# (name, what it checks, function, the rules it needs); in the order they run
RULES: list[tuple[str, str, Rule, tuple[str, ...]]] = [
    ("manifest-fields", "manifest.json has every field the service reads", manifest_fields, ()),
    ("files", "every file the manifest lists is present", files_present, ("manifest-fields",)),
    ("checksums", "every file has the manifest's sha256", checksums, ("manifest-fields",)),
    ("declared-shapes", "graphs declare the contract's inputs and outputs", declared_shapes, ("manifest-fields",)),
    ("quality-curve", "quality curve present and sane", quality_curve, ("manifest-fields",)),
    ("loads", "both formats load, ONNX names as declared", loads, ("files",)),
    ("dynamic-batch", "graphs run at batch 1, 2 and 5", dynamic_batch, ("loads",)),
    ("kv-shapes", "outputs have the declared shapes", kv_shapes, ("loads",)),
    ("mixed-positions", "rows at different positions = one at a time", mixed_positions, ("loads",)),
    ("zero-fill", "decoder zero-fills past `lengths`", zero_fill, ("loads",)),
    ("backend-agreement", "TorchScript and ONNX agree", backend_agreement, ("loads",)),
    ("determinism", "same seed, same tokens", determinism, ("loads",)),
]


def check_model_dir(path: Path, tolerance: float = TOLERANCE) -> list[RuleResult]:
    """Run every rule; a rule whose prerequisite failed is skipped (and counts as failed)."""
    ctx, results = Context(path, tolerance), {}
    for name, description, rule, needs in RULES:
        res = results[name] = RuleResult(name, description)
        failed = [n for n in needs if not results[n].ok]
        if failed:
            res.skipped = ", ".join(failed)
            continue
        try:
            res.findings = rule(ctx)
        except GraphFailed as e:
            res.findings = [Finding(e.file, str(e))]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            res.findings = [Finding("manifest.json", f"cannot run this rule: {type(e).__name__}: {e}")]
    return list(results.values())


def report(path: Path, results: list[RuleResult]) -> str:
    lines = [f"anytime check {path}"]
    for r in results:
        if r.skipped:
            lines.append(f"  SKIP  {r.rule:18s} {r.description} (needs {r.skipped})")
        elif r.ok:
            lines.append(f"  ok    {r.rule:18s} {r.description}")
        for f in r.findings:
            lines.append(f"  FAIL  {r.rule:18s} {f.file}: {f.message}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results)} rules: {len(results) - failed} passed, {failed} failed or skipped"
                 + ("" if failed else " -- the directory keeps the contract"))
    return "\n".join(lines)


def main(paths: list[Path], tolerance: float = TOLERANCE) -> int:
    """Check each directory; exit status 1 when any rule fails anywhere."""
    status = 0
    for path in paths:
        results = check_model_dir(path, tolerance)
        print(report(path, results))
        status |= any(not r.ok for r in results)
    return status
