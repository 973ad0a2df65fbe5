"""A stand-in for nvidia-ml-py's `pynvml`, for a machine without a GPU: the calls
`orchestrator/gpu/memory.py` makes, answered from the simulated GPUs in the JSON file named by
ORCHESTRATOR_TEST_GPUS (tests/fake_gpu.py). As the real module, it raises NVMLError where
NVML would fail (no file: no driver)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace


class NVMLError(Exception):
    """As pynvml.NVMLError."""


def _gpus() -> list[dict]:
    try:
        with open(os.environ["ORCHESTRATOR_TEST_GPUS"]) as f:
            return json.load(f)["gpus"]
    except (KeyError, OSError, ValueError) as exc:
        raise NVMLError(f"NVML Shared Library Not Found ({exc})") from None


def nvmlInit() -> None:  # noqa: N802 - NVML's names
    _gpus()


def nvmlShutdown() -> None:  # noqa: N802
    pass


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:  # noqa: N802
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:  # noqa: N802
    return _gpus()[handle]["name"]


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:  # noqa: N802
    gpu = _gpus()[handle]
    used = sum(gpu["held"].values())
    return SimpleNamespace(total=gpu["total"], free=gpu["total"] - used, used=used)
