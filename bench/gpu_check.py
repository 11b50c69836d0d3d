"""`make gpu-check`: everything worth knowing from a short loan of an NVIDIA GPU, in one command.

Steps, in order, each logged to OUT/<step>.log; the first failure stops the check, is named on
stderr and in the summary, and the exit code is 1:

  device   nvidia-smi sees a GPU
  runtimes this venv (make gpu-check builds it from the `gpu` extra, which gives onnxruntime-gpu
           and never onnxruntime) has ONNX Runtime's CUDA provider, a torch that sees the GPU and
           NVML, and no CPU-only onnxruntime beside onnxruntime-gpu (both are the module onnxruntime)
  parity   the runtime parity tests on CUDA for both backends (ANYTIME_EXPECT_DEVICE=cuda fails
           them if a runtime fell back to the CPU; NVIDIA_TF32_OVERRIDE=0: fp32 as on the CPU)
  engine   `anytime bench engine --device cuda`: step and decode vs batch against the GPU's GEMM
           roof, the ONNX cache in host vs device memory
  load-1x  `anytime bench load` for --duration s at the measured full-length capacity (ONNX, CUDA)
  load-2x  the same at twice that rate

OUT/summary.md is one screen built from the steps' own result files.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("device", "runtimes", "parity", "engine", "load-1x", "load-2x")
PARITY_TESTS = ("tests/models/test_export.py", "tests/service/test_ort_device.py",
                "tests/service/test_device_metrics.py")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "zoo" / "fashion-mnist")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per load run")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    ap.add_argument("--dry-run", action="store_true", help="print each step's commands, run nothing")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        ap.error(f"--steps: unknown {unknown}; choose from {', '.join(STEPS)}")
    args.steps = [s for s in STEPS if s in steps]  # always in the check's order
    if args.duration <= 0:
        ap.error("--duration must be positive")
    if "load-2x" in args.steps and "load-1x" not in args.steps and not (args.out / "load-1x" / "summary.json").exists():
        ap.error("load-2x needs load-1x's measured rate: run load-1x too")
    return args


@dataclass
class Command:
    argv: list[str]

    def text(self) -> str:
        return shlex.join(self.argv)


def commands(step: str, args: argparse.Namespace) -> list[Command]:
    """The commands of one step; `{rate_2x}` is filled in from load-1x's result when it runs."""
    py, out = sys.executable, args.out
    anytime = [py, "-m", "anytime_cli"]
    load = [*anytime, "bench", "load", "--model-dir", str(args.model_dir), "--backend", "onnx",
            "--duration", str(args.duration), "--server-flag=--device=cuda"]
    if step == "device":
        return [Command(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
                         "--format=csv,noheader"])]
    if step == "runtimes":
        return [Command([py, "-c", RUNTIMES_CHECK])]
    if step == "parity":
        return [Command([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'parity.xml'}",
                         *PARITY_TESTS])]
    if step == "engine":
        return [Command([*anytime, "bench", "engine", "--device", "cuda", "--model-dir", str(args.model_dir),
                         "--out", str(out / "engine")])]
    if step == "load-1x":
        return [Command([*load, "--load", "1", "--out", str(out / "load-1x")])]
    if step == "load-2x":
        return [Command([*load, "--rate", "{rate_2x}", "--out", str(out / "load-2x")])]
    raise ValueError(step)


# onnxruntime (CPU) beside onnxruntime-gpu would shadow the CUDA build: both are the module onnxruntime
RUNTIMES_CHECK = (
    "import importlib.metadata as m, re; "
    "names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}; "
    "assert 'onnxruntime' not in names, 'onnxruntime (CPU) is installed, and shadows onnxruntime-gpu: "
    "build this venv from the gpu extra alone'; "
    "assert 'onnxruntime-gpu' in names, 'onnxruntime-gpu is not installed'; "
    "import onnxruntime as o, torch, pynvml; pynvml.nvmlInit(); "
    "assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers(); "
    "assert torch.cuda.is_available(), 'torch ' + torch.__version__ + ' sees no GPU'; "
    "print('onnxruntime-gpu', o.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, "
    "'gpus', pynvml.nvmlDeviceGetCount())")

STEP_ENV = {"parity": {"ANYTIME_EXPECT_DEVICE": "cuda", "NVIDIA_TF32_OVERRIDE": "0"}}


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Check:
    args: argparse.Namespace
    results: list[StepResult] = field(default_factory=list)

    def _fill(self, argv: list[str]) -> list[str]:
        if "{rate_2x}" in argv:
            rate = json.loads((self.args.out / "load-1x" / "summary.json").read_text())["rate"]
            argv = [a.replace("{rate_2x}", f"{2 * rate:.3f}") for a in argv]
        return argv

    def run_step(self, step: str) -> StepResult:
        log_path = self.args.out / f"{step}.log"
        env = {**os.environ, **STEP_ENV.get(step, {})}
        t = time.monotonic()
        with open(log_path, "w") as log:
            for cmd in commands(step, self.args):
                argv = self._fill(cmd.argv)
                code = _run(argv, env, log)
                if code != 0:
                    return StepResult(step, False, time.monotonic() - t,
                                      f"`{shlex.join(argv)}` exited with {code}; log: {log_path}")
        return StepResult(step, True, time.monotonic() - t)

    def run(self) -> int:
        self.args.out.mkdir(parents=True, exist_ok=True)
        for step in self.args.steps:
            print(f"== gpu-check: {step}", flush=True)
            result = self.run_step(step)
            self.results.append(result)
            if not result.ok:
                break
        text = summary(self.args.out, self.results)
        (self.args.out / "summary.md").write_text(text)
        print(text)
        failed = [r for r in self.results if not r.ok]
        if failed:
            print(f"GPU CHECK FAILED at step '{failed[0].name}': {failed[0].detail}", file=sys.stderr)
            return 1
        return 0


def _run(argv: list[str], env: dict, log) -> int:
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    try:
        return subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    except FileNotFoundError as e:
        log.write(f"{e}\n")
        return 127


# ---- the summary: built only from the steps' result files -----------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _device_line(out: Path) -> str:
    try:
        lines = [l for l in (out / "device.log").read_text().splitlines() if l and not l.startswith("$ ")]
    except OSError:
        return "GPU: not checked"
    return "GPU: " + ("; ".join(lines[:4]) if lines else "none found")


def _parity_line(out: Path) -> str:
    try:
        suite = ET.parse(out / "parity.xml").getroot()
    except (OSError, ET.ParseError):
        return "parity: no result"
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n, fail, err, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
    text = f"parity (CUDA, both backends): {n - fail - err - skip} passed, {fail + err} failed, {skip} skipped"
    return text + (f" -- failed: {', '.join(failed[:4])}" if failed else "")


def _engine_lines(out: Path) -> list[str]:
    e = _read_json(out / "engine" / "engine.json")
    if e is None:
        return ["engine: no result"]
    lines = [f"engine ({e.get('device', '?')}, peak GEMM {max(e['peak_gflops'].values()):.0f} GFLOP/s), "
             "median ms per step / decode:",
             "| batch | torchscript | onnx | onnx cache in host mem | in device mem | FLOP bound | decode onnx |",
             "|---|---|---|---|---|---|---|"]
    for b, row in e["step"].items():
        io = e.get("onnx_io_binding", {}).get(b, {})
        lines.append(f"| {b} | {row['torchscript']:.3f} | {row['onnx']:.3f} | {io.get('off', float('nan')):.3f} | "
                     f"{io.get('on', float('nan')):.3f} | {row['flop_bound_ms']:.3f} | "
                     f"{e['decode'][b]['onnx']:.3f} |")
    return lines


def _load_lines(out: Path) -> list[str]:
    lines = ["| load | requests/s | deadline met (all) | rejected | mean k/D | mean quality | p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for name in ("load-1x", "load-2x"):
        s = _read_json(out / name / "summary.json")
        if s is None:
            lines.append(f"| {name} | no result | | | | | |")
            continue
        lines.append(f"| {name} | {s['rate']:.1f} | {s['attainment_all']:.1%} | {s['rejection_rate']:.1%} | "
                     f"{s['mean_token_fraction']:.2f} | {s['mean_quality']:.3f} | {s['latency_p99_ms']:.1f} |")
    return lines


def summary(out: Path, results: list[StepResult]) -> str:
    from .machine import header

    status = " ".join(f"{r.name}:{'ok' if r.ok else 'FAILED'}({r.seconds:.0f}s)" for r in results)
    failed = [r for r in results if not r.ok]
    lines = [header("GPU check"), f"steps: {status or 'none run'}"]
    if failed:
        lines.append(f"FAILED at step '{failed[0].name}': {failed[0].detail}")
    lines += ["", _device_line(out), _parity_line(out), "", *_engine_lines(out), "", *_load_lines(out), "",
              "Details: engine/engine.md, load-1x/load.md, load-2x/load.md, parity.xml, <step>.log", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for step in args.steps:
            env = " ".join(f"{k}={v}" for k, v in STEP_ENV.get(step, {}).items())
            for cmd in commands(step, args):
                print(f"{step}: {env + ' ' if env else ''}{cmd.text()}")
        return 0
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
