"""Classifier-free guidance on the model side: the manifest says the prior supports it, and the
eager sampler, the TorchScript graph and the ONNX graph sample the same guided codes."""
import copy
import json

import numpy as np
import pytest
import torch

from model_format.contract import FILES, MAX_GUIDANCE, guided_logits, manifest_field_problems
from models import checkpoint
from models.graphs import generate, open_graph
from models.prior import sample
from tests.utils.tiny_model import CLASSES

K = 16
NULL = K + len(CLASSES)
GREEDY = 1e-4  # a temperature this low makes every sampler take the argmax


@pytest.fixture(scope="module")
def prior(tiny_checkpoints):
    return checkpoint.load_prior(tiny_checkpoints[1])[0]


@pytest.fixture(scope="module")
def manifest(tiny_guided_model_dir):
    return json.loads((tiny_guided_model_dir / "manifest.json").read_text())


def _prior_args(manifest):
    p = manifest["prior"]
    return dict(D=manifest["D"], n_layer=p["n_layer"], n_head=p["n_head"], head_dim=p["head_dim"])


def test_manifest_declares_guidance_only_for_a_label_dropout_prior(manifest, tiny_model_dir):
    section = manifest["prior"]["guidance"]
    assert {k: section[k] for k in ("null_token", "label_dropout", "default")} == {
        "null_token": NULL, "label_dropout": 0.1, "default": 1.5}
    # the evaluation's guided curves, on one scale: FD_min / FD, the best (w = 1.5, k = D) at 1
    q = section["quality"]
    assert q["guidance"] == [0.0, 1.5] and q["k"] == list(range(1, 9))
    assert q["quality"][1][-1] == 1.0 and q["quality"][0][-1] == 0.5 and q["quality"][1][0] < q["quality"][1][-1]
    assert manifest["prior"]["unconditional_token"] == NULL
    plain = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert "guidance" not in plain["prior"]


@pytest.mark.parametrize("change, message", [
    ({"null_token": NULL - 1}, "null_token"),
    ({"label_dropout": 0.0}, "label_dropout"),
    ({"label_dropout": 1.5}, "label_dropout"),
    ({"default": -1}, "default"),
    ({"default": MAX_GUIDANCE + 1}, "default"),
])
def test_contract_rejects_a_malformed_guidance_section(manifest, change, message):
    bad = copy.deepcopy(manifest)
    bad["prior"]["guidance"].update(change)
    problems = manifest_field_problems(bad)
    assert len(problems) == 1 and message in problems[0].message
    assert manifest_field_problems(manifest) == []


def test_contract_rejects_guidance_without_classes(manifest):
    bad = copy.deepcopy(manifest)
    bad["classes"] = []
    bad["prior"]["unconditional_token"] = K
    bad["prior"]["guidance"]["null_token"] = K
    assert any("needs classes" in p.message for p in manifest_field_problems(bad))


def test_guided_logits_formula():
    cond, uncond = np.array([[1.0, 3.0]]), np.array([[2.0, 1.0]])
    assert np.array_equal(guided_logits(cond, uncond, 0.0), cond)  # 0 = off
    assert np.allclose(guided_logits(cond, uncond, 2.0), [[-1.0, 7.0]])
    assert torch.allclose(guided_logits(torch.tensor(cond), torch.tensor(uncond), 2.0), torch.tensor([[-1.0, 7.0]],
                                                                                                      dtype=torch.float64))


def _greedy_guided(prior, labels, w):
    """Argmax of the guided logits, from the teacher-forced full causal pass (no KV cache)."""
    c = prior.config
    B = len(labels)
    codes = torch.zeros(B, c.D, dtype=torch.long)
    with torch.no_grad():
        for p in range(c.D):
            cond = prior(codes, torch.tensor([c.start_token(l) for l in labels]))[:, p]
            null = prior(codes, torch.full((B,), c.start_token(None)))[:, p]
            codes[:, p] = guided_logits(cond, null, w).argmax(1)
    return codes


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_eager_torchscript_and_onnx_sample_the_same_guided_codes(prior, manifest, tiny_guided_model_dir, w):
    labels = [0, 1, 2, 1]
    want = _greedy_guided(prior, labels, w)
    eager = sample(prior, labels, temperature=GREEDY, generator=torch.Generator().manual_seed(0), guidance=w)
    assert torch.equal(eager, want)
    starts = np.array([K + l for l in labels], np.int64)
    for backend in ("torchscript", "onnx"):
        role = "prior_step_torchscript" if backend == "torchscript" else "prior_step_onnx"
        step = open_graph(tiny_guided_model_dir / FILES[role], backend)
        codes = generate(step, starts, seed=0, temperature=GREEDY, guidance=w, null_token=NULL,
                         **_prior_args(manifest))
        assert np.array_equal(codes, want.numpy()), backend


def test_guidance_changes_the_samples(prior):
    labels = [0, 1, 2] * 4
    plain = _greedy_guided(prior, labels, 0.0)
    assert not torch.equal(plain, _greedy_guided(prior, labels, 4.0))


def test_guided_sampling_is_deterministic_and_prefix_consistent(manifest, tiny_guided_model_dir):
    step = open_graph(tiny_guided_model_dir / FILES["prior_step_onnx"], "onnx")
    starts = np.array([K, K + 1, K + 2], np.int64)
    run = lambda k, seed=7: generate(step, starts, seed=seed, k=k, guidance=3.0, null_token=NULL,  # noqa: E731
                                     **_prior_args(manifest))
    full = run(None)
    assert np.array_equal(full, run(None))
    assert not np.array_equal(full, run(None, seed=8))
    for k in (1, 3, 6):
        short = run(k)
        assert np.array_equal(short[:, :k], full[:, :k]) and not short[:, k:].any()


def test_unlabelled_rows_are_not_guided(prior):
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    guided = sample(prior, [None, None], generator=gen(), guidance=5.0)
    assert torch.equal(guided, sample(prior, [None, None], generator=gen()))


def test_generate_needs_the_null_token(manifest, tiny_guided_model_dir):
    step = open_graph(tiny_guided_model_dir / FILES["prior_step_onnx"], "onnx")
    with pytest.raises(ValueError, match="null token"):
        generate(step, np.array([K], np.int64), seed=0, guidance=1.0, **_prior_args(manifest))
