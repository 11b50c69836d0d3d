"""The evaluation classifier shipped with a model: its penultimate features give the
Frechet distance between generated samples and the test split, its predictions the rate at
which class-conditional samples are recognised as their label.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import checkpoint
from .dataset import Dataset, batches


class ImageClassifier(nn.Module):
    """Small CNN for [B, C, H, W] inputs in [-1, 1]; `features` is the 128-d penultimate layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(64 * 4, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @staticmethod
    def augment(x: torch.Tensor) -> torch.Tensor:
        """Light augmentation: random horizontal flips and 1-pixel shifts."""
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return torch.roll(x, shifts=(int(torch.randint(-1, 2, ())), int(torch.randint(-1, 2, ()))), dims=(-2, -1))


class AudioClassifier(nn.Module):
    """Small CNN on log-mel features of [B, 1, T] waveforms in [-1, 1]; `features` is the
    128-d penultimate layer. The log-mel front end is gain-invariant (see audio.LogMel)."""

    def __init__(self, num_classes: int = 10, sample_rate: int = 16000, n_mels: int = 40, feature_dim: int = 128):
        super().__init__()
        from .audio import LogMel

        self.logmel = LogMel(sample_rate, n_mels=n_mels)

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        pool = lambda: nn.MaxPool2d(2, ceil_mode=True)  # noqa: E731  (ceil: short clips still pool to >= 1 frame)
        self.conv = nn.Sequential(*block(1, 16), pool(), *block(16, 32), pool(), *block(32, 64), pool(), *block(64, 128))
        self.body = nn.Sequential(nn.Dropout(0.3), nn.Linear(256, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.logmel(x)[:, None])  # [B, 128, mels/8, frames/8]
        return self.body(torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @staticmethod
    def augment(x: torch.Tensor) -> torch.Tensor:
        """Random shifts of up to 0.1 s and a little white noise (some clips clean)."""
        x = torch.roll(x, int(torch.randint(-1600, 1601, ())), dims=-1)
        level = torch.rand(x.shape[0], 1, 1, device=x.device) * 0.02
        return x + level * torch.randn_like(x)


def feature_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Activations a feature-matching loss compares: for the image classifier, the output of each
    pooling stage and the penultimate features (coarse to fine detail, then what the head reads);
    for others, the penultimate features."""
    if not isinstance(model, ImageClassifier):
        return [model.features(x)]
    maps, h = [], x
    for layer in model.body:
        h = layer(h)
        if isinstance(layer, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            maps.append(h)
    return maps + [h]


class FeatureMatching(nn.Module):
    """A loss that makes reconstructions look like their inputs to a frozen classifier: for each
    of its feature maps, the squared error relative to the input's own energy (so every map
    counts alike, whatever its scale). The classifier's weights never train and it runs in eval
    mode (batch-norm statistics and dropout fixed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # stays in eval mode inside a training model
        return self

    def forward(self, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = feature_maps(self.model, x)
        total = rec.new_zeros(())
        for got, want in zip(feature_maps(self.model, rec), targets):
            total = total + (got - want).pow(2).mean() / want.pow(2).mean().clamp(min=1e-8)
        return total / len(targets)


def build(kind: str, **kwargs) -> nn.Module:
    if kind == "image":
        return ImageClassifier(**kwargs)
    if kind == "audio":
        return AudioClassifier(**kwargs)
    raise ValueError(f"unknown classifier kind {kind!r}")


def load(path: Path) -> tuple[nn.Module, dict]:
    ck = checkpoint.load(path)
    model = build(ck["classifier_kind"], **ck["classifier_args"])
    model.load_state_dict(ck["model"])
    return model.eval(), ck


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """x in [-1, 1] -> (features [N, F], predicted class [N])."""
    model.eval()
    dev = next(model.parameters()).device
    feats, preds = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i : i + batch_size].to(dev))
        feats.append(f.cpu())
        preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def accuracy(model: nn.Module, ds: Dataset) -> float:
    _, pred = predict(model, ds.x)
    return (pred == ds.y).float().mean().item()


def train(train_ds: Dataset, test_ds: Dataset, out: Path, epochs: int = 4, seed: int = 0, lr: float = 2e-3,
          batch_size: int = 128, kind: str | None = None, meta: dict | None = None,
          steps_per_epoch: int | None = None) -> nn.Module:
    """kind: 'image' or 'audio'; by default from the data ([N, C, H, W] images, [N, 1, T] audio).
    steps_per_epoch: stop every epoch after this many steps (smoke runs)."""
    torch.manual_seed(seed)
    dev = checkpoint.device()
    kind = kind or ("audio" if train_ds.x.dim() == 3 else "image")
    args = {"num_classes": len(train_ds.classes)}
    if kind == "image":
        args["in_channels"] = train_ds.x.shape[1]
    else:
        args["sample_rate"] = train_ds.sample_rate or 16000
    model = build(kind, **args).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = (len(train_ds) + batch_size - 1) // batch_size
    per_epoch = min(per_epoch, steps_per_epoch) if steps_per_epoch else per_epoch
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        bar = tqdm(list(batches(train_ds, batch_size, True, gen))[:per_epoch], desc=f"classifier {epoch + 1}/{epochs}")
        for i, (x, y) in enumerate(bar):
            x, y = x.to(dev), y.to(dev)
            loss = F.cross_entropy(model(model.augment(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    acc = accuracy(model, test_ds)
    print(f"classifier test accuracy: {acc:.4f}")
    checkpoint.save(out, kind="classifier", classifier_kind=kind, classifier_args=args, model=model.state_dict(),
                    test_accuracy=acc, classes=train_ds.classes, meta=meta or {})
    return model
