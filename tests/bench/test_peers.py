"""bench/peers: the peers' full-length generation gives Anytime's sample at k = D for the same
seed, and each installed peer server answers a request with it. The server tests need the
optional extra `peers` and are skipped without it."""
import base64
import importlib.util
import io
import json

import httpx
import numpy as np
import pytest

from bench.peers.continuous import ContinuousStepper
from bench.peers.generator import FullLengthGenerator, SampleSpec
from bench.server_proc import serve


def specs(seed: int, n: int, label: int | None = None) -> list[SampleSpec]:
    return [SampleSpec(seed, i, label) for i in range(n)]


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return FullLengthGenerator(tiny_model_dir, threads=1)


def test_full_length_samples_are_anytime_samples_at_k_equals_d(tiny_model_dir, generator, tmp_path):
    D = generator.D
    with serve("--model-dirs", str(tiny_model_dir), log_path=tmp_path / "server.log") as url:
        r = httpx.post(url + "/generate", json={"deadline_ms": 30000, "n": 3, "seed": 11, "min_tokens": D,
                                                "max_tokens": D, "format": "npy"}, timeout=60)
    assert r.status_code == 200 and int(r.headers["x-anytime-tokens"]) == D
    served = np.load(io.BytesIO(r.content))
    np.testing.assert_allclose(generator.generate(specs(11, 3)), served, atol=1e-5)


def test_batching_does_not_change_a_sample(generator):
    alone = generator.generate(specs(3, 1, label=2))
    batched = generator.generate(specs(9, 4) + specs(3, 1, label=2))
    np.testing.assert_allclose(batched[4:], alone, atol=1e-5)
    assert alone.min() >= 0.0 and alone.max() <= 1.0


def test_continuous_stepper_gives_the_static_batch_samples(generator):
    stepper = ContinuousStepper(generator, rows=6)
    stepper.add("a", specs(1, 4))
    finished = {}
    for step in range(3 * generator.D):
        if step == 2:
            stepper.add("b", specs(2, 3))  # joins between steps, waits for rows when they are full
        finished.update({f.uid: f.samples for f in stepper.step()})
        if len(finished) == 2:
            break
    assert not stepper.has_work()
    np.testing.assert_allclose(finished["a"], generator.generate(specs(1, 4)), atol=1e-5)
    np.testing.assert_allclose(finished["b"], generator.generate(specs(2, 3)), atol=1e-5)


PEER_MODULES = {"litserve": "litserve", "litserve-continuous": "litserve", "ray-serve": "ray.serve",
                "bentoml": "bentoml"}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("peer", list(PEER_MODULES))
def test_peer_server_answers_with_the_full_length_samples(peer, tiny_model_dir, generator, tmp_path):
    if not installed(PEER_MODULES[peer]):
        pytest.skip(f"{PEER_MODULES[peer]} not installed (pip install -e '.[peers]')")
    from bench.peers.servers import request_for, serve_peer

    body = {"deadline_ms": 1000, "n": 2, "seed": 4, "format": "npy"}
    path, payload, headers = request_for(peer)(body)
    with serve_peer(peer, tmp_path / "peer.log", {"model_dir": str(tiny_model_dir)}) as url:
        r = httpx.post(url + path, json=payload, headers=headers, timeout=60)
    assert r.status_code == 200, r.text[:500]
    answer = json.loads(r.text)
    encoded = answer["samples"] if isinstance(answer, dict) else answer
    got = np.stack([np.frombuffer(base64.b64decode(s), dtype=np.float32) for s in encoded])
    np.testing.assert_allclose(got, generator.generate(specs(4, 2)).reshape(2, -1), atol=1e-5)
