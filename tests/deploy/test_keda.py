"""The KEDA overlay (k8s/overlays/keda): the ScaledObject validates against KEDA's own CRD schema
and the Prometheus scaler's required metadata, and its triggers ask for the right number of
replicas when a real Prometheus scrapes real servers:

- tight-deadline traffic at low load (a large token deficit that no replica removes) -> the
  minimum, where the raw deficit would have scaled up;
- twice the load one replica serves at full length -> at least twice the current replicas.

The replica count is what the HPA that KEDA creates computes from each trigger's query result
(kubernetes pkg/controller/podautoscaler/replica_calculator.go, external metrics): Value
targets ceil(ready x value / threshold), AverageValue targets ceil(value / threshold), both
kept at the current count within the 10% tolerance; the largest proposal, within
[minReplicaCount, maxReplicaCount]."""
from __future__ import annotations

import asyncio
import copy
import inspect
import math
import re
import subprocess
import threading
import time
from contextlib import ExitStack

import httpx
import jsonschema
import pytest
import yaml

from bench.loadgen import run_load
from bench.server_proc import serve
from tests.deploy.crd_schemas import PROMETHEUS_TRIGGER_KEYS, PROMETHEUS_TRIGGER_REQUIRED, scaled_object_schema
from tests.deploy.test_prometheus import NAMESPACE, Prometheus, eventually, pod_meta, prometheus_config
from tests.deploy.tools import ADAPTER_RULES, K8S, SCALED_OBJECT, tool
from tests.utils.faults import slow_server_env

TOLERANCE = 0.1  # the HPA's default --horizontal-pod-autoscaler-tolerance
POD_SELECTOR = 'pod=~"anytime-[^-]+-[^-]+"'
# two "pods" of the Deployment (names as a ReplicaSet gives them, so the trigger's selector matches)
TIGHT, LOADED = "anytime-7c9d8-tight", "anytime-7c9d8-loaded"
STEP_DELAY_MS, MAX_BATCH, D = 20, 2, 8  # the tiny model's D; steps sleep (they dominate), so capacity is known
TIGHT_DEADLINE_MS = 100  # an idle replica fits only a few of the D tokens
TRAFFIC_S = 10.0


def scaled_object() -> dict:
    return yaml.safe_load(SCALED_OBJECT.read_text())


@pytest.fixture(scope="module")
def rendered_keda() -> list[dict]:
    proc = subprocess.run([tool("kubectl"), "kustomize", str(K8S / "overlays/keda")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


# ---- the manifest -------------------------------------------------------------------------
def test_scaled_object_validates_against_kedas_crd_schema(rendered_keda):
    (so,) = [d for d in rendered_keda if d["kind"] == "ScaledObject"]
    jsonschema.validate(so, scaled_object_schema())
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["namespace"] == "anytime"


@pytest.mark.parametrize("where,value", [(("spec", "minReplicas"), 2),  # the HPA's name, not KEDA's
                                         (("spec", "triggers", 0, "metricType"), 3),
                                         (("spec", "triggers"), []),
                                         (("spec", "advanced", "horizontalPodAutoscalerConfig", "behaviour"), {})])
def test_the_schema_refuses_mistakes(where, value):
    """The vendored schema is strict enough to catch a wrong field name, type or count."""
    doc = copy.deepcopy(scaled_object())
    node = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, scaled_object_schema())


def test_prometheus_triggers_have_what_kedas_scaler_reads():
    for trigger in scaled_object()["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert PROMETHEUS_TRIGGER_REQUIRED <= set(meta) <= PROMETHEUS_TRIGGER_KEYS, set(meta)
        assert float(meta["threshold"]) > 0 and meta["serverAddress"].startswith("http")
        assert trigger["metricType"] in ("Value", "AverageValue")  # Utilization is for cpu/memory only
        assert re.search(r"\banytime_\w+", meta["query"])
        assert POD_SELECTOR in meta["query"] and f'namespace="{NAMESPACE}"' in meta["query"]


def test_keda_overlay_replaces_the_hpa(rendered_keda):
    kinds = [d["kind"] for d in rendered_keda]
    assert "HorizontalPodAutoscaler" not in kinds, "KEDA's HPA and the adapter's would fight over replicas"
    (dep,) = [d for d in rendered_keda if d["kind"] == "Deployment"]
    (so,) = [d for d in rendered_keda if d["kind"] == "ScaledObject"]
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": dep["metadata"]["name"]}
    assert "replicas" not in dep["spec"]
    # the Deployment's pods get names the trigger's selector matches: <deployment>-<hash>-<hash>
    assert re.fullmatch(r"anytime-\[\^-\]\+-\[\^-\]\+", POD_SELECTOR.split('"')[1])
    assert dep["metadata"]["name"] == "anytime" and dep["metadata"]["namespace"] == NAMESPACE


def test_loss_threshold_matches_the_alert():
    """AnytimeLoadLossAtMaxReplicas fires above the loss the ScaledObject scales to."""
    (loss,) = [t for t in scaled_object()["spec"]["triggers"] if t["name"] == "load_induced_loss"]
    from tests.deploy.test_alerts import alerts_module

    default = inspect.signature(alerts_module().render).parameters["loss_target"].default
    assert default == float(loss["metadata"]["threshold"])


# ---- what the triggers ask for, from a real Prometheus -------------------------------------
def hpa_proposal(metric_type: str, value: float, threshold: float, current: int) -> int:
    """The replicas the HPA proposes for one external metric (replica_calculator.go)."""
    if metric_type == "Value":
        ratio = value / threshold
        return current if abs(ratio - 1) <= TOLERANCE else math.ceil(ratio * current)
    ratio = value / (threshold * current)
    return current if abs(ratio - 1) <= TOLERANCE else math.ceil(value / threshold)


def desired_replicas(prom: Prometheus, pod: str, current: int) -> tuple[int, dict]:
    """KEDA's HPA over the ScaledObject's triggers, the queries restricted to one pod."""
    spec = scaled_object()["spec"]
    values, proposals = {}, []
    for t in spec["triggers"]:
        query = t["metadata"]["query"].replace(POD_SELECTOR, f'pod="{pod}"')
        result = prom.query(query)
        assert len(result) == 1, f"KEDA needs exactly one element, got {result}"  # prometheus_scaler.go
        values[t["name"]] = value = result[0][1]
        assert math.isfinite(value), values
        proposals.append(hpa_proposal(t["metricType"], value, float(t["metadata"]["threshold"]), current))
    return min(spec["maxReplicaCount"], max(spec["minReplicaCount"], *proposals)), values


def raw_deficit_replicas(prom: Prometheus, pod: str) -> int:
    """The prometheus-adapter HPA's primary metric (k8s/base/hpa.yaml: AverageValue 100m) for one pod."""
    (rule,) = [r for r in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
               if r["name"]["as"] == "anytime_token_fraction_deficit"]
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod="{pod}"') \
        .replace("<<.GroupBy>>", "pod")
    ((_, deficit),) = prom.query(query)
    return math.ceil(deficit / 0.1)


class TightTraffic:
    """One client at a time, a pause between requests: low load, deadlines that leave room for
    only a few tokens even on an idle replica."""

    def __init__(self, base: str):
        self.base, self.tokens, self.codes = base, [], []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        with httpx.Client(base_url=self.base, timeout=10) as client:
            end, i = time.monotonic() + TRAFFIC_S, 0
            while time.monotonic() < end:
                i += 1
                r = client.post("/generate", json={"deadline_ms": TIGHT_DEADLINE_MS, "seed": i})
                self.codes.append(r.status_code)
                if r.status_code == 200:
                    self.tokens.append(r.json()["tokens"])
                time.sleep(0.1)


@pytest.fixture(scope="module")
def scaled(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keda")
    flags = ("--model-dirs", str(tiny_model_dir), "--max-batch", str(MAX_BATCH), "--workers", "1")
    env = slow_server_env(STEP_DELAY_MS)
    with ExitStack() as stack:
        tight = stack.enter_context(serve(*flags, log_path=tmp / "tight.log", env=env))
        loaded = stack.enter_context(serve(*flags, log_path=tmp / "loaded.log", env=env))
        targets = [{"targets": [tight.removeprefix("http://")], "labels": pod_meta(TIGHT)},
                   {"targets": [loaded.removeprefix("http://")], "labels": pod_meta(LOADED)}]
        prom = Prometheus(prometheus_config(tmp, targets), tmp / "data")
        stack.callback(prom.close)
        # full-length capacity of one replica: MAX_BATCH rows per step, D steps per sample (the
        # steps sleep STEP_DELAY_MS, so the real capacity is lower and the load at least 2x)
        capacity = MAX_BATCH / (STEP_DELAY_MS / 1000) / D
        tight_traffic = TightTraffic(tight)
        records = asyncio.run(run_load(loaded, rate=2 * capacity, duration=TRAFFIC_S, deadlines="fixed:300",
                                       n_mix="1", progress=False))
        tight_traffic.thread.join(30)
        time.sleep(3)  # the last scrapes
        yield prom, tight_traffic, records


def test_tight_deadlines_at_low_load_scale_to_the_minimum(scaled):
    prom, tight, _ = scaled
    assert tight.tokens and sum(tight.tokens) / len(tight.tokens) < 0.8 * D, tight.tokens  # the deadline caps k
    minimum = scaled_object()["spec"]["minReplicaCount"]
    replicas, values = eventually(lambda: _settled(prom, TIGHT, 1))
    assert replicas == minimum, values
    (loss,) = [t for t in scaled_object()["spec"]["triggers"] if t["name"] == "load_induced_loss"]
    # what load seems to take from one request at a time is the deadline guard's jitter: below
    # the target, so the proposal only shrinks
    assert values["load_induced_loss"] < float(loss["metadata"]["threshold"]), values
    # the raw token deficit would have asked for several replicas: the reason for this signal
    assert raw_deficit_replicas(prom, TIGHT) >= 3


def test_twice_the_load_asks_for_at_least_twice_the_replicas(scaled):
    prom, _, records = scaled
    ok = [r for r in records if r.status == 200]
    assert ok and sum(r.tokens for r in ok) / len(ok) < D, "2x load must cost tokens"
    current = 1
    replicas, values = eventually(lambda: _settled(prom, LOADED, current))
    assert replicas >= 2 * current, values
    assert values["load_induced_loss"] > 0.3, values


def _settled(prom: Prometheus, pod: str, current: int) -> tuple[int, dict]:
    replicas, values = desired_replicas(prom, pod, current)
    assert prom.query(f'anytime_idle_tokens_total{{pod="{pod}"}}'), "not scraped yet"
    return replicas, values
