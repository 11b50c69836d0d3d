"""Prometheus metrics: the only module that knows prometheus_client.

The engine emits plain stats objects (StepStats, DecodeStats); the HTTP layer reports each
finished request. Every name is prefixed `anytime_` and uses base units.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .device_metrics import nvml_collector
from .engine import DecodeStats, StepStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
SLACK_BUCKETS = (-1.0, -0.1, -0.01, -0.005, -0.001, 0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                 5.0, 60.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
FRACTION_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
TOKEN_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 96, 128, 256, 512, 1024)
LOAD_REFUSAL_REASONS = ("deadline", "queue_full", "expired", "overloaded")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 512)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("anytime_requests", "Requests by model and outcome "
                                "(ok, late, rejected, error, cancelled, invalid)", ["model", "outcome"], registry=r)
        self.latency = Histogram("anytime_request_latency_seconds", "End-to-end latency from arrival to response ready",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.deadline = Histogram("anytime_request_deadline_seconds", "Deadline requested (deadline_ms / 1000)",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.slack = Histogram("anytime_deadline_slack_seconds", "Deadline minus latency (negative: late)",
                               ["model"], buckets=SLACK_BUCKETS, registry=r)
        self.misses = Counter("anytime_deadline_misses", "Answers that were ready after their deadline", ["model"],
                              registry=r)
        self.tokens = Histogram("anytime_tokens_per_sample", "Tokens k generated per sample", ["model"],
                                buckets=TOKEN_BUCKETS, registry=r)
        self.fraction = Histogram("anytime_token_fraction", "Tokens generated over tokens possible (k / D)", ["model"],
                                  buckets=FRACTION_BUCKETS, registry=r)
        self.quality = Histogram("anytime_quality_estimate", "Quality estimate of answers from the model's curve",
                                 ["model"], buckets=FRACTION_BUCKETS, registry=r)
        self.finish = Counter("anytime_sequences_finished", "Finished sequences by reason "
                              "(budget, deadline_guard, quality, cancelled, error)", ["model", "reason"], registry=r)
        self.rejections = Counter("anytime_rejections", "Requests rejected at admission by reason "
                                  "(deadline, queue_full, fair_share, expired, overloaded) and priority",
                                  ["model", "reason", "priority"], registry=r)
        self.queue = Gauge("anytime_queue_depth", "Sequences admitted and waiting for a batch row", ["model"],
                           registry=r)
        self.active = Gauge("anytime_active_sequences", "Sequences in the running batch", ["model"], registry=r)
        self.paused = Gauge("anytime_paused_sequences", "Sequences with slack standing aside, their KV cache kept "
                            "(slack scheduling)", ["model"], registry=r)
        self.previews_skipped = Counter("anytime_previews_skipped", "Stream previews due every preview_every "
                                        "tokens that were never decoded (best effort under load)", ["model"],
                                        registry=r)
        self.batch = Histogram("anytime_batch_size", "Sequences per prior step", ["model"], buckets=BATCH_BUCKETS,
                               registry=r)
        self.step = Histogram("anytime_step_latency_seconds", "Latency of one batched prior step",
                              ["model", "backend"], buckets=STEP_BUCKETS, registry=r)
        self.decode = Histogram("anytime_decode_latency_seconds", "Latency of one batched decode",
                                ["model", "backend"], buckets=STEP_BUCKETS, registry=r)
        self.load_factor = Gauge("anytime_latency_model_factor", "Online correction of the start-up latency profile "
                                 "(measured / profiled; > 1 means contention)", ["model", "kind"], registry=r)
        self.pressure = Gauge("anytime_scheduler_pressure", "Share of recent admissions that got fewer tokens "
                              "than on an idle server (0..1): steps are scarce", ["model"], registry=r)
        self.respond = Histogram("anytime_respond_latency_seconds", "From a request's end in the engine to its "
                                 "encoded response (the HTTP side's share; the scheduler keeps this much time)",
                                 ["model"], buckets=STEP_BUCKETS, registry=r)
        self.idle_tokens = Counter("anytime_idle_tokens", "Tokens an idle replica would have planned for the "
                                   "requests decided at admission (admitted or refused; per sample)", ["model"],
                                   registry=r)
        self.load_lost_tokens = Counter("anytime_load_lost_tokens", "Of anytime_idle_tokens, those load took away: "
                                        "fewer tokens than idle, or all of them for a load refusal", ["model"],
                                        registry=r)
        self.load_refusals = Counter("anytime_load_refusals", "Refusals an idle replica would have admitted",
                                     ["model", "reason"], registry=r)
        self.core_start = Gauge("anytime_engine_core_start_time_seconds", "Unix time the engine core started "
                                "serving (a change is a restart)", registry=r)
        self.frontends = Gauge("anytime_frontend_workers", "Frontend worker processes connected to the engine core",
                               registry=r)
        self.frontends_lost = Counter("anytime_frontend_workers_lost", "Frontend workers that exited without a "
                                      "clean shutdown (killed, crashed); the supervisor starts a replacement for each",
                                      registry=r)
        self._engine_children: dict = {}
        self.ready = Gauge("anytime_ready", "1 when models are loaded and warmed up and admission is open",
                           registry=r)
        devices = nvml_collector()  # anytime_device_*: only where NVML sees a GPU
        if devices is not None:
            r.register(devices)

    def watch_engine(self, engine) -> None:
        """Gauges read live from an engine at scrape time."""
        name = engine.spec.name
        self.queue.labels(name).set_function(lambda: engine.queued_sequences)
        self.active.labels(name).set_function(lambda: engine.active_sequences)
        self.paused.labels(name).set_function(lambda: engine.paused_sequences)
        self.previews_skipped.labels(name)  # exported from the start, at 0
        self.load_factor.labels(name, "step").set_function(lambda: engine.latency.step.factor if engine.latency else 1)
        self.load_factor.labels(name, "decode").set_function(
            lambda: engine.latency.decode.factor if engine.latency else 1)
        self.pressure.labels(name).set_function(lambda: engine.scheduler.pressure if engine.scheduler else 0)
        # the autoscaling signal's series exist (at 0) before the first loss: a rate, not "no data"
        self.idle_tokens.labels(name)
        self.load_lost_tokens.labels(name)
        for reason in LOAD_REFUSAL_REASONS:
            self.load_refusals.labels(name, reason)
        engine.observers.append(self.observe)

    def observe(self, stats) -> None:
        """Called by the engine thread every step: the labelled children are looked up once."""
        key = (type(stats), stats.model, stats.backend)
        children = self._engine_children.get(key)
        if children is None:
            if isinstance(stats, StepStats):
                children = (self.step.labels(stats.model, stats.backend), self.batch.labels(stats.model))
            else:
                children = (self.decode.labels(stats.model, stats.backend), None,
                            self.previews_skipped.labels(stats.model))
            self._engine_children[key] = children
        children[0].observe(stats.seconds)
        if children[1] is not None:
            children[1].observe(stats.batch)
        elif stats.previews_skipped:
            children[2].inc(stats.previews_skipped)

    def answered(self, model: str, latency_s: float, deadline_s: float, tokens: int, D: int, quality: float, n: int,
                 reason: str, respond_s: float) -> None:
        late = latency_s > deadline_s
        self.respond.labels(model).observe(respond_s)
        self.requests.labels(model, "late" if late else "ok").inc()
        self.latency.labels(model).observe(latency_s)
        self.deadline.labels(model).observe(deadline_s)
        self.slack.labels(model).observe(deadline_s - latency_s)
        if late:
            self.misses.labels(model).inc()
        for _ in range(n):
            self.tokens.labels(model).observe(tokens)
            self.fraction.labels(model).observe(tokens / D)
            self.quality.labels(model).observe(quality)
        self.finish.labels(model, reason).inc(n)

    def rejected(self, model: str, reason: str, priority: str = "normal") -> None:
        self.requests.labels(model, "rejected").inc()
        self.rejections.labels(model, reason, priority).inc()

    def admission(self, model: str, n: int, idle_tokens: int, lost_tokens: int, reason: str = "") -> None:
        """What load took from one admission decision: the autoscaling signal's two counters
        (and a load refusal, when a refusal with a reason lost the idle budget)."""
        if idle_tokens:
            self.idle_tokens.labels(model).inc(n * idle_tokens)
        if lost_tokens:
            self.load_lost_tokens.labels(model).inc(n * lost_tokens)
            if reason:
                self.load_refusals.labels(model, reason).inc()

    def outcome(self, model: str, outcome: str, n: int = 1, reason: str | None = None) -> None:
        self.requests.labels(model, outcome).inc()
        if reason:
            self.finish.labels(model, reason).inc(n)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
