"""Start-up refuses broken model directories with a message that names the problem."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.core.model_dir import ModelDirError, load_model_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_valid_directory_loads(model_copy):
    spec = load_model_dir(model_copy, "onnx")
    assert spec.D == 8 and spec.classes == ["zero", "one", "two"] and spec.label_index("TWO") == 2
    assert spec.quality(0) == 0 and spec.quality(8) == pytest.approx(1.0)


def test_corrupt_file_names_the_checksum_mismatch(model_copy):
    with open(model_copy / "prior_step.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ModelDirError, match=r"prior_step\.onnx: checksum mismatch"):
        load_model_dir(model_copy, "onnx")
    load_model_dir(model_copy, "torchscript")  # the other backend's files are intact


def test_missing_file_and_manifest(model_copy):
    (model_copy / "decoder.ts").unlink()
    with pytest.raises(ModelDirError, match=r"decoder\.ts: file is missing"):
        load_model_dir(model_copy, "torchscript")
    (model_copy / "manifest.json").unlink()
    with pytest.raises(ModelDirError, match="manifest.json is missing"):
        load_model_dir(model_copy, "onnx")


def test_other_format_version_and_malformed_manifest(model_copy):
    m = json.loads((model_copy / "manifest.json").read_text())
    (model_copy / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(ModelDirError, match="format_version 99 is not supported"):
        load_model_dir(model_copy, "onnx")
    (model_copy / "manifest.json").write_text(json.dumps({**m, "format_version": 1}))
    with pytest.raises(ModelDirError, match=r"format_version 1 is not supported.*re-export the model with "
                                            r"`anytime export \.\.\.`"):
        load_model_dir(model_copy, "onnx")
    del m["prior"]
    (model_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelDirError, match="malformed manifest"):
        load_model_dir(model_copy, "onnx")


def test_serve_refuses_to_start_with_a_clear_message(model_copy):
    with open(model_copy / "decoder.onnx", "ab") as f:
        f.write(b"tampered")
    proc = subprocess.run([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(model_copy), "--port", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "decoder.onnx: checksum mismatch" in proc.stderr and "Traceback" not in proc.stderr
