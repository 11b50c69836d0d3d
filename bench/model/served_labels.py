"""Are the images a served model returns recognised as the label asked for?

Starts a real `anytime serve` with the model directory, asks every class for samples
(`POST /generate {"label": L, "n": N, "seed": i, "deadline_ms": ..., "format": "npy"}`, one
request at a time, so every sample gets all D tokens), and lets the classifier shipped with the
model recognise them: the served counterpart of `anytime evaluate`'s label accuracy at k = D.

    python -m bench.model.served_labels --model-dir models/zoo/fashion-mnist --out bench/results/fashion-mnist
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


def run(url: str, model_dir: Path, per_label: int, n: int, deadline_ms: int, temperature: float) -> dict:
    import torch

    from models import classifier

    manifest = json.loads((model_dir / "manifest.json").read_text())
    clf, _ = classifier.load(model_dir / manifest["files"]["classifier"]["path"])
    rows = []
    with httpx.Client(timeout=60) as client:
        for c, label in enumerate(manifest["classes"]):
            for i in range(per_label // n):
                r = client.post(url + "/generate", json={"label": label, "n": n, "seed": 1000 * c + i,
                                                         "temperature": temperature, "deadline_ms": deadline_ms,
                                                         "format": "npy"})
                r.raise_for_status()
                x = torch.from_numpy(np.load(io.BytesIO(r.content))) * 2 - 1  # served [0, 1] -> classifier's [-1, 1]
                _, pred = classifier.predict(clf, x)
                rows.append({"label": label, "tokens": int(r.headers["x-anytime-tokens"]),
                             "deadline_met": r.headers["x-anytime-deadline-met"] == "true",
                             "guidance": float(r.headers.get("x-anytime-guidance", 0.0)),
                             "recognised": int((pred == c).sum()), "samples": len(pred)})
    return {"model": manifest["name"], "D": manifest["D"], "deadline_ms": deadline_ms, "temperature": temperature,
            "requests": rows}


def report(result: dict, backend: str, command: str) -> str:
    rows = result["requests"]
    by_label = {}
    for r in rows:
        hit, tot = by_label.get(r["label"], (0, 0))
        by_label[r["label"]] = (hit + r["recognised"], tot + r["samples"])
    hits, total = sum(h for h, _ in by_label.values()), sum(t for _, t in by_label.values())
    full = sum(r["tokens"] == result["D"] for r in rows)
    lines = [f"# Served samples recognised as their label: {result['model']} ({backend})", "",
             f"- command: `{command}`", f"- commit: {commit()}",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}", "",
             f"`POST /generate {{\"label\": L, \"n\": {rows[0]['samples']}, \"seed\": i, \"temperature\": "
             f"{result['temperature']}, \"deadline_ms\": {result['deadline_ms']}, \"format\": \"npy\"}}`, one request at a "
             "time against a real server; the classifier shipped with the model (`classifier.pt`) recognises each sample.",
             "", f"- **recognised as asked: {hits / total:.3f}** of {total} samples",
             f"- requests at full length (k = D = {result['D']}): {full}/{len(rows)}; deadline met: "
             f"{sum(r['deadline_met'] for r in rows)}/{len(rows)}", "", "| label | recognised as asked |", "|---|---|"]
    lines += [f"| {k} | {h / t:.2f} |" for k, (h, t) in by_label.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model.served_labels")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models" / "zoo" / "fashion-mnist")
    ap.add_argument("--backend", default="onnx", choices=["onnx", "torchscript"])
    ap.add_argument("--per-label", type=int, default=100, help="samples per class")
    ap.add_argument("--n", type=int, default=10, help="samples per request")
    ap.add_argument("--deadline-ms", type=int, default=2000)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--out", type=Path, required=True)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    with serve("--model-dirs", str(args.model_dir), "--backend", args.backend) as url:
        result = run(url, args.model_dir, args.per_label, args.n, args.deadline_ms, args.temperature)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "served-labels.json").write_text(json.dumps(result, indent=1))
    text = report(result, args.backend, "python -m bench.model.served_labels " + shlex.join(argv))
    (args.out / "served-labels.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
