"""Encoding samples for responses: PNG (images), WAV (audio), NPY (any)."""
from __future__ import annotations

import base64
import io

import numpy as np

MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav", "npy": "application/x-npy"}


def png(sample: np.ndarray) -> bytes:
    """[C, H, W] or [H, W] in [0, 1] -> PNG bytes (grayscale for C=1, RGB for C=3)."""
    from PIL import Image

    a = np.clip(np.asarray(sample, dtype=np.float32), 0, 1)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    img = Image.fromarray((a * 255 + 0.5).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_grid(samples: np.ndarray) -> bytes:
    """Several samples [n, C, H, W] side by side in one PNG."""
    return png(np.concatenate(list(samples), axis=-1))


def wav(sample: np.ndarray, sample_rate: int) -> bytes:
    """[T] or [1, T] in [0, 1] (the decoder's range) -> 16-bit PCM WAV in [-1, 1]."""
    import soundfile as sf

    a = np.asarray(sample, dtype=np.float32).reshape(-1) * 2 - 1
    buf = io.BytesIO()
    sf.write(buf, np.clip(a, -1, 1), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def npy(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(samples, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def sample_format(modality: str) -> str:
    """The per-sample encoding inside JSON responses."""
    return "wav" if modality == "audio" else "png"


def encode_one(sample: np.ndarray, modality: str, sample_rate: int | None) -> tuple[str, bytes]:
    fmt = sample_format(modality)
    data = wav(sample, sample_rate) if fmt == "wav" else png(sample)
    return MEDIA_TYPES[fmt], data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
