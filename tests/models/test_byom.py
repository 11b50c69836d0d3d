"""Bring your own model: modules written here, not this repository's classes, exported with
models.byom, passing `anytime check`, served, and generating through POST /generate."""
import base64
import io
import math
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from models.byom import export_model_dir
from tests.utils.server import running_server

ROOT = Path(__file__).resolve().parents[2]
D, K, H, HD = 8, 16, 2, 4
CLASSES = ["circle", "square"]


class OneLayerStep(nn.Module):
    """A single attention layer over the KV cache, with its own naming and layout."""

    def __init__(self):
        super().__init__()
        C = H * HD
        self.embed = nn.Embedding(K + len(CLASSES) + 1, C)  # codes, one start token per class, unconditional
        self.where = nn.Parameter(torch.randn(D, C) * 0.5)
        self.to_qkv = nn.Linear(C, 3 * C)
        self.readout = nn.Linear(C, K)
        self.register_buffer("slots", torch.arange(D))

    def forward(self, tokens, positions, k_cache, v_cache):
        x = self.embed(tokens) + self.where[positions]  # [B, C]
        q, k, v = (t.reshape(-1, H, HD) for t in self.to_qkv(x).chunk(3, dim=-1))  # [B, H, hd]
        hidden = torch.where(self.slots[None, :] < positions[:, None], 0.0, float("-inf"))  # [B, D]
        past = torch.einsum("bhd,bhsd->bhs", q, k_cache) / math.sqrt(HD) + hidden[:, None, :]
        now = (q * k).sum(-1, keepdim=True) / math.sqrt(HD)
        w = torch.softmax(torch.cat([past, now], dim=-1), dim=-1)  # [B, H, D + 1]
        y = torch.einsum("bhs,bhsd->bhd", w[..., :D], v_cache) + w[..., D:] * v
        return 3 * self.readout(y.reshape(tokens.shape[0], -1) + x), k, v


class PatchDecoder(nn.Module):
    """Each code paints its own 4x4 patch of an 8x8 image (the first k patches after k codes)."""

    def __init__(self, zero_fill: bool = True):
        super().__init__()
        self.patches = nn.Embedding(K, 16)
        self.zero_fill = zero_fill
        self.register_buffer("slots", torch.arange(D))

    def forward(self, codes, lengths):
        z = self.patches(codes)  # [B, D, 16]
        if self.zero_fill:
            z = z * (self.slots[None, :] < lengths[:, None]).to(z.dtype)[..., None]
        img = z.reshape(-1, 2, 4, 4, 4).sum(1)  # 8 patches, two layers of a 2x2 grid
        img = img.reshape(-1, 2, 2, 4, 4).permute(0, 1, 3, 2, 4).reshape(-1, 1, 8, 8)
        return torch.sigmoid(img)


SHAPE = dict(D=D, K=K, n_layer=1, n_head=H, head_dim=HD, classes=CLASSES)


@pytest.fixture(scope="module")
def byo_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("byo") / "shapes"
    data = np.random.default_rng(0).random((300, 1, 8, 8)).astype(np.float32)  # "real" samples to measure against
    export_model_dir(OneLayerStep(), PatchDecoder(), out, name="shapes", sample_shape=(1, 8, 8), quality_data=data,
                     quality_samples=200, **SHAPE)
    return out


def test_export_measures_a_quality_curve(byo_dir):
    import json

    m = json.loads((byo_dir / "manifest.json").read_text())
    q = m["quality"]
    assert m["modality"] == "image" and m["output"]["shape"] == [1, 8, 8] and m["classes"] == CLASSES
    assert m["prior"]["unconditional_token"] == K + 2 and m["provenance"]["step_module"] == "OneLayerStep"
    assert q["k"][-1] == D and q["quality"][-1] == 1.0 and len(q["frechet"]) == len(q["k"])
    assert all(b >= a for a, b in zip(q["quality"], q["quality"][1:]))
    assert "random_projection" in q["metric"]


def test_anytime_check_passes(byo_dir):
    proc = subprocess.run([sys.executable, "-m", "anytime_cli", "check", str(byo_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "12 rules: 12 passed" in proc.stdout


def test_served_and_generating(byo_dir):
    with running_server(model_dirs=str(byo_dir), threads=1) as (base, _):
        models = httpx.get(base + "/models", timeout=10).json()
        assert "shapes" in str(models)
        r = httpx.post(base + "/generate", json={"deadline_ms": 2000, "label": "square", "n": 2, "seed": 5}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "shapes" and body["tokens"] == D and body["deadline_met"] and len(body["samples"]) == 2
        npy = httpx.post(base + "/generate", json={"deadline_ms": 2000, "label": "square", "n": 2, "seed": 5,
                                                   "format": "npy"}, timeout=30)
        samples = np.load(io.BytesIO(npy.content))
        assert samples.shape == (2, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
        assert body["samples"][0]["media_type"] == "image/png" and base64.b64decode(body["samples"][0]["data"])[:4] == b"\x89PNG"


def test_a_module_that_breaks_the_contract_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"FAIL  zero-fill .*decoder\.ts"):
        export_model_dir(OneLayerStep(), PatchDecoder(zero_fill=False), tmp_path / "bad", name="bad",
                         quality_curve=[(4, 0.5), (8, 1.0)], **SHAPE)
    with pytest.raises(ValueError, match=r"step\(tokens, positions, \*2 caches\) raised"):
        export_model_dir(nn.Linear(1, 1), PatchDecoder(), tmp_path / "worse", name="worse", **SHAPE)


def test_the_documented_example_runs(tmp_path):
    """docs/bring-your-own-model.md's worked example, as written (export_model_dir checks the result)."""
    import json

    doc = (ROOT / "docs/bring-your-own-model.md").read_text()
    code = doc.split("```python\n")[1].split("```")[0].replace('"my-zoo/tiles"', repr(str(tmp_path / "tiles")))
    exec(compile(code, "bring-your-own-model.md", "exec"), {"__name__": "worked_example"})
    m = json.loads((tmp_path / "tiles" / "manifest.json").read_text())
    assert m["output"]["shape"] == [1, 12, 12] and m["prior"]["unconditional_token"] == 34 and m["D"] == 9
