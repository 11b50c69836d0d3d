import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ANYTIME_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny exported model directory (TorchScript + ONNX + manifest), built once per test run."""
    from tests.utils.tiny_model import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("zoo"), "tiny", D=8, K=16)


@pytest.fixture(scope="session")
def tiny_guided_model_dir(tmp_path_factory) -> Path:
    """The tiny model's weights exported as a prior that supports classifier-free guidance
    (trained with label dropout, as the manifest says), default guidance 1.5."""
    from tests.utils.tiny_model import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("zoo-guided"), "tiny-guided", D=8, K=16, guidance_default=1.5)


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_model_dir) -> tuple[Path, Path]:
    root = tiny_model_dir.parent / "ckpt"
    return root / "vqvae.pt", root / "prior.pt"
