"""Named model presets: the architecture and training budget of each default model."""
from __future__ import annotations

from .ovqvae import OVQVAEConfig
from .prior import PriorConfig

# Fashion-MNIST 28x28 -> 64 channels of 7x7 (two stride-2 convs, as the paper's MNIST model).
# D=64 keeps a full-length sample to 64 prior steps; K=512 gives ~8 codes per channel.
OVQVAE_PRESETS: dict[str, OVQVAEConfig] = {
    "fashion-mnist": OVQVAEConfig(dims=2, in_channels=1, input_shape=(28, 28), widths=(32, 64), D=64, K=512),
    # v2: the same encoder and tokens, a decoder twice as wide (128, 64 channels): the fidelity of
    # every prefix caps how often samples are recognised as their label (issue 16).
    "fashion-mnist-v2": OVQVAEConfig(dims=2, in_channels=1, input_shape=(28, 28), widths=(32, 64), D=64, K=512,
                                     decoder_widths=(64, 128)),
    "tiny-image": OVQVAEConfig(dims=2, in_channels=1, input_shape=(8, 8), widths=(8,), res_blocks=0, D=8, K=16),
    # Spoken digits: raw 16 kHz waveform of 16384 samples -> 64 channels of 64 frames. The first
    # encoder layer is STFT-like (kernel 512, stride 128), the decoder mirrors it with an inverse
    # STFT of learned magnitudes. See docs/audio.md for why (measured) and for D and K.
    "spoken-digits": OVQVAEConfig(dims=1, in_channels=1, input_shape=(16384,), widths=(128, 256), kernel=(512, 4),
                                  stride=(128, 2), res_blocks=2, D=64, K=256, beta=0.2, sample_rate=16000,
                                  spectral_weight=1.0, decoder_head="stft", restart_every=10, restart_threshold=1.0),
    "tiny-audio": OVQVAEConfig(dims=1, in_channels=1, input_shape=(256,), widths=(8,), kernel=8, stride=4,
                               res_blocks=0, D=8, K=16, sample_rate=16000),
}

PRIOR_PRESETS: dict[str, dict] = {
    "fashion-mnist": dict(n_layer=4, n_head=4, d_model=128, dropout=0.1),
    "fashion-mnist-v2": dict(n_layer=4, n_head=4, d_model=128, dropout=0.1),  # same size: same step cost
    "tiny": dict(n_layer=1, n_head=2, d_model=16, dropout=0.0),
    "spoken-digits": dict(n_layer=3, n_head=4, d_model=128, dropout=0.2),
}


def ovqvae_config(name: str) -> OVQVAEConfig:
    if name not in OVQVAE_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(OVQVAE_PRESETS)}")
    return OVQVAE_PRESETS[name]


def prior_config(name: str, D: int, K: int, num_classes: int) -> PriorConfig:
    if name not in PRIOR_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRIOR_PRESETS)}")
    return PriorConfig(D=D, K=K, num_classes=num_classes, **PRIOR_PRESETS[name])
