"""Classifier-free guidance in the service: the engine steps two rows per guided sample and
samples what the eager prior samples; the request field, the response, the metric and the
refusals over real HTTP."""
import io

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from model_format.contract import guided_logits
from models import checkpoint
from service.core.request import SamplingParams
from service.refusals import Refusal
from tests.utils.engine import make_engine, run, submit
from tests.utils.server import running_server

GREEDY = SamplingParams(temperature=1e-4)  # every sampler takes the argmax at this temperature
BACKENDS = ["onnx", "torchscript"]


def _eager_greedy(prior, labels, w):
    """Argmax of the guided logits from the eager prior's full causal pass."""
    c = prior.config
    codes = torch.zeros(len(labels), c.D, dtype=torch.long)
    with torch.no_grad():
        for p in range(c.D):
            cond = prior(codes, torch.tensor([c.start_token(l) for l in labels]))[:, p]
            null = prior(codes, torch.full((len(labels),), c.start_token(None)))[:, p]
            codes[:, p] = guided_logits(cond, null, w).argmax(1)
    return codes.numpy()


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, tiny_guided_model_dir):
    e = make_engine(tiny_guided_model_dir, backend=request.param, max_batch=8)
    yield e
    e.stop(5)


def _codes(req):
    return np.array([s.codes for s in req.sampled])


def test_engine_samples_the_eager_guided_codes(engine, tiny_checkpoints):
    prior, _ = checkpoint.load_prior(tiny_checkpoints[1])
    for w in (0.0, 3.0):
        req = run(engine, seed=1, n=3, labels=[0, 1, 2], seeds=[1, 2, 3], sampling=GREEDY, guidance=w)
        assert req.error is None and req.samples.shape[0] == 3
        assert np.array_equal(_codes(req), _eager_greedy(prior, [0, 1, 2], w))
    assert not np.array_equal(_eager_greedy(prior, [0, 1, 2], 0.0), _eager_greedy(prior, [0, 1, 2], 3.0))


def test_a_guided_sample_costs_two_rows(engine):
    req = run(engine, seed=4, n=3, label=1, guidance=2.0)
    assert req.n == 6 and len(req.sequences) == 6 and req.samples_n == 3 and req.samples.shape[0] == 3
    null_rows = req.sequences[3:]
    assert all(s.start_token == engine.spec.unconditional_token for s in null_rows)
    # each null-label row was fed the codes its sample drew
    assert all(n.codes == s.codes for s, n in zip(req.sampled, null_rows))
    # 5 guided samples need 10 rows: more than max_batch = 8, so they could never start
    big = engine.new_request(n=5, seed=0, label=0, deadline_s=5.0, arrival=__import__("time").monotonic(),
                             min_tokens=1, max_tokens=8, sampling=SamplingParams(), guidance=1.0)
    adm = engine.admit(big)
    assert not adm.ok and adm.reason == Refusal.TOO_LARGE


def test_guided_samples_are_deterministic_batch_independent_and_prefix_consistent(engine):
    alone = _codes(run(engine, seed=9, n=2, label=2, guidance=2.5))
    # the same request in a batch with unguided and other guided requests
    others = [submit(engine, seed=s, n=2, label=s % 3, guidance=float(s % 2)) for s in range(3)]
    again, done = submit(engine, seed=9, n=2, label=2, guidance=2.5)
    assert done.wait(30) and all(d.wait(30) for _, d in others)
    assert np.array_equal(_codes(again), alone)
    short = run(engine, seed=9, n=2, label=2, guidance=2.5, max_tokens=3)
    assert short.tokens == 3 and np.array_equal(_codes(short), alone[:, :3])
    assert not np.array_equal(_codes(run(engine, seed=9, n=2, label=2)), alone)  # guidance changed them


def test_engine_refuses_guidance_for_a_model_without_it(tiny_model_dir):
    e = make_engine(tiny_model_dir, max_batch=4)
    try:
        with pytest.raises(ValueError, match="does not support guidance"):
            submit(e, seed=0, label=0, guidance=1.0)
    finally:
        e.stop(5)


@pytest.fixture(scope="module")
def base(tiny_model_dir, tiny_guided_model_dir):
    dirs = f"{tiny_guided_model_dir},{tiny_model_dir}"
    with running_server(model_dirs=dirs, default_model="tiny-guided", max_batch=16, guidance_default=0.75) as s:
        yield s[0]


def post(base, **body):
    return httpx.post(base + "/generate", json={"deadline_ms": 5000, **body}, timeout=30)


@pytest.mark.parametrize("body, guidance", [
    ({"label": "one"}, 1.5),  # auto: the manifest's default
    ({"label": "one", "guidance": "auto"}, 1.5),
    ({}, 0.0),  # auto without a label: nothing to guide
    ({"label": "one", "guidance": 0}, 0.0),
    ({"label": "one", "guidance": 2.5}, 2.5),
    ({"label": "one", "model": "tiny"}, 0.0),  # auto on a model without guidance: off
    ({"label": "one", "model": "tiny", "guidance": 0.0}, 0.0),
])
def test_response_reports_the_guidance_used(base, body, guidance):
    r = post(base, seed=3, n=2, **body)
    assert r.status_code == 200, r.text
    assert r.json()["guidance"] == guidance and len(r.json()["samples"]) == 2
    npy = post(base, seed=3, format="npy", **body)
    assert float(npy.headers["x-anytime-guidance"]) == guidance


def test_pinned_guidance_changes_the_samples_and_repeats(base):
    a = post(base, seed=5, n=4, label="two", guidance=3.0, format="npy")
    b = post(base, seed=5, n=4, label="two", guidance=3.0, format="npy")
    c = post(base, seed=5, n=4, label="two", guidance=0, format="npy")
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.content == b.content and a.content != c.content
    assert np.load(io.BytesIO(a.content)).shape[0] == 4


@pytest.mark.parametrize("body, status, text", [
    ({"label": "one", "model": "tiny", "guidance": 1.0}, 422, "does not support guidance"),
    ({"guidance": 1.0}, 422, "needs a label"),
    ({"label": "one", "guidance": -1}, 422, "guidance"),
    ({"label": "one", "guidance": 21}, 422, "guidance"),
    ({"label": "one", "guidance": "strong"}, 422, "guidance"),
    ({"label": "one", "guidance": True}, 422, "guidance"),  # strict: a number or "auto"
    ({"label": "one", "guidance": "1.5"}, 422, "guidance"),
])
def test_bad_guidance_is_a_clear_422(base, body, status, text):
    r = post(base, **body)
    assert r.status_code == status, r.text
    assert text in r.json()["error"]["message"]


def test_models_endpoint_and_metric_show_guidance(base):
    models = {m["name"]: m for m in httpx.get(base + "/models").json()["models"]}
    assert models["tiny-guided"]["guidance"]["default"] == 1.5 and models["tiny"]["guidance"] is None
    before = _guided_count(base)
    assert post(base, seed=1, n=3, label="zero", guidance=2.0).status_code == 200
    assert _guided_count(base) - before == 3


def _guided_count(base) -> float:
    """Samples admitted with guidance above 1.5 (the histogram's le=1.5 bucket is below)."""
    text = httpx.get(base + "/metrics").text
    fam = {f.name: f for f in text_string_to_metric_families(text)}["anytime_guidance"]
    by_le = {s.labels["le"]: s.value for s in fam.samples
             if s.name == "anytime_guidance_bucket" and s.labels["model"] == "tiny-guided"}
    return by_le["+Inf"] - by_le["1.5"]
