"""Prometheus metrics: the only module that knows prometheus_client.

The engine emits plain stats objects (StepStats, DecodeStats); the HTTP layer reports each
finished request. Every name is prefixed `anytime_` and uses base units.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .device_metrics import nvml_collector
from ..refusals import LOAD_REFUSALS
from .engine import DecodeStats, StepStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
SLACK_BUCKETS = (-1.0, -0.1, -0.01, -0.005, -0.001, 0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                 5.0, 60.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
FRACTION_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
TOKEN_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 96, 128, 256, 512, 1024)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 512)
GUIDANCE_BUCKETS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 20.0)


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
        self.paused = Gauge("anytime_paused_sequences", "Sequences with slack standing aside while others need "
                            "the time, their KV cache kept", ["model"], registry=r)
        self.short_starts = Gauge("anytime_short_starts", "Admitted requests that started with fewer than "
                                  "min_tokens (the last resort instead of a 503 after admission; stays 0)",
                                  ["model"], registry=r)
        self.previews_skipped = Counter("anytime_previews_skipped", "Stream previews due every preview_every "
                                        "tokens that were never decoded (best effort under load)", ["model"],
                                        registry=r)
        self.guidance_scale = Histogram("anytime_guidance", "Classifier-free guidance w of admitted samples (0: off; "
                                        "a guided sample steps two rows)", ["model"], buckets=GUIDANCE_BUCKETS,
                                        registry=r)
        self.batch = Histogram("anytime_batch_size", "Sequences per prior step", ["model"], buckets=BATCH_BUCKETS,
                               registry=r)
        self.step = Histogram("anytime_step_latency_seconds", "Latency of one batched prior step",
                              ["model", "backend"], buckets=STEP_BUCKETS, registry=r)
        self.decode = Histogram("anytime_decode_latency_seconds", "Latency of one batched decode",
                                ["model", "backend"], buckets=STEP_BUCKETS, registry=r)
        self.load_factor = Gauge("anytime_latency_model_factor", "Online correction of the start-up latency profile "
                                 "(measured / profiled; > 1 means contention)", ["model", "kind"], registry=r)
        # what every deadline decision keeps free besides predicted costs (Budget.margin): the
        # capacity planner calibrates its simulated replica's stalls and responses from it
        self.margin = Gauge("anytime_deadline_margin_seconds", "Time deadline decisions keep free: the slowest "
                            "recent response (respond) and the worst recent overrun of a predicted cost (jitter)",
                            ["model", "part"], registry=r)
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
        self._models: dict[str, _ModelChildren] = {}
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
        self.short_starts.labels(name).set_function(lambda: engine.scheduler.short_starts if engine.scheduler else 0)
        self.previews_skipped.labels(name)  # exported from the start, at 0
        self.load_factor.labels(name, "step").set_function(lambda: engine.latency.step.factor if engine.latency else 1)
        self.load_factor.labels(name, "decode").set_function(
            lambda: engine.latency.decode.factor if engine.latency else 1)
        self.pressure.labels(name).set_function(lambda: engine.scheduler.pressure if engine.scheduler else 0)
        self.margin.labels(name, "respond").set_function(lambda: engine.latency.respond() if engine.latency else 0)
        self.margin.labels(name, "jitter").set_function(lambda: engine.latency.jitter() if engine.latency else 0)
        # the autoscaling signal's series exist (at 0) before the first loss: a rate, not "no data"
        self.idle_tokens.labels(name)
        self.load_lost_tokens.labels(name)
        for reason in LOAD_REFUSALS:
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

    def _of(self, model: str) -> "_ModelChildren":
        children = self._models.get(model)
        if children is None:
            children = self._models[model] = _ModelChildren(self, model)
        return children

    def answered(self, model: str, latency_s: float, deadline_s: float, tokens: int, D: int, quality: float, n: int,
                 reason: str, respond_s: float, deadline_met: bool | None = None) -> None:
        """An answered request; `deadline_met` as the frontend decided it where the answer left
        (from the latency when not given)."""
        m = self._of(model)
        late = latency_s > deadline_s if deadline_met is None else not deadline_met
        m.respond.observe(respond_s)
        (m.late if late else m.ok).inc()
        m.latency.observe(latency_s)
        m.deadline.observe(deadline_s)
        m.slack.observe(deadline_s - latency_s)
        if late:
            m.misses.inc()
        fraction = tokens / D
        for _ in range(n):  # per sample
            m.tokens.observe(tokens)
            m.fraction.observe(fraction)
            m.quality.observe(quality)
        m.finish(reason).inc(n)

    def guidance(self, model: str, guidance: float, n: int) -> None:
        """The guidance of an admitted request's n samples."""
        child = self._of(model).guidance
        for _ in range(n):
            child.observe(guidance)

    def rejected(self, model: str, reason: str, priority: str = "normal") -> None:
        m = self._of(model)
        m.rejected.inc()
        m.rejection(reason, priority).inc()

    def admission(self, model: str, n: int, idle_tokens: int, lost_tokens: int, reason: str = "") -> None:
        """What load took from one admission decision: the autoscaling signal's two counters
        (and a load refusal, when a refusal with a reason lost the idle budget)."""
        if not idle_tokens and not lost_tokens:
            return
        m = self._of(model)
        if idle_tokens:
            m.idle_tokens.inc(n * idle_tokens)
        if lost_tokens:
            m.lost_tokens.inc(n * lost_tokens)
            if reason:
                m.load_refusal(reason).inc()

    def outcome(self, model: str, outcome: str, n: int = 1, reason: str | None = None) -> None:
        self.requests.labels(model, outcome).inc()
        if reason:
            self._of(model).finish(reason).inc(n)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ModelChildren:
    """One model's labelled series, looked up once (a labels() call hashes its labels and takes
    a lock; per request, per event, that added up)."""

    def __init__(self, m: Metrics, model: str):
        self._m, self._model = m, model
        self.ok, self.late = m.requests.labels(model, "ok"), m.requests.labels(model, "late")
        self.rejected = m.requests.labels(model, "rejected")
        self.respond, self.latency = m.respond.labels(model), m.latency.labels(model)
        self.deadline, self.slack = m.deadline.labels(model), m.slack.labels(model)
        self.misses = m.misses.labels(model)
        self.tokens, self.fraction = m.tokens.labels(model), m.fraction.labels(model)
        self.quality = m.quality.labels(model)
        self.guidance = m.guidance_scale.labels(model)
        self.idle_tokens, self.lost_tokens = m.idle_tokens.labels(model), m.load_lost_tokens.labels(model)
        self._finish: dict = {}
        self._rejections: dict = {}
        self._load_refusals: dict = {}

    def finish(self, reason: str):
        child = self._finish.get(reason)
        if child is None:
            child = self._finish[reason] = self._m.finish.labels(self._model, _label(reason))
        return child

    def rejection(self, reason: str, priority: str):
        child = self._rejections.get((reason, priority))
        if child is None:
            child = self._rejections[(reason, priority)] = self._m.rejections.labels(self._model, _label(reason),
                                                                                    priority)
        return child

    def load_refusal(self, reason: str):
        child = self._load_refusals.get(reason)
        if child is None:
            child = self._load_refusals[reason] = self._m.load_refusals.labels(self._model, _label(reason))
        return child


def _label(value) -> str:
    """A label value; a str enum (service/refusals.Refusal) by its value, not its repr."""
    return getattr(value, "value", value)
