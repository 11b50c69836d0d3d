"""The spoken-digits data set, synthesized with Debian's `espeak-ng`.

Each clip is one word (the ten digits by default) said by an espeak-ng voice variant (the
"speaker": its pitch range, formants, breathiness) with a random English accent, pitch and
speed, resampled to 16 kHz mono, high-passed at 40 Hz (some variants carry DC and rumble),
trimmed of silence, centred (with a small random shift) in a fixed 16384-sample window and
peak-normalized. Train and test hold different speakers, so the test split measures
generalization to unseen voices.

Stored as one compressed `.npz` per split (int16 waveforms, labels, speaker, accent, pitch
and speed of every clip) plus `meta.json`; a few thousand clips take tens of MB.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .audio import LENGTH, SAMPLE_RATE, fit_length, highpass, peak_normalize, resample, trim_silence
from .dataset import Dataset

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc"]
# whispered variants carry no voicing, a different kind of signal from every other speaker
EXCLUDED_VARIANTS = {"whisper", "whisperf"}
DEFAULT_DIR = Path("data/spoken-digits")
PITCH = (20, 80)  # espeak-ng -p range (0-99)
SPEED = (110, 210)  # espeak-ng -s range (words per minute); the slowest fit in ~0.9 s
SHIFT = 1280  # +- samples (80 ms) of random placement around the centre


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: `make apt` (Debian package espeak-ng)")
    return exe


def variants() -> list[str]:
    """The espeak-ng voice variants installed (one speaker each), plus 'default' (no variant)."""
    out = subprocess.run([espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        if "!v/" in line:
            name = line.split("!v/", 1)[1].strip()
            # a name with a space cannot be passed to -v ("Mr serious"; "Storm" is listed with an
            # extra language column and lands here too: kept out so the data set stays as built)
            if name and " " not in name and name not in EXCLUDED_VARIANTS:
                names.add(name)
    return ["default"] + sorted(names, key=str.lower)


def synthesize(word: str, accent: str, variant: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    """One utterance from espeak-ng -> (float32 mono samples, sample rate)."""
    import soundfile as sf

    voice = accent if variant == "default" else f"{accent}+{variant}"
    proc = subprocess.run([espeak(), "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", word],
                          capture_output=True, check=True)
    a, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return a.reshape(-1), sr


def make_clip(word: str, accent: str, variant: str, pitch: int, speed: int, shift: int,
              length: int = LENGTH, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    a, sr = synthesize(word, accent, variant, pitch, speed)
    a = trim_silence(highpass(resample(a, sr, sample_rate), sample_rate))
    return peak_normalize(fit_length(a, length, shift))


def build(out: Path, renditions: int = 6, test_fraction: float = 0.2, seed: int = 0, words: list[str] | None = None,
          speakers: list[str] | None = None, length: int = LENGTH, sample_rate: int = SAMPLE_RATE,
          command: str = "", progress: bool = True) -> dict:
    """Write train.npz / test.npz / meta.json under `out`; returns the meta dict.

    Every speaker says every word `renditions` times, each time with a random accent, pitch,
    speed and placement. A `test_fraction` of the speakers (by `seed`) forms the test split.
    """
    words = list(words or DIGITS)
    speakers = list(speakers or variants())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(speakers))
    n_test = max(1, int(round(len(speakers) * test_fraction))) if len(speakers) > 1 else 0
    test_speakers = sorted(speakers[i] for i in order[:n_test])
    jobs = []
    for speaker in speakers:
        for label, word in enumerate(words):
            for _ in range(renditions):
                jobs.append((speaker, label, word, ACCENTS[rng.integers(len(ACCENTS))], int(rng.integers(*PITCH, endpoint=True)),
                             int(rng.integers(*SPEED, endpoint=True)), int(rng.integers(-SHIFT, SHIFT, endpoint=True))))
    clips = {"train": [], "test": []}
    for speaker, label, word, accent, pitch, speed, shift in tqdm(jobs, desc="espeak-ng", disable=not progress):
        x = make_clip(word, accent, speaker, pitch, speed, shift, length, sample_rate)
        clips["test" if speaker in test_speakers else "train"].append((x, label, speaker, accent, pitch, speed))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in clips.items():
        if not rows:
            continue
        x = np.stack([r[0] for r in rows])
        tmp = out / f"{split}.npz.tmp"
        with open(tmp, "wb") as f:  # then rename: a reader never sees half a file
            np.savez_compressed(
                f, x=np.round(x * 32767).astype(np.int16), y=np.array([r[1] for r in rows], np.int64),
                speaker=np.array([r[2] for r in rows]), accent=np.array([r[3] for r in rows]),
                pitch=np.array([r[4] for r in rows], np.int16), speed=np.array([r[5] for r in rows], np.int16),
                classes=np.array(words), sample_rate=np.array(sample_rate))
        os.replace(tmp, out / f"{split}.npz")
    meta = {
        "name": "spoken-digits", "classes": words, "sample_rate": sample_rate, "length": length,
        "clips": {s: len(r) for s, r in clips.items()}, "renditions": renditions, "seed": seed,
        "speakers": {"train": sorted(set(speakers) - set(test_speakers)), "test": test_speakers},
        "accents": ACCENTS, "pitch": PITCH, "speed": SPEED,
        "espeak_ng": subprocess.run([espeak(), "--version"], capture_output=True, text=True).stdout.strip(),
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def spoken_digits(split: str = "train", directory: Path = DEFAULT_DIR) -> Dataset:
    """Load a split written by `build` (`anytime data spoken-digits --out DIR`)."""
    path = Path(directory) / f"{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build it with `anytime data spoken-digits --out {directory}` "
                                "or pass --data-dir")
    with np.load(path) as f:
        x = torch.from_numpy(f["x"].astype(np.float32) / 32767)[:, None]  # [N, 1, T]
        return Dataset(x, torch.from_numpy(f["y"]), [str(c) for c in f["classes"]], "spoken-digits",
                       sample_rate=int(f["sample_rate"]))
