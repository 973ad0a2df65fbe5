"""The GPUs' memory as NVML reports it: the one place the host reads it (never through torch,
which the host does not import)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    """One GPU as NVML numbers it (PCI bus order, as nvidia-smi and Docker's device ids)."""

    index: int
    name: str
    total: int  # bytes
    free: int  # bytes

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "total": self.total, "free": self.free}


def gpu_memory() -> list[GpuMemory]:
    """Every GPU NVML sees, with its total and free memory now; [] where there is no NVML (no
    NVIDIA driver: a CPU-only machine)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(GpuMemory(index, name, int(memory.total), int(memory.free)))
        return gpus
    except pynvml.NVMLError:
        return []
    finally:
        pynvml.nvmlShutdown()


def candidates_gpu(sandbox: str, gpus: str, device: str) -> int | None:
    """The NVML index of the GPU the candidates train on, or None when they train on the CPU.

    A runner takes the first GPU it sees: the first of the `--gpus` ids; with `--gpus auto` in
    the local sandbox, the first of the environment's CUDA_VISIBLE_DEVICES; else GPU 0. The
    local sandbox numbers GPUs in PCI bus order, as NVML and Docker do."""
    if device == "cpu" or gpus == "none":
        return None
    listed = os.environ.get("CUDA_VISIBLE_DEVICES") if sandbox == "local" and gpus == "auto" \
        else None if gpus in ("auto", "all") else gpus
    if listed is None:
        return 0
    first = listed.split(",")[0].strip()
    if first == "" or first.startswith("-"):
        return None  # CUDA_VISIBLE_DEVICES="" or -1 hides every GPU
    return int(first) if first.isdigit() else 0
