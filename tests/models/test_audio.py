"""The audio path on tiny synthetic signals (no espeak-ng): features, classifier, WAV folders,
the 1-D OVQ-VAE, training/evaluation through the shared code, and export parity."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from models import checkpoint, classifier
from models.audio import LogMel, fit_length, mel_filterbank, spectral_loss, wav_folder
from models.data import load_dataset
from models.dataset import Dataset
from models.ovqvae import OVQVAE, InverseSTFTHead, OVQVAEConfig
from models.presets import ovqvae_config
from service.core.model_dir import load_model_dir
from service.core.runtime import make_runtime
from tests.utils.tiny_audio import CLASSES, FREQS, SAMPLE_RATE, cached_audio_model_dir, tone

BACKENDS = ["torchscript", "onnx"]


def tones(n_per_class: int, length: int, seed: int = 0) -> Dataset:
    """Three classes of tone bursts with jittered pitch, phase, placement and gain."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, f in enumerate(FREQS):
        for _ in range(n_per_class):
            burst = tone(f * rng.uniform(0.9, 1.1), length // 2, phase=rng.uniform(0, 2 * np.pi))
            xs.append(fit_length(burst * rng.uniform(0.3, 1.0), length, int(rng.integers(-length // 8, length // 8))))
            ys.append(label)
    return Dataset(torch.from_numpy(np.stack(xs))[:, None], torch.tensor(ys), list(CLASSES), "tones", SAMPLE_RATE)


def test_mel_filterbank_covers_the_band_with_ordered_filters():
    fb = mel_filterbank(512, 40, SAMPLE_RATE)
    assert fb.shape == (40, 257)
    assert (fb.sum(1) > 0).all()  # no empty filter
    assert (fb.argmax(1).diff() >= 0).all()  # centres rise with the filter index


def test_logmel_shape_range_and_gain_invariance():
    x = torch.from_numpy(np.stack([tone(440, 16384), tone(3000, 16384)]))[:, None]  # [2, 1, T]
    f = LogMel()(x)
    assert f.shape == (2, 40, 1 + 16384 // 160)
    assert f.min() >= 0 and f.max() == pytest.approx(1.0)
    torch.testing.assert_close(LogMel()(0.05 * x), f, atol=1e-4, rtol=0)
    # a low tone puts its energy in lower mel bands than a high one
    assert f[0].mean(1).argmax() < f[1].mean(1).argmax()


def test_spectral_loss_is_zero_on_identity_and_differentiable():
    x = 0.1 * torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(0))  # energy in every mel band
    assert spectral_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # phase does not matter: the same partials with other phases cost less than 6 dB of gain does
    t = torch.arange(4096) / SAMPLE_RATE
    chord = lambda phases: sum(torch.sin(2 * np.pi * f * t + ph) for f, ph in zip((220, 660, 1500), phases))  # noqa: E731
    a, b = chord((0, 0, 0))[None, None], chord((1.0, 2.5, 4.0))[None, None]
    assert spectral_loss(b, a).item() < 0.5 * spectral_loss(0.5 * a, a).item()
    y = (0.5 * x).requires_grad_()
    loss = spectral_loss(y, x)
    loss.backward()
    assert loss.item() == pytest.approx(20 * np.log10(2) / 80, rel=0.2)
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_audio_classifier_shapes_and_it_learns_tones(tmp_path):
    m = classifier.build("audio", num_classes=3)
    x = tones(2, 4096).x
    assert m.features(x).shape == (6, 128) and m(x).shape == (6, 3)
    train_ds, test_ds = tones(24, 4096, seed=1), tones(8, 4096, seed=2)
    classifier.train(train_ds, test_ds, tmp_path / "clf.pt", epochs=6, batch_size=8)
    model, ck = classifier.load(tmp_path / "clf.pt")
    assert ck["classifier_kind"] == "audio" and ck["classifier_args"]["sample_rate"] == SAMPLE_RATE
    assert ck["test_accuracy"] >= 0.9 and classifier.accuracy(model, test_ds) == pytest.approx(ck["test_accuracy"])


def _write_wav_tree(root, rates=(8000, 22050)):
    for label, f in enumerate(FREQS):
        d = root / CLASSES[label]
        d.mkdir(parents=True)
        for i in range(5):
            sr = rates[i % len(rates)]
            a = tone(f, sr // 4, sr) * 0.5
            sf.write(d / f"{i}.wav", np.stack([a, a], 1) if i == 0 else a, sr)  # one stereo file


def test_wav_folder_resamples_fits_and_splits(tmp_path):
    _write_wav_tree(tmp_path / "clips")
    train = load_dataset("wav-folder", "train", str(tmp_path / "clips"), length=8000, test_fraction=0.2)
    test = wav_folder(tmp_path / "clips", length=8000, split="test", test_fraction=0.2)
    assert train.x.shape == (12, 1, 8000) and test.x.shape == (3, 1, 8000)
    assert train.classes == sorted(CLASSES) and train.sample_rate == SAMPLE_RATE  # folder names, sorted
    assert sorted(test.y.tolist()) == [0, 1, 2]
    assert train.x.abs().amax(-1).flatten().tolist() == pytest.approx([0.95] * 12, abs=1e-3)
    # a 0.25 s clip at any rate is 4000 samples at 16 kHz, centred in 8000
    nonzero = (train.x[0, 0].abs() > 1e-4).nonzero()
    assert 1900 <= nonzero.min() and nonzero.max() <= 6100
    # resampling keeps the pitch: the 2700 Hz class peaks near 2700 Hz
    spec = np.abs(np.fft.rfft(train.x[train.y == train.classes.index("high")][0, 0].numpy()))
    assert abs(np.fft.rfftfreq(8000, 1 / SAMPLE_RATE)[spec.argmax()] - 2700) < 20


def test_wav_folder_uses_train_and_test_subfolders_when_present(tmp_path):
    _write_wav_tree(tmp_path / "clips" / "train")
    _write_wav_tree(tmp_path / "clips" / "test", rates=(16000,))
    train = wav_folder(tmp_path / "clips", length=4096, split="train")
    test = wav_folder(tmp_path / "clips", length=4096, split="test")
    assert len(train) == len(test) == 15 and test.classes == sorted(CLASSES)


def test_inverse_stft_head_turns_one_bin_into_its_sinusoid():
    head = InverseSTFTHead(channels=1, n_fft=512, hop=128, frames=32)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.fill_(-30.0)
        head.proj.bias[40] = 0.0  # bin 40 of 512 at 16 kHz: 1250 Hz
        wave = head(torch.zeros(1, 1, 32))
    assert wave.shape == (1, 1, 32 * 128)
    spectrum = np.abs(np.fft.rfft(wave[0, 0, 512:-512].numpy()))
    freqs = np.fft.rfftfreq(wave.shape[-1] - 1024, 1 / SAMPLE_RATE)
    assert abs(freqs[spectrum.argmax()] - 1250) < 40  # within about one bin (31.25 Hz): the phase is random


def test_per_layer_kernels_and_strides_mirror_in_the_decoder():
    c = OVQVAEConfig(dims=1, input_shape=(1024,), widths=(8, 16), kernel=(64, 4), stride=(16, 2), res_blocks=0,
                     D=4, K=8)
    assert c.latent_shape == (32,) and c.layer(0) == (64, 16) and c.layer(1) == (4, 2)
    assert OVQVAEConfig.from_dict(c.to_dict()) == c
    for head in ("conv", "stft"):
        m = OVQVAE(OVQVAEConfig(**{**c.to_dict(), "decoder_head": head}))
        x = torch.randn(2, 1, 1024).clamp(-1, 1)
        assert m.encoder(x).shape == (2, 4, 32) and m(x)[0].shape == x.shape


def test_spoken_digits_preset_is_channelwise_over_64_frames():
    c = ovqvae_config("spoken-digits")
    assert (c.dims, c.latent_shape, c.token_dim, c.sample_rate) == (1, (64,), 64, 16000)
    model = OVQVAE(c).eval()
    x = torch.from_numpy(np.stack([tone(300, 16384), tone(1200, 16384)]))[:, None]
    with torch.no_grad():
        rec, _, ids = model(x, torch.tensor([3, 64]))
        assert rec.shape == x.shape and ids.shape == (2, 64)
        codes = model.encode(x)
        # channels past the length are zero-filled: changing them does not change the output
        other = codes.clone()
        other[0, 3:] = (other[0, 3:] + 1) % c.K
        lens = torch.tensor([3, 64])
        torch.testing.assert_close(model.decode(other, lens)[0], model.decode(codes, lens)[0])


def test_train_evaluate_on_tones_through_the_shared_pipeline(tmp_path):
    """Two-stage OVQ-VAE training, prior, classifier and evaluation on tones; audio plots and report."""
    from models.evaluate import evaluate_pipelines
    from models.train_prior import train as train_prior
    from models.train_vqvae import train as train_vqvae

    train_ds, test_ds = tones(8, 1024, seed=3), tones(4, 1024, seed=4)
    config = OVQVAEConfig(dims=1, input_shape=(1024,), widths=(8, 8), kernel=(64, 4), stride=(16, 4), res_blocks=0,
                          D=8, K=16, sample_rate=SAMPLE_RATE, spectral_weight=1.0, decoder_head="stft",
                          restart_every=2, restart_threshold=1.0)
    meta = {"command": "test", "dataset": "tones", "classes": CLASSES}
    train_vqvae(train_ds, tmp_path / "plain.pt", config, stage="plain", epochs=1, batch_size=8, meta=meta)
    train_vqvae(train_ds, tmp_path / "ordered.pt", stage="ordered", init=tmp_path / "plain.pt", epochs=1, batch_size=8,
                meta=meta)
    train_prior(train_ds, tmp_path / "ordered.pt", tmp_path / "prior.pt", preset="tiny", epochs=1, batch_size=8,
                meta=meta)
    classifier.train(train_ds, test_ds, tmp_path / "clf.pt", epochs=1, batch_size=8)
    out = tmp_path / "results"
    result = evaluate_pipelines(test_ds, [("ordered", str(tmp_path / "ordered.pt"), str(tmp_path / "prior.pt"))],
                                tmp_path / "clf.pt", out, samples=24, conditional_samples=12, command="test")
    res = result["pipelines"]["ordered"]
    assert result["modality"] == "audio" and [r["k"] for r in res["curve"]] == list(range(1, 9))
    assert all(r["label_accuracy"] is not None and np.isfinite(r["frechet"]) for r in res["curve"])
    assert res["figures"] == ["samples-ordered.png", "samples-ordered-waveforms.png"]
    md = (out / "evaluation.md").read_text()
    assert "test clips" in md and "recognised" in md and "samples-ordered-waveforms.png" in md
    for f in ("anytime-curve.png", *res["figures"]):
        assert (out / f).stat().st_size > 1000
    vq, ck = checkpoint.load_ovqvae(tmp_path / "ordered.pt")
    assert vq.config.sample_rate == SAMPLE_RATE and ck["stage"] == "ordered"


# ---- export ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    return cached_audio_model_dir(tmp_path_factory)


def test_audio_manifest_has_modality_and_sample_rate(audio_dir):
    manifest = json.loads((audio_dir / "manifest.json").read_text())
    assert manifest["modality"] == "audio" and manifest["classes"] == CLASSES
    assert manifest["output"] == {"shape": [1, 256], "range": [0.0, 1.0], "sample_rate": 16000}
    spec = load_model_dir(audio_dir, "onnx")
    assert spec.modality == "audio" and spec.sample_rate == 16000 and spec.output_shape == (1, 256)


@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_decoder_matches_eager_with_per_row_lengths(audio_dir, backend):
    vq, _ = checkpoint.load_ovqvae(audio_dir.parent / "ckpt" / "vqvae.pt")
    rt = make_runtime(load_model_dir(audio_dir, backend), backend, slots=1)
    codes = np.random.default_rng(1).integers(0, 16, size=(5, 8)).astype(np.int64)
    lengths = np.array([0, 1, 3, 7, 8], dtype=np.int64)
    got = rt.decode(codes, lengths)
    with torch.no_grad():
        want = ((vq.decode(torch.from_numpy(codes), torch.from_numpy(lengths)) + 1) / 2).numpy()
    assert got.shape == (5, 1, 256)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert got[4].std() > 1e-3  # a real signal, not a constant


@pytest.mark.parametrize("backend", BACKENDS)
def test_audio_prior_step_matches_eager(audio_dir, backend):
    from models.prior import empty_cache, write_cache

    prior, _ = checkpoint.load_prior(audio_dir.parent / "ckpt" / "prior.pt")
    spec = load_model_dir(audio_dir, backend)
    rt = make_runtime(spec, backend, slots=3)
    kc, vc = empty_cache(prior.config, 3)
    tokens = np.array([spec.start_token_base + 2, spec.unconditional_token, spec.start_token_base], dtype=np.int64)
    for p in range(4):
        positions = np.full(3, p, dtype=np.int64)
        got = rt.step(tokens, positions)
        with torch.no_grad():
            want, kn, vn = prior.step(torch.from_numpy(tokens), torch.from_numpy(positions), kc, vc)
        write_cache(kc, vc, torch.from_numpy(positions), kn, vn)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
        tokens = want.argmax(1).numpy().astype(np.int64)
