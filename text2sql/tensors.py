"""Host-to-device transfers that do not stall the accelerator.

``torch.tensor(data, device="cuda")`` copies from pageable memory, which waits for the device's
queue to drain: a host sync hidden in every index tensor. Building on the CPU, pinning and copying
with ``non_blocking=True`` lets the copy overlap the work already queued. On the CPU this is a
plain ``torch.tensor``. ``has_bf16`` says where ``--amp`` can pay.
"""
from __future__ import annotations

import torch


def to_device(data, dtype, device) -> torch.Tensor:
    t = data if isinstance(data, torch.Tensor) else torch.tensor(data, dtype=dtype)
    device = torch.device(device)
    if device.type == "cpu":
        return t if t.dtype == dtype else t.to(dtype)
    if t.device.type == "cpu" and torch.cuda.is_available():
        t = t.pin_memory()
    return t.to(device=device, dtype=dtype, non_blocking=True)


def has_bf16(device: str) -> bool:
    """Whether --amp can be fast here: a GPU, or a CPU whose oneDNN has bf16 kernels (on other
    CPUs autocast emulates bf16 and is slower than float32)."""
    if str(device).startswith("cuda"):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
