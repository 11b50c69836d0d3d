"""What OpenTelemetry tracing costs an idle server: three `anytime serve` processes of the same
code side by side, two with tracing off (no OTEL_* variable: their difference is the noise) and
one exporting every request's span over OTLP/HTTP to a receiver in this process. Sequential
`POST /generate` requests go to the three in interleaved blocks, so drift on the shared machine
hits all three alike. Reported per configuration: the overhead outside the engine (latency
minus the time in the engine loop, server- and client-measured) and the CPU time the server's
processes spent per request."""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np

from .machine import header
from .process_cpu import tree_cpu_s
from .server_proc import serve

CONFIGS = ("off A", "off B", "on")
WARMUP = 30


class SpanSink:
    """An OTLP/HTTP receiver that counts the spans it is sent (protobuf, opentelemetry-proto)."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                req = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                sink.spans += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _block(client: httpx.Client, seeds: range) -> list[tuple[float, float, float]]:
    """(client ms, server latency ms, time in the engine loop ms) per request."""
    rows = []
    for seed in seeds:
        t = time.perf_counter()
        r = client.post("/generate", json={"deadline_ms": 1000, "seed": seed, "format": "npy"})
        client_ms = (time.perf_counter() - t) * 1000
        r.raise_for_status()
        h = r.headers
        rows.append((client_ms, float(h["x-anytime-latency-ms"]), float(h["x-anytime-engine-ms"])))
    return rows


def middleware_cost_us(sink: SpanSink, calls: int = 5000) -> dict:
    """Wall time per request of an ASGI app that answers at once, bare and inside the tracing
    middleware (real SDK, batch processor exporting every span to the sink, its flush at
    shutdown included), in this process: the cost of one span with no network or engine noise
    around it."""
    import asyncio

    from service.frontend.tracing import TracingMiddleware, setup

    # the exporter reads its endpoint from the environment, as in a server; a queue that keeps
    # every span, so that all of them are exported and paid for
    os.environ.update({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
                       "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "anytime-bench",
                       "OTEL_BSP_MAX_QUEUE_SIZE": str(2 * calls)})

    async def app(scope, receive, send):
        scope["state"]["request_id"] = "r"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        pass

    async def loop(target) -> None:
        for _ in range(calls):
            await target({"type": "http", "method": "POST", "path": "/generate", "state": {},
                          "headers": [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]},
                         receive, send)

    bare, traced = [], []
    for _ in range(3):  # alternate, keep the best of each (least disturbed by other processes)
        t = time.perf_counter()
        asyncio.run(loop(app))
        bare.append((time.perf_counter() - t) / calls * 1e6)
        before = sink.spans
        tracing = setup()
        t = time.perf_counter()
        asyncio.run(loop(TracingMiddleware(app, tracing.tracer)))
        tracing.shutdown()  # exports what is still queued
        traced.append((time.perf_counter() - t) / calls * 1e6)
        assert sink.spans - before == calls, f"{sink.spans - before} of {calls} spans exported"
    return {"calls": calls, "bare_us": min(bare), "traced_us": min(traced), "span_us": min(traced) - min(bare)}


def run(flags: list[str], out: Path, rounds: int = 8, per_block: int = 100) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    sink = SpanSink()
    otel_off = {k: "" for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")}
    otel_on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "anytime-bench",
               "OTEL_BSP_SCHEDULE_DELAY": "500"}
    rows = {c: [] for c in CONFIGS}
    cpu = {c: 0.0 for c in CONFIGS}
    logs = Path(tempfile.mkdtemp(prefix="anytime-bench-tracing-"))  # access logs: large, not results
    with ExitStack() as stack:
        servers = {}
        for c in CONFIGS:
            url = stack.enter_context(serve(*flags, log_path=logs / f"server-{c.replace(' ', '-')}.log",
                                            env=otel_on if c == "on" else otel_off))
            servers[c] = (stack.enter_context(httpx.Client(base_url=url, timeout=10)), serve.last_pid)
        for c, (client, _) in servers.items():
            _block(client, range(WARMUP))
        for rnd in range(rounds):
            order = CONFIGS if rnd % 2 == 0 else CONFIGS[::-1]
            for c in order:
                client, pid = servers[c]
                before = tree_cpu_s(pid)
                rows[c] += _block(client, range(rnd * per_block, (rnd + 1) * per_block))
                cpu[c] += tree_cpu_s(pid) - before
        time.sleep(2)  # the last batch of spans (OTEL_BSP_SCHEDULE_DELAY 0.5 s)
    requests = rounds * per_block
    res = {"requests_per_config": requests, "per_block": per_block, "spans_received": sink.spans, "configs": {},
           "middleware": middleware_cost_us(sink)}
    for c in CONFIGS:
        a = np.array(rows[c])
        server_out, client_out = a[:, 1] - a[:, 2], a[:, 0] - a[:, 2]
        res["configs"][c] = {
            "server_outside_engine_ms": {"p50": float(np.median(server_out)), "p90": float(np.percentile(server_out, 90))},
            "client_outside_engine_ms": {"p50": float(np.median(client_out)), "p90": float(np.percentile(client_out, 90))},
            "client_latency_ms_p50": float(np.median(a[:, 0])),
            "cpu_ms_per_request": cpu[c] * 1000 / requests}
    _report(res, rows, out)
    return res


def _report(res: dict, rows: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "tracing.json").write_text(json.dumps(res, indent=1))
    c = res["configs"]
    d = lambda key, q, a, b: c[a][key][q] - c[b][key][q]  # noqa: E731
    lines = [header("OpenTelemetry tracing: cost on an idle server"),
             f"Three servers of the same code side by side (default model, ONNX), {res['requests_per_config']} "
             f"sequential `POST /generate` each (n=1, deadline 1000 ms, `format: npy`) in interleaved blocks of {res['per_block']} "
             f"after {WARMUP} warm-up requests. `off A`/`off B`: no OTEL_* variable (nothing of the SDK imported); "
             "`on`: every request's span exported over OTLP/HTTP (protobuf, batch processor) to a receiver in the "
             f"benchmark process, which received {res['spans_received']} spans. Overhead = latency minus the "
             "request's time in the engine loop (first step to decoded samples); CPU = user + system time of "
             "the server's processes (supervisor, engine core, frontend worker) during the blocks, per request.",
             "", "| | server-measured overhead p50 / p90 ms | client-observed overhead p50 / p90 ms | "
             "client latency p50 ms | server CPU ms per request |", "|---|---|---|---|---|"]
    for name in CONFIGS:
        x = c[name]
        lines.append(f"| {name} | {x['server_outside_engine_ms']['p50']:.3f} / {x['server_outside_engine_ms']['p90']:.3f} "
                     f"| {x['client_outside_engine_ms']['p50']:.3f} / {x['client_outside_engine_ms']['p90']:.3f} "
                     f"| {x['client_latency_ms_p50']:.3f} | {x['cpu_ms_per_request']:.3f} |")
    lines += ["", "| difference | server overhead p50 ms | client overhead p50 ms | CPU ms per request |",
              "|---|---|---|---|",
              f"| off B − off A (noise) | {d('server_outside_engine_ms', 'p50', 'off B', 'off A'):+.3f} | "
              f"{d('client_outside_engine_ms', 'p50', 'off B', 'off A'):+.3f} | "
              f"{c['off B']['cpu_ms_per_request'] - c['off A']['cpu_ms_per_request']:+.3f} |",
              f"| on − mean(off) (cost of tracing) | "
              f"{c['on']['server_outside_engine_ms']['p50'] - (c['off A']['server_outside_engine_ms']['p50'] + c['off B']['server_outside_engine_ms']['p50']) / 2:+.3f} | "
              f"{c['on']['client_outside_engine_ms']['p50'] - (c['off A']['client_outside_engine_ms']['p50'] + c['off B']['client_outside_engine_ms']['p50']) / 2:+.3f} | "
              f"{c['on']['cpu_ms_per_request'] - (c['off A']['cpu_ms_per_request'] + c['off B']['cpu_ms_per_request']) / 2:+.3f} |",
              "", f"In-process, the tracing middleware around an ASGI app that answers at once (real SDK, batch "
              f"processor exporting every span to the same receiver, flush included, {res['middleware']['calls']} "
              "calls, best of 3): "
              f"{res['middleware']['bare_us']:.1f} µs bare, {res['middleware']['traced_us']:.1f} µs traced: "
              f"**{res['middleware']['span_us']:.1f} µs of CPU per request for its span** (creation, attributes, "
              "traceparent in and out, batching and export).",
              "", "![overhead distributions](tracing.png)", ""]
    (out / "tracing.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in CONFIGS:
        a = np.array(rows[name])
        x = np.sort(a[:, 1] - a[:, 2])
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=name)
    ax.set_xlabel("server-measured latency − time in the engine loop (ms)")
    ax.set_ylabel("share of requests")
    ax.set_xlim(0, float(np.percentile(np.concatenate([np.array(rows[n])[:, 1] - np.array(rows[n])[:, 2]
                                                         for n in CONFIGS]), 99)))
    ax.legend()
    ax.set_title("Overhead outside the engine, tracing off (A, B) and on")
    fig.tight_layout()
    fig.savefig(out / "tracing.png", dpi=120)
