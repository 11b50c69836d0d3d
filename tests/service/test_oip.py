"""The Open Inference Protocol v2 routes through the real `tritonclient[http]`, against the
server as it runs by default (supervisor, engine-core process, a frontend worker): each sample
equals POST /generate's for its seed, JSON and binary tensors, the errors, health and metadata,
auth, and the metrics that count OIP requests with /generate's."""
import io
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.test_processes import counter
from tests.utils.server import running_server, serve_process

D = 8
OUTPUTS = ("samples", "tokens", "quality")


@pytest.fixture(scope="module")
def base(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("oip") / "server.log"
    with serve_process(tiny_model_dir, "--workers", "1", log_path=log) as (url, _):
        yield url


def client(url: str, **kw) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), **kw)


def tensor(name: str, values, binary: bool) -> triton.InferInput:
    arr = np.array(values, dtype=object if isinstance(values[0], str) else np.int64)
    t = triton.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else "INT64")
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


def infer(c, seeds, labels=None, binary_in=True, binary_out=True, model="tiny", outputs=OUTPUTS, **params):
    inputs = [tensor("seed", seeds, binary_in)] + ([tensor("label", labels, binary_in)] if labels else [])
    requested = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in outputs] if outputs else None
    return c.infer(model, inputs, outputs=requested, parameters={"deadline_ms": 5000, **params})


def generated(url: str, seed: int, label, k: int) -> np.ndarray:
    r = httpx.post(url + "/generate", json={"deadline_ms": 5000, "seed": seed, "n": 1, "label": label,
                                            "min_tokens": k, "max_tokens": k, "format": "npy"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-anytime-tokens"] == str(k)
    return np.load(io.BytesIO(r.content))[0]


def quality(k: int) -> np.float32:
    return np.float32(1 - (1 - k / D) ** 2)  # the tiny model's curve (tests/utils/tiny_model.py)


@pytest.mark.parametrize("k, binary_in, binary_out, labels", [
    (D, True, True, ["one", "zero", "two", "one"]),
    (3, False, False, ["two", "two", "zero", "one"]),
    (5, True, False, [1, 0, 2, 2]),
    (D, False, True, None),
])
def test_each_sample_is_generates_sample_for_its_seed(base, k, binary_in, binary_out, labels):
    seeds = [5, 21, 2**40 + 1, 21]  # a repeated seed: with another label, another sample
    result = infer(client(base), seeds, labels, binary_in, binary_out, min_tokens=k, max_tokens=k)
    samples = result.as_numpy("samples")
    assert samples.dtype == np.float32 and samples.shape == (4, 1, 8, 8)
    assert 0 <= samples.min() and samples.max() <= 1
    for i, seed in enumerate(seeds):
        label = labels[i] if labels else None
        np.testing.assert_array_equal(samples[i], generated(base, seed, label, k), err_msg=f"row {i}")
    assert result.as_numpy("tokens").tolist() == [k] * 4 and result.as_numpy("tokens").dtype == np.int32
    np.testing.assert_array_equal(result.as_numpy("quality"), [quality(k)] * 4)
    params = result.get_response()["parameters"]
    assert params["deadline_met"] is True and params["finish_reason"] == "budget" and 0 < params["latency_ms"] < 5000


def test_outputs_default_to_binary_and_can_be_chosen(base):
    c = client(base)
    everything = infer(c, [7, 8], outputs=None)  # tritonclient then asks binary_data_output
    assert all("binary_data_size" in o["parameters"] for o in everything.get_response()["outputs"])
    only = infer(c, [7, 8], outputs=["tokens"], binary_out=False).get_response()
    assert [o["name"] for o in only["outputs"]] == ["tokens"] and only["outputs"][0]["data"] == [D, D]
    np.testing.assert_array_equal(everything.as_numpy("samples")[1], generated(base, 8, None, D))


def test_the_json_wire_format(base):
    body = {"id": "req-1", "inputs": [{"name": "seed", "shape": [2], "datatype": "INT64", "data": [3, 4]},
                                      {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["one", "two"]}],
            "parameters": {"deadline_ms": 5000, "max_tokens": 2, "temperature": 0.5, "top_k": 4, "top_p": 0.9}}
    r = httpx.post(base + "/v2/models/tiny/infer", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["model_name"] == "tiny" and out["id"] == "req-1"
    assert set(out["parameters"]) == {"deadline_met", "latency_ms", "finish_reason"}
    assert [(o["name"], o["datatype"], o["shape"]) for o in out["outputs"]] == [
        ("samples", "FP32", [2, 1, 8, 8]), ("tokens", "INT32", [2]), ("quality", "FP32", [2])]
    assert out["outputs"][1]["data"] == [2, 2] and len(out["outputs"][0]["data"]) == 2 * 64
    same = httpx.post(base + "/generate", json={"deadline_ms": 5000, "seed": 4, "label": "two", "max_tokens": 2,
                                                "temperature": 0.5, "top_k": 4, "top_p": 0.9, "format": "npy"})
    np.testing.assert_array_equal(np.float32(out["outputs"][0]["data"][64:]), np.load(io.BytesIO(same.content)).ravel())


def oip_error(r: httpx.Response, status: int, needle: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and needle in body["error"], body


def test_errors_are_oip_shaped_with_generates_status_codes(base):
    url = base + "/v2/models/tiny/infer"
    seed = {"name": "seed", "shape": [1], "datatype": "INT64", "data": [1]}
    ok = {"deadline_ms": 5000}
    post = lambda body, **kw: httpx.post(url, json=body, timeout=30, **kw)  # noqa: E731
    oip_error(post({"inputs": [], "parameters": ok}), 422, "'seed'")
    oip_error(post({"inputs": [{**seed, "datatype": "FP32", "data": [1.0]}], "parameters": ok}), 422, "INT64")
    oip_error(post({"inputs": [{**seed, "datatype": "BYTES", "data": ["1"]}], "parameters": ok}), 422, "INT64")
    oip_error(post({"inputs": [seed, {"name": "label", "shape": [1, 1], "datatype": "BYTES", "data": ["one"]}],
                    "parameters": ok}), 422, "shape [n]")
    oip_error(post({"inputs": [seed, {"name": "label", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                    "parameters": ok}), 422, "INT64 or BYTES")
    oip_error(post({"inputs": [{**seed, "data": [1.5]}], "parameters": ok}), 422, "not integers")
    oip_error(post({"inputs": [{**seed, "shape": [1, 1]}], "parameters": ok}), 422, "shape [n]")
    oip_error(post({"inputs": [{**seed, "shape": [2]}], "parameters": ok}), 422, "shape [2]")
    oip_error(post({"inputs": [{**seed, "data": [-1]}], "parameters": ok}), 422, ">= 0")
    oip_error(post({"inputs": [{**seed, "shape": [65], "data": list(range(65))}], "parameters": ok}), 422, "1 to 64")
    oip_error(post({"inputs": [seed]}), 422, "deadline_ms")
    oip_error(post({"inputs": [seed], "parameters": {"deadline_ms": 0}}), 422, "deadline_ms")
    oip_error(post({"inputs": [seed], "parameters": {**ok, "deadline": 5}}), 422, "unknown parameter 'deadline'")
    oip_error(post({"inputs": [seed], "parameters": {**ok, "min_tokens": 5, "max_tokens": 2}}), 422, "min_tokens")
    oip_error(post({"inputs": [seed, {**seed, "name": "noise"}], "parameters": ok}), 422, "unknown input 'noise'")
    oip_error(post({"inputs": [seed], "parameters": ok, "outputs": [{"name": "logits"}]}), 422, "unknown output")
    oip_error(post({"inputs": [seed, {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 2]}],
                    "parameters": ok}), 422, "'label' has 2")
    oip_error(httpx.post(url, content=b"{not json", timeout=30), 422, "not valid JSON")
    oip_error(httpx.post(url, content=b'{"inputs": 3}', timeout=30), 422, "invalid inference request")
    header = b'{"inputs":[{"name":"seed","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}],' \
             b'"parameters":{"deadline_ms":5000}}'
    binary = {"Inference-Header-Content-Length": str(len(header))}
    assert httpx.post(url, content=header + (9).to_bytes(8, "little"), headers=binary).status_code == 200
    oip_error(httpx.post(url, content=header + b"\0" * 4, headers=binary), 422, "binary_data_size")
    oip_error(httpx.post(url, content=header + b"\0" * 12, headers=binary), 422, "belong to no input")
    oip_error(httpx.post(url, content=header, headers={"Inference-Header-Content-Length": "999"}), 422, "does not fit")
    oip_error(post({"inputs": [seed, {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["nine"]}],
                    "parameters": ok}), 404, "unknown label 'nine'")
    oip_error(post({"inputs": [seed, {"name": "label", "shape": [1], "datatype": "INT64", "data": [3]}],
                    "parameters": ok}), 404, "out of range")
    oip_error(httpx.post(base + "/v2/models/nope/infer", json={"inputs": [seed], "parameters": ok}), 404, "nope")
    oip_error(httpx.post(url, content=b"x" * 70000), 413, "larger than")
    refused = post({"inputs": [seed], "parameters": {"deadline_ms": 1, "min_tokens": D}})
    oip_error(refused, 503, "")
    assert int(refused.headers["retry-after"]) >= 1
    # through tritonclient: its exception carries the message and the status
    c = client(base)
    with pytest.raises(InferenceServerException) as e:
        infer(c, [1], ["nine"])
    assert e.value.status() == "404" and "unknown label 'nine'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        c.infer("tiny", [tensor("seed", [1], True)])
    assert e.value.status() == "422" and "deadline_ms" in e.value.message()


def test_health_and_metadata(base):
    c = client(base)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("tiny") and not c.is_model_ready("nope")
    meta = c.get_server_metadata()
    assert meta["name"] == "anytime" and "binary_tensor_data" in meta["extensions"]
    model = c.get_model_metadata("tiny")
    assert model["name"] == "tiny"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("seed", "INT64", [-1]), ("label", "BYTES", [-1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["outputs"]] == [
        ("samples", "FP32", [-1, 1, 8, 8]), ("tokens", "INT32", [-1]), ("quality", "FP32", [-1])]
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata("nope")
    assert e.value.status() == "404"
    oip_error(httpx.get(base + "/v2/models/nope/ready"), 404, "nope")
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready"):
        r = httpx.get(base + path)
        assert r.status_code == 200 and r.content == b""


def test_metrics_count_oip_requests_with_generates(base):
    def scrape() -> str:
        time.sleep(0.3)  # answered-reports reach the engine core asynchronously
        return httpx.get(base + "/metrics").text

    before = scrape()
    c = client(base)
    for n in (1, 3, 5):
        infer(c, list(range(n)), max_tokens=2)
    with pytest.raises(InferenceServerException):
        infer(c, [1], deadline_ms=1, min_tokens=D)
    after = scrape()
    delta = lambda name, **labels: counter(after, name, **labels) - counter(before, name, **labels)  # noqa: E731
    assert delta("anytime_requests_total", model="tiny", outcome="ok") == 3
    assert delta("anytime_tokens_per_sample_count", model="tiny") == 1 + 3 + 5
    assert delta("anytime_tokens_per_sample_sum", model="tiny") == 2 * (1 + 3 + 5)
    assert delta("anytime_rejections_total", model="tiny", reason="deadline") == 1


def test_in_process_shape_and_api_keys_guard_oip_routes_but_not_its_probes(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), api_keys="secret") as (url, _):  # --workers 0
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert httpx.get(url + path).status_code == 200
        oip_error(httpx.get(url + "/v2/models/tiny"), 401, "API key")
        oip_error(httpx.get(url + "/v2"), 401, "API key")
        with pytest.raises(InferenceServerException) as e:
            infer(client(url), [1])
        assert e.value.status() == "401"
        auth = {"Authorization": "Bearer secret"}
        result = client(url).infer("tiny", [tensor("seed", [1, 2], True), tensor("label", ["two", "zero"], True)],
                                   parameters={"deadline_ms": 5000}, headers=dict(auth))  # it adds to it
        assert result.as_numpy("tokens").tolist() == [D, D]
        same = httpx.post(url + "/generate", headers=auth, json={"deadline_ms": 5000, "seed": 2, "label": "zero",
                                                                 "format": "npy"})
        np.testing.assert_array_equal(result.as_numpy("samples")[1], np.load(io.BytesIO(same.content))[0])
