"""`anytime check`: every rule passes on a good directory and fails on one that breaks it,
naming the file; the service's start-up refuses what the contract's cheap rules refuse
(model_format.contract, shared by both)."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import checkpoint
from models.check import RULES, check_model_dir
from models.export import FILES, example_decoder_inputs, example_step_inputs, write_decoder_graph, write_step_graph
from models.ovqvae import DecoderGraph
from models.prior import PriorStep
from model_format.contract import cheap_problems
from service.core.model_dir import ModelDirError, load_model_dir

ROOT = Path(__file__).resolve().parents[2]
CHEAP_RULES = {"manifest-fields", "files", "checksums", "declared-shapes", "quality-curve"}


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="module")
def eager(tiny_checkpoints):
    return checkpoint.load_ovqvae(tiny_checkpoints[0])[0].eval(), checkpoint.load_prior(tiny_checkpoints[1])[0].eval()


def edit_manifest(d: Path, change) -> None:
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    (d / "manifest.json").write_text(json.dumps(m))


def resign(d: Path) -> None:
    """Checksums from the files as they are now, so only the rule under test can fail."""
    def sign(m):
        for e in m["files"].values():
            e["sha256"] = hashlib.sha256((d / e["path"]).read_bytes()).hexdigest()
    edit_manifest(d, sign)


def replace_graphs(d: Path, tmp: Path, step=None, decoder=None, step_args=None, only: str | None = None) -> None:
    """Export `step` and/or `decoder` (wrappers of the tiny model) over the copy's files."""
    tmp.mkdir(exist_ok=True)
    if step is not None:
        write_step_graph(step, step_args, 2, tmp)
    if decoder is not None:
        write_decoder_graph(decoder, example_decoder_inputs(decoder), tmp)  # reads decoder.config
    for role, fn in FILES.items():
        if (tmp / fn).exists() and (only is None or role == only):
            shutil.copyfile(tmp / fn, d / fn)
    resign(d)


def failures(d: Path) -> dict[str, set[str]]:
    """rule -> files named by its findings (rules that ran and failed; skipped ones left out)."""
    return {r.rule: {f.file for f in r.findings} for r in check_model_dir(d) if r.findings}


def assert_startup_agrees(d: Path, rule: str) -> None:
    m = json.loads((d / "manifest.json").read_text())
    assert rule in {p.rule for p in cheap_problems(m, d)}
    with pytest.raises(ModelDirError, match=f"rule {rule}"):
        load_model_dir(d, "onnx")


class NoisyStep(PriorStep):
    """Logits with fresh noise on every call: not a pure function of the inputs."""

    def forward(self, tokens, positions, *caches):
        logits, *kv = super().forward(tokens, positions, *caches)
        return (logits + 10 * torch.randn_like(logits), *kv)


class CoupledRowsStep(PriorStep):
    """Each row's logits see the batch mean: rows are not independent."""

    def forward(self, tokens, positions, *caches):
        logits, *kv = super().forward(tokens, positions, *caches)
        return (logits + logits.mean(0, keepdim=True), *kv)


class FlatKeysStep(PriorStep):
    """Keys and values as [B, H * hd] instead of the declared [B, H, hd]."""

    def forward(self, tokens, positions, *caches):
        logits, *kv = super().forward(tokens, positions, *caches)
        return (logits, *(t.reshape(t.shape[0], -1) for t in kv))


class IgnoresLengthsDecoder(DecoderGraph):
    """Decodes every code whatever `lengths` says: no zero-fill."""

    def forward(self, codes, lengths):
        return super().forward(codes, torch.full_like(lengths, codes.shape[1]))


class PerturbedDecoder(DecoderGraph):
    def forward(self, codes, lengths):
        return (super().forward(codes, lengths) * 0.9).clamp(0, 1)


def test_every_rule_passes_on_the_tiny_model_and_the_zoo(tiny_model_dir):
    for d in [tiny_model_dir, *sorted((ROOT / "models/zoo").iterdir())]:
        results = check_model_dir(d)
        assert [r.rule for r in results] == [name for name, *_ in RULES]
        assert all(r.ok for r in results), [(r.rule, r.findings, r.skipped) for r in results if not r.ok]


def test_manifest_fields(model_copy):
    edit_manifest(model_copy, lambda m: m.pop("K"))
    assert failures(model_copy) == {"manifest-fields": {"manifest.json"}}
    assert_startup_agrees(model_copy, "manifest-fields")
    edit_manifest(model_copy, lambda m: m.update(K=16, prior={**m["prior"], "unconditional_token": 16}))
    assert failures(model_copy) == {"manifest-fields": {"manifest.json"}}  # must be K + 3 classes


@pytest.mark.parametrize("change", [
    lambda q: q.update(guidance=[0.0]),  # one guidance value for two curves
    lambda q: q.update(guidance=[0.0, 25.0]),  # beyond the largest guidance a request may ask for
    lambda q: q.update(k=list(reversed(q["k"]))),  # not ascending
    lambda q: q["quality"][0].append(0.5),  # a curve longer than the grid
    lambda q: q["quality"][1].__setitem__(0, 1.5),  # above 1: not on the shared scale
    lambda q: q.update(quality="high"),
])
def test_guided_quality_curves(tiny_guided_model_dir, tmp_path, change):
    d = tmp_path / "guided"
    shutil.copytree(tiny_guided_model_dir, d)
    assert failures(d) == {}
    edit_manifest(d, lambda m: change(m["prior"]["guidance"]["quality"]))
    assert failures(d) == {"manifest-fields": {"manifest.json"}}
    assert_startup_agrees(d, "manifest-fields")


def test_missing_file(model_copy):
    (model_copy / "decoder.ts").unlink()
    assert failures(model_copy)["files"] == {"decoder.ts"}
    m = json.loads((model_copy / "manifest.json").read_text())
    assert {p.rule for p in cheap_problems(m, model_copy)} == {"files"}


def test_corrupted_file(model_copy):
    with open(model_copy / "decoder.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xfe\xfd\xfc")
    assert failures(model_copy)["checksums"] == {"decoder.onnx"}
    assert_startup_agrees(model_copy, "checksums")


def test_declared_shapes(model_copy):
    edit_manifest(model_copy, lambda m: m["graphs"]["prior_step"]["inputs"].update(k_cache_0="float32[B,D,H,hd]"))
    assert failures(model_copy) == {"declared-shapes": {"manifest.json"}}
    assert_startup_agrees(model_copy, "declared-shapes")


@pytest.mark.parametrize("curve", [{"k": [1, 4, 8], "quality": [0.5, 0.4, 1.0]},  # decreasing
                                   {"k": [1, 4, 6], "quality": [0.2, 0.5, 1.0]},  # does not reach D
                                   {"k": [1, 4, 8], "quality": [0.2, 0.5, 0.9]},  # not 1 at D
                                   {"k": [1, 4], "quality": [0.2]}])
def test_quality_curve(model_copy, curve):
    edit_manifest(model_copy, lambda m: m["quality"].update(curve))
    assert failures(model_copy) == {"quality-curve": {"manifest.json"}}
    assert_startup_agrees(model_copy, "quality-curve")


def test_graph_that_does_not_load(model_copy):
    (model_copy / "prior_step.ts").write_bytes(b"not a TorchScript archive")
    resign(model_copy)
    assert failures(model_copy) == {"loads": {"prior_step.ts"}}
    skipped = {r.rule for r in check_model_dir(model_copy) if r.skipped}
    assert skipped == {"dynamic-batch", "kv-shapes", "mixed-positions", "zero-fill", "backend-agreement", "determinism"}


def test_fixed_batch_graph(model_copy, eager, tmp_path):
    _, prior = eager
    step, args = PriorStep(prior).eval(), example_step_inputs(prior)
    program = torch.onnx.export(step, args, dynamo=True, input_names=["tokens", "positions"] +
                                [f"{k}_cache_{i}" for k in "kv" for i in range(2)],
                                output_names=["logits"] + [f"{k}_new_{i}" for k in "kv" for i in range(2)])
    program.save(str(model_copy / "prior_step.onnx"))  # no dynamic_shapes: batch fixed at 3
    resign(model_copy)
    assert failures(model_copy)["dynamic-batch"] == {"prior_step.onnx"}


def test_wrong_kv_shape(model_copy, eager, tmp_path):
    _, prior = eager
    replace_graphs(model_copy, tmp_path / "g", step=FlatKeysStep(prior).eval(), step_args=example_step_inputs(prior))
    assert failures(model_copy)["kv-shapes"] == {"prior_step.ts", "prior_step.onnx"}


def test_rows_that_see_each_other(model_copy, eager, tmp_path):
    _, prior = eager
    replace_graphs(model_copy, tmp_path / "g", step=CoupledRowsStep(prior).eval(), step_args=example_step_inputs(prior))
    assert failures(model_copy) == {"mixed-positions": {"prior_step.ts", "prior_step.onnx"}}


def test_missing_zero_fill(model_copy, eager, tmp_path):
    vq, _ = eager
    replace_graphs(model_copy, tmp_path / "g", decoder=IgnoresLengthsDecoder(vq).eval())
    assert failures(model_copy) == {"zero-fill": {"decoder.ts", "decoder.onnx"}}


def test_backends_that_disagree(model_copy, eager, tmp_path):
    vq, _ = eager
    replace_graphs(model_copy, tmp_path / "g", decoder=PerturbedDecoder(vq).eval(), only="decoder_onnx")
    assert failures(model_copy) == {"backend-agreement": {"decoder.onnx"}}


def test_non_deterministic_step(model_copy, eager, tmp_path):
    _, prior = eager
    replace_graphs(model_copy, tmp_path / "g", step=NoisyStep(prior).eval(), step_args=example_step_inputs(prior))
    fails = failures(model_copy)
    assert fails["determinism"] == {"prior_step.ts", "prior_step.onnx"}


def test_cli_reports_each_failed_rule_and_exits_non_zero(model_copy, tiny_model_dir):
    ok = subprocess.run([sys.executable, "-m", "anytime_cli", "check", str(tiny_model_dir)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "12 rules: 12 passed" in ok.stdout
    (model_copy / "decoder.ts").unlink()
    edit_manifest(model_copy, lambda m: m["quality"].update(quality=[0.1] * 8))
    bad = subprocess.run([sys.executable, "-m", "anytime_cli", "check", str(model_copy)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "FAIL  files              decoder.ts: file is missing (role decoder_torchscript)" in bad.stdout
    assert "FAIL  quality-curve      manifest.json: quality curve must be 1 at k = D" in bad.stdout
    assert "SKIP  loads" in bad.stdout


def test_the_exporter_refuses_to_write_what_the_service_would_refuse(model_copy):
    """models/export.write_manifest runs the same contract rules on what it wrote."""
    from models.export import write_manifest

    m = json.loads((model_copy / "manifest.json").read_text())
    args = dict(name=m["name"], modality=m["modality"], D=m["D"], K=m["K"], output=m["output"],
                classes=m["classes"], prior={k: m["prior"][k] for k in ("n_layer", "n_head", "head_dim")},
                files={role: e["path"] for role, e in m["files"].items()}, provenance={})
    assert write_manifest(model_copy, quality=m["quality"], **args)["format_version"] == 2
    with pytest.raises(ValueError, match=r"quality curve must end at k = D .*\[rule quality-curve\]"):
        write_manifest(model_copy, quality={"k": [1, 2], "quality": [0.5, 1.0]}, **args)
