"""The sandbox interface the search loop uses; implementations live beside it."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from orchestrator.store.files import write_atomic

# What the host reads back from a sandbox's output directory, at most.
RESULT_MAX_BYTES = 1 << 20
PREDICTIONS_MAX_BYTES = 64 << 20
LOG_TAIL_CHARS = 4000
READY_TIMEOUT = 300.0  # seconds a sandbox may take to warm up (print READY)


@dataclass
class Limits:
    timeout: float = 1800.0  # wall-clock seconds per candidate, start-up included
    memory: str = "8g"  # host memory (docker-style size string)
    output_bytes: int = 4 << 20  # stdout+stderr cap; beyond it the sandbox is killed
    cpus: float | None = None  # CPU quota (docker); None: no quota
    pids: int = 512
    tmpfs: str = "1g"


@dataclass
class Execution:
    """Raw, untrusted result of running one candidate.

    `killed` is set when the host ended the sandbox: "timeout", "oom" or "output_limit".
    `sandbox_error` is set for infrastructure faults that are not the candidate's doing.
    """

    exit_code: int | None
    seconds: float
    log_tail: str = ""
    result_bytes: bytes | None = None
    predictions_bytes: bytes | None = None
    killed: str | None = None
    sandbox_error: str | None = None
    info: dict = field(default_factory=dict)  # e.g. image id, runtime, overhead timings


class Sandbox(abc.ABC):
    """Runs each candidate in a fresh, confined environment, destroyed afterwards."""

    kind: str = "abstract"

    def __init__(self, data_dir: Path, limits: Limits, device: str = "auto") -> None:
        self.data_dir = Path(data_dir).resolve()  # a cache's sandbox/ folder: no test labels
        self.limits = limits
        self.device = device

    @abc.abstractmethod
    def run(self, code: str, job: dict) -> Execution:
        """Run `code` (candidate.py) with `job` (job.json contents) and return its output."""

    def describe(self) -> dict:
        """What the journal records about this sandbox."""
        return {"kind": self.kind}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release anything kept between candidates (e.g. a pre-warmed sandbox)."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def warmup_failure(execution: Execution) -> Execution:
    """`execution` of a runner that ended before READY, as the sandbox fault it is: no job had
    been handed over, so no candidate code ran. A result.json the runner wrote names the phase."""
    last = execution.log_tail.strip().splitlines()[-1:] or ["no output"]
    execution.sandbox_error = (f"the sandbox ended while warming up (exit code "
                               f"{execution.exit_code}); last output: {last[0][:300]}")
    return execution


def write_job(job_dir: Path, code: str, job: dict) -> None:
    """candidate.py first, then job.json (the runner's go signal), each written then renamed;
    world-readable, for a runner that may run as another user."""
    write_atomic(job_dir / "candidate.py", code.encode(), mode=0o644)
    write_atomic(job_dir / "job.json", orjson.dumps(job), mode=0o644)


def parse_size(text: str | int) -> int:
    """'8g' / '512m' / '1024' -> bytes."""
    if isinstance(text, int):
        return text
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = text.strip().lower().removesuffix("b")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)
