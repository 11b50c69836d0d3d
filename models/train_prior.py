"""Prior training: dump the codes of a trained OVQ-VAE once, then fit the Transformer on them."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .dataset import Dataset, batches
from .presets import prior_config
from .prior import Prior, PriorConfig


@torch.no_grad()
def dump_codes(vqvae, ds: Dataset, batch_size: int = 1000) -> torch.Tensor:
    dev = next(vqvae.parameters()).device
    out = [vqvae.encode(x.to(dev)).cpu() for x, _ in tqdm(list(batches(ds, batch_size, False)), desc="encoding")]
    return torch.cat(out)


def start_tokens(c: PriorConfig, labels: torch.Tensor, label_dropout: float, gen: torch.Generator | None = None):
    """Class start tokens, replaced by the unconditional one with probability label_dropout
    (and always for unlabelled rows, label -1), so one prior samples both ways."""
    drop = torch.rand(labels.shape, generator=gen) < label_dropout
    drop |= labels < 0
    if c.num_classes == 0:
        drop[:] = True
    return torch.where(drop, torch.full_like(labels, c.start_token(None)), c.K + labels.clamp(min=0))


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(train_ds: Dataset, vqvae_path: Path, out: Path, preset: str = "fashion-mnist", epochs: int = 5,
          lr: float = 2e-3, batch_size: int = 256, label_dropout: float = 0.1, seed: int = 0,
          val_fraction: float = 0.05, resume: bool = True, init: Path | None = None, meta: dict | None = None,
          checkpoint_every: int = 25, steps_per_epoch: int | None = None) -> Prior:
    """Fit the prior to the OVQ-VAE's codes; checkpoints every `checkpoint_every` steps and at the end
    of every epoch, and resumes from `out` at the step it reached (a run paused or killed on a
    shared machine loses at most `checkpoint_every` steps).
    `init`: start from that prior's weights (a fresh optimizer and schedule), e.g. to train a
    prior further on the same tokens. steps_per_epoch: stop every epoch after this many steps (smoke
    runs)."""
    dev = checkpoint.device()
    torch.manual_seed(seed)
    vqvae, _ = checkpoint.load_ovqvae(vqvae_path)
    codes = dump_codes(vqvae.to(dev), train_ds)
    labels = train_ds.y.clone()
    n_val = int(len(codes) * val_fraction)
    perm = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    vc = vqvae.config
    state = checkpoint.load(out) if resume and out.exists() else None
    warm = checkpoint.load(init) if init is not None and state is None else None
    config = (PriorConfig.from_dict((state or warm)["config"]) if state or warm
              else prior_config(preset, vc.D, vc.K, len(train_ds.classes)))
    if warm:
        config = dataclasses.replace(config, dropout=prior_config(preset, vc.D, vc.K, len(train_ds.classes)).dropout)
    model = Prior(config).to(dev)
    if warm:
        model.load_state_dict(warm["model"])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos" not in n and "tok" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "pos" not in n and "tok" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    start_epoch, history, partial = 0, [], None
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history, partial = state["epoch"], state["history"], state.get("partial")
    full_epoch = (len(tr_idx) + batch_size - 1) // batch_size
    steps_per_epoch = min(full_epoch, steps_per_epoch) if steps_per_epoch else full_epoch
    total, warmup = epochs * steps_per_epoch, min(500, steps_per_epoch)
    gen = torch.Generator().manual_seed(seed + 1 + start_epoch)

    def save(epoch_done: int, partial: dict | None) -> None:
        checkpoint.save(out, kind="prior", config=config.to_dict(), model=model.state_dict(), optimizer=opt.state_dict(),
                        epoch=epoch_done, history=history, vqvae=str(vqvae_path), meta=meta or {}, partial=partial,
                        label_dropout=label_dropout)

    for epoch in range(start_epoch, epochs):
        model.train()
        if partial:  # the epoch a previous run stopped in: the same order, from the step it reached
            gen.set_state(partial["epoch_rng"])
        epoch_rng = gen.get_state()
        order = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        first, run_loss = 0, 0.0
        if partial:
            gen.set_state(partial["rng"])
            torch.set_rng_state(partial["torch_rng"])
            first, run_loss, partial = partial["step"], partial["run_loss"], None
        bar = tqdm(range(first * batch_size, steps_per_epoch * batch_size, batch_size), desc=f"prior {epoch + 1}/{epochs}",
                   initial=first, total=steps_per_epoch)
        for i, j in enumerate(bar, start=first):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup)
            idx = order[j : j + batch_size]
            x = codes[idx].to(dev)
            start = start_tokens(config, labels[idx], label_dropout, gen).to(dev)
            loss = F.cross_entropy(model(x, start).reshape(-1, config.K), x.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            run_loss = 0.98 * run_loss + 0.02 * loss.item() if i else loss.item()
            if i % 10 == 0:
                bar.set_postfix(loss=f"{run_loss:.3f}")
            if checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < steps_per_epoch:
                save(epoch, {"step": i + 1, "run_loss": run_loss, "epoch_rng": epoch_rng, "rng": gen.get_state(),
                             "torch_rng": torch.get_rng_state()})
        val = validation_loss(model, codes[val_idx], labels[val_idx])
        print(f"prior epoch {epoch + 1}: train {run_loss:.4f} val {val:.4f} nats/token")
        history.append({"epoch": epoch + 1, "train_loss": run_loss, "val_loss": val})
        save(epoch + 1, None)
    return model.eval()


@torch.no_grad()
def validation_loss(model: Prior, codes: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    dev = next(model.parameters()).device
    c, tot = model.config, 0.0
    for i in range(0, len(codes), batch_size):
        x = codes[i : i + batch_size].to(dev)
        start = start_tokens(c, labels[i : i + batch_size], 0.0).to(dev)
        tot += F.cross_entropy(model(x, start).reshape(-1, c.K), x.reshape(-1), reduction="sum").item()
    model.train()
    return tot / codes.numel()
