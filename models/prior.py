"""Decoder-only Transformer prior over the D channel tokens, with a per-row-position step.

Input vocabulary: the K code ids, then one start token per class, then one unconditional
start token. Position 0 always holds a start token; the token at position p predicts code p.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model_format.contract import guided_logits, step_signature


@dataclass
class PriorConfig:
    """Architecture of the prior; saved inside every checkpoint."""

    D: int = 64
    K: int = 256
    num_classes: int = 0
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 192
    dropout: float = 0.1

    @property
    def vocab_in(self) -> int:
        return self.K + self.num_classes + 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def start_token(self, label: int | None) -> int:
        """Input id of the start token: class-conditional, or unconditional for None."""
        return self.K + (self.num_classes if label is None else label)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        return cls(**d)


class Block(nn.Module):
    def __init__(self, c: PriorConfig):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.head_dim
        self.ln1 = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, 4 * c.d_model), nn.GELU(), nn.Linear(4 * c.d_model, c.d_model))
        self.drop = nn.Dropout(c.dropout)
        self.p = c.dropout
        self.q_scale = 1.0 / math.sqrt(c.head_dim)  # of the step's attention scores

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, S, _ = t.shape
        return t.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, S, hd]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, d_model], full causal pass (training / evaluation)
        B, S, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        y = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), is_causal=True, dropout_p=self.p if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, S, C)))
        return x + self.drop(self.mlp(self.ln2(x)))

    def step(self, x, mask, k_cache, v_cache):
        """One token per row. x [B, C]; mask [B, 1, 1, D] additive (0 for cache slots < position,
        -inf after); k_cache, v_cache [B, H, D, hd]. Returns (x [B, C], k [B, H, hd], v [B, H, hd])."""
        B, C = x.shape
        H, hd = self.n_head, self.head_dim
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=1)
        q = q.view(B, H, 1, hd)
        if self.q_scale != 1.0:  # 1.0 once folded into the weights (fold_attention_scale)
            q = q * self.q_scale
        k = k.view(B, H, 1, hd)
        v = v.view(B, H, 1, hd)
        s_cache = q @ k_cache.transpose(-1, -2) + mask  # [B, H, 1, D]
        s_self = (q * k).sum(-1, keepdim=True)  # [B, H, 1, 1]
        w = torch.softmax(torch.cat([s_cache, s_self], dim=-1), dim=-1)
        D = k_cache.shape[2]
        y = w[..., :D] @ v_cache + w[..., D:] * v  # [B, H, 1, hd]
        x = x + self.proj(y.reshape(B, C))
        x = x + self.mlp(self.ln2(x))
        return x, k.reshape(B, H, hd), v.reshape(B, H, hd)


class Prior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok = nn.Embedding(c.vocab_in, c.d_model)
        self.pos = nn.Embedding(c.D, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.K, bias=False)
        self.drop = nn.Dropout(c.dropout)
        # slot index 0..D-1 for the step's mask; a buffer (not arange in the graph) so that the
        # traced step follows the module to its device
        self.register_buffer("slot_ids", torch.arange(c.D), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, codes: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. codes [B, D] (int64), start [B] start-token ids -> [B, D, K]."""
        inp = torch.cat([start[:, None], codes[:, :-1]], dim=1)
        x = self.drop(self.tok(inp) + self.pos.weight[None, : inp.shape[1]])
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))

    def step(self, tokens, positions, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]):
        """One autoregressive step for rows at different positions (continuous batching).

        tokens [B] int64 (start token at position 0, else the previous code), positions [B]
        int64, k_cache / v_cache: one [B, H, D, hd] tensor per layer holding the keys/values of
        positions < position (later slots are ignored). Returns logits [B, K] and this step's
        keys and values, one [B, H, hd] tensor per layer each; the caller writes them into its
        cache at `positions` (the step never copies the cache).
        """
        x = self.tok(tokens) + self.pos(positions)
        slots = self.slot_ids[: k_cache[0].shape[2]]
        mask = torch.where(slots[None, :] < positions[:, None], 0.0, float("-inf"))[:, None, None, :]
        ks, vs = [], []
        for b, kc, vc in zip(self.blocks, k_cache, v_cache):
            x, k, v = b.step(x, mask, kc, vc)
            ks.append(k)
            vs.append(v)
        return self.head(self.ln_f(x)), ks, vs


def fold_attention_scale(prior: Prior) -> Prior:
    """A copy of `prior` whose query projection already carries 1/sqrt(head_dim), for export.

    The exported step then has no scale op next to q @ k^T; ONNX Runtime would otherwise fuse it
    into the MatMul's alpha, and MLAS runs its M=1 kernel only for alpha = 1 (else it packs every
    row's cache slice first). Same function, up to float rounding.
    """
    folded = copy.deepcopy(prior).eval()
    with torch.no_grad():
        for b in folded.blocks:
            C = b.qkv.in_features
            b.qkv.weight[:C] *= b.q_scale
            b.qkv.bias[:C] *= b.q_scale
            b.q_scale = 1.0
    return folded


class PriorStep(nn.Module):
    """The exported step graph, a pure function of its inputs:
    (tokens, positions, k_cache_0..k_cache_{L-1}, v_cache_0..v_cache_{L-1})
    -> (logits, k_new_0..k_new_{L-1}, v_new_0..v_new_{L-1})."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = fold_attention_scale(prior)
        self.n_layer = prior.config.n_layer

    def forward(self, tokens, positions, *caches):
        L = self.n_layer
        logits, ks, vs = self.prior.step(tokens, positions, list(caches[:L]), list(caches[L:]))
        return (logits, *ks, *vs)


def step_input_names(n_layer: int) -> list[str]:
    return list(step_signature(n_layer)[0])


def step_output_names(n_layer: int) -> list[str]:
    return list(step_signature(n_layer)[1])


def empty_cache(c: PriorConfig, batch: int, device="cpu") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Zero keys and values: one [batch, H, D, hd] tensor per layer each."""
    shape = (batch, c.n_head, c.D, c.head_dim)
    return ([torch.zeros(shape, device=device) for _ in range(c.n_layer)],
            [torch.zeros(shape, device=device) for _ in range(c.n_layer)])


def write_cache(k_cache, v_cache, positions, k_new, v_new) -> None:
    """Store each row's new key/value (per layer [B, H, hd]) at its position."""
    rows = torch.arange(len(positions), device=positions.device)
    for kc, vc, k, v in zip(k_cache, v_cache, k_new, v_new):
        kc[rows, :, positions] = k
        vc[rows, :, positions] = v


@torch.no_grad()
def sample(prior: Prior, labels: list[int | None], k: int | None = None, temperature: float = 1.0,
           generator: torch.Generator | None = None, guidance: float = 0.0) -> torch.Tensor:
    """Ancestral sampling of k (default D) codes for each label with the KV-cache step.

    guidance w > 0: classifier-free guidance. Each sample steps two rows, its label's and the
    null label's (the unconditional start token), both fed the sampled codes; the sample draws
    from guided_logits(cond, null, w) (model_format.contract). Unlabelled rows are unguided
    whatever w is (their two rows would be the same). Returns codes [B, D] with zeros after k.
    Used by evaluation; the service has its own loop with the same rows and the same mix.
    """
    c = prior.config
    k = c.D if k is None else k
    dev = prior.head.weight.device
    B = len(labels)
    rows = 2 * B if guidance > 0 else B
    kc, vc = empty_cache(c, rows, dev)
    starts = [c.start_token(l) for l in labels]
    if guidance > 0:
        starts += [c.start_token(None)] * B
    tokens = torch.tensor(starts, device=dev)
    # per row: w for labelled rows, 0 for unlabelled ones (cond == null there anyway)
    w = torch.tensor([0.0 if l is None else guidance for l in labels], device=dev)[:, None]
    codes = torch.zeros(B, c.D, dtype=torch.long, device=dev)
    for p in range(k):
        pos = torch.full((rows,), p, device=dev)
        logits, kn, vn = prior.step(tokens, pos, kc, vc)
        write_cache(kc, vc, pos, kn, vn)
        if guidance > 0:
            logits = guided_logits(logits[:B], logits[B:], w)
        probs = torch.softmax(logits / temperature, dim=-1)
        new = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        codes[:, p] = new
        tokens = torch.cat([new, new]) if guidance > 0 else new
    return codes
