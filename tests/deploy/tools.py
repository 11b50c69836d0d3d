"""Paths of the deployment files and the external tools the deploy checks run."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
DASHBOARD = K8S / "grafana" / "anytime-dashboard.json"
ADAPTER_RULES = K8S / "monitoring" / "prometheus-adapter.yaml"
SCRAPE_CONFIG = K8S / "monitoring" / "prometheus-scrape.yaml"
ALERT_RULES = K8S / "monitoring" / "anytime-rules.yaml"
PROMETHEUS_RULE = K8S / "monitoring" / "prometheusrule.yaml"
ALERTS_SCRIPT = K8S / "monitoring" / "alerts.py"
SCALED_OBJECT = K8S / "overlays" / "keda" / "scaledobject.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "overlays/keda", "overlays/haproxy", "grafana", "monitoring"]


def tool(name: str) -> str:
    """Path of an external tool. `make test` installs every one of them (pip dev extra,
    APT_PACKAGES; kubectl comes with the machine image): missing in CI is a failure, on a
    developer machine without them a skip."""
    venv_bin = Path(sys.executable).parent / name
    path = str(venv_bin) if venv_bin.is_file() else shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (make install apt)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
