"""Anytime's Prometheus alerting rules, written once here and rendered into both forms:

  k8s/monitoring/anytime-rules.yaml    a plain rules file (`rule_files:` of prometheus.yml)
  k8s/monitoring/prometheusrule.yaml   the same groups as a Prometheus Operator PrometheusRule

    python k8s/monitoring/alerts.py [--objective 0.999] [--loss-target 0.1] [--out k8s/monitoring]

tests/deploy/test_alerts.py checks that the committed files are this script's output with the
defaults, and runs `promtool test rules` on k8s/monitoring/alerts-test.yaml. Runbooks:
docs/deployment.md#alerts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RUNBOOK = "docs/deployment.md#{}"  # the runbooks: one heading per alert
# (long window, short window, burn rate, severity): the Google SRE workbook's multiwindow,
# multi-burn-rate alerts (chapter 5, table 5-8) for a 30-day SLO period
BURN_WINDOWS = [("1h", "5m", 14.4, "critical"), ("6h", "30m", 6, "critical"),
                ("1d", "2h", 3, "warning"), ("3d", "6h", 1, "warning")]
JOB = 'job=~"anytime(-gpu)?"'  # prometheus-scrape.yaml's job, or the ServiceMonitor's per Service


def _or_zero(expr: str) -> str:
    """A sum by namespace that is 0, not absent, where a namespace has requests but no such series."""
    return f"({expr} or 0 * sum by (namespace) (rate(anytime_requests_total[{{w}}])))"


def _slo_ratio(window: str) -> str:
    """Admitted requests that were not answered on time: late, failed, or expired in the queue."""
    expired = _or_zero('sum by (namespace) (rate(anytime_rejections_total{reason="expired"}[{w}]))')
    bad = _or_zero('sum by (namespace) (rate(anytime_requests_total{outcome=~"late|error"}[{w}]))') + "\n  + " + expired
    total = 'sum by (namespace) (rate(anytime_requests_total{outcome=~"ok|late|error"}[{w}]))\n  + ' + expired
    return f"(\n  {bad}\n)\n/\n(\n  {total}\n  > 0\n)\n".replace("{w}", window)


def recording_rules() -> list[dict]:
    windows = sorted({w for long, short, _, _ in BURN_WINDOWS for w in (long, short)}, key=_seconds)
    rules = [{"record": f"anytime:deadline_slo_errors:ratio_rate{w}", "expr": _slo_ratio(w)} for w in windows]
    rules.append({"record": "anytime:load_lost_tokens:ratio_rate5m", "expr": (
        "sum by (namespace) (rate(anytime_load_lost_tokens_total[5m]))\n/\n"
        "(sum by (namespace) (rate(anytime_idle_tokens_total[5m])) > 0)\n")})
    return rules


def _seconds(window: str) -> int:
    return int(window[:-1]) * {"m": 60, "h": 3600, "d": 86400}[window[-1]]


def alerting_rules(objective: float, loss_target: float, hpa: str, refusal_ratio: float) -> list[dict]:
    budget = round(1 - objective, 10)
    alerts = []
    for severity, name, speed in (("critical", "AnytimeDeadlineSLOFastBurn", "fast"),
                                  ("warning", "AnytimeDeadlineSLOSlowBurn", "slow")):
        pairs = [(long, short, rate) for long, short, rate, sev in BURN_WINDOWS if sev == severity]
        expr = "\nor\n".join(
            f"(\n  anytime:deadline_slo_errors:ratio_rate{long} > ({rate} * {budget})\n"
            f"  and\n  anytime:deadline_slo_errors:ratio_rate{short} > ({rate} * {budget})\n)"
            for long, short, rate in pairs)
        alerts.append({"alert": name, "expr": expr + "\n", "for": "2m" if speed == "fast" else "15m",
                       "labels": {"severity": severity, "slo": "deadline"},
                       "annotations": {
                           "summary": f"Anytime is spending its deadline error budget {speed} "
                                      f"(objective {objective * 100:g}% of admitted requests on time)",
                           "description": "{{ $labels.namespace }}: admitted requests answered late, failed or "
                                          "expired in the queue, burning the 30-day error budget at "
                                          + " or ".join(f"{r}x" for _, _, r in pairs) + ".",
                           "runbook_url": RUNBOOK.format(name.lower())}})
    alerts.append({"alert": "AnytimeLoadLossAtMaxReplicas", "expr": (
        f"anytime:load_lost_tokens:ratio_rate5m > {loss_target}\n"
        "and on (namespace)\n"
        f'(\n  kube_horizontalpodautoscaler_status_current_replicas{{horizontalpodautoscaler="{hpa}"}}\n'
        "  >= on (namespace, horizontalpodautoscaler)\n"
        f'  kube_horizontalpodautoscaler_spec_max_replicas{{horizontalpodautoscaler="{hpa}"}}\n)\n'),
        "for": "15m", "labels": {"severity": "warning"},
        "annotations": {"summary": "Load takes quality away and the autoscaler is at maxReplicas",
                        "description": "{{ $labels.namespace }}: load took {{ $value | humanizePercentage }} of the "
                                       "tokens an idle replica would give, above the scaling target "
                                       f"{loss_target}, for 15 minutes with the HPA at its maximum.",
                        "runbook_url": RUNBOOK.format("anytimeloadlossatmaxreplicas")}})
    alerts.append({"alert": "AnytimeRefusalRateHigh", "expr": (
        "sum by (namespace, reason) (rate(anytime_rejections_total[5m]))\n"
        "/ on (namespace) group_left ()\n"
        f"(sum by (namespace) (rate(anytime_requests_total[5m])) > 0)\n> {refusal_ratio}\n"),
        "for": "10m", "labels": {"severity": "warning"},
        "annotations": {"summary": "Many requests refused with reason {{ $labels.reason }}",
                        "description": "{{ $labels.namespace }}: {{ $value | humanizePercentage }} of requests "
                                       "were refused with reason {{ $labels.reason }} over 10 minutes.",
                        "runbook_url": RUNBOOK.format("anytimerefusalratehigh")}})
    alerts.append({"alert": "AnytimeNoReadyReplicas", "expr": (
        f"count by (namespace) (up{{{JOB}}})\nunless on (namespace)\n"
        "(sum by (namespace) (anytime_ready == 1))\n"),
        "for": "2m", "labels": {"severity": "critical"},
        "annotations": {"summary": "No Anytime replica is ready",
                        "description": "{{ $labels.namespace }}: Prometheus has Anytime targets but none reports "
                                       "anytime_ready 1 (down, loading models, or draining).",
                        "runbook_url": RUNBOOK.format("anytimenoreadyreplicas")}})
    alerts.append({"alert": "AnytimeEngineCoreRestarts", "expr":
                   "changes(anytime_engine_core_start_time_seconds[30m]) > 0\n",
                   "labels": {"severity": "warning"},
                   "annotations": {"summary": "The engine core of {{ $labels.pod }} restarted",
                                   "description": "{{ $labels.namespace }}/{{ $labels.pod }}: the engine core started "
                                                  "{{ $value }} more time(s) in 30 minutes.",
                                   "runbook_url": RUNBOOK.format("anytimeenginecorerestarts")}})
    return alerts


def groups(objective: float = 0.999, loss_target: float = 0.1, hpa: str = "anytime",
           refusal_ratio: float = 0.05) -> list[dict]:
    if not 0 < objective < 1:
        raise ValueError("the objective is a fraction of requests, between 0 and 1 (e.g. 0.999)")
    return [{"name": "anytime.rules", "rules": recording_rules()},
            {"name": "anytime.alerts", "rules": alerting_rules(objective, loss_target, hpa, refusal_ratio)}]


class _Literal(str):
    pass


def _dump(doc) -> str:
    """YAML with multi-line expressions as block scalars (readable, and diff-friendly)."""
    dumper = type("Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))

    def literal(x):
        if isinstance(x, dict):
            return {k: literal(v) for k, v in x.items()}
        if isinstance(x, list):
            return [literal(v) for v in x]
        return _Literal(x) if isinstance(x, str) and "\n" in x else x

    return yaml.dump(literal(doc), Dumper=dumper, sort_keys=False, width=120)


HEADER = "# Generated by k8s/monitoring/alerts.py ({args}); edit that script, not this file.\n"


def render(objective: float = 0.999, loss_target: float = 0.1) -> dict[str, str]:
    """File name -> text of both forms."""
    g = groups(objective, loss_target)
    args = f"--objective {objective} --loss-target {loss_target}"
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "anytime", "labels": {"app.kubernetes.io/part-of": "anytime",
                                                       "prometheus": "k8s", "role": "alert-rules"}},
            "spec": {"groups": g}}
    return {"anytime-rules.yaml": HEADER.format(args=args) + _dump({"groups": g}),
            "prometheusrule.yaml": HEADER.format(args=args) + _dump(rule)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objective", type=float, default=0.999, help="share of admitted requests answered on time")
    ap.add_argument("--loss-target", type=float, default=0.1,
                    help="the ScaledObject's load-induced loss threshold (k8s/overlays/keda)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    for name, text in render(args.objective, args.loss_target).items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
