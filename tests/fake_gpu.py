"""A simulated GPU's memory, for the machine that has none: a JSON file that the stand-in NVML
(`tests/stand_ins/pynvml.py`, put first on a process's PYTHONPATH) reads, and that the scripted
Ollama server writes what its loaded models hold into (`FakeOllama(gpu=...)`). Other tenants (a
desktop, another process) are holds of their own."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from orchestrator.gpu.memory import GpuMemory

STAND_INS = Path(__file__).resolve().parent / "stand_ins"
ENV = "ORCHESTRATOR_TEST_GPUS"  # the file the stand-in NVML reads
GIB = 1 << 30


class SimulatedGPU:
    """GPUs whose memory is held by named owners; GPU `index` is where holds go."""

    def __init__(self, path: Path, totals: list[int], names: list[str] | None = None,
                 index: int = 0) -> None:
        self.path, self.index = Path(path), index
        self._lock = threading.Lock()
        names = names or ["NVIDIA GeForce RTX 4090"] * len(totals)
        self._gpus = [{"name": n, "total": t, "held": {}} for n, t in zip(names, totals,
                                                                          strict=True)]
        self._write()

    def env(self) -> dict[str, str]:
        """What a process needs to see these GPUs through NVML."""
        path = os.pathsep.join(p for p in (str(STAND_INS), os.environ.get("PYTHONPATH")) if p)
        return {"PYTHONPATH": path, ENV: str(self.path)}

    def hold(self, owner: str, nbytes: int, index: int | None = None) -> None:
        with self._lock:
            self._gpus[self.index if index is None else index]["held"][owner] = int(nbytes)
            self._write()

    def release(self, owner: str, index: int | None = None) -> None:
        with self._lock:
            self._gpus[self.index if index is None else index]["held"].pop(owner, None)
            self._write()

    def free(self, index: int | None = None) -> int:
        with self._lock:
            gpu = self._gpus[self.index if index is None else index]
            return gpu["total"] - sum(gpu["held"].values())

    def read(self) -> list[GpuMemory]:
        """The GPUs as orchestrator.gpu.memory.gpu_memory() reports them."""
        with self._lock:
            return [GpuMemory(i, g["name"], g["total"], g["total"] - sum(g["held"].values()))
                    for i, g in enumerate(self._gpus)]

    def _write(self) -> None:
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps({"gpus": self._gpus}))
        os.replace(temp, self.path)
