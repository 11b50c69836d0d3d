"""Full-length generation (all D tokens, then one decode) of a batch of samples with the exported
ONNX graphs: what a user puts inside a peer server's batch handler.

Reads the model directory itself (docs/model-format.md) instead of importing `service/`, so the
peers do not depend on how the service is laid out. The runtime settings are the service's
defaults (intra-op threads = all cores, idle threads spin only during a run), so the peers get
the same per-step speed as Anytime's engine."""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "zoo" / "fashion-mnist"


@dataclass(frozen=True)
class SampleSpec:
    """One sample to generate: the request's seed, its index in the request, an optional label."""
    seed: int
    index: int
    label: int | None = None


def request_samples(body: dict) -> list[SampleSpec]:
    """The samples a `POST /generate` body asks for (the fields the load generator sends)."""
    n, seed = int(body.get("n", 1)), int(body["seed"])
    label = body.get("label")
    return [SampleSpec(seed, i, None if label is None else int(label)) for i in range(n)]


def encode_samples(samples: np.ndarray) -> list[str]:
    """samples [n, ...] float32 -> one base64 string of raw float32 bytes per sample."""
    return [base64.b64encode(np.ascontiguousarray(s, dtype=np.float32).tobytes()).decode() for s in samples]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Same stream as the service's per-sequence RNG, so a seed means the same sample."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index])))


class FullLengthGenerator:
    """Static batches: every row starts at position 0 and runs all D steps together."""

    def __init__(self, model_dir: Path = DEFAULT_MODEL, threads: int = 0):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        m = json.loads((model_dir / "manifest.json").read_text())
        self.D, self.K = m["D"], m["K"]
        prior = m["prior"]
        self.n_layer, self.n_head, self.head_dim = prior["n_layer"], prior["n_head"], prior["head_dim"]
        self.start_base, self.unconditional = prior["start_token_base"], prior["unconditional_token"]
        self.sample_shape = tuple(m["output"]["shape"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads stop spinning after each run: the server's HTTP side needs that CPU
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        path = lambda role: str(model_dir / m["files"][role]["path"])  # noqa: E731
        self.step_sess = ort.InferenceSession(path("prior_step_onnx"), opts, providers=["CPUExecutionProvider"])
        self.decode_sess = ort.InferenceSession(path("decoder_onnx"), opts, providers=["CPUExecutionProvider"])

    def generate(self, specs: list[SampleSpec]) -> np.ndarray:
        """specs -> samples [len(specs), *sample_shape] float32 in [0, 1], all at k = D."""
        B, D, L = len(specs), self.D, self.n_layer
        shape = (B, self.n_head, D, self.head_dim)
        k_cache = [np.zeros(shape, np.float32) for _ in range(L)]
        v_cache = [np.zeros(shape, np.float32) for _ in range(L)]
        rngs = [sample_rng(s.seed, s.index) for s in specs]
        tokens = np.array([self.unconditional if s.label is None else self.start_base + s.label for s in specs],
                          dtype=np.int64)
        codes = np.empty((B, D), dtype=np.int64)
        for t in range(D):
            positions = np.full(B, t, dtype=np.int64)
            feeds = {"tokens": tokens, "positions": positions}
            for i in range(L):
                feeds[f"k_cache_{i}"], feeds[f"v_cache_{i}"] = k_cache[i], v_cache[i]
            out = self.step_sess.run(None, feeds)
            for i in range(L):  # this step's key/value [B, H, hd] at position t
                k_cache[i][:, :, t] = out[1 + i]
                v_cache[i][:, :, t] = out[1 + L + i]
            tokens = inverse_cdf(out[0], np.array([r.random() for r in rngs]))
            codes[:, t] = tokens
        return self.decode_sess.run(None, {"codes": codes, "lengths": np.full(B, D, dtype=np.int64)})[0]


def inverse_cdf(logits: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """logits [B, K], uniforms [B] -> token ids [B]: the first index where the CDF exceeds u."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    return np.minimum((cdf <= (uniforms * cdf[:, -1])[:, None]).sum(axis=1), logits.shape[1] - 1).astype(np.int64)
