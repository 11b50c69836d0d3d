"""`anytime migrate`: a format-1 directory becomes format 2 with the same step function."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import checkpoint
from models.export import sha256
from models.migrate import MigrationError, migrate
from service.model_dir import ModelDirError, load_model_dir
from service.runtime import make_runtime

ROOT = Path(__file__).resolve().parents[2]


class V1Step(nn.Module):
    """The format-1 step contract: one [B, L, H, D, hd] cache per kind, stacked outputs."""

    def __init__(self, prior):
        super().__init__()
        self.prior = prior

    def forward(self, tokens, positions, k_cache, v_cache):
        logits, ks, vs = self.prior.step(tokens, positions, list(k_cache.unbind(1)), list(v_cache.unbind(1)))
        return logits, torch.stack(ks, dim=1), torch.stack(vs, dim=1)


@pytest.fixture
def v1_dir(tiny_model_dir, tiny_checkpoints, tmp_path) -> Path:
    """A copy of the tiny model with a format-1 TorchScript step graph and manifest."""
    d = tmp_path / "v1"
    shutil.copytree(tiny_model_dir, d)
    prior, _ = checkpoint.load_prior(tiny_checkpoints[1])
    c = prior.config
    shape = (2, c.n_layer, c.n_head, c.D, c.head_dim)
    args = (torch.tensor([c.K, 3]), torch.tensor([0, 5]), torch.randn(shape), torch.randn(shape))
    with torch.no_grad():
        torch.jit.trace(V1Step(prior).eval(), args, check_trace=False).save(str(d / "prior_step.ts"))
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 1
    m["files"]["prior_step_torchscript"]["sha256"] = sha256(d / "prior_step.ts")
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_migrate_rewrites_the_step_and_keeps_everything_else(v1_dir, tiny_checkpoints, tmp_path):
    before = json.loads((v1_dir / "manifest.json").read_text())
    decoder_sha = sha256(v1_dir / "decoder.onnx")
    with pytest.raises(ModelDirError, match="format_version 1 is no longer supported"):
        load_model_dir(v1_dir, "onnx")
    ck = tmp_path / "recovered.pt"
    after = migrate(v1_dir, save_checkpoint=ck, command="test")
    assert after["format_version"] == 2 and after["migrations"][-1]["from_format_version"] == 1
    assert max(after["migrations"][-1]["max_abs_diff_vs_old_step"].values()) < 1e-4
    for key in ("quality", "provenance", "classes", "prior", "output"):
        assert after[key] == before[key]
    assert after["files"]["decoder_onnx"] == before["files"]["decoder_onnx"]
    assert sha256(v1_dir / "decoder.onnx") == decoder_sha
    assert not list(v1_dir.glob(".migrate-*"))
    # the recovered checkpoint holds the trained weights exactly
    original, _ = checkpoint.load_prior(tiny_checkpoints[1])
    recovered, _ = checkpoint.load_prior(ck)
    for (name, a), (_, b) in zip(original.state_dict().items(), recovered.state_dict().items()):
        assert torch.equal(a, b), name
    # the service loads it and both backends step like eager
    for backend in ("torchscript", "onnx"):
        spec = load_model_dir(v1_dir, backend)
        rt = make_runtime(spec, backend, slots=2)
        got = rt.step(np.array([spec.unconditional_token, spec.start_token_base]), np.zeros(2, dtype=np.int64))
        with torch.no_grad():
            from models.prior import empty_cache

            kc, vc = empty_cache(original.config, 2)
            want, _, _ = original.step(torch.tensor([spec.unconditional_token, spec.start_token_base]),
                                       torch.zeros(2, dtype=torch.long), kc, vc)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(MigrationError, match="already format_version 2"):
        migrate(v1_dir)


def test_migrate_cli_refuses_a_modified_graph_and_changes_nothing(v1_dir):
    with open(v1_dir / "prior_step.ts", "ab") as f:
        f.write(b"x")
    before = (v1_dir / "manifest.json").read_text()
    proc = subprocess.run([sys.executable, "-m", "anytime_cli", "migrate", str(v1_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert (v1_dir / "manifest.json").read_text() == before
