"""Zoo v2's starting point: checkpoints recovered from the v1 zoo's graphs, a new decoder trained
on a frozen encoder and codebook, a prior trained further from given weights."""
import dataclasses
import io
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from models import checkpoint
from models.dataset import Dataset
from models.ovqvae import OVQVAE
from models.recover import recover
from models.train_prior import train as train_prior
from models.train_vqvae import train as train_vqvae
from tests.utils.tiny_model import CLASSES, tiny_configs

ROOT = Path(__file__).resolve().parents[2]


def v1_zoo(dest: Path) -> Path:
    """The v1 zoo as committed before zoo v2 replaced it (the Makefile's V1_ZOO_REV): only v1's
    decoder graph carries the whole OVQ-VAE, so only it can be recovered."""
    rev = re.search(r"^V1_ZOO_REV \?= (\w+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "models/zoo/fashion-mnist"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"v1's zoo (commit {rev}) is not in this checkout: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "models/zoo/fashion-mnist"


def test_v1_zoo_gives_back_its_checkpoints(tmp_path):
    diffs = recover(v1_zoo(tmp_path / "v1"), tmp_path / "vq.pt", tmp_path / "prior.pt", "fashion-mnist", "test")
    assert diffs["decoder_max_abs_diff"] <= 1e-4 and diffs["step_max_abs_diff"] <= 1e-4
    vq, _ = checkpoint.load_ovqvae(tmp_path / "vq.pt")
    prior, ck = checkpoint.load_prior(tmp_path / "prior.pt")
    assert vq.config.D == prior.config.D == 64 and ck["meta"]["classes"][7] == "sneaker"
    # the full causal pass (training's) and the exported step agree once the scale is unfolded
    codes = torch.randint(0, 512, (2, 64))
    start = torch.full((2,), prior.config.start_token(None))
    with torch.no_grad():
        full = prior(codes, start)
        logits, _, _ = prior.step(start, torch.zeros(2, dtype=torch.long), *[[torch.zeros(2, 4, 64, 32)] * 4] * 2)
    torch.testing.assert_close(full[:, 0], logits, atol=1e-4, rtol=0)


def test_a_graph_without_the_encoder_cannot_be_recovered(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="carries no encoder"):
        recover(tiny_model_dir, tmp_path / "vq.pt", tmp_path / "prior.pt", "tiny-image", "test")


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    return Dataset(x=torch.rand(64, 1, 8, 8, generator=g) * 2 - 1, y=torch.arange(64) % 3, classes=CLASSES,
                   name="tiny")


def test_decoder_stage_keeps_the_tokens(tiny_checkpoints, tiny_data, tmp_path):
    vq_path, _ = tiny_checkpoints
    old, _ = checkpoint.load_ovqvae(vq_path)
    wide = dataclasses.replace(tiny_configs()[0], decoder_widths=(16,), decoder_res_blocks=2)
    new = train_vqvae(tiny_data, tmp_path / "dec.pt", wide, stage="decoder", epochs=1, init=vq_path, batch_size=16)
    assert new.config.decoder_widths == (16,) and new.decoder.net[0].out_channels == 16
    for name in ("encoder", "quantizer"):  # frozen: the same tokens for every input
        for (k, a), b in zip(getattr(old, name).state_dict().items(), getattr(new, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k} changed"
    assert torch.equal(old.encode(tiny_data.x), new.encode(tiny_data.x))
    resumed = train_vqvae(tiny_data, tmp_path / "dec.pt", wide, stage="decoder", epochs=1, init=vq_path)
    assert isinstance(resumed, OVQVAE) and resumed.config == new.config


def test_prior_trained_further_from_given_weights(tiny_checkpoints, tiny_data, tmp_path):
    vq_path, prior_path = tiny_checkpoints
    start, _ = checkpoint.load_prior(prior_path)
    further = train_prior(tiny_data, vq_path, tmp_path / "p.pt", preset="tiny", epochs=1, batch_size=16, lr=1e-6,
                          init=prior_path)
    assert further.config.n_layer == start.config.n_layer
    # lr 1e-6 for a few steps: the weights barely move from the given ones (a fresh prior would be far off)
    assert (further.head.weight - start.head.weight).abs().max() < 1e-3
