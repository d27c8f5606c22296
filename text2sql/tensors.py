"""Host-to-device transfers that do not stall the accelerator.

``torch.tensor(data, device="cuda")`` copies from pageable memory, which waits for the device's
queue to drain: a host sync hidden in every index tensor. Building on the CPU, pinning and copying
with ``non_blocking=True`` lets the copy overlap the work already queued. On the CPU this is a
plain ``torch.tensor``. ``has_bf16`` says where ``--amp`` can pay; ``describe_machine`` names what
a run or a benchmark ran on, since the same VM comes on different hosts (an EPYC with AVX512-BF16,
a Xeon with AMX) whose speeds, and whose bf16-against-float32 ratios, differ.
"""
from __future__ import annotations

import os
import platform

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


def describe_machine() -> str:
    """One line: cores, CPU model, whether oneDNN has bf16 kernels, torch, threads, GPU."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    except OSError:
        pass
    # the kind of bf16 unit, for bf16 speed differs by far between them
    units = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "bf16 units"
    bf16 = f", {units}" if has_bf16("cpu") else ""
    desc = f"{os.cpu_count()} CPU cores ({cpu}{bf16}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    return desc + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU")
