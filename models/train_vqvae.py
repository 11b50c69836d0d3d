"""Two-stage OVQ-VAE training: `plain` (all D channels), then `ordered` (nested dropout).

A third stage, `decoder`, trains a new decoder (the preset's decoder widths) with nested dropout
on the frozen encoder and codebook of `init`: the tokens, and so a prior trained on them, stay
valid while the decoder gains fidelity (zoo v2).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .dataset import Dataset, batches
from .ovqvae import OVQVAE, OVQVAEConfig


def sample_cuts(batch: int, D: int, min_cut: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample nested-dropout cuts, uniform on {min_cut..D}: keep channels < cut."""
    return torch.randint(min_cut, D + 1, (batch,), generator=generator)


@torch.no_grad()
def reconstruction_mse(model: OVQVAE, ds: Dataset, lengths: list[int], batch_size: int = 1000) -> dict[int, float]:
    """Test MSE on the [0, 1] pixel scale for each truncation length k."""
    model.eval()
    dev = next(model.parameters()).device
    sums = {k: 0.0 for k in lengths}
    for x, _ in batches(ds, batch_size, shuffle=False):
        x = x.to(dev)
        codes = model.encode(x)
        for k in lengths:
            lens = torch.full((x.shape[0],), k, device=dev)
            rec = model.decode(codes, lens)
            sums[k] += F.mse_loss((rec + 1) / 2, (x + 1) / 2, reduction="sum").item()
    n = len(ds) * ds.x[0].numel()
    return {k: s / n for k, s in sums.items()}


def train(train_ds: Dataset, out: Path, config: OVQVAEConfig | None = None, stage: str = "plain", epochs: int = 10,
          init: Path | None = None, lr: float = 1e-3, batch_size: int = 128, seed: int = 0, min_cut: int = 1,
          resume: bool = True, meta: dict | None = None, checkpoint_every: int = 50, init_decoder: bool = False,
          feature_classifier: Path | None = None, feature_weight: float = 0.0,
          steps_per_epoch: int | None = None) -> OVQVAE:
    """Train (or fine-tune from `init`); checkpoints every `checkpoint_every` steps and after every
    epoch, and resumes from `out` at the step it reached.

    init_decoder (stage decoder): start the decoder from init's (same widths) instead of afresh.
    feature_classifier, feature_weight: add feature_weight x a feature-matching loss in that
    frozen classifier's features (classifier.FeatureMatching) to the MSE, at every nested-dropout
    cut, so each prefix's reconstruction keeps what makes its class recognisable. Use a classifier
    other than the one the evaluation measures with, or the measurement stops being independent.
    steps_per_epoch: stop every epoch after this many steps (smoke runs)."""
    if stage not in ("plain", "ordered", "decoder"):
        raise ValueError("stage must be 'plain', 'ordered' or 'decoder'")
    if stage == "decoder" and init is None and not (resume and out.exists()):
        raise ValueError("stage 'decoder' trains a new decoder on the encoder and codebook of --init")
    dev = checkpoint.device()
    torch.manual_seed(seed)
    state = None
    if resume and out.exists():
        state = checkpoint.load(out)
        config = OVQVAEConfig.from_dict(state["config"])
    elif init is not None:
        init_config = OVQVAEConfig.from_dict(checkpoint.load(init)["config"])
        if stage == "decoder":  # the init's tokens, the preset's decoder
            init_config = dataclasses.replace(init_config, decoder_widths=config.decoder_widths,
                                              decoder_res_blocks=config.decoder_res_blocks)
        config = init_config
    config = config or OVQVAEConfig()
    model = OVQVAE(config).to(dev)
    if stage == "decoder":
        for p in [*model.encoder.parameters(), *model.quantizer.parameters()]:
            p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    start_epoch, history, partial = 0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for g in opt.param_groups:  # this run's lr, e.g. lower for the last epochs of a resumed run
            g["lr"] = lr
        start_epoch, history, partial = state["epoch"], state["history"], state.get("partial")
    elif init is not None:
        weights = checkpoint.load(init)["model"]
        if stage == "decoder" and not init_decoder:
            weights = {k: v for k, v in weights.items() if not k.startswith("decoder.")}
        missing, _ = model.load_state_dict(weights, strict=stage != "decoder" or init_decoder)
        assert all(k.startswith("decoder.") for k in missing), missing
    gen = torch.Generator().manual_seed(seed + start_epoch)
    features = None
    if feature_weight and feature_classifier is not None:
        from .classifier import FeatureMatching, load as load_classifier

        features = FeatureMatching(load_classifier(feature_classifier)[0]).to(dev)

    def save(epoch_done: int, partial: dict | None) -> None:
        checkpoint.save(out, kind="ovqvae", config=config.to_dict(), model=model.state_dict(), optimizer=opt.state_dict(),
                        epoch=epoch_done, history=history, stage=stage, meta=meta or {}, partial=partial)

    for epoch in range(start_epoch, epochs):
        model.train()
        if stage == "decoder":
            model.encoder.eval()
            model.quantizer.eval()
        if partial:  # the epoch a previous run stopped in: the same batches, from the step it reached
            gen.set_state(partial["epoch_rng"])
        epoch_rng = gen.get_state()
        epoch_batches = list(batches(train_ds, batch_size, shuffle=True, generator=gen))[:steps_per_epoch]
        used = torch.zeros(config.K, dtype=torch.bool)
        first, tot_rec, tot_spec, tot_feat, tot_n = 0, 0.0, 0.0, 0.0, 0.0
        if partial:
            gen.set_state(partial["rng"])
            torch.set_rng_state(partial["torch_rng"])
            used = partial["used"].clone()
            first, tot_rec, tot_spec, tot_n = partial["step"], partial["tot_rec"], partial["tot_spec"], partial["tot_n"]
            tot_feat = partial.get("tot_feat", 0.0)
            partial = None
        bar = tqdm(epoch_batches[first:], desc=f"ovqvae/{stage} {epoch + 1}/{epochs}", initial=first,
                   total=len(epoch_batches))
        for i, (x, _) in enumerate(bar, start=first):
            x = x.to(dev)
            lengths = sample_cuts(x.shape[0], config.D, min_cut, gen).to(dev) if stage != "plain" else None
            rec, vq_loss, ids = model(x, lengths)
            rec_loss = F.mse_loss(rec, x)
            loss = rec_loss + vq_loss
            spec = torch.zeros(())
            if config.spectral_weight:
                from .audio import spectral_loss

                spec = spectral_loss(rec, x, sample_rate=config.sample_rate or 16000)
                loss = loss + config.spectral_weight * spec
            feat = torch.zeros(())
            if features is not None:
                feat = features(rec, x)
                loss = loss + feature_weight * feat
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            used[ids.flatten().cpu()] = True
            if stage != "decoder" and model.quantizer.use_ema and i % config.restart_every == config.restart_every - 1:
                z = model.encoder(x).detach().reshape(-1, config.token_dim)
                model.quantizer.restart_dead(z, config.restart_threshold)
            tot_rec += rec_loss.item() * x.shape[0]
            tot_spec += spec.item() * x.shape[0]
            tot_feat += feat.item() * x.shape[0]
            tot_n += x.shape[0]
            if i % 20 == 0:
                bar.set_postfix(rec=f"{tot_rec / tot_n:.4f}", vq=f"{vq_loss.item():.4f}", codes=int(used.sum()),
                                **({"spec": f"{tot_spec / tot_n:.4f}"} if config.spectral_weight else {}),
                                **({"feat": f"{tot_feat / tot_n:.4f}"} if features is not None else {}))
            if checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < len(epoch_batches):
                save(epoch, {"step": i + 1, "tot_rec": tot_rec, "tot_spec": tot_spec, "tot_feat": tot_feat,
                             "tot_n": tot_n, "used": used,
                             "epoch_rng": epoch_rng, "rng": gen.get_state(), "torch_rng": torch.get_rng_state()})
        history.append({"epoch": epoch + 1, "stage": stage, "rec_loss": tot_rec / tot_n, "codes_used": int(used.sum()),
                        **({"spectral_loss": tot_spec / tot_n} if config.spectral_weight else {}),
                        **({"feature_loss": tot_feat / tot_n, "feature_weight": feature_weight}
                           if features is not None else {})})
        save(epoch + 1, None)
    return model.eval()
