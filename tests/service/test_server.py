"""The real HTTP server on loopback: contract, errors, determinism, metrics."""
import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.utils.server import running_server
from tests.utils.faults import set_step_hook


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def server(request, tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), backend=request.param, max_batch=32, max_queue=64) as s:
        yield s


@pytest.fixture
def base(server):
    return server[0]


def post(base, **body):
    return httpx.post(base + "/generate", json=body, timeout=30)


def test_generate_json_contract(base):
    r = post(base, deadline_ms=2000, n=3, seed=11, label="two")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["max_tokens"] == 8 and body["tokens"] == 8
    assert body["seed"] == 11 and body["label"] == "two" and body["deadline_met"] is True
    assert 0 < body["latency_ms"] <= 2000 and body["quality"] == pytest.approx(1.0)
    assert r.headers["x-request-id"] == body["request_id"]
    assert len(body["samples"]) == 3
    for s in body["samples"]:
        assert s["media_type"] == "image/png"
        img = Image.open(io.BytesIO(base64.b64decode(s["data"])))
        assert img.size == (8, 8)


def test_same_seed_same_samples_and_prefix_consistency(base):
    a = post(base, deadline_ms=2000, seed=5, n=2, format="npy")
    b = post(base, deadline_ms=2000, seed=5, n=2, format="npy")
    assert a.status_code == b.status_code == 200
    assert a.content == b.content
    assert a.headers["x-anytime-tokens"] == "8"
    c = post(base, deadline_ms=2000, seed=6, n=2, format="npy")
    assert c.content != a.content
    short = post(base, deadline_ms=2000, seed=5, max_tokens=3).json()
    short_again = post(base, deadline_ms=2000, seed=5, max_tokens=3).json()
    assert short["tokens"] == 3 and short["samples"] == short_again["samples"]


def test_binary_formats(base):
    r = post(base, deadline_ms=2000, seed=1, n=2, format="png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (16, 8)  # two samples side by side
    assert r.headers["x-anytime-deadline-met"] == "true" and float(r.headers["x-anytime-latency-ms"]) > 0
    r = post(base, deadline_ms=2000, seed=1, n=2, format="npy")
    arr = np.load(io.BytesIO(r.content))
    assert arr.shape == (2, 1, 8, 8) and 0 <= arr.min() and arr.max() <= 1


# errors other than the deadline's ask for 2 s: a loop that runs behind (an in-process engine
# holding the GIL) sheds a request only when its lag would take a tenth of the deadline
@pytest.mark.parametrize("body, status, text", [
    ({}, 422, "deadline_ms"),
    ({"deadline_ms": 0}, 422, "deadline_ms"),
    ({"deadline_ms": 60001}, 422, "deadline_ms"),
    ({"deadline_ms": 2000, "n": 65}, 422, "n"),
    ({"deadline_ms": 2000, "n": 0}, 422, "n"),
    ({"deadline_ms": 2000, "format": "gif"}, 422, "format"),
    ({"deadline_ms": 2000, "format": "wav"}, 422, "audio"),
    ({"deadline_ms": 2000, "temperature": 0}, 422, "temperature"),
    ({"deadline_ms": 2000, "top_p": 1.5}, 422, "top_p"),
    ({"deadline_ms": 2000, "min_tokens": 5, "max_tokens": 2}, 422, "min_tokens"),
    ({"deadline_ms": 2000, "min_tokens": 9}, 422, "exceeds D"),
    ({"deadline_ms": 2000, "bogus": 1}, 422, "bogus"),
    ({"deadline_ms": "soon"}, 422, "deadline_ms"),
    ({"deadline_ms": 2000, "model": "nope"}, 404, "unknown model"),
    ({"deadline_ms": 2000, "label": "seven"}, 404, "unknown label"),
    ({"deadline_ms": 2000, "label": 3}, 404, "out of range"),
    ({"deadline_ms": 1}, 503, "cannot be met"),
    ({"deadline_ms": 2, "min_tokens": 8, "n": 16}, 503, "min_tokens=8"),
    ({"deadline_ms": 2000, "n": 64}, 422, "exceeds this server's max_batch=32"),
])
def test_errors_are_json_with_a_clear_message(base, body, status, text):
    t = time.perf_counter()
    r = httpx.post(base + "/generate", json=body, timeout=10)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and text in err["message"]
    assert "Traceback" not in r.text
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1
        assert time.perf_counter() - t < 0.5  # decided at once, not by running late


def test_malformed_and_oversized_bodies(base):
    r = httpx.post(base + "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    big = b'{"deadline_ms": 100, "model": "' + b"x" * 70000 + b'"}'
    r = httpx.post(base + "/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds on the streamed body too
        for _ in range(100):
            yield b" " * 1000

    r = httpx.post(base + "/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert post(base, deadline_ms=1000).status_code == 200  # and the server is fine


def test_unknown_route_and_models_endpoints(base):
    assert httpx.get(base + "/nope").json()["error"]["code"] == 404
    models = httpx.get(base + "/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny"] and models[0]["default"] is True
    one = httpx.get(base + "/models/tiny").json()
    assert one["manifest"]["D"] == 8 and len(one["quality"]["k"]) == 8
    assert httpx.get(base + "/models/nope").status_code == 404
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    assert "/generate" in httpx.get(base + "/openapi.json").json()["paths"]


def test_a_request_arriving_mid_generation_joins_within_one_step(server):
    base, state = server
    engine = state.engines["tiny"]
    set_step_hook(engine, lambda B: time.sleep(0.03))
    results = {}

    def call(name, **body):
        results[name] = post(base, **body).json()

    first = threading.Thread(target=call, args=("first",), kwargs=dict(deadline_ms=5000, seed=1))
    first.start()
    time.sleep(0.08)
    t = time.monotonic()
    second = post(base, deadline_ms=5000, seed=2, max_tokens=2).json()
    second_latency = time.monotonic() - t
    first_still_running = first.is_alive()
    first.join()
    set_step_hook(engine, None)
    # the second finished its 2 steps while the first's 8 steps were still going
    assert second["tokens"] == 2 and first_still_running and second_latency < 0.2
    assert results["first"]["tokens"] == 8


def test_metrics_parse_and_cover_the_design(base):
    post(base, deadline_ms=1000, seed=1)
    post(base, deadline_ms=1)  # a rejection
    assert post(base, deadline_ms=1, priority="high").status_code == 503
    assert post(base, deadline_ms=100, priority="urgent").status_code == 422
    text = httpx.get(base + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ["anytime_requests", "anytime_request_latency_seconds", "anytime_deadline_slack_seconds",
                 "anytime_deadline_misses", "anytime_tokens_per_sample", "anytime_token_fraction",
                 "anytime_quality_estimate", "anytime_queue_depth", "anytime_active_sequences",
                 "anytime_batch_size", "anytime_step_latency_seconds", "anytime_rejections",
                 "anytime_respond_latency_seconds", "anytime_paused_sequences", "anytime_previews_skipped"]:
        assert name in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("anytime_requests_total", (("model", "tiny"), ("outcome", "ok")))] >= 1
    assert samples[("anytime_rejections_total", (("model", "tiny"), ("priority", "normal"), ("reason", "deadline")))] >= 1
    assert samples[("anytime_rejections_total", (("model", "tiny"), ("priority", "high"), ("reason", "deadline")))] == 1
    assert samples[("anytime_paused_sequences", (("model", "tiny"),))] == 0
    assert samples[("anytime_active_sequences", (("model", "tiny"),))] == 0
    step_count = [v for (n, labels), v in samples.items() if n == "anytime_step_latency_seconds_count"]
    assert step_count and step_count[0] > 0


def test_client_disconnect_cancels_its_sequences(server):
    base, state = server
    engine = state.engines["tiny"]
    set_step_hook(engine, lambda B: time.sleep(0.05))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/generate", json={"deadline_ms": 10000, "n": 4, "seed": 1}, timeout=0.12)
    end = time.monotonic() + 3
    while engine.active_sequences and time.monotonic() < end:
        time.sleep(0.01)
    set_step_hook(engine, None)
    assert engine.active_sequences == 0 and engine.queued_sequences == 0
    text = httpx.get(base + "/metrics").text
    assert 'anytime_requests_total{model="tiny",outcome="cancelled"}' in text
