"""The parts of `make gpu-check` (bench/gpu_check.py) that run without a GPU: arguments, the
commands each step would run, failing loudly with the step's name, the summary from fake results."""
from __future__ import annotations

import json
import os
import stat

import pytest

from bench import gpu_check
from bench.gpu_check import STEPS, Check, StepResult, commands, main, parse_args, summary


def test_default_runs_every_step_in_order(tmp_path):
    args = parse_args(["--out", str(tmp_path)])
    assert args.steps == list(STEPS) == ["device", "runtimes", "parity", "engine", "load-1x", "load-2x"]
    assert args.duration == 60.0


def test_a_subset_runs_in_the_checks_order(tmp_path):
    assert parse_args(["--out", str(tmp_path), "--steps", "engine, device"]).steps == ["device", "engine"]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "device,warp"], "unknown ['warp']"),
    (["--steps", ","], "--steps"),
    (["--duration", "0"], "--duration must be positive"),
    (["--steps", "load-2x"], "load-2x needs load-1x"),
])
def test_bad_arguments_exit_2_with_the_reason(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse_args(["--out", str(tmp_path), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_load_2x_alone_takes_the_rate_load_1x_measured(tmp_path):
    (tmp_path / "load-1x").mkdir()
    (tmp_path / "load-1x" / "summary.json").write_text(json.dumps({"rate": 12.5}))
    args = parse_args(["--out", str(tmp_path), "--steps", "load-2x"])
    argv = Check(args)._fill(commands("load-2x", args)[0].argv)
    assert argv[argv.index("--rate") + 1] == "25.000"


def test_dry_run_prints_what_each_step_runs(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--duration", "30", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_step = {}
    for line in lines:
        step, cmd = line.split(": ", 1)
        by_step.setdefault(step, []).append(cmd)
    assert list(by_step) == list(STEPS)
    runtimes = " ".join(by_step["runtimes"])
    assert "CUDAExecutionProvider" in runtimes and "torch.cuda.is_available()" in runtimes
    assert not any("pip" in cmd for cmds in by_step.values() for cmd in cmds)  # the gpu extra installs; the check never does
    parity = by_step["parity"][0]
    assert parity.startswith("ANYTIME_EXPECT_DEVICE=cuda NVIDIA_TF32_OVERRIDE=0 ")
    for test_file in gpu_check.PARITY_TESTS:
        assert test_file in parity and (gpu_check.ROOT / test_file).is_file()
    assert "bench engine --device cuda" in by_step["engine"][0]
    for step in ("load-1x", "load-2x"):
        assert "bench load" in by_step[step][0] and "--duration 30.0" in by_step[step][0]
        assert "--server-flag=--device=cuda" in by_step[step][0]
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def _fake_nvidia_smi(tmp_path, monkeypatch, body: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_failing_step_is_named_and_stops_the_check(tmp_path, monkeypatch, capsys):
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9")
    out = tmp_path / "gpu"
    assert main(["--out", str(out), "--steps", "device,runtimes"]) == 1
    err = capsys.readouterr().err
    assert "GPU CHECK FAILED at step 'device'" in err and "exited with 9" in err
    text = (out / "summary.md").read_text()
    assert "device:FAILED" in text and "runtimes" not in text.split("steps:")[1].splitlines()[0]
    assert "NVIDIA-SMI has failed" in (out / "device.log").read_text()


def test_a_passing_step_reports_the_gpu(tmp_path, monkeypatch, capsys):
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo '0, NVIDIA L4, 580.65, 23034 MiB'")
    out = tmp_path / "gpu"
    assert main(["--out", str(out), "--steps", "device"]) == 0
    text = (out / "summary.md").read_text()
    assert "device:ok" in text and "GPU: 0, NVIDIA L4, 580.65, 23034 MiB" in text
    assert "FAILED" not in text


def test_a_missing_program_fails_the_step_instead_of_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    args = parse_args(["--out", str(tmp_path), "--steps", "device"])
    result = Check(args).run_step("device")
    assert not result.ok and "exited with 127" in result.detail


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
skipped="0" tests="6"><testcase classname="tests.service.test_ort_device" name="test_a"/>
<testcase classname="tests.models.test_export" name="test_step_logits_match_eager[torchscript]"><failure message="x"/>
</testcase></testsuite></testsuites>"""


def fake_results(out):
    (out / "engine").mkdir(parents=True)
    (out / "device.log").write_text("$ nvidia-smi --query-gpu=...\n0, NVIDIA A10G, 580.65, 23028 MiB\n")
    (out / "parity.xml").write_text(JUNIT)
    step = {str(b): {"flop_bound_ms": 0.001 * b, "torchscript": 0.2 + 0.01 * b, "onnx": 0.1 + 0.01 * b}
            for b in (1, 8, 32, 64, 128)}
    (out / "engine" / "engine.json").write_text(json.dumps({
        "model": "fashion-mnist", "device": "cuda", "peak_gflops": {"512": 9000.0, "1024": 25000.0},
        "step": step, "decode": {b: {"torchscript": 1.0, "onnx": 0.5} for b in step},
        "onnx_io_binding": {b: {"off": 1.5, "on": 0.25, "off_bytes": 1, "on_bytes": 1} for b in step}}))
    for name, rate, attain in (("load-1x", 400.0, 0.99), ("load-2x", 800.0, 0.71)):
        (out / name).mkdir()
        (out / name / "summary.json").write_text(json.dumps({
            "rate": rate, "attainment_all": attain, "rejection_rate": 1 - attain, "mean_token_fraction": 0.6,
            "mean_quality": 0.9, "latency_p99_ms": 120.0}))


def test_summary_from_fake_results_fits_one_screen(tmp_path):
    fake_results(tmp_path)
    results = [StepResult(s, True, 10.0) for s in STEPS]
    text = summary(tmp_path, results)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(map(len, lines[4:])) <= 120  # past the header's command line
    assert "GPU: 0, NVIDIA A10G, 580.65, 23028 MiB" in text
    assert "5 passed, 1 failed, 0 skipped" in text and "test_step_logits_match_eager[torchscript]" in text
    assert "engine (cuda, peak GEMM 25000 GFLOP/s)" in text
    assert "| 64 | 0.840 | 0.740 | 1.500 | 0.250 | 0.064 | 0.500 |" in text
    assert "| load-1x | 400.0 | 99.0% | 1.0% | 0.60 | 0.900 | 120.0 |" in text
    assert "| load-2x | 800.0 | 71.0% | 29.0% |" in text
    assert "FAILED" not in text


def test_summary_with_missing_results_says_so(tmp_path):
    text = summary(tmp_path, [StepResult("device", True, 1.0), StepResult("runtimes", False, 5.0, "python exited 1")])
    assert "FAILED at step 'runtimes': python exited 1" in text
    assert "parity: no result" in text and "engine: no result" in text and "| load-2x | no result" in text


def test_the_runtimes_check_refuses_the_cpu_onnxruntime(tmp_path):
    """Here (the dev venv: onnxruntime for the CPU) the check fails on that, before importing anything
    a GPU venv has and this one lacks."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", gpu_check.RUNTIMES_CHECK], capture_output=True, text=True)
    assert r.returncode != 0 and "onnxruntime (CPU) is installed" in r.stderr


def test_make_target_runs_the_module():
    makefile = (gpu_check.ROOT / "Makefile").read_text()
    assert "gpu-check:" in makefile and "-m bench.gpu_check" in makefile
