"""Container images: hadolint on every Dockerfile, and the properties the deployment relies
on (non-root user, HEALTHCHECK, entrypoint, settings) read from the Dockerfiles themselves.
The images are built and run by docker/smoke-test.sh (log: bench/results/docker-smoke.log)."""
from __future__ import annotations

import importlib
import re
import subprocess

import pytest

from service.settings import Settings
from tests.deploy.tools import DOCKER, ROOT, tool

DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def final_stage(path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def test_there_are_cpu_and_gpu_dockerfiles():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage(dockerfile):
    ins = instructions(dockerfile)
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE="), "the base must be a build argument"
    assert sum(k == "FROM" for k, _ in ins) >= 3, "multi-stage: python, build, final"
    final = final_stage(dockerfile)
    kinds = [k for k, _ in final]
    user = [a for k, a in final if k == "USER"]
    assert user and not user[-1].split(":")[0] in ("0", "root"), "runs as root"
    assert user[-1].split(":")[0].isdigit(), "numeric UID, so that Kubernetes can check runAsNonRoot"
    health = [a for k, a in final if k == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    assert [a for k, a in final if k == "ENTRYPOINT"] == ['["anytime", "serve"]']
    assert "EXPOSE" in kinds
    # no compilers or package installs in the final stage: everything comes from `build`
    for k, a in final:
        if k == "RUN":
            assert not re.search(r"apt-get install|pip install|gcc|build-essential", a), a
    copies = [a for k, a in final if k == "COPY"]
    assert copies and all(a.startswith("--from=build ") for a in copies)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_env_is_real_settings(dockerfile):
    env = " ".join(a for k, a in final_stage(dockerfile) if k == "ENV")
    keys = set(re.findall(r"\b(ANYTIME_[A-Z_]+)=", env))
    fields = {"ANYTIME_" + name.upper() for name in Settings.model_fields}
    assert {"ANYTIME_HOST", "ANYTIME_PORT", "ANYTIME_BACKEND", "ANYTIME_MODEL_DIRS"} <= keys
    assert keys <= fields, keys - fields
    assert "ANYTIME_HOST=0.0.0.0" in env and "ANYTIME_PORT=8000" in env and "ANYTIME_BACKEND=onnx" in env


def test_cpu_image_needs_no_torch():
    """The default CPU image is ONNX-only: torch only with WITH_TORCH=true, and no service
    module imports torch at import time (runtime.py imports it inside TorchScriptRuntime)."""
    reqs = (DOCKER / "requirements-cpu.txt").read_text()
    assert not re.search(r"^torch", reqs, re.M) and re.search(r"^onnxruntime==", reqs, re.M)
    code = ("import sys, importlib, pkgutil, service\n"
            "sys.modules['torch'] = None  # any import of torch now fails\n"
            "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
            "    importlib.import_module(m.name)\n"
            "import anytime_cli\n")
    proc = subprocess.run([__import__("sys").executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_images_build_time_model_check_imports_what_exists():
    """Both Dockerfiles load every model at build time through service modules: those imports
    must name modules and functions that exist (a moved module would fail only at build)."""
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / name).read_text()
        imports = re.findall(r"from (service[.\w]*) import ([\w, ]+);", text)
        assert imports, name
        for module, names in imports:
            mod = importlib.import_module(module)
            for n in names.split(","):
                assert hasattr(mod, n.strip()), (name, module, n)


def test_requirements_are_pinned_and_gpu_has_no_cpu_onnxruntime():
    for name in ("requirements-cpu.txt", "requirements-gpu.txt"):
        for line in (DOCKER / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.+]*", line), f"{name}: unpinned {line!r}"
    gpu = (DOCKER / "requirements-gpu.txt").read_text()
    assert re.search(r"^onnxruntime-gpu==", gpu, re.M) and not re.search(r"^onnxruntime==", gpu, re.M)
    assert re.search(r"^torch==2\.13\.0$", gpu, re.M)


def test_dockerignore_lets_in_what_the_dockerfiles_copy():
    allowed = [l[1:].rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines() if l.startswith("!")]
    for dockerfile in DOCKERFILES:
        for k, a in instructions(dockerfile):
            if k == "COPY" and not a.startswith("--from="):
                src = a.split()[0]
                if src.startswith("${"):
                    continue  # MODEL_ZOO: default models/zoo, checked below
                assert any(src == p or src.startswith(p + "/") for p in allowed), f"{src} is excluded"
    assert "models/zoo" in allowed and "docker" in allowed


def test_smoke_script_passes_shellcheck():
    script = DOCKER / "smoke-test.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([tool("shellcheck"), "-S", "warning", str(script)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout


# Runtime dependencies the images leave out on purpose: training, export and plotting only.
NOT_SERVING = {"torch", "onnx", "onnxscript", "scipy", "tqdm", "matplotlib", "aiohttp"}


@pytest.mark.parametrize("name", ["requirements-cpu.txt", "requirements-gpu.txt"])
def test_requirements_follow_pyproject(name):
    """Every runtime dependency of the package is in the image (a new one must be added there
    too, or listed above), at a version pyproject.toml allows."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    pins = {}
    for line in (DOCKER / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            r = Requirement(line)
            pins[canonicalize_name(r.name)] = next(iter(r.specifier)).version
    if "gpu" in name:  # onnxruntime-gpu provides the onnxruntime module; torch is served there
        pins["onnxruntime"] = pins.pop("onnxruntime-gpu")
    for d in deps:
        key = canonicalize_name(d.name)
        if key in NOT_SERVING and key not in pins:
            continue
        assert key in pins, f"{name} lacks {d.name} (pyproject.toml dependency)"
        assert d.specifier.contains(pins[key], prereleases=True), f"{name}: {key}=={pins[key]} outside {d.specifier}"
