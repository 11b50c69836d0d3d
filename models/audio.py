"""Audio in plain torch/numpy: waveform utilities, log-mel features, a spectral training loss,
and a data set of the user's own WAV files (class sub-folders = labels).

Waveforms are float32 in [-1, 1]; a data set holds them as x [N, 1, T] like images hold [N, C, H, W].
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dataset import Dataset

SAMPLE_RATE = 16000
LENGTH = 16384  # 1.024 s at 16 kHz: 4 stride-4 convolutions leave 64 frames per channel token
WAV_SUFFIXES = {".wav", ".flac", ".ogg"}


# ---- waveforms ---------------------------------------------------------------------------------
def resample(a: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) of a 1-D signal."""
    if sr_from == sr_to:
        return a.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(sr_from, sr_to)
    return resample_poly(a, sr_to // g, sr_from // g).astype(np.float32)


def highpass(a: np.ndarray, sample_rate: int, cutoff: float = 40.0) -> np.ndarray:
    """Zero-phase 4th-order Butterworth high-pass: removes DC and sub-audible rumble."""
    from scipy.signal import butter, sosfiltfilt

    return sosfiltfilt(butter(4, cutoff, "highpass", fs=sample_rate, output="sos"), a).astype(np.float32)


def trim_silence(a: np.ndarray, threshold: float = 0.02, pad: int = 160) -> np.ndarray:
    """Cut leading/trailing samples below `threshold` x peak, keeping `pad` samples either side."""
    loud = np.nonzero(np.abs(a) > threshold * (np.abs(a).max() + 1e-12))[0]
    if loud.size == 0:
        return a[:0]
    return a[max(0, loud[0] - pad) : loud[-1] + 1 + pad]


def fit_length(a: np.ndarray, length: int, shift: int = 0) -> np.ndarray:
    """Centre `a` in `length` samples (offset by `shift`), zero-padding or cropping the middle."""
    out = np.zeros(length, dtype=np.float32)
    if len(a) >= length:
        start = (len(a) - length) // 2
        out[:] = a[start : start + length]
        return out
    start = int(np.clip((length - len(a)) // 2 + shift, 0, length - len(a)))
    out[start : start + len(a)] = a
    return out


def peak_normalize(a: np.ndarray, peak: float = 0.95) -> np.ndarray:
    m = float(np.abs(a).max())
    return (a * (peak / m)).astype(np.float32) if m > 0 else a.astype(np.float32)


def read_wav(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any soundfile-readable file -> mono float32 at `sample_rate`."""
    import soundfile as sf

    a, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(a.mean(1), sr, sample_rate)


def wav_folder(directory: Path, length: int = LENGTH, sample_rate: int = SAMPLE_RATE, split: str = "train",
               test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """WAV files under `directory`, class sub-folders give labels (loose files are unlabelled).

    With `train/` and `test/` sub-folders (each holding the class folders) those are the
    splits, e.g. to keep speakers apart; otherwise a deterministic `test_fraction` of each
    class (by `seed`) is the test split. Every clip is resampled to `sample_rate`, centred
    in `length` samples (padded or cropped) and peak-normalized.
    """
    directory = Path(directory)
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        directory, test_fraction = directory / split, 0.0
        split = "train"  # the whole folder is this split
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir())
    groups = [(i, sorted(f for f in d.rglob("*") if f.suffix.lower() in WAV_SUFFIXES)) for i, d in enumerate(subdirs)]
    loose = sorted(f for f in directory.iterdir() if f.is_file() and f.suffix.lower() in WAV_SUFFIXES)
    if loose:
        groups.append((-1, loose))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, files in groups:
        order = rng.permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        for j in sorted(order[:n_test] if split == "test" else order[n_test:]):
            xs.append(peak_normalize(fit_length(read_wav(files[j], sample_rate), length)))
            ys.append(label)
    if not xs:
        raise ValueError(f"no audio files ({', '.join(sorted(WAV_SUFFIXES))}) under {directory} for split {split!r}")
    return Dataset(torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys, dtype=torch.long),
                   [p.name for p in subdirs], directory.name, sample_rate=sample_rate)


# ---- features ----------------------------------------------------------------------------------
def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 50.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale: [n_mels, n_fft // 2 + 1]."""
    fmax = fmax or sample_rate / 2
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lower) / (centre - lower)
    fall = (upper - freqs[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rise, fall), 0, None)).float()


class LogMel(nn.Module):
    """Waveform [B, 1, T] or [B, T] in [-1, 1] -> log-mel [B, n_mels, frames] in [0, 1].

    Power in dB relative to the clip's loudest bin, floored `top_db` below it, so the features
    do not depend on the clip's gain. Buffers are rebuilt from the arguments (not saved).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 512, hop: int = 160, n_mels: int = 40,
                 fmin: float = 50.0, top_db: float = 80.0):
        super().__init__()
        self.n_fft, self.hop, self.top_db = n_fft, hop, top_db
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(n_fft, n_mels, sample_rate, fmin), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True).abs().pow(2)  # [B, F, N]
        db = 10 * torch.log10((self.fb @ spec).clamp(min=1e-10))  # [B, M, N]
        peak = db.amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(db, peak - self.top_db) - peak) / self.top_db + 1


def spectral_loss(rec: torch.Tensor, x: torch.Tensor, ffts: tuple[int, ...] = (2048, 1024, 512, 256),
                  sample_rate: int = SAMPLE_RATE, n_mels: int = 64, top_db: float = 80.0) -> torch.Tensor:
    """Multi-resolution log-mel L1, in units of `top_db`, averaged over STFT sizes.

    Insensitive to phase, so a decoder is not pushed towards the blurred average waveform that
    sample-wise MSE prefers when the phase is uncertain. Both spectrograms are floored `top_db`
    below the target's loudest bin, so error in near-silence (which carries no content and
    would dominate a plain log loss) costs nothing beyond the floor.
    """
    rec, x = rec.reshape(rec.shape[0], -1), x.reshape(x.shape[0], -1)
    ffts = [n for n in ffts if n <= x.shape[1]] or [2 ** int(math.log2(x.shape[1]))]  # short clips: fewer sizes
    total = rec.new_zeros(())
    for n in ffts:
        w = torch.hann_window(n, device=x.device)
        fb = mel_filterbank(n, n_mels, sample_rate).to(x.device)

        def db(a):
            return 10 * torch.log10((fb @ torch.stft(a, n, n // 4, window=w, return_complex=True).abs().pow(2)).clamp(min=1e-10))

        d_x, d_rec = db(x), db(rec)
        floor = d_x.amax(dim=(1, 2), keepdim=True) - top_db
        total = total + (torch.maximum(d_rec, floor) - torch.maximum(d_x, floor)).abs().mean() / top_db
    return total / len(ffts)
