"""Data sets: Fashion-MNIST from the Debian package's IDX files, a folder of images, and
`load_dataset`, which finds any data set by name (the audio ones live in audio.py and
spoken_digits.py). Every one is a models.dataset.Dataset held in memory.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .audio import wav_folder
from .dataset import Dataset
from .spoken_digits import DEFAULT_DIR as SPOKEN_DIGITS_DIR, spoken_digits

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{directory / stem}[.gz] not found; install the Debian package dataset-fashion-mnist "
        "or pass --data-dir"
    )


def fashion_mnist(split: str = "train", directory: Path = FASHION_MNIST_DIR) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(Path(directory), f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(Path(directory), f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]
    return Dataset(x, torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES), "fashion-mnist")


def image_folder(directory: Path, size: tuple[int, int] = (28, 28), channels: int = 1, split: str = "train",
                 test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Images under `directory`; class sub-folders give labels, loose files are unlabelled.

    A deterministic split by `seed` gives `test_fraction` of each class to the test split.
    """
    from PIL import Image

    directory = Path(directory)
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir())
    classes = [p.name for p in subdirs]
    groups = [(i, sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)) for i, d in enumerate(subdirs)]
    loose = sorted(f for f in directory.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        groups.append((-1, loose))
    xs, ys = [], []
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    for label, files in groups:
        order = rng.permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        chosen = order[:n_test] if split == "test" else order[n_test:]
        for j in sorted(chosen):
            img = Image.open(files[j]).convert(mode).resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
            xs.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise ValueError(f"no images found under {directory} for split {split!r}")
    return Dataset(torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long), classes, directory.name)


def load_dataset(name: str, split: str, data_dir: str | None = None, **kwargs) -> Dataset:
    """By name: 'fashion-mnist', 'folder' with data_dir (a folder of images), 'spoken-digits'
    (built by `anytime data spoken-digits`), or 'wav-folder' with data_dir (a folder of WAVs)."""
    if name == "fashion-mnist":
        return fashion_mnist(split, Path(data_dir) if data_dir else FASHION_MNIST_DIR)
    if name == "folder":
        if not data_dir:
            raise ValueError("dataset 'folder' needs --data-dir")
        return image_folder(Path(data_dir), split=split, **kwargs)
    if name == "spoken-digits":
        return spoken_digits(split, Path(data_dir) if data_dir else SPOKEN_DIGITS_DIR)
    if name == "wav-folder":
        if not data_dir:
            raise ValueError("dataset 'wav-folder' needs --data-dir")
        return wav_folder(Path(data_dir), split=split, **kwargs)
    raise ValueError(f"unknown dataset {name!r}")
