"""A real Prometheus (Debian's `prometheus`) scrapes two `anytime serve` processes on loopback
(two "pods") through the scrape job of k8s/monitoring/prometheus-scrape.yaml, its relabeling
included (file-based discovery stands in for the Kubernetes API and hands out the same
__meta_kubernetes_* labels), while one server is under load and the other idle. Then every PromQL expression of the
Grafana dashboard and of the prometheus-adapter rules is evaluated through the HTTP API and
must return data: real metric names, real label values, real results. The alerting rules
(k8s/monitoring/anytime-rules.yaml) load and evaluate without errors on the real series."""
from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
from contextlib import ExitStack

import httpx
import pytest
import yaml

from bench.server_proc import free_port, serve
from tests.deploy.tools import ADAPTER_RULES, ALERT_RULES, DASHBOARD, SCRAPE_CONFIG, tool

NAMESPACE = "anytime"
BUSY, IDLE = "anytime-cpu-0", "anytime-cpu-1"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval stands for at a 1 s scrape interval
LOAD_S = 6.0  # load before the first evaluation; it goes on while the queries run


def pod_meta(pod: str, app: str = "anytime", port_name: str = "http") -> dict:
    """The labels Kubernetes pod discovery gives a pod of the Deployment (k8s/base)."""
    return {"__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_label_app_kubernetes_io_variant": "cpu",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            "__meta_kubernetes_pod_container_port_name": port_name}


def prometheus_config(tmp_path, targets: list[dict]) -> str:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "anytime"]
    assert "kubernetes_sd_configs" in job
    del job["kubernetes_sd_configs"]
    sd = tmp_path / "targets.json"
    sd.write_text(json.dumps(targets))
    job["file_sd_configs"] = [{"files": [str(sd)]}]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert config["rule_files"] == [ALERT_RULES.name]  # beside the scrape config; here from the repository
    config["rule_files"] = [str(ALERT_RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([tool("promtool"), "check", "config", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(path)


class Prometheus:
    def __init__(self, config: str, data_dir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def api(self, path: str, **params):
        r = httpx.get(self.url + "/api/v1/" + path, params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict, float]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Load:
    """Closed-loop clients on the busy server: mixed deadlines and sizes, and every fifth
    request with a deadline no token fits into (a fast 503 'deadline' rejection). The other
    deadlines leave room: the test is about the metrics, not about the scheduler under a
    loaded machine."""

    def __init__(self, base: str, workers: int = 4):
        self.base, self.stop, self.codes = base, threading.Event(), []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def run(self, worker: int):
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i = 0
            end = time.monotonic() + 50  # bounded even if the test never stops it
            while not self.stop.is_set() and time.monotonic() < end:
                i += 1
                body = {"deadline_ms": 1 if i % 5 == 0 else 250 + 250 * ((i + worker) % 4),
                        "n": 1 + (i + worker) % 3, "seed": i}
                self.codes.append(client.post("/generate", json=body).status_code)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(15)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((f"{panel['title']} [{t['refId']}]", t["expr"]))
    return out


def grafana_expand(expr: str) -> str:
    """The dashboard's variables as Grafana expands them with 'All' selected."""
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$namespace", ".*").replace("$model", ".*"))


def adapter_expand(rule: dict, pods: list[str]) -> str:
    """A rule's metricsQuery as prometheus-adapter renders it for an HPA over `pods`."""
    series = re.match(r"\w+", rule["seriesQuery"]).group(0)
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
    return (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "pod"))


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, tmp_path_factory):
    """Prometheus scraping a busy and an idle server, with load running."""
    tmp = tmp_path_factory.mktemp("prometheus")
    with ExitStack() as stack:
        busy = stack.enter_context(serve("--model-dirs", str(tiny_model_dir), "--max-batch", "8",
                                         "--max-queue", "64", log_path=tmp / "busy.log"))
        idle = stack.enter_context(serve("--model-dirs", str(tiny_model_dir), log_path=tmp / "idle.log"))
        targets = [{"targets": [busy.removeprefix("http://")], "labels": pod_meta(BUSY)},
                   {"targets": [idle.removeprefix("http://")], "labels": pod_meta(IDLE)},
                   # must be dropped by the job's relabeling: another app, and a non-http port
                   {"targets": [idle.removeprefix("http://")], "labels": pod_meta("other-0", app="other")},
                   {"targets": [idle.removeprefix("http://")], "labels": pod_meta(IDLE, port_name="debug")}]
        prom = Prometheus(prometheus_config(tmp, targets), tmp / "data")
        stack.callback(prom.close)
        load = Load(busy)
        stack.callback(load.close)
        time.sleep(LOAD_S)
        yield prom, load


def eventually(check, timeout=15.0):
    """Retry while the next scrapes come in; the last failure is reported."""
    end = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def test_scrape_job_relabels_like_kubernetes(scraped):
    prom, load = scraped
    active = prom.api("targets")["activeTargets"]
    up = {t["labels"]["pod"]: t for t in active}
    assert set(up) == {BUSY, IDLE}, [t["labels"] for t in active]
    for pod, t in up.items():
        assert t["labels"]["namespace"] == NAMESPACE and t["labels"]["variant"] == "cpu"
        assert t["labels"]["job"] == "anytime" and t["scrapeUrl"].endswith("/metrics")

    def all_up():
        health = {t["labels"]["pod"]: t["health"] for t in prom.api("targets")["activeTargets"]}
        assert set(health.values()) == {"up"}, health

    eventually(all_up)
    assert len(prom.api("targets")["droppedTargets"]) == 2
    assert 200 in load.codes and 503 in load.codes, set(load.codes)


def test_every_metric_name_used_exists(scraped):
    prom, _ = scraped
    exprs = [e for _, e in dashboard_queries()] + [r["metricsQuery"] + r["seriesQuery"]
                                                   for r in yaml.safe_load(ADAPTER_RULES.read_text())["rules"]]
    used = {m for e in exprs for m in re.findall(r"\banytime_[a-z_]+\b", e)}
    assert len(used) >= 15
    names = set(prom.api("label/__name__/values"))
    assert used <= names, sorted(used - names)


@pytest.mark.parametrize("title,expr", dashboard_queries(), ids=[t for t, _ in dashboard_queries()])
def test_dashboard_query_returns_data(scraped, title, expr):
    prom, _ = scraped

    def check():
        result = prom.query(grafana_expand(expr))
        assert result, f"no data: {grafana_expand(expr)}"
        assert any(math.isfinite(v) for _, v in result), f"only NaN/Inf: {result}"
        return result

    eventually(check)


def test_dashboard_variables_have_values(scraped):
    prom, _ = scraped
    dash = json.loads(DASHBOARD.read_text())
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
        assert m, var["definition"]
        values = prom.api(f"label/{m.group(2)}/values", **{"match[]": grafana_expand(m.group(1))})
        assert values, var["name"]


@pytest.mark.parametrize("rule", yaml.safe_load(ADAPTER_RULES.read_text())["rules"], ids=lambda r: r["name"]["as"])
def test_adapter_rule_gives_every_pod_a_value(scraped, rule):
    """What the HPA gets: one finite value per pod, the idle pod included (0, not 'no data',
    or an HPA cannot scale down)."""
    prom, _ = scraped
    assert {s["pod"] for s in prom.api("series", **{"match[]": rule["seriesQuery"]})} >= {BUSY, IDLE}
    expr = adapter_expand(rule, [BUSY, IDLE])

    def check():
        values = {m.get("pod"): v for m, v in prom.query(expr)}
        assert set(values) == {BUSY, IDLE}, f"{values} from {expr}"
        assert all(math.isfinite(v) for v in values.values()), values
        return values

    values = eventually(check)
    assert values[IDLE] == 0
    if rule["name"]["as"] == "anytime_token_fraction_deficit":
        # 1 in 5 requests is rejected (k = 0), so the busy pod's deficit is clearly above 0
        assert 0.05 < values[BUSY] <= 1, values


def test_alerting_rules_load_and_evaluate(scraped):
    """Prometheus loaded every rule of the plain rules file and evaluates each without error;
    the recording rules give the busy namespace a value."""
    prom, _ = scraped
    names = {r.get("alert") or r["record"] for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}

    def evaluated():
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert {r["name"] for r in rules} == names
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        return rules

    eventually(evaluated, timeout=20)
    for record in ("anytime:deadline_slo_errors:ratio_rate5m", "anytime:load_lost_tokens:ratio_rate5m"):
        def has_value():
            values = [v for m, v in prom.query(record) if m.get("namespace") == NAMESPACE]
            assert values and all(math.isfinite(v) for v in values), f"{record}: {values}"

        eventually(has_value, timeout=20)
