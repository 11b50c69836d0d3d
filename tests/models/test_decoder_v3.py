"""Zoo v3's decoder training: the feature-matching loss against a frozen classifier, starting a
decoder from its init, the smoke-run step cap, and audio loudness matching in the exported graph."""
import json

import numpy as np
import onnxruntime as ort
import torch

from models import checkpoint
from models.classifier import FeatureMatching, ImageClassifier, feature_maps
from models.classifier import train as train_classifier
from models.dataset import Dataset
from models.export import export_model
from models.loudness import level_db, match_loudness
from models.train_vqvae import train as train_vqvae
from tests.utils.tiny_audio import write_audio_checkpoints
from tests.utils.tiny_model import CLASSES, tiny_configs, write_evaluation


def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5 - 1
    for c in range(3):  # a class-dependent bright row, so a classifier has something to learn
        x[y == c, :, 2 * c + 1] = 1.0
    return Dataset(x=x, y=y, classes=CLASSES, name="tiny")


def test_feature_matching_is_zero_on_the_input_and_trains_only_the_reconstruction():
    torch.manual_seed(0)
    clf = ImageClassifier(num_classes=3)
    loss = FeatureMatching(clf)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert loss(x, x).item() == 0.0
    rec = (x + 0.3 * torch.randn_like(x)).requires_grad_()
    value = loss(rec, x)
    value.backward()
    assert value.item() > 0 and rec.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in clf.parameters())
    assert len(feature_maps(clf, x)) == 4  # two pooling stages, the adaptive pool, the features
    loss.train()
    assert not clf.training  # stays in eval mode: batch-norm statistics are not updated


def test_decoder_stage_with_feature_loss_and_step_cap(tmp_path):
    ds = _images()
    clf_path = tmp_path / "features.pt"
    train_classifier(ds, ds, clf_path, epochs=1, batch_size=16, steps_per_epoch=2)
    vc, _ = tiny_configs()
    init = tmp_path / "init.pt"
    train_vqvae(ds, init, vc, stage="ordered", epochs=1, batch_size=16, steps_per_epoch=2)
    init_weights = checkpoint.load(init)["model"]

    # lr 0: the weights stay what they started from, so the start is visible
    kept = tmp_path / "kept.pt"
    model = train_vqvae(ds, kept, vc, stage="decoder", init=init, init_decoder=True, lr=0.0, epochs=1,
                        batch_size=16, feature_classifier=clf_path, feature_weight=0.5, steps_per_epoch=3)
    assert all(torch.equal(v, init_weights[k]) for k, v in model.state_dict().items() if k.startswith("decoder."))
    fresh = train_vqvae(ds, tmp_path / "fresh.pt", vc, stage="decoder", init=init, lr=0.0, epochs=1, batch_size=16,
                        steps_per_epoch=3)
    assert not all(torch.equal(v, init_weights[k]) for k, v in fresh.state_dict().items() if k.startswith("decoder."))

    tuned = tmp_path / "tuned.pt"
    train_vqvae(ds, tuned, vc, stage="decoder", init=init, init_decoder=True, epochs=2, batch_size=16,
                feature_classifier=clf_path, feature_weight=0.5, steps_per_epoch=3)
    history = checkpoint.load(tuned)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["feature_loss"] > 0 and h["feature_weight"] == 0.5 for h in history)
    # the encoder and codebook are frozen in stage decoder: the tokens (and the prior) stay valid
    tuned_weights = checkpoint.load(tuned)["model"]
    assert all(torch.equal(v, init_weights[k]) for k, v in tuned_weights.items() if not k.startswith("decoder."))


def test_exported_audio_decoder_is_loudness_matched(tmp_path):
    vq_path, prior_path = write_audio_checkpoints(tmp_path / "ckpt")
    vq, _ = checkpoint.load_ovqvae(vq_path)
    prior, _ = checkpoint.load_prior(prior_path)
    t = torch.arange(256) / 16000
    reference = (0.5 * torch.sin(2 * torch.pi * 440 * t)).repeat(20, 1, 1)  # about -9 dBFS
    gain, report = match_loudness(vq, prior, reference, samples=40)
    assert abs(report["generated_db"] - level_db(reference)) < 0.1 and gain != 1.0

    out = tmp_path / "tiny-audio"
    export_model("tiny-audio", vq_path, prior_path, out, evaluation=write_evaluation(tmp_path / "ev.json", 8),
                 command="test", loudness_reference=reference)
    manifest = json.loads((out / "manifest.json").read_text())
    loudness = manifest["output"]["loudness"]
    assert abs(loudness["gain_db"] - report["gain_db"]) < 0.5  # 200 samples there, 40 here
    assert abs(loudness["generated_db"] - loudness["training_clips_db"]) < 0.1
    gain = loudness["gain"]
    # the graph applies the gain: its samples (in [0, 1]) are as loud as the reference
    codes = np.random.default_rng(0).integers(0, 16, (40, 8))
    sess = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    samples = sess.run(None, {"codes": codes, "lengths": np.full(40, 8, np.int64)})[0]
    with torch.no_grad():
        eager = vq.decode(torch.from_numpy(codes), torch.full((40,), 8))
    assert np.allclose(samples * 2 - 1, (eager * gain).clamp(-1, 1).numpy(), atol=1e-4)
