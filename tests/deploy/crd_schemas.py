"""JSON schemas of the custom resources the manifests use (kubernetes-validate knows only the
built-in kinds).

- ScaledObject (keda.sh/v1alpha1): the openAPIV3Schema of KEDA's own CRD, vendored from KEDA
  v2.20.2 (schemas/keda-scaledobject-v2.20.2.json, Apache-2.0: schemas/LICENSE-keda). The npm
  package @kubernetes-models/keda 2.0.0 ships KEDA's models as compiled validator code, not as
  JSON schemas, so the CRD itself is the source. Like the API server with strict field
  validation, unknown fields are refused (additionalProperties: false wherever the CRD lists
  properties and does not allow others).
- PrometheusRule (monitoring.coreos.com/v1): the fields of the prometheus-operator CRD that the
  rules use, unknown fields refused (as SERVICE_MONITOR_SCHEMA in test_manifests.py).
"""
from __future__ import annotations

import json

from tests.deploy.tools import SCHEMAS

KEDA_VERSION = "v2.20.2"
DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused at every level that lists its properties."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def scaled_object_schema() -> dict:
    schema = json.loads((SCHEMAS / f"keda-scaledobject-{KEDA_VERSION}.json").read_text())
    schema.pop("$comment")
    return strict(schema)


PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "minLength": 1}, "interval": DURATION,
                               "rules": {"type": "array", "items": {
                                   "type": "object", "required": ["expr"], "additionalProperties": False,
                                   "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                   "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                                  "expr": {"type": "string", "minLength": 1}, "for": DURATION,
                                                  "labels": {"type": "object",
                                                             "additionalProperties": {"type": "string"}},
                                                  "annotations": {"type": "object",
                                                                  "additionalProperties": {"type": "string"}}}}}}}},
        }},
    },
}

# KEDA's Prometheus scaler reads these trigger metadata keys (pkg/scalers/prometheus_scaler.go,
# prometheusMetadata, KEDA v2.20.2); the first three have no default.
PROMETHEUS_TRIGGER_REQUIRED = {"serverAddress", "query", "threshold"}
PROMETHEUS_TRIGGER_KEYS = PROMETHEUS_TRIGGER_REQUIRED | {
    "queryParameters", "activationThreshold", "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl",
    "awsRegion", "timeout", "identityOwner"}
