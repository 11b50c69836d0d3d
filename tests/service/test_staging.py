"""The TorchScript runtime's pinned staging (service/core/staging.py). Pinned memory needs a CUDA
build of torch, so here the pinned path runs with the CPU as its "device": torch.empty ignores
pin_memory and the stream is a recorder. What it checks is the logic CUDA relies on: values
round-trip, buffers are reused and grown per name, results are the caller's own, and the stream
is synchronized before a result is read. The real thing runs under `make gpu-check`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.staging import HostStaging, Transfers


@pytest.fixture
def staging(monkeypatch):
    events: list[str] = []
    real_empty = torch.empty

    def empty(*shape, dtype=None, pin_memory=False):
        assert pin_memory, "staging buffers must be pinned on CUDA"
        events.append("alloc")
        return real_empty(*shape, dtype=dtype)

    class Stream:
        def synchronize(self):
            events.append("sync")

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    s = HostStaging(torch, "cpu", Transfers())
    s.pinned = True  # the CUDA path, with host memory standing in for the device
    return s, events


def test_round_trip_reuses_and_grows_buffers(staging):
    s, events = staging
    a = s.to_device("tokens", np.arange(4, dtype=np.int64))
    assert a.tolist() == [0, 1, 2, 3] and events == ["alloc"]
    s.to_device("tokens", np.arange(3, dtype=np.int64))  # fits: the same buffer
    assert events == ["alloc"]
    b = s.to_device("tokens", np.arange(8, dtype=np.int64))  # larger: grown once
    assert b.tolist() == list(range(8)) and events == ["alloc", "alloc"]
    assert s.transfers.to_device == (4 + 3 + 8) * 8


def test_results_are_read_after_a_sync_and_belong_to_the_caller(staging):
    s, events = staging
    first = s.to_host("logits", torch.ones(2, 3))
    assert events[-1] == "sync"
    second = s.to_host("logits", torch.full((2, 3), 2.0))  # reuses the staging buffer
    np.testing.assert_array_equal(first, np.ones((2, 3), dtype=np.float32))  # not overwritten
    np.testing.assert_array_equal(second, np.full((2, 3), 2.0, dtype=np.float32))
    assert events.count("alloc") == 1 and first.dtype == np.float32
    assert s.transfers.to_host == 2 * 6 * 4


def test_on_the_cpu_nothing_is_copied_or_pinned():
    s = HostStaging(torch, "cpu", Transfers())
    assert not s.pinned
    array = np.arange(5, dtype=np.int64)
    tensor = s.to_device("tokens", array)
    assert tensor.data_ptr() == array.ctypes.data  # numpy's own memory
    out = torch.arange(6, dtype=torch.float32)
    assert s.to_host("logits", out).ctypes.data == out.data_ptr()
    assert s.transfers.to_device == 40 and s.transfers.to_host == 24
