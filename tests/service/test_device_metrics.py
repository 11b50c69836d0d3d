"""GPU load metrics from NVML (service/core/device_metrics.py), with a fake `pynvml` module in
place of nvidia-ml-py: present and correct when NVML sees GPUs, absent (not 0) without it."""
from __future__ import annotations

import os
import sys
import types
from collections import namedtuple

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.core.metrics import Metrics
from tests.utils.server import running_server

GiB = 1 << 30
Rates = namedtuple("Rates", "gpu memory")
Memory = namedtuple("Memory", "total free used")


class NVMLError(Exception):
    pass


def fake_nvml(devices: list[tuple[int, int, int]], init_error: bool = False, broken: set[int] = frozenset()):
    """A pynvml stand-in; devices: (utilization %, used bytes, total bytes) per GPU."""
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError

    def init():
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def read(handle, what):
        if handle in broken:
            raise NVMLError("GPU is lost")
        util, used, total = devices[handle]
        return Rates(util, 0) if what == "rates" else Memory(total, total - used, used)

    m.nvmlInit = init
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetUtilizationRates = lambda h: read(h, "rates")
    m.nvmlDeviceGetMemoryInfo = lambda h: read(h, "memory")
    return m


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def device_samples(text: str) -> dict:
    return {k: v for k, v in samples(text).items() if k[0].startswith("anytime_device_")}


def test_utilization_and_memory_per_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([(37, 3 * GiB, 16 * GiB), (100, 15 * GiB, 16 * GiB)]))
    got = device_samples(Metrics().exposition()[0].decode())
    assert got == {
        ("anytime_device_utilization", (("device", "0"),)): 0.37,
        ("anytime_device_utilization", (("device", "1"),)): 1.0,
        ("anytime_device_memory_bytes", (("device", "0"), ("state", "used"))): 3 * GiB,
        ("anytime_device_memory_bytes", (("device", "0"), ("state", "free"))): 13 * GiB,
        ("anytime_device_memory_bytes", (("device", "1"), ("state", "used"))): 15 * GiB,
        ("anytime_device_memory_bytes", (("device", "1"), ("state", "free"))): 1 * GiB,
    }


@pytest.mark.parametrize("nvml", [None, fake_nvml([], init_error=True), fake_nvml([])],
                         ids=["no-package", "no-driver", "no-gpu"])
def test_absent_without_nvml(monkeypatch, nvml):
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # None: `import pynvml` raises ImportError
    text = Metrics().exposition()[0].decode()
    assert "anytime_device_" not in text
    assert ("anytime_ready", ()) in samples(text)  # the rest of the registry is there


def test_a_device_failing_at_scrape_time_is_left_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([(10, GiB, 8 * GiB), (20, GiB, 8 * GiB)], broken={0}))
    got = device_samples(Metrics().exposition()[0].decode())
    assert {labels for _, labels in got} == {(("device", "1"),), (("device", "1"), ("state", "used")),
                                             (("device", "1"), ("state", "free"))}


def test_served_on_metrics_over_http(monkeypatch, tiny_model_dir):
    """The engine core's registry carries them to GET /metrics; each scrape reads NVML anew."""
    devices = [(55, 2 * GiB, 24 * GiB)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(devices))
    with running_server(model_dirs=str(tiny_model_dir), backend="onnx", max_batch=4) as (base, _):
        first = samples(httpx.get(base + "/metrics").text)
        devices[0] = (80, 5 * GiB, 24 * GiB)
        second = samples(httpx.get(base + "/metrics").text)
    assert first[("anytime_device_utilization", (("device", "0"),))] == 0.55
    assert second[("anytime_device_utilization", (("device", "0"),))] == 0.80
    assert second[("anytime_device_memory_bytes", (("device", "0"), ("state", "used")))] == 5 * GiB


@pytest.mark.skipif(os.environ.get("ANYTIME_EXPECT_DEVICE") != "cuda", reason="set by make gpu-check")
def test_real_nvml_reports_the_gpu():
    """Under `make gpu-check`: nvidia-ml-py and the driver give every GPU's two gauges."""
    got = device_samples(Metrics().exposition()[0].decode())
    util = {labels: v for (name, labels), v in got.items() if name == "anytime_device_utilization"}
    assert (("device", "0"),) in util and all(0 <= v <= 1 for v in util.values())
    assert got[("anytime_device_memory_bytes", (("device", "0"), ("state", "free")))] > 0
