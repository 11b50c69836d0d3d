"""OpenTelemetry tracing over real processes: `anytime serve` (split: engine core + a frontend
worker) exports its spans to an OTLP/HTTP receiver on loopback (a small HTTP server that
decodes the export requests with opentelemetry-proto); the caller's `traceparent` is the
span's parent and the response's `traceparent` names the span. With no OTEL_* variable, the
frontend never imports OpenTelemetry."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bench.server_proc import ROOT, serve
from service.frontend import tracing

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest, ExportTraceServiceResponse)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
OTEL_OFF = {k: "" for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED")}


class OtlpReceiver:
    """POST /v1/traces with a protobuf ExportTraceServiceRequest, as an OpenTelemetry
    Collector's otlphttp receiver takes it; keeps every span with its resource attributes."""

    def __init__(self):
        self.spans, self.paths, self.types = [], [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.types.append(self.headers.get("Content-Type"))
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        receiver.spans.extend((resource, s) for s in ss.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_request_id(self, *ids: str, timeout: float = 20.0) -> dict:
        """The spans of these requests (x-request-id), once all have arrived."""
        end = time.monotonic() + timeout
        while True:
            found = {attrs(s).get("anytime.request_id"): (res, s) for res, s in self.spans}
            if set(ids) <= set(found) or time.monotonic() > end:
                return {i: found[i] for i in ids if i in found}
            time.sleep(0.05)

    def close(self):
        self.server.shutdown()


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


@pytest.fixture(scope="module")
def traced(tiny_model_dir, tmp_path_factory):
    receiver = OtlpReceiver()
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "anytime-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    log = tmp_path_factory.mktemp("tracing") / "server.log"
    with serve("--model-dirs", str(tiny_model_dir), "--workers", "1", log_path=log, env=env) as base:
        yield base, receiver
    receiver.close()


def test_span_per_request_continues_the_callers_trace(traced):
    base, receiver = traced
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    r = httpx.post(base + "/generate", json={"deadline_ms": 2000, "seed": 3, "n": 2},
                   headers={"traceparent": traceparent, "x-request-id": "trace-me-1"}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    spans = receiver.by_request_id("trace-me-1")
    assert spans, [attrs(s) for _, s in receiver.spans]
    resource, span = spans["trace-me-1"]
    assert not [s for _, s in receiver.spans if attrs(s)["url.path"] in ("/readyz", "/healthz", "/metrics")]
    assert resource["service.name"] == "anytime-test"
    # continuity: the caller's trace, the caller's span as parent, the response names this span
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    version, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert (version, trace_id, span_id, flags) == ("00", TRACE_ID, span.span_id.hex(), "01")
    assert span.kind == span.SPAN_KIND_SERVER and span.name == "POST /generate"
    a = attrs(span)
    assert a["anytime.model"] == body["model"] and a["anytime.tokens"] == body["tokens"]
    assert a["anytime.finish_reason"] == body["finish_reason"] and a["anytime.deadline_ms"] == 2000
    assert a["anytime.n"] == 2 and a["http.response.status_code"] == 200
    assert a["anytime.queue_ms"] == pytest.approx(body["queue_ms"], abs=1e-3)
    assert a["anytime.engine_ms"] == pytest.approx(body["engine_ms"], abs=1e-3)
    assert 0 <= a["anytime.respond_ms"] < a["anytime.latency_ms"]
    assert a["anytime.queue_ms"] + a["anytime.engine_ms"] + a["anytime.respond_ms"] == pytest.approx(
        a["anytime.latency_ms"], abs=0.01)
    assert (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6 >= a["anytime.latency_ms"] - 1
    assert receiver.paths[-1] == "/v1/traces" and receiver.types[-1] == "application/x-protobuf"


def test_new_trace_without_traceparent_and_refusals_are_spans(traced):
    base, receiver = traced
    ok = httpx.post(base + "/generate", json={"deadline_ms": 2000}, headers={"x-request-id": "fresh"}, timeout=10)
    refused = httpx.post(base + "/generate", json={"deadline_ms": 1}, headers={"x-request-id": "refused"}, timeout=10)
    assert ok.status_code == 200 and refused.status_code == 503
    spans = {rid: s for rid, (_, s) in receiver.by_request_id("fresh", "refused").items()}
    fresh = spans["fresh"]
    assert not fresh.parent_span_id and ok.headers["traceparent"].split("-")[1] == fresh.trace_id.hex()
    no = spans["refused"]
    assert attrs(no)["http.response.status_code"] == 503 and no.status.code == no.status.STATUS_CODE_ERROR
    assert "anytime.tokens" not in attrs(no)


def test_off_without_otel_variables_imports_nothing():
    """The frontend app as `anytime serve` builds it: no OTEL_* variable, no OpenTelemetry SDK
    or exporter module loaded (FastAPI itself imports the API package) and no tracing middleware."""
    code = ("import sys\n"
            "from service.settings import Settings\n"
            "from service.frontend.app import create_app\n"
            "from service.frontend.core_client import MPClient\n"
            "app = create_app(Settings(), MPClient('ipc:///nonexistent'))\n"
            "assert 'opentelemetry.trace' in sys.modules  # FastAPI's own import: the check can see it\n"
            "assert not [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter',\n"
            "                                                     'opentelemetry.proto'))], 'imported'\n"
            "assert 'Tracing' not in repr([m.cls for m in app.user_middleware])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("env,expected", [
    ({}, []),
    ({"OTEL_SERVICE_NAME": "x"}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
])
def test_which_variables_turn_it_on(env, expected):
    assert tracing.exporters(env) == expected


@pytest.mark.parametrize("env,fragment", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin' is not supported"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "'http/json' is not supported"),
])
def test_unsupported_configuration_refuses_to_start(env, fragment, tiny_model_dir):
    with pytest.raises(tracing.TracingConfigError, match=fragment):
        tracing.check(env)
    proc = subprocess.run([sys.executable, "-m", "anytime_cli", "serve", "--model-dirs", str(tiny_model_dir)],
                          cwd=ROOT, env={**os.environ, **OTEL_OFF, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
