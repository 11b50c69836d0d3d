"""Loudness matching of an audio decoder: generated speech as loud as the training clips.

A decoder trained with nested dropout and a spectral loss reproduces the spectral envelope but
not the level (docs/audio.md: about 8 dB quiet). The fix costs nothing at serving time: a gain,
measured here on full-length samples of the prior, that the exported decoder graph applies
before its output (ovqvae.DecoderGraph), and written into the manifest with the levels it was
measured from.
"""
from __future__ import annotations

import math

import torch

from .codes import decode, sample_codes

SILENCE_DB = -60.0  # a clip quieter than this (RMS, dBFS) counts as this: log of zero is no level


def rms_db(x: torch.Tensor) -> torch.Tensor:
    """Per-clip RMS level in dB relative to full scale: x [N, 1, T] in [-1, 1] -> [N]."""
    rms = x.reshape(len(x), -1).pow(2).mean(1).sqrt()
    return (20 * torch.log10(rms.clamp(min=1e-12))).clamp(min=SILENCE_DB)


def level_db(x: torch.Tensor) -> float:
    """The level of a set of clips: the mean of their RMS levels in dB."""
    return float(rms_db(x).mean())


@torch.no_grad()
def match_loudness(vqvae, prior, reference: torch.Tensor, samples: int = 200, seed: int = 0,
                   rounds: int = 3) -> tuple[float, dict]:
    """(gain, report): the output gain that brings the level of the prior's full-length
    unconditional samples to that of `reference` ([N, 1, T] in [-1, 1]). The exported graph
    clips at full scale, so the gain is refined a few rounds on the clipped output."""
    target = level_db(reference)
    codes = sample_codes(prior, samples, None, seed)
    raw = decode(vqvae, codes, vqvae.config.D)
    before = level_db(raw)
    gain = 10 ** ((target - before) / 20)
    for _ in range(rounds):
        after = level_db((raw * gain).clamp(-1, 1))
        gain *= 10 ** ((target - after) / 20)
    after = level_db((raw * gain).clamp(-1, 1))
    report = {"metric": "mean per-clip RMS, dBFS", "training_clips_db": round(target, 3),
              "decoder_db": round(before, 3), "gain": gain, "gain_db": round(20 * math.log10(gain), 3),
              "generated_db": round(after, 3), "samples": samples}
    return gain, report
