"""Training stopped part-way through an epoch resumes at the step it reached and ends with the
same weights as a run that was never stopped (zoo v2 trains on a shared machine)."""
import dataclasses

import pytest
import torch

from models import checkpoint
from models.dataset import Dataset
from models.train_prior import train as train_prior
from models.train_vqvae import train as train_vqvae
from tests.utils.tiny_model import CLASSES, tiny_configs


class Stop(Exception):
    pass


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(0)
    return Dataset(x=torch.rand(64, 1, 8, 8, generator=g) * 2 - 1, y=torch.arange(64) % 3, classes=CLASSES,
                   name="tiny")


def stop_after_saves(monkeypatch, n: int) -> list[dict]:
    """checkpoint.save writes, then raises after the n-th mid-epoch save, like a kill right after it."""
    real, seen = checkpoint.save, []

    def save(path, **payload):
        real(path, **payload)
        if payload.get("partial"):
            seen.append(payload["partial"])
            if len(seen) == n:
                raise Stop
    monkeypatch.setattr(checkpoint, "save", save)
    return seen


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_prior_resumes_mid_epoch(tiny_checkpoints, tiny_data, tmp_path, monkeypatch):
    vq_path, prior_path = tiny_checkpoints
    kw = dict(preset="tiny", epochs=2, batch_size=16, init=prior_path, checkpoint_every=1)
    whole = train_prior(tiny_data, vq_path, tmp_path / "whole.pt", **kw)
    seen = stop_after_saves(monkeypatch, 5)  # 4 steps an epoch, 3 mid-epoch saves each: stops in epoch 2
    with pytest.raises(Stop):
        train_prior(tiny_data, vq_path, tmp_path / "cut.pt", **kw)
    stopped = checkpoint.load(tmp_path / "cut.pt")
    assert stopped["epoch"] == 1 and stopped["partial"]["step"] == seen[-1]["step"] == 2
    monkeypatch.undo()
    resumed = train_prior(tiny_data, vq_path, tmp_path / "cut.pt", **kw)
    assert_same_weights(whole, resumed)
    done = checkpoint.load(tmp_path / "cut.pt")
    assert done["epoch"] == 2 and done["partial"] is None and len(done["history"]) == 2


@pytest.mark.parametrize("stage", ["plain", "decoder"])
def test_vqvae_resumes_mid_epoch(tiny_checkpoints, tiny_data, tmp_path, monkeypatch, stage):
    vq_path, _ = tiny_checkpoints
    config = dataclasses.replace(tiny_configs()[0], decoder_widths=(16,), decoder_res_blocks=2)
    kw = dict(config=config, stage=stage, epochs=2, batch_size=16, checkpoint_every=1,
              init=vq_path if stage == "decoder" else None)
    whole = train_vqvae(tiny_data, tmp_path / "whole.pt", **kw)
    stop_after_saves(monkeypatch, 4)  # 4 steps an epoch, 3 mid-epoch saves each: stops after step 1 of epoch 2
    with pytest.raises(Stop):
        train_vqvae(tiny_data, tmp_path / "cut.pt", **kw)
    assert checkpoint.load(tmp_path / "cut.pt")["partial"]["step"] == 1
    monkeypatch.undo()
    resumed = train_vqvae(tiny_data, tmp_path / "cut.pt", **kw)
    assert_same_weights(whole, resumed)
    history = checkpoint.load(tmp_path / "cut.pt")["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history == checkpoint.load(tmp_path / "whole.pt")["history"]
