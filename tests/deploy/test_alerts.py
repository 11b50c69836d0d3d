"""Alerting rules: both committed forms are k8s/monitoring/alerts.py's output (they cannot drift
apart), Prometheus loads them, `promtool test rules` passes with every alert tested both firing
and not firing, and every alert has its runbook in docs/deployment.md."""
from __future__ import annotations

import importlib.util
import re
import subprocess

import pytest
import yaml

from tests.deploy.tools import ALERT_RULES, ALERTS_SCRIPT, PROMETHEUS_RULE, ROOT, tool

UNIT_TESTS = ROOT / "tests" / "deploy" / "alerts-test.yaml"


def alerts_module():
    spec = importlib.util.spec_from_file_location("anytime_alerts", ALERTS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_committed_files_are_the_generators_output():
    rendered = alerts_module().render()
    assert rendered["anytime-rules.yaml"] == ALERT_RULES.read_text(), "run python k8s/monitoring/alerts.py"
    assert rendered["prometheusrule.yaml"] == PROMETHEUS_RULE.read_text(), "run python k8s/monitoring/alerts.py"
    plain = yaml.safe_load(ALERT_RULES.read_text())
    operator = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert operator["kind"] == "PrometheusRule" and operator["spec"]["groups"] == plain["groups"]


def test_the_issue_asks_for_these_alerts():
    assert set(alert_names()) == {"AnytimeDeadlineSLOFastBurn", "AnytimeDeadlineSLOSlowBurn",
                                  "AnytimeLoadLossAtMaxReplicas", "AnytimeRefusalRateHigh",
                                  "AnytimeNoReadyReplicas", "AnytimeEngineCoreRestarts"}


def test_objective_is_a_parameter():
    """The burn-rate thresholds are multiples of the error budget 1 - objective."""
    m = alerts_module()
    text = m.render(objective=0.99)["anytime-rules.yaml"]
    assert "(14.4 * 0.01)" in text and "(1 * 0.01)" in text and "objective 99%" in text
    assert "(14.4 * 0.001)" in ALERT_RULES.read_text()
    with pytest.raises(ValueError):
        m.groups(objective=99.9)


def test_promtool_checks_the_rules():
    proc = subprocess.run([tool("promtool"), "check", "rules", str(ALERT_RULES)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(ALERT_RULES.read_text())['groups'])} rules" \
        in proc.stdout + proc.stderr


def test_promtool_unit_tests_pass():
    proc = subprocess.run([tool("promtool"), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_can_fail(tmp_path):
    """The same unit tests against rules whose thresholds are off fail: they test something."""
    broken = tmp_path / "k8s" / "monitoring"
    broken.mkdir(parents=True)
    (broken / "anytime-rules.yaml").write_text(
        ALERT_RULES.read_text().replace("> 0.05", "> 0.5").replace(" * 0.001)", " * 0.1)"))
    tests = tmp_path / "tests" / "deploy"
    tests.mkdir(parents=True)
    (tests / "alerts-test.yaml").write_text(UNIT_TESTS.read_text())
    proc = subprocess.run([tool("promtool"), "test", "rules", str(tests / "alerts-test.yaml")], capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "AnytimeRefusalRateHigh" in out and "AnytimeDeadlineSLOFastBurn" in out, out


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_is_tested_firing_and_not_firing(alert):
    cases = [c for t in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])
             if c["alertname"] == alert]
    assert any(c["exp_alerts"] for c in cases), f"{alert} is never expected to fire"
    assert any(not c["exp_alerts"] for c in cases), f"{alert} is never expected to stay quiet"


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_has_a_runbook(alert):
    rules = {r["alert"]: r for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]
             if "alert" in r}
    anchor = rules[alert]["annotations"]["runbook_url"].split("#")[1]
    docs = (ROOT / "docs" / "deployment.md").read_text()
    headings = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", docs, re.M)}
    assert anchor in headings, f"docs/deployment.md has no heading for #{anchor}"
    assert anchor == alert.lower()
