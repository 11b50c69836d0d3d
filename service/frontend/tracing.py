"""OpenTelemetry tracing: one SERVER span per HTTP request, configured only by the standard
OTEL_* environment variables.

Off unless OTEL_TRACES_EXPORTER names an exporter or an OTLP endpoint is set; then nothing of
OpenTelemetry is imported and no middleware is added (the request path is what it is without
tracing). On, the span starts when the request reaches this process and ends when the response
is sent; `traceparent` is read from the request (W3C trace context) and the span's own context
goes back in the response's `traceparent`. A generation's timings come from the engine core's
final output (service/ipc.py `Output`: started, finished), which the route leaves in the
request's state as `result`.

Variables: OTEL_TRACES_EXPORTER (`otlp` | `console` | `none`, comma-separated),
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL / OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (`http/protobuf`, or `grpc`
with opentelemetry-exporter-otlp-proto-grpc installed), OTEL_SERVICE_NAME (default `anytime`),
OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED, and the SDK's own OTEL_BSP_* batching variables.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger("anytime.tracing")

# probes and scrapes arrive every few seconds from every kubelet and Prometheus: no spans
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class TracingConfigError(ValueError):
    """An OTEL_* variable asks for something this installation cannot do."""


def exporters(env: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for; empty means tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and any(env.get(v, "").strip() for v in ENDPOINT_VARS):
        names = ["otlp"]  # an endpoint alone means OTLP, the specification's default exporter
    return [n for n in names if n != "none"]


class Tracing:
    """The SDK's tracer and the flush at shutdown, for create_app."""

    def __init__(self, names: list[str], env: Mapping[str, str]):
        try:
            from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise TracingConfigError("OTEL_* variables turn tracing on, but opentelemetry-sdk is not installed "
                                     "(pip install 'anytime[tracing]')") from None
        attrs = {} if env.get(OTEL_SERVICE_NAME) else {"service.name": "anytime"}
        self.provider = TracerProvider(resource=Resource.create(attrs))
        for name in names:
            self.provider.add_span_processor(BatchSpanProcessor(exporter_class(name, env)()))
        self.tracer = self.provider.get_tracer("anytime")

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is still batched


def setup(env: Mapping[str, str] = os.environ) -> Tracing | None:
    """Tracing as the environment asks for it; None (and nothing imported) when off."""
    names = exporters(env)
    if not names:
        return None
    log.info("tracing on", extra={"exporters": ",".join(names)})
    return Tracing(names, env)


def check(env: Mapping[str, str] = os.environ) -> None:
    """Raise TracingConfigError now if the OTEL_* variables ask for what is not installed."""
    for name in exporters(env):
        exporter_class(name, env)


def exporter_class(name: str, env: Mapping[str, str]):
    """The span exporter class for one OTEL_TRACES_EXPORTER entry; it reads its endpoint,
    headers, timeout and compression from OTEL_* itself."""
    if name == "console":
        try:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        except ImportError:
            raise TracingConfigError("OTEL_TRACES_EXPORTER=console needs opentelemetry-sdk "
                                     "(pip install 'anytime[tracing]')") from None
        return ConsoleSpanExporter
    if name != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol not in ("http/protobuf", "grpc"):
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use http/protobuf or grpc")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise TracingConfigError(f"the OTLP {protocol} exporter is not installed ({e.name}): pip install "
                                 "'anytime[tracing]' (grpc: opentelemetry-exporter-otlp-proto-grpc)") from None
    return OTLPSpanExporter


class TracingMiddleware:
    """ASGI middleware, outermost: a SERVER span around each HTTP request."""

    def __init__(self, app, tracer):
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app, self.tracer = app, tracer
        self._trace, self._kind, self._status, self._error = trace, SpanKind.SERVER, Status, StatusCode.ERROR
        self.propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            return await self.app(scope, receive, send)
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()
                   if k in (b"traceparent", b"tracestate")}
        span = self.tracer.start_span(f"{scope['method']} {scope['path']}", context=self.propagator.extract(carrier),
                                      kind=self._kind, attributes={"http.request.method": scope["method"],
                                                                   "url.path": scope["path"]})
        state = scope.setdefault("state", {})
        sent = {}
        out_headers: dict[str, str] = {}
        self.propagator.inject(out_headers, context=self._trace.set_span_in_context(span))
        extra = [(k.encode(), v.encode()) for k, v in out_headers.items()]

        async def send_traced(msg):
            if msg["type"] == "http.response.start":
                sent["status"] = msg["status"]
                msg["headers"] = list(msg.get("headers", [])) + extra
            await send(msg)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as e:
            span.record_exception(e)
            span.set_status(self._status(self._error, type(e).__name__))
            raise
        finally:
            status = sent.get("status", 500)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(self._status(self._error))
            span.set_attributes(request_attributes(state))
            span.end()


def request_attributes(state: dict) -> dict:
    """A request's span attributes from what the frontend left in its state: the request id,
    and for a generation its model, deadline, tokens, finish reason and where its time went."""
    attrs = {}
    if rid := state.get("request_id"):
        attrs["anytime.request_id"] = rid
    result = state.get("result")
    if result is None:
        return attrs
    msg, out = result.request, result.output
    arrival = msg.arrival
    started = out.started or out.finished or arrival
    finished = out.finished or arrival
    attrs.update({"anytime.model": result.card.name, "anytime.deadline_ms": round(msg.deadline_s * 1000, 3),
                  "anytime.n": msg.n, "anytime.tokens": out.tokens, "anytime.max_tokens": result.card.D,
                  "anytime.finish_reason": out.finish_reason,
                  "anytime.queue_ms": round((started - arrival) * 1000, 3),
                  "anytime.engine_ms": round((finished - started) * 1000, 3),
                  "anytime.compute_ms": round(out.compute_s * 1000, 3)})
    if result.deadline_met is not None:  # latency and deadline_met as FrontendState.answer decided them, once
        answered = arrival + result.latency_s
        attrs["anytime.respond_ms"] = round((answered - finished) * 1000, 3)
        attrs["anytime.latency_ms"] = round(result.latency_s * 1000, 3)
        attrs["anytime.deadline_met"] = result.deadline_met
    return attrs
