"""The Kubernetes overlay with HAProxy (k8s/overlays/haproxy): its rendered config is valid for
haproxy, routes as the tested deploy/haproxy/haproxy.cfg does, and points at the replicas' agent
port and readiness path as the replicas' Deployment and headless Service publish them. (Schema
validation of the rendered objects: tests/deploy/test_manifests.py.)"""
import re
import shutil
import subprocess

import pytest
import yaml

from bench.fleet_proc import HAPROXY_CFG
from service.settings import Settings
from tests.deploy.tools import K8S, tool

# the lines that make the routing: both configs must carry each of them, word for word
ROUTING = ("balance roundrobin", "option http-buffer-request", "retries 1",
           "retry-on conn-failure empty-response 503", "option redispatch 1", "option httpchk GET /readyz",
           "http-check expect status 200",
           "http-request set-header X-Anytime-Arrival-Ms %[date(0,ms)] unless { req.hdr(x-anytime-arrival-ms) -m found }",
           "http-response set-header X-Anytime-Replica %s")


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(K8S / "overlays/haproxy")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def named(docs, kind, prefix):
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    return found


def exact(docs, kind, name):
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}


def test_cluster_config_is_valid_and_routes_like_the_tested_one(docs, tmp_path):
    cfg = named(docs, "ConfigMap", "haproxy-config")["data"]["haproxy.cfg"]
    for line in ROUTING:
        assert line in lines(cfg), line
        assert line in lines(HAPROXY_CFG.read_text()), line
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make apt)")
    (tmp_path / "haproxy.cfg").write_text(cfg)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_haproxy_finds_the_replicas_agent_and_readiness(docs):
    cfg = named(docs, "ConfigMap", "haproxy-config")["data"]["haproxy.cfg"]
    settings = named(docs, "ConfigMap", "anytime-config")["data"]
    agent_port = int(re.search(r"agent-port (\d+)", cfg).group(1))
    assert int(settings["ANYTIME_AGENT_PORT"]) == agent_port
    Settings(**{k.removeprefix("ANYTIME_").lower(): v for k, v in settings.items()})  # a real setting
    server = exact(docs, "Deployment", "anytime")  # the replicas (anytime-lb is the balancer)
    (container,) = server["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["agent"] == agent_port and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # server-template follows the headless Service's SRV records for the replicas' http port
    svc = named(docs, "Service", "anytime-replicas")
    assert svc["spec"]["clusterIP"] == "None"
    pod_labels = server["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    srv = re.search(r"server-template \w+ \d+ (\S+)", cfg).group(1)
    namespace = svc["metadata"]["namespace"]
    assert srv == f"_http._tcp.{svc['metadata']['name']}.{namespace}.svc.cluster.local"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": ports["http"], "agent": agent_port}


def test_clients_reach_haproxy_and_haproxy_mounts_its_config(docs):
    lb = exact(docs, "Deployment", "anytime-lb")
    pod = lb["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    config_map = named(docs, "ConfigMap", "haproxy-config")["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mount = [m for m in c["volumeMounts"] if volumes[m["name"]].get("configMap", {}).get("name") == config_map]
    assert mount and f"{mount[0]['mountPath']}/haproxy.cfg" in c["args"]
    svc = named(docs, "Service", "anytime-lb")
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    server_pods = exact(docs, "Deployment", "anytime")
    assert not svc["spec"]["selector"].items() <= server_pods["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http" and c["ports"][0] == {
        "name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert "bind :8080" in lines(named(docs, "ConfigMap", "haproxy-config")["data"]["haproxy.cfg"])
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
