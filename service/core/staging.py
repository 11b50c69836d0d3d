"""Small host <-> device copies of the TorchScript runtime (tokens, positions, logits, decoder
codes and samples), counted in a Transfers.

On CUDA they go through page-locked (pinned) host buffers, kept per name and grown as needed:
a copy from pinned memory is a DMA the GPU runs asynchronously (`non_blocking=True`), where one
from pageable memory is first staged by the driver and blocks. A result is read after one
synchronization of the stream, which also completes every earlier copy out of a staging buffer
before the next call overwrites it. On the CPU the tensors share numpy's memory: no copy at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Transfers:
    """Bytes handed between host memory and a runtime, counted where they cross its boundary
    (what a GPU runtime copies between host and device; on the CPU, what a copy would cost)."""
    to_device: int = 0
    to_host: int = 0

    def reset(self) -> None:
        self.to_device = self.to_host = 0

    @property
    def total(self) -> int:
        return self.to_device + self.to_host


class HostStaging:
    def __init__(self, torch, device: str, transfers):
        self.torch, self.device, self.transfers = torch, torch.device(device), transfers
        self.pinned = self.device.type == "cuda"
        self._buffers: dict[str, object] = {}

    def _buffer(self, name: str, shape, dtype):
        n = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.torch.empty(n, dtype=dtype, pin_memory=True)
            self._buffers[name] = buf
        return buf[:n].view(shape)

    def to_device(self, name: str, array: np.ndarray):
        """A device tensor with the array's contents (on the CPU: the array's own memory)."""
        self.transfers.to_device += array.nbytes
        host = self.torch.from_numpy(array)
        if not self.pinned:
            return host
        staged = self._buffer(name, host.shape, host.dtype)
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)

    def to_host(self, name: str, tensor) -> np.ndarray:
        """The tensor as float32 numpy, the caller's to keep; waits for the device."""
        tensor = tensor.float()
        self.transfers.to_host += tensor.numel() * 4
        if not self.pinned:
            return tensor.numpy()
        staged = self._buffer(name, tensor.shape, tensor.dtype)
        staged.copy_(tensor, non_blocking=True)
        self.torch.cuda.current_stream(self.device).synchronize()
        return staged.numpy().copy()
