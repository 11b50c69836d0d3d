"""Issue 27's zoo v3 targets, measured; the gate that lets zoo v3 replace the default zoo.

    python -m bench.zoo_v3_targets --evaluation bench/results/fashion-mnist-v3 --zoo runs/fashion-mnist-v3/export/fashion-mnist \
        --old-zoo models/zoo/fashion-mnist --served bench/results/fashion-mnist-v3 \
        --audio-zoo runs/fashion-mnist-v3/export/spoken-digits --audio-served bench/results/fashion-mnist-v3/spoken-digits \
        --out bench/results/fashion-mnist-v3
    python -m bench.zoo_v3_targets --met bench/results/fashion-mnist-v3/targets.json   # exit 0 only if all hold

Every claim is measured or it counts as not met: a claim without its measurement never lets the
zoo through. The decoder's speed is timed here, both graphs alternately in one run (take the
machine's benchmark lock around it). The scheduler's pricing of guidance (goodput under the
policy sweep) is not a claim of the model and is reported by its own benchmark.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..machine import commit

DECODE_BATCH = 64
Claim = tuple[str, str, str, "bool | None"]  # claim, measured, target, met (None: not measured)


def row_at(curve: list[dict], fraction: float) -> dict:
    return min(curve, key=lambda r: abs(r["fraction"] - fraction))


def model_claims(evaluation: dict, guidance: float) -> list[Claim]:
    """Label accuracy and FD of conditional samples at the zoo's default guidance; the decoder's
    ceiling (the classifier on reconstructions of real test images)."""
    res = evaluation["pipelines"]["ordered"]
    guided = {g["guidance"]: g["curve"] for g in res.get("guided", [])}
    curve = guided.get(guidance)
    rows: list[Claim] = []
    if curve is None:
        missing = f"not measured (evaluate --guidance {guidance:g})"
        rows += [(f"label accuracy at k = D, guidance {guidance:g}", missing, ">= 0.88", None),
                 (f"FD(D), guidance {guidance:g}", missing, "<= 15", None)]
    else:
        full = row_at(curve, 1.0)
        fd = full["frechet"]
        rows += [
            (f"label accuracy at k = D, guidance {guidance:g}", f"{full['label_accuracy']:.3f}", ">= 0.88",
             full["label_accuracy"] >= 0.88),
            (f"FD(D), guidance {guidance:g}", f"{fd:.2f}", "<= 15", fd <= 15),
            ("FD(0.8 D) / FD(D), guidance on", f"{row_at(curve, 0.8)['frechet'] / fd:.3f}", "<= 1.05",
             row_at(curve, 0.8)["frechet"] / fd <= 1.05),
            ("FD(0.6 D) / FD(D), guidance on", f"{row_at(curve, 0.6)['frechet'] / fd:.3f}", "<= 1.10",
             row_at(curve, 0.6)["frechet"] / fd <= 1.10),
        ]
    recon = row_at(res["curve"], 1.0).get("reconstruction_accuracy")
    rows.append(("classifier on full-length reconstructions of real test images (decoder ceiling)",
                 "not measured" if recon is None else f"{recon:.3f}", ">= 0.86", None if recon is None else recon >= 0.86))
    return rows


def decode_seconds(path: Path, D: int, K: int, repeats: int) -> list[float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {"codes": np.random.default_rng(0).integers(0, K, (DECODE_BATCH, D)),
             "lengths": np.full(DECODE_BATCH, D, np.int64)}
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return times


def decoder_speed_claim(new_zoo: Path, old_zoo: Path, repeats: int = 30) -> Claim:
    """Median decode time of the two ONNX decoder graphs at batch DECODE_BATCH, alternating."""
    m = json.loads((new_zoo / "manifest.json").read_text())
    new, old = [], []
    for _ in range(3):  # alternate, so drift on a shared machine hits both alike
        new += decode_seconds(new_zoo / m["files"]["decoder_onnx"]["path"], m["D"], m["K"], repeats)
        old += decode_seconds(old_zoo / "decoder.onnx", m["D"], m["K"], repeats)
    ratio = statistics.median(new) / statistics.median(old)
    return (f"decoder graph, ONNX, batch {DECODE_BATCH}, one thread: median new / old", f"{ratio:.3f} "
            f"({statistics.median(new) * 1e3:.2f} / {statistics.median(old) * 1e3:.2f} ms)", "<= 1.3", ratio <= 1.3)


def served_claim(served: Path | None) -> Claim:
    name = "served samples recognised as their label, k = D, the server's default guidance"
    f = served / "served-labels.json" if served else None
    if f is None or not f.exists():
        return name, "not measured (python -m bench.served_labels)", ">= 0.88", None
    rows = json.loads(f.read_text())["requests"]
    acc = sum(r["recognised"] for r in rows) / sum(r["samples"] for r in rows)
    used = sorted({r.get("guidance", 0.0) for r in rows})
    return f"{name} ({', '.join(f'{g:g}' for g in used)})", f"{acc:.3f}", ">= 0.88", acc >= 0.88


def audio_claims(audio_zoo: Path | None, audio_served: Path | None) -> list[Claim]:
    rows: list[Claim] = []
    loud = json.loads((audio_zoo / "manifest.json").read_text())["output"].get("loudness") if audio_zoo else None
    if loud is None:
        rows.append(("audio: generated RMS level - training clips' level", "not measured (export --match-loudness)",
                     "within 1 dB", None))
    else:
        gap = loud["generated_db"] - loud["training_clips_db"]
        rows.append(("audio: generated RMS level - training clips' level",
                     f"{gap:+.2f} dB (gain {loud['gain_db']:+.1f} dB)", "within 1 dB", abs(gap) <= 1.0))
    f = audio_served / "service-wav.json" if audio_served else None
    if f is None or not f.exists():
        rows.append(("audio: served WAVs recognised as asked", "not measured (python -m bench.spoken_digits_wav)",
                     ">= 0.80", None))
    else:
        s = json.loads(f.read_text())["summary"]
        rows.append(("audio: served WAVs recognised as asked", f"{s['overall_recognised']:.3f}", ">= 0.80",
                     s["overall_recognised"] >= 0.80))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench.zoo_v3_targets")
    ap.add_argument("--met", type=Path, default=None, help="targets.json: exit 0 when every claim holds, else 1")
    ap.add_argument("--evaluation", type=Path, help="folder with the v3 evaluation.json (with guided curves)")
    ap.add_argument("--zoo", type=Path, help="the exported v3 image model directory")
    ap.add_argument("--old-zoo", type=Path, help="the default zoo's image model directory (decoder speed)")
    ap.add_argument("--served", type=Path, default=None, help="folder with served-labels.json of the v3 model")
    ap.add_argument("--audio-zoo", type=Path, default=None, help="the exported v3 audio model directory")
    ap.add_argument("--audio-served", type=Path, default=None, help="folder with its service-wav.json")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.met is not None:
        result = json.loads(args.met.read_text())
        print("zoo v3 targets: " + ("all met" if result["all_met"] else "NOT all met") + f" ({args.met})")
        return 0 if result["all_met"] else 1
    evaluation = json.loads((args.evaluation / "evaluation.json").read_text())
    manifest = json.loads((args.zoo / "manifest.json").read_text())
    guidance = manifest["prior"].get("guidance", {}).get("default", 0.0)
    claims = model_claims(evaluation, guidance) + [decoder_speed_claim(args.zoo, args.old_zoo),
                                                   served_claim(args.served)]
    claims += audio_claims(args.audio_zoo, args.audio_served)
    all_met = all(met is True for *_, met in claims)
    lines = ["# Zoo v3 targets (issue 27)", "",
             f"- command: `python -m bench.zoo_v3_targets {shlex.join(argv)}`", f"- commit: {commit()}",
             f"- evaluation: `{evaluation['command']}` ({evaluation['date']}, {evaluation['machine']})",
             f"- exported model: commit {manifest['provenance'].get('commit')}, default guidance {guidance:g}", "",
             "| claim | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {c} | {m} | {t} | {'not measured' if ok is None else ('yes' if ok else 'no')} |"
              for c, m, t, ok in claims]
    lines += ["", f"**All met: {'yes' if all_met else 'no'}** (zoo v3 replaces the default zoo only then)"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.md").write_text("\n".join(lines) + "\n")
    (args.out / "targets.json").write_text(json.dumps({"all_met": all_met, "claims": [
        {"claim": c, "measured": m, "target": t, "met": ok} for c, m, t, ok in claims]}, indent=1))
    print((args.out / "targets.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
