"""Kubernetes manifests: every rendered kustomization validates against the Kubernetes API
schemas (kubernetes-validate, strict), and the settings that make draining, probes and
autoscaling work agree with the service (service/settings.py, service/metrics.py)."""
from __future__ import annotations

import json
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.deploy.crd_schemas import PROMETHEUS_RULE_SCHEMA, scaled_object_schema
from tests.deploy.tools import ADAPTER_RULES, ALERT_RULES, DASHBOARD, K8S, KUSTOMIZATIONS, SCRAPE_CONFIG, tool

# Oldest and newest Kubernetes versions the manifests must be valid for (HPA autoscaling/v2
# and PDB policy/v1 are GA since 1.23 and 1.21).
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
MAX_DEADLINE_S = 60  # GenerateRequest.deadline_ms <= 60000

# kubernetes-validate knows only built-in kinds. The ServiceMonitor is checked against the
# fields of monitoring.coreos.com/v1 it uses (a subset of the CRD's schema, unknown fields
# refused so that a typo cannot pass).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": {"type": "object",
                                                            "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                   "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}},
            },
        },
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """`kubectl kustomize` output of every kustomization, as lists of documents."""
    kubectl = tool("kubectl")
    out = {}
    for k in KUSTOMIZATIONS:
        proc = subprocess.run([kubectl, "kustomize", str(K8S / k)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"kustomize build {k} failed:\n{proc.stderr}"
        out[k] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate(doc: dict, where: str) -> None:
    custom = {"ServiceMonitor": lambda: SERVICE_MONITOR_SCHEMA, "PrometheusRule": lambda: PROMETHEUS_RULE_SCHEMA,
              "ScaledObject": scaled_object_schema}
    if doc["kind"] in custom:
        jsonschema.validate(doc, custom[doc["kind"]]())
        return
    for version in K8S_VERSIONS:
        error = None
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            error = f"{'.'.join(map(str, e.path))}: {e.message}"
        assert error is None, f"{where}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {error}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomize_output_validates(rendered, kustomization):
    docs = rendered[kustomization]
    assert docs
    for doc in docs:
        validate(doc, f"kustomize build k8s/{kustomization}")


def test_every_manifest_file_validates():
    """Complete resources as written (kustomizations and overlay patches are checked through
    the rendered output above)."""
    patches = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        patches |= {(kfile.parent / p["path"]).resolve() for p in k.get("patches", [])}
    checked = 0
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in ("kustomization.yaml", "kustomizeconfig.yaml") or path.resolve() in patches:
            continue
        if path in (ADAPTER_RULES, SCRAPE_CONFIG, ALERT_RULES):  # not Kubernetes objects; see their own tests
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                validate(doc, str(path.relative_to(K8S)))
                checked += 1
    assert checked >= 5


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_deployment_probes_drain_and_security(rendered, overlay):
    docs = rendered[overlay]
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = c["ports"][0]
    assert port["name"] == "http" and port["containerPort"] == 8000
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # non-root, read-only root filesystem, nothing extra
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # the only writable path
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # draining: preStop sleep, then SIGTERM drains for drain_timeout_s; the grace period must
    # cover both, and the drain must outlast the longest deadline
    config = one(docs, "ConfigMap")
    assert c["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    drain = float(config["data"]["ANYTIME_DRAIN_TIMEOUT_S"])
    assert drain >= MAX_DEADLINE_S
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(cmd[1]) + drain + 5
    # threads follow the CPU request (ONNX Runtime would size its pool by the node's cores)
    assert int(config["data"]["ANYTIME_THREADS"]) == int(c["resources"]["requests"]["cpu"])


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_config_map_holds_only_real_settings(rendered, overlay):
    config = one(rendered[overlay], "ConfigMap")
    fields = {"ANYTIME_" + name.upper() for name in Settings.model_fields}
    assert set(config["data"]) <= fields, set(config["data"]) - fields
    env = {e["name"] for e in one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env <= fields, env - fields
    Settings(**{k.removeprefix("ANYTIME_").lower(): v for k, v in config["data"].items()})  # values parse


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_service_monitor_hpa_and_pdb_select_this_variant(rendered, overlay):
    docs = rendered[overlay]
    dep, svc = one(docs, "Deployment"), one(docs, "Service")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    variant = overlay.split("/")[1]
    assert pod_labels["app.kubernetes.io/variant"] == variant
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/variant"] == variant
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert "replicas" not in dep["spec"]  # the HPA owns it


def test_gpu_overlay_asks_for_a_gpu(rendered):
    c = one(rendered["overlays/gpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith(":gpu")
    assert one(rendered["overlays/gpu"], "ConfigMap")["data"]["ANYTIME_DEVICE"] == "cuda"


def test_hpa_metrics_are_served_by_the_adapter_rules(rendered):
    """Custom per-pod metrics only (no CPU), each one a prometheus-adapter rule."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    served = {r["name"]["as"] for r in rules}
    for overlay in ("overlays/cpu", "overlays/gpu"):
        hpa = one(rendered[overlay], "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        for m in hpa["spec"]["metrics"]:
            assert m["type"] == "Pods", "scale on custom per-pod metrics, not on resources"
            assert m["pods"]["metric"]["name"] in served
    for r in rules:
        assert r["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert re.fullmatch(r["name"]["matches"].strip("^$"), re.search(r"^(\w+)", r["seriesQuery"]).group(1))
        for placeholder in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in r["metricsQuery"]


def test_monitoring_config_maps_carry_the_files(rendered):
    docs = rendered["monitoring"]
    names = {d["metadata"]["name"]: d for d in docs}
    adapter = names["prometheus-adapter-anytime"]
    assert yaml.safe_load(adapter["data"]["config.yaml"]) == yaml.safe_load(ADAPTER_RULES.read_text())
    dash = names["grafana-dashboard-anytime"]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["anytime-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    assert all(d["metadata"]["namespace"] == "monitoring" for d in docs)


def test_kustomize_output_is_deterministic(rendered):
    kubectl = tool("kubectl")
    again = subprocess.run([kubectl, "kustomize", str(K8S / "overlays/cpu")], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert [d for d in yaml.safe_load_all(again) if d] == rendered["overlays/cpu"]


def test_dashboard_layout():
    """Importable as it stands: unique panel ids, a 24-column grid without overlaps, every
    panel on the dashboard's data-source variable, every target with an expression."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, f"{p['title']} overlaps another panel"
        cells |= cell
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() and t["datasource"] == p["datasource"] for t in p["targets"])
        assert p.get("description"), p["title"]
    used = {m for p in dash["panels"] for t in p.get("targets", []) for m in re.findall(r"\$(\w+)", t["expr"])}
    assert used - {"__rate_interval"} <= set(variables), used
