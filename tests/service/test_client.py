"""The Python client and `anytime generate` against a real server."""
import json

import pytest
from PIL import Image

from anytime_cli import main as anytime
from service.client import GenerateError, generate
from tests.utils.server import running_server


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), backend="onnx") as (url, _):
        yield url


def test_generate_and_save(base, tmp_path):
    result = generate(base, 2000, n=2, seed=1, label="one")
    assert result.meta["tokens"] == 8 and result.meta["label"] == "one"
    paths = result.save(tmp_path)
    assert [p.suffix for p in paths] == [".png", ".png"] and Image.open(paths[0]).size == (8, 8)


def test_streaming_calls_back_per_preview(base):
    seen = []
    result = generate(base, 2000, stream=True, preview_every=4, seed=2, on_preview=seen.append)
    assert [p["tokens"] for p in seen] == [4] and result.meta["tokens"] == 8
    assert result.previews[0]["tokens"] == 4


def test_errors_raise_with_status(base):
    with pytest.raises(GenerateError) as e:
        generate(base, 2000, label="nine")
    assert e.value.status == 404 and "unknown label" in e.value.message


def test_cli_writes_files(base, tmp_path, capsys):
    assert anytime(["generate", "--url", base, "--deadline-ms", "2000", "--n", "3", "--stream",
                    "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["files"]) == 3 and all((tmp_path / f.split("/")[-1]).exists() for f in out["files"])
    assert anytime(["generate", "--url", base, "--deadline-ms", "1"]) == 1
