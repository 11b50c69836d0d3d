"""Export parity: eager PyTorch, TorchScript and ONNX Runtime agree on the same inputs."""
import json

import numpy as np
import pytest
import torch

from models import checkpoint
from models.prior import empty_cache, write_cache
from service.core.model_dir import load_model_dir
from service.core.runtime import make_runtime
from service.core.sampling import sample_rows, sequence_rng

BACKENDS = ["torchscript", "onnx"]


@pytest.fixture(scope="module")
def eager(tiny_checkpoints):
    vq, _ = checkpoint.load_ovqvae(tiny_checkpoints[0])
    prior, _ = checkpoint.load_prior(tiny_checkpoints[1])
    return vq, prior


def test_manifest_lists_files_with_checksums(tiny_model_dir):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["D"] == 8 and manifest["K"] == 16 and manifest["classes"] == ["zero", "one", "two"]
    for role in ("prior_step_torchscript", "prior_step_onnx", "decoder_torchscript", "decoder_onnx"):
        entry = manifest["files"][role]
        assert (tiny_model_dir / entry["path"]).is_file() and len(entry["sha256"]) == 64
    assert len(manifest["quality"]["k"]) == len(manifest["quality"]["quality"]) == 8


def _eager_step(prior, kc, vc, tokens, positions):
    """Eager step over per-layer caches kc, vc (lists of [B, H, D, hd]), updated in place."""
    B = len(tokens)
    p = torch.from_numpy(positions)
    with torch.no_grad():
        logits, kn, vn = prior.step(torch.from_numpy(tokens), p, [k[:B] for k in kc], [v[:B] for v in vc])
        write_cache([k[:B] for k in kc], [v[:B] for v in vc], p, kn, vn)
    return logits.numpy()


def test_manifest_describes_one_cache_input_per_layer(tiny_model_dir):
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    step = manifest["graphs"]["prior_step"]
    assert list(step["inputs"]) == ["tokens", "positions", "k_cache_0", "k_cache_1", "v_cache_0", "v_cache_1"]
    assert step["inputs"]["k_cache_1"] == "float32[B,H,D,hd]"
    assert list(step["outputs"]) == ["logits", "k_new_0", "k_new_1", "v_new_0", "v_new_1"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny_model_dir / "prior_step.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(step["inputs"])
    assert [o.name for o in sess.get_outputs()] == list(step["outputs"])
    assert sess.get_inputs()[2].shape[1:] == [2, 8, 8]  # [B, H, D, hd], batch dynamic


def test_runtime_compaction_moves_every_layer(tiny_model_dir, eager):
    """move_row copies a row's keys/values in every layer: the moved sequence continues exactly."""
    _, prior = eager
    for backend in BACKENDS:
        spec = load_model_dir(tiny_model_dir, backend)
        rt = make_runtime(spec, backend, slots=3)
        kc, vc = empty_cache(prior.config, 3)
        tokens = np.array([spec.unconditional_token, spec.start_token_base, spec.start_token_base + 1])
        for p in range(3):
            positions = np.full(3, p, dtype=np.int64)
            rt.step(tokens, positions)
            want = _eager_step(prior, kc, vc, tokens, positions)
            tokens = want.argmax(1).astype(np.int64)
        rt.move_row(2, 0)  # row 0 finished; row 2 takes its place
        for k, v in zip(kc, vc):
            k[0], v[0] = k[2].clone(), v[2].clone()
        tokens, positions = tokens[[2, 1]], np.full(2, 3, dtype=np.int64)
        got = rt.step(tokens, positions)
        np.testing.assert_allclose(got, _eager_step(prior, kc, vc, tokens, positions), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_logits_match_eager_with_mixed_positions(tiny_model_dir, eager, backend):
    """Rows at different positions (continuous batching) give eager's logits within 1e-4."""
    _, prior = eager
    spec = load_model_dir(tiny_model_dir, backend)
    rt = make_runtime(spec, backend, slots=4)
    kc, vc = empty_cache(prior.config, 4)
    rng = np.random.default_rng(0)
    # row r starts r steps late, so rows sit at different positions throughout
    history = rng.integers(0, 16, size=(4, 12))
    for t in range(11):
        positions = np.clip(t - np.arange(4), 0, 7).astype(np.int64)
        tokens = np.where(positions == 0, spec.unconditional_token, history[np.arange(4), positions - 1]).astype(np.int64)
        got = rt.step(tokens, positions)
        want = _eager_step(prior, kc, vc, tokens, positions)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_matches_eager_with_per_row_lengths(tiny_model_dir, eager, backend):
    vq, _ = eager
    spec = load_model_dir(tiny_model_dir, backend)
    rt = make_runtime(spec, backend, slots=1)
    codes = np.random.default_rng(1).integers(0, 16, size=(5, 8)).astype(np.int64)
    lengths = np.array([0, 1, 3, 7, 8], dtype=np.int64)
    got = rt.decode(codes, lengths)
    with torch.no_grad():
        want = ((vq.decode(torch.from_numpy(codes), torch.from_numpy(lengths)) + 1) / 2).numpy()
    assert got.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # zero-filling happens inside the graph: codes past the length do not matter
    other = codes.copy()
    other[2, 3:] = (other[2, 3:] + 1) % 16
    np.testing.assert_allclose(rt.decode(other, lengths)[2], got[2], atol=1e-6)


def _sample_tokens(step, spec, seed: int, k: int) -> list[int]:
    rng = sequence_rng(seed, 0)
    tokens, out = np.array([spec.unconditional_token]), []
    for p in range(k):
        logits = step(tokens, np.array([p]))
        tok = sample_rows(logits, np.array([rng.random()]), np.ones(1), np.zeros(1, dtype=np.int64), np.ones(1))
        out.append(int(tok[0]))
        tokens = tok
    return out


def test_same_seed_gives_same_tokens_on_every_backend(tiny_model_dir, eager):
    _, prior = eager
    kc, vc = empty_cache(prior.config, 1)
    spec = load_model_dir(tiny_model_dir, "onnx")
    results = {"eager": _sample_tokens(lambda t, p: _eager_step(prior, kc, vc, t, p), spec, 1234, 8)}
    for backend in BACKENDS:
        rt = make_runtime(load_model_dir(tiny_model_dir, backend), backend, slots=1)
        results[backend] = _sample_tokens(rt.step, spec, 1234, 8)
    assert results["eager"] == results["torchscript"] == results["onnx"]
    # and a different seed gives a different sequence (the check can fail)
    rt = make_runtime(spec, "onnx", slots=1)
    assert _sample_tokens(rt.step, spec, 99, 8) != results["onnx"]


def test_ort_spinning_modes_give_the_same_step(tiny_model_dir, monkeypatch):
    """ANYTIME_ORT_SPIN changes only how ORT's idle threads wait, never the result; Settings reads
    it (and ANYTIME_THREADS) for a runtime built without explicit values."""
    spec = load_model_dir(tiny_model_dir, "onnx")
    tokens, positions = np.array([spec.unconditional_token, 3]), np.array([0, 0])
    got = {}
    for mode in ("on", "run", "off"):
        monkeypatch.setenv("ANYTIME_ORT_SPIN", mode)
        monkeypatch.setenv("ANYTIME_THREADS", "2")
        got[mode] = make_runtime(spec, "onnx", slots=2).step(tokens, positions)
    np.testing.assert_array_equal(got["on"], got["run"])
    np.testing.assert_array_equal(got["on"], got["off"])
    monkeypatch.setenv("ANYTIME_ORT_SPIN", "sometimes")
    with pytest.raises(ValueError, match="ort_spin"):
        make_runtime(spec, "onnx", slots=2)
    assert make_runtime(spec, "onnx", slots=2, threads=1, ort_spin="off").step(tokens, positions).shape == got["on"].shape
