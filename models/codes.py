"""Token codes from a prior and samples from their first k tokens, in batches: what the
evaluation measures and the plots draw."""
from __future__ import annotations

import torch

from .prior import sample


@torch.no_grad()
def sample_codes(prior, n: int, labels: list[int | None] | None, seed: int, batch: int = 500,
                 temperature: float = 1.0, guidance: float = 0.0) -> torch.Tensor:
    gen = torch.Generator(device=next(prior.parameters()).device).manual_seed(seed)
    labels = labels if labels is not None else [None] * n
    return torch.cat([sample(prior, labels[i : i + batch], temperature=temperature, generator=gen,
                             guidance=guidance).cpu()
                      for i in range(0, n, batch)])


@torch.no_grad()
def decode(vqvae, codes: torch.Tensor, k: int, batch: int = 1000) -> torch.Tensor:
    """Decode the first k tokens of every row -> [-1, 1] samples."""
    dev = next(vqvae.parameters()).device
    out = []
    for i in range(0, len(codes), batch):
        c = codes[i : i + batch].to(dev)
        out.append(vqvae.decode(c, torch.full((len(c),), k, device=dev)).cpu())
    return torch.cat(out)
