"""Ordered VQ-VAE with channel-wise quantization (one token per latent channel).

The encoder maps an input to `D` channels; each whole channel (an H×W map, or a length-T
track for audio) is replaced by its nearest of `K` shared codebook vectors. Training with
nested dropout zero-fills every channel after a random cut, so the decoder learns to
reconstruct from any prefix and early tokens carry the coarse structure.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class OVQVAEConfig:
    """Architecture of an ordered VQ-VAE; saved inside every checkpoint."""

    dims: int = 2  # 2: images [B,C,H,W]; 1: audio [B,C,T]
    in_channels: int = 1
    input_shape: tuple[int, ...] = (28, 28)
    widths: tuple[int, ...] = (32, 64)  # one stride-`stride` conv per entry
    kernel: int | tuple[int, ...] = 4  # one value for every layer, or one per entry of `widths`
    stride: int | tuple[int, ...] = 2
    res_blocks: int = 2
    D: int = 64  # tokens per sample (latent channels)
    K: int = 256  # codebook size
    beta: float = 0.25  # commitment weight
    codebook_update: str = "ema"  # "ema" (decayed averages) or "loss" (codebook loss term)
    ema_decay: float = 0.99
    restart_every: int = 50  # training steps between dead-code restarts (EMA codebooks)
    restart_threshold: float = 0.03  # a code whose decayed use count falls below this is restarted
    sample_rate: int | None = None  # audio: samples per second of the [C, T] input
    # "conv": the decoder's last layer is a transposed convolution (as for images). "stft" (audio,
    # one input channel): that layer is an inverse STFT (window = the first encoder layer's kernel,
    # hop = its stride) of learned magnitudes with a fixed random phase; see InverseSTFTHead.
    decoder_head: str = "conv"
    spectral_weight: float = 0.0  # audio: weight of the multi-resolution STFT loss added to the MSE
    # The decoder's own widths and residual blocks (None: mirror the encoder). A wider decoder
    # raises the fidelity of every prefix without changing the tokens the prior models.
    decoder_widths: tuple[int, ...] | None = None
    decoder_res_blocks: int | None = None

    def layer(self, i: int) -> tuple[int, int]:
        """(kernel, stride) of the i-th strided convolution of the encoder."""
        k = self.kernel if isinstance(self.kernel, int) else self.kernel[i]
        s = self.stride if isinstance(self.stride, int) else self.stride[i]
        return k, s

    @property
    def latent_shape(self) -> tuple[int, ...]:
        shape = self.input_shape
        for i in range(len(self.widths)):
            shape = tuple(s // self.layer(i)[1] for s in shape)
        return shape

    @property
    def token_dim(self) -> int:
        n = 1
        for s in self.latent_shape:
            n *= s
        return n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OVQVAEConfig":
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["widths"] = tuple(d["widths"])
        if d.get("decoder_widths") is not None:
            d["decoder_widths"] = tuple(d["decoder_widths"])
        for key in ("kernel", "stride"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv1d


def _conv_t(dims: int):
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose1d


class ResBlock(nn.Module):
    def __init__(self, dims: int, ch: int):
        super().__init__()
        conv = _conv(dims)
        self.net = nn.Sequential(nn.ReLU(), conv(ch, ch, 3, padding=1), nn.ReLU(), conv(ch, ch, 1))

    def forward(self, x):
        return x + self.net(x)


def _padding(kernel: int, stride: int) -> int:
    return (kernel - stride + 1) // 2


class Encoder(nn.Module):
    def __init__(self, c: OVQVAEConfig):
        super().__init__()
        conv = _conv(c.dims)
        layers, ch = [], c.in_channels
        for i, w in enumerate(c.widths):
            k, s = c.layer(i)
            layers += [conv(ch, w, k, s, _padding(k, s)), nn.ReLU()]
            ch = w
        layers += [ResBlock(c.dims, ch) for _ in range(c.res_blocks)]
        layers += [nn.ReLU(), conv(ch, c.D, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c: OVQVAEConfig):
        super().__init__()
        conv, conv_t = _conv(c.dims), _conv_t(c.dims)
        widths = list(reversed(c.decoder_widths or c.widths))
        if len(widths) != len(c.widths):
            raise ValueError("decoder_widths needs one entry per encoder layer (it mirrors the strides)")
        res_blocks = c.res_blocks if c.decoder_res_blocks is None else c.decoder_res_blocks
        layers = [conv(c.D, widths[0], 3, padding=1)]
        layers += [ResBlock(c.dims, widths[0]) for _ in range(res_blocks)]
        layers.append(nn.ReLU())
        outs = widths[1:] + [c.in_channels]
        for i, (cin, cout) in enumerate(zip(widths, outs)):
            k, s = c.layer(len(widths) - 1 - i)  # mirrors the encoder
            if i == len(widths) - 1 and c.decoder_head == "stft":
                frames = c.input_shape[0] // s
                layers.append(InverseSTFTHead(cin, k, s, frames))
                break
            layers.append(conv_t(cin, cout, k, s, _padding(k, s)))
            if i < len(widths) - 1:
                layers.append(nn.ReLU())
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class InverseSTFTHead(nn.Module):
    """Features [B, C, frames] -> waveform [B, 1, frames * hop]: a 1x1 convolution gives the
    log-magnitude of each of the n_fft // 2 + 1 frequency bins per frame, a fixed random phase
    (a buffer, the same for every sample) makes them complex, and a frozen transposed
    convolution overlap-adds the Hann-windowed inverse-DFT frames.

    The mirror of an STFT-like first encoder layer (kernel n_fft, stride hop). Learning only
    magnitudes spares a small decoder the phase-coherent synthesis of voiced speech, which it
    cannot learn in a CPU-sized budget; a random phase keeps the spectral envelope (what a
    listener or the log-mel classifier uses) and sounds breathy.
    """

    def __init__(self, channels: int, n_fft: int, hop: int, frames: int, seed: int = 0):
        super().__init__()
        bins = n_fft // 2 + 1
        self.proj = nn.Conv1d(channels, bins, 1)
        nn.init.constant_(self.proj.bias, -4.0)  # start quiet
        self.hop, self.pad = hop, _padding(n_fft, hop)
        phase = torch.rand(bins, frames, generator=torch.Generator().manual_seed(seed)) * (2 * math.pi)
        self.register_buffer("cos", phase.cos())
        self.register_buffer("sin", phase.sin())
        n, k = torch.arange(n_fft, dtype=torch.float64), torch.arange(bins, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None] / n_fft  # [bins, n_fft]
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        scale = torch.full((bins, 1), 2.0 / n_fft, dtype=torch.float64)
        scale[0] = scale[-1] = 1.0 / n_fft  # DC and Nyquist appear once in a real spectrum
        basis = torch.cat([angle.cos() * window * scale, -angle.sin() * window * scale])  # [2 * bins, n_fft]
        self.register_buffer("basis", basis.float()[:, None, :])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mag = torch.exp(self.proj(h).clamp(max=8.0))  # [B, bins, frames]
        spec = torch.cat([mag * self.cos, mag * self.sin], dim=1)  # [B, 2 * bins, frames]
        return F.conv_transpose1d(spec, self.basis, stride=self.hop, padding=self.pad)


class ChannelQuantizer(nn.Module):
    """Nearest-codebook quantization of whole channels, with EMA updates and dead-code restarts."""

    def __init__(self, c: OVQVAEConfig):
        super().__init__()
        self.K, self.dim, self.decay = c.K, c.token_dim, c.ema_decay
        self.use_ema = c.codebook_update == "ema"
        self.codebook = nn.Parameter(torch.randn(c.K, c.token_dim) * 0.1, requires_grad=not self.use_ema)
        self.register_buffer("ema_count", torch.ones(c.K))
        self.register_buffer("ema_sum", self.codebook.data.clone())

    def codes(self, flat: torch.Tensor) -> torch.Tensor:
        # flat: [N, dim] -> [N] nearest code ids (squared L2)
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        return d.argmin(1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.codebook)

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        onehot = F.one_hot(ids, self.K).type_as(flat)  # [N, K]
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + self.K * 1e-5) * n  # Laplace smoothing
        self.codebook.data.copy_(self.ema_sum / count[:, None])

    @torch.no_grad()
    def restart_dead(self, flat: torch.Tensor, threshold: float = 0.03) -> int:
        """Move codes that are almost never chosen onto random recent encoder outputs."""
        dead = (self.ema_count < threshold).nonzero().squeeze(1)
        if dead.numel() == 0 or flat.shape[0] == 0:
            return 0
        pick = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]
        self.codebook.data[dead] = pick
        self.ema_sum[dead] = pick
        self.ema_count[dead] = 1.0
        return int(dead.numel())


def prefix_mask(lengths: torch.Tensor, D: int) -> torch.Tensor:
    """[B] lengths -> [B, D] float mask, 1 for channels < length (the kept prefix)."""
    return (torch.arange(D, device=lengths.device)[None, :] < lengths[:, None]).to(torch.float32)


class OVQVAE(nn.Module):
    def __init__(self, config: OVQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = ChannelQuantizer(config)

    def _expand(self, mask: torch.Tensor) -> torch.Tensor:
        # [B, D] -> [B, D, 1, 1] (images) or [B, D, 1] (audio)
        return mask.reshape(mask.shape + (1,) * self.config.dims)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, *input_shape] in [-1, 1] -> codes [B, D] (int64)."""
        z = self.encoder(x)
        B, D = z.shape[:2]
        return self.quantizer.codes(z.reshape(B * D, -1)).reshape(B, D)

    def decode(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """codes [B, D], lengths [B] -> reconstruction in [-1, 1]; channels >= length are zero."""
        B, D = codes.shape
        zq = self.quantizer.lookup(codes).reshape((B, D) + self.config.latent_shape)
        return self.decoder(zq * self._expand(prefix_mask(lengths, D)))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """Training pass. lengths [B] (nested dropout cut per sample) or None for all D.

        Returns (reconstruction, commitment+codebook loss, code ids [B, D]).
        """
        c = self.config
        z = self.encoder(x)
        B, D = z.shape[:2]
        flat = z.reshape(B, D, -1)
        ids = self.quantizer.codes(flat.reshape(B * D, -1).detach()).reshape(B, D)
        zq = self.quantizer.lookup(ids)  # [B, D, dim]
        keep = prefix_mask(lengths, D) if lengths is not None else torch.ones(B, D, device=x.device)
        per_token = keep[..., None]
        n_kept = per_token.sum() * flat.shape[-1]
        commit = ((flat - zq.detach()).pow(2) * per_token).sum() / n_kept
        loss = c.beta * commit
        if not self.quantizer.use_ema:
            loss = loss + ((flat.detach() - zq).pow(2) * per_token).sum() / n_kept
        elif self.quantizer.training:  # eval() on the quantizer freezes the codebook (stage "decoder")
            kept = keep.reshape(-1).bool()
            self.quantizer.ema_update(flat.reshape(B * D, -1)[kept].detach(), ids.reshape(-1)[kept])
        st = flat + (zq - flat).detach()  # straight-through estimator
        st = st * per_token  # zero-fill after the cut, after quantization (as at serving time)
        recon = self.decoder(st.reshape((B, D) + c.latent_shape))
        return recon, loss, ids


class DecoderGraph(nn.Module):
    """The exported decoder: codes [B, D] (int64), lengths [B] (int64) -> samples in [0, 1].

    Holds the decoder and the codebook only, so the exported files carry no encoder weights.
    `gain` scales the [-1, 1] output (clipped) before the map to [0, 1]: audio decoders are
    loudness-matched to their training clips with it (models/loudness.py); 1 leaves the graph
    as it was.
    """

    def __init__(self, model: OVQVAE, gain: float = 1.0):
        super().__init__()
        self.config = model.config
        self.decoder = model.decoder
        self.quantizer = model.quantizer
        self.gain = float(gain)

    _expand = OVQVAE._expand
    decode = OVQVAE.decode  # the same zero-fill and decode as training and evaluation

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.decode(codes, lengths)
        if self.gain != 1.0:
            x = (x * self.gain).clamp(-1.0, 1.0)
        return (x + 1) * 0.5
