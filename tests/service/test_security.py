"""API keys, CORS, request ids and structured logs without payloads."""
import json
import logging

import httpx

from service.logs import JsonFormatter
from tests.utils.server import running_server


def test_api_keys_from_env_list_and_file(tiny_model_dir, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nfile-key-1\n\nfile-key-2  # ops\n")
    with running_server(model_dirs=str(tiny_model_dir), api_keys="inline-key", api_keys_file=str(keyfile)) as (base, _):
        body = {"deadline_ms": 1000, "seed": 1}
        r = httpx.post(base + "/generate", json=body)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert httpx.post(base + "/generate", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(base + "/generate", json=body, headers={"Authorization": "Basic inline-key"}).status_code == 401
        for key in ("inline-key", "file-key-1", "file-key-2"):
            assert httpx.post(base + "/generate", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # open for probes and scrapes by default
            assert httpx.get(base + path).status_code == 200
        assert httpx.get(base + "/models").status_code == 401


def test_open_paths_are_configurable(tiny_model_dir):
    with running_server(model_dirs=str(tiny_model_dir), api_keys="k", open_paths="/healthz") as (base, _):
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


def test_cors_off_by_default_and_on_when_configured(tiny_model_dir):
    origin = {"Origin": "http://elsewhere.example"}
    with running_server(model_dirs=str(tiny_model_dir)) as (base, _):
        r = httpx.get(base + "/models", headers=origin)
        assert "access-control-allow-origin" not in r.headers
    with running_server(model_dirs=str(tiny_model_dir), cors_origins="http://elsewhere.example") as (base, _):
        r = httpx.get(base + "/models", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_request_ids_and_json_logs_without_payloads(tiny_model_dir, caplog):
    secret_label = "two"
    with running_server(model_dirs=str(tiny_model_dir)) as (base, _):
        with caplog.at_level(logging.INFO, logger="anytime.access"):
            r = httpx.post(base + "/generate", json={"deadline_ms": 1000, "label": secret_label, "seed": 424242},
                           headers={"X-Request-Id": "my-trace-1"})
            r2 = httpx.post(base + "/generate", json={"deadline_ms": 1000})
    assert r.headers["x-request-id"] == "my-trace-1" == r.json()["request_id"]
    assert len(r2.headers["x-request-id"]) >= 8 and r2.headers["x-request-id"] != "my-trace-1"
    records = [rec for rec in caplog.records if rec.name == "anytime.access"]
    mine = [rec for rec in records if getattr(rec, "request_id", "") == "my-trace-1"]
    assert mine and mine[0].status == 200 and mine[0].path == "/generate"
    line = JsonFormatter().format(mine[0])
    parsed = json.loads(line)
    assert parsed["request_id"] == "my-trace-1" and parsed["status"] == 200 and "latency_ms" in parsed
    assert "424242" not in line and secret_label not in json.dumps({k: v for k, v in parsed.items() if k != "path"})
