"""GPU load as Prometheus gauges, read from NVML (the `gpu` extra's nvidia-ml-py) at scrape time.

`anytime_device_utilization{device}`: share of the last NVML sample period (1/6 s to 1 s,
by GPU) in which a kernel ran, 0..1. `anytime_device_memory_bytes{device,state}`: device
memory `used` and `free` (their sum is the total). Without NVML (no package, no driver, no GPU)
the collector is not registered, so the metrics are absent rather than 0; a device that fails
at scrape time is left out of that scrape. The scheduler does not read them: the latency model
sees contention on the device in every measured step (docs/architecture.md, "GPU load").
"""
from __future__ import annotations

import importlib
import logging

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("anytime.metrics")


class DeviceCollector(Collector):
    def __init__(self, nvml, handles: list):
        self.nvml, self.handles = nvml, handles

    def collect(self):
        util = GaugeMetricFamily("anytime_device_utilization",
                                 "Share of the last NVML sample period in which a kernel ran on the GPU (0..1)",
                                 labels=["device"])
        memory = GaugeMetricFamily("anytime_device_memory_bytes", "GPU memory by state (used, free)",
                                   labels=["device", "state"])
        for i, handle in enumerate(self.handles):
            try:
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # a device that fell off the bus must not break /metrics
                log.warning("NVML read failed for device %d", i, exc_info=True)
                continue
            util.add_metric([str(i)], rates.gpu / 100)
            memory.add_metric([str(i), "used"], float(info.used))
            memory.add_metric([str(i), "free"], float(info.free))
        yield util
        yield memory


def nvml_collector() -> DeviceCollector | None:
    """A collector over every GPU NVML sees (in a container: the GPUs it was given), or None
    when NVML is missing or sees no GPU."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception as e:  # ImportError, or NVMLError (library not found, no driver, ...)
        log.debug("no GPU metrics: %s", e)
        return None
    return DeviceCollector(nvml, handles) if handles else None
