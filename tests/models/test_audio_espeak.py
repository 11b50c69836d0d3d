"""Builds a handful of spoken-digit clips with espeak-ng (installed by `make test` via APT_PACKAGES)."""
import json
import shutil

import numpy as np
import pytest

from models.data import load_dataset
from models.spoken_digits import DIGITS, build, variants

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (make apt)")


def test_build_a_few_clips_split_by_speaker(tmp_path):
    voices = variants()
    assert "default" in voices and len(voices) > 20 and "whisper" not in voices
    meta = build(tmp_path, renditions=1, test_fraction=0.34, words=DIGITS[:3], speakers=["default", "m3", "f2"],
                 progress=False, command="test")
    assert meta["clips"] == {"train": 6, "test": 3} and len(meta["speakers"]["test"]) == 1
    assert not set(meta["speakers"]["train"]) & set(meta["speakers"]["test"])  # unseen speakers
    assert json.loads((tmp_path / "meta.json").read_text())["sample_rate"] == 16000
    train, test = load_dataset("spoken-digits", "train", str(tmp_path)), load_dataset("spoken-digits", "test", str(tmp_path))
    assert train.x.shape == (6, 1, 16384) and test.x.shape == (3, 1, 16384) and train.sample_rate == 16000
    assert train.classes == ["zero", "one", "two"] and sorted(test.y.tolist()) == [0, 1, 2]
    x = train.x.numpy()[:, 0]
    assert np.abs(x).max(1) == pytest.approx(0.95, abs=1e-3)  # peak-normalized
    assert np.abs(x.mean(1)).max() < 0.01  # high-passed: no DC
    # speech in the middle, silence at the edges of the 1.024 s window
    assert (np.abs(x[:, :400]).max() < 0.02) and (np.abs(x[:, -400:]).max() < 0.02)
    assert ((np.abs(x) > 0.05).sum(1) > 1600).all()  # at least 0.1 s of audible signal
    with np.load(tmp_path / "train.npz") as f:
        assert f["x"].dtype == np.int16 and set(f["speaker"]) == set(meta["speakers"]["train"])
