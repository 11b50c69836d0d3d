"""Does the served spoken-digits model say the digit it is asked for?

Starts a real `anytime serve` with the exported model, sends `POST /generate {"model": ...,
"label": L, "deadline_ms": 300, "format": "wav"}` one request at a time, checks every body is
a valid WAV at the manifest's sample rate (mono, 16-bit PCM, the model's length), and lets the
classifier shipped with the model recognise it. Writes `service-wav.md` / `.json`.

    python -m bench.model.spoken_digits_wav [--model-dir models/zoo/spoken-digits] [--out bench/results/spoken-digits]
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import httpx
import numpy as np

from ..machine import commit, cpu_model
from ..server_proc import serve

ROOT = Path(__file__).resolve().parents[2]


def check_wav(data: bytes, sample_rate: int, length: int) -> np.ndarray:
    """Raises AssertionError unless `data` is a mono 16-bit PCM WAV of `length` samples at `sample_rate`."""
    import soundfile as sf

    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a RIFF/WAVE file"
    info = sf.info(io.BytesIO(data))
    assert info.format == "WAV" and info.subtype == "PCM_16", f"{info.format}/{info.subtype}"
    assert info.samplerate == sample_rate, f"sample rate {info.samplerate} != {sample_rate}"
    assert info.channels == 1 and info.frames == length, f"{info.channels} channels, {info.frames} frames"
    a, _ = sf.read(io.BytesIO(data), dtype="float32")
    return a


def run(url: str, model_dir: Path, labels: list[str], deadline_ms: int) -> dict:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    sr, length = manifest["output"]["sample_rate"], manifest["output"]["shape"][-1]
    rows, waves = [], []
    with httpx.Client(timeout=30) as client:
        for seed, label in enumerate(labels):
            r = client.post(url + "/generate", json={"model": manifest["name"], "label": label, "seed": seed,
                                                     "deadline_ms": deadline_ms, "format": "wav"})
            row = {"label": label, "seed": seed, "status": r.status_code}
            if r.status_code == 200:
                assert r.headers["content-type"] == "audio/wav", r.headers["content-type"]
                waves.append(check_wav(r.content, sr, length))
                row |= {"tokens": int(r.headers["x-anytime-tokens"]), "latency_ms": float(r.headers["x-anytime-latency-ms"]),
                        "deadline_met": r.headers["x-anytime-deadline-met"] == "true"}
            rows.append(row)
    ok = [r for r in rows if r["status"] == 200]
    if waves:
        import torch

        from models import classifier

        clf, _ = classifier.load(model_dir / manifest["files"]["classifier"]["path"])
        _, pred = classifier.predict(clf, torch.from_numpy(np.stack(waves))[:, None])
        for r, p in zip(ok, pred.tolist()):
            r["recognised_as"] = manifest["classes"][p]
    return {"model": manifest["name"], "D": manifest["D"], "sample_rate": sr, "length": length,
            "deadline_ms": deadline_ms, "requests": rows}


def summarize(result: dict, target: str) -> dict:
    rows = [r for r in result["requests"] if r["status"] == 200]
    by_label = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["recognised_as"] == r["label"])
    lat = np.array([r["latency_ms"] for r in rows])
    return {
        "target": target, "answered": len(rows), "sent": len(result["requests"]),
        "target_recognised": float(np.mean(by_label.get(target, [0.0]))), "target_requests": len(by_label.get(target, [])),
        "recognised_by_label": {k: float(np.mean(v)) for k, v in by_label.items()},
        "overall_recognised": float(np.mean([r["recognised_as"] == r["label"] for r in rows])) if rows else 0.0,
        "deadline_met": float(np.mean([r["deadline_met"] for r in rows])) if rows else 0.0,
        "tokens_mean": float(np.mean([r["tokens"] for r in rows])) if rows else 0.0,
        "tokens_min": int(min(r["tokens"] for r in rows)) if rows else 0,
        "latency_p50_ms": float(np.percentile(lat, 50)) if rows else 0.0,
        "latency_p99_ms": float(np.percentile(lat, 99)) if rows else 0.0,
    }


def report(result: dict, s: dict, backend: str, command: str) -> str:
    lines = [
        f"# Served WAV check: {result['model']} ({backend})", "",
        f"- command: `{command}`",
        f"- commit: {commit()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}", "",
        f"`POST /generate {{\"model\": \"{result['model']}\", \"label\": L, \"deadline_ms\": {result['deadline_ms']}, "
        f"\"format\": \"wav\", \"seed\": i}}`, one request at a time against a real server; every body checked to be "
        f"a mono 16-bit PCM WAV of {result['length']} samples at {result['sample_rate']} Hz, then recognised by the "
        "classifier shipped with the model (`classifier.pt`).", "",
        f"- **{s['target']!r} recognised as {s['target']!r}: {s['target_recognised']:.0%}** "
        f"of {s['target_requests']} requests",
        f"- all labels: {s['overall_recognised']:.0%} recognised as asked ({s['answered']}/{s['sent']} answered, "
        f"all valid WAV)",
        f"- deadline met: {s['deadline_met']:.0%}; latency p50 {s['latency_p50_ms']:.1f} ms, p99 "
        f"{s['latency_p99_ms']:.1f} ms; tokens mean {s['tokens_mean']:.1f} (min {s['tokens_min']}) of D={result['D']}",
        "", "| label | recognised as asked |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.0%} |" for k, v in s["recognised_by_label"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model.spoken_digits_wav")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "zoo" / "spoken-digits")
    ap.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    ap.add_argument("--url", default=None, help="a running server with the model; default: start one")
    ap.add_argument("--label", default="seven", help="the label checked most")
    ap.add_argument("--requests", type=int, default=50, help="requests for --label")
    ap.add_argument("--per-label", type=int, default=10, help="requests for every other label")
    ap.add_argument("--deadline-ms", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spoken-digits")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    classes = json.loads((args.model_dir / "manifest.json").read_text())["classes"]
    labels = [args.label] * args.requests + [c for c in classes if c != args.label for _ in range(args.per_label)]
    if args.url:
        result = run(args.url, args.model_dir, labels, args.deadline_ms)
    else:
        with serve("--model-dirs", str(args.model_dir), "--backend", args.backend) as url:
            result = run(url, args.model_dir, labels, args.deadline_ms)
    s = summarize(result, args.label)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "service-wav.json").write_text(json.dumps({"summary": s, **result}, indent=1))
    text = report(result, s, args.backend, "python -m bench.model.spoken_digits_wav " + shlex.join(argv))
    (args.out / "service-wav.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
