"""The `local` sandbox: one supervised process group per candidate, on this machine.

It isolates less than Docker: the candidate runs as the user, so a determined candidate can
read the user's files. Limits: wall clock, resident memory (whole process tree), output size,
a minimal environment, and fresh temporary directories removed afterwards. Every process the
candidate starts is killed when it ends (see reaper.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from orchestrator.resources import RUNNER_PATH
from orchestrator.sandbox.base import (
    LOG_TAIL_CHARS,
    PREDICTIONS_MAX_BYTES,
    READY_TIMEOUT,
    RESULT_MAX_BYTES,
    Execution,
    Limits,
    Sandbox,
    parse_size,
    warmup_failure,
    write_job,
)
from orchestrator.sandbox.pool import Footprint, PoolSize, Sizer, WarmPool
from orchestrator.store.files import read_capped

REAPER_PATH = Path(__file__).with_name("reaper.py")
FOLDER_PREFIX = "orchestrator-local-"
OWNER_FILE = "host"  # the host process that made the folder: "pid starttime"
OWNERLESS_SECONDS = 60.0  # a folder whose OWNER_FILE is missing or unreadable this long is lost
KILL_GRACE_SECONDS = 10.0


class _Slot:
    """One started runner process (waiting for its job) and its private directories."""

    def __init__(self, data_dir: Path, limits: Limits, device: str, gpus: str = "auto",
                 scratch: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=scratch))
        (self.root / OWNER_FILE).write_text(process_id(os.getpid()) or "")
        self.job_dir, self.out_dir, home = (self.root / n for n in ("job", "out", "home"))
        for d in (self.job_dir, self.out_dir, home):
            d.mkdir()
        self.limits = limits
        self.status_file = self.root / "reaper.json"
        self.output = bytearray()
        self.output_bytes = 0
        self.over_limit = threading.Event()
        self.ready = threading.Event()  # set at READY, or when the process ended first
        self.ready_at: float | None = None
        self.footprint = Footprint()
        self.started_at = time.monotonic()
        command = [
            sys.executable, str(REAPER_PATH), str(self.status_file),
            str(parse_size(limits.memory)), str(os.getpid()), "--",
            sys.executable, "-I", str(RUNNER_PATH), "--job", str(self.job_dir),
            "--data", str(data_dir), "--out", str(self.out_dir), "--device", device, "--wait",
        ]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=_minimal_env(home, limits, gpus), cwd=self.root,
            start_new_session=True, preexec_fn=_rlimits(limits, device),
        )
        self.reader = threading.Thread(target=self._read_output, daemon=True)
        self.reader.start()

    def _read_output(self) -> None:
        """Keep a tail of stdout+stderr; past the byte cap, kill the sandbox."""
        for chunk in iter(lambda: self.proc.stdout.read1(1 << 16), b""):
            if not self.ready.is_set():
                self._scan_ready(bytes(self.output[-256:]) + chunk)
            self.output_bytes += len(chunk)
            self.output += chunk[-LOG_TAIL_CHARS:]
            del self.output[:-LOG_TAIL_CHARS]
            if self.output_bytes > self.limits.output_bytes and not self.over_limit.is_set():
                self.over_limit.set()
                threading.Thread(target=self.stop, daemon=True).start()
        self.ready.set()  # the process ended: nobody waits for READY any more

    def _scan_ready(self, data: bytes) -> None:
        """READY is the runner's own line, printed before any candidate code exists."""
        for line in data.split(b"\n")[:-1]:
            if line.startswith(b"READY"):
                self.ready_at = time.monotonic()
                self.footprint = Footprint.parse(line)
                self.ready.set()
                return

    @property
    def warmup(self) -> float | None:
        """Seconds from start to READY; None if it never got there."""
        return None if self.ready_at is None else self.ready_at - self.started_at

    def submit(self, code: str, job: dict) -> None:
        """Hand the candidate to the waiting runner; job.json last, atomically."""
        write_job(self.job_dir, code, job)

    def wait(self, timeout: float) -> str | None:
        """Wait for the runner; returns why the host killed it, if it did."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return "timeout"
        self.reader.join(timeout=KILL_GRACE_SECONDS)
        if self.over_limit.is_set():
            return "output_limit"
        return "oom" if self._reaper_status().get("oom") else None

    def stop(self) -> None:
        """Ask the reaper to kill everything; force it if it does not comply."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _reaper_status(self) -> dict:
        try:
            return orjson.loads(self.status_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}

    def collect(self, seconds: float, killed: str | None) -> Execution:
        status = self._reaper_status()
        return Execution(
            exit_code=status.get("exit_code", self.proc.returncode),
            seconds=seconds,
            log_tail=self.output.decode("utf-8", "replace")[-LOG_TAIL_CHARS:],
            result_bytes=read_capped(self.out_dir / "result.json", RESULT_MAX_BYTES),
            predictions_bytes=read_capped(self.out_dir / "predictions.npy", PREDICTIONS_MAX_BYTES),
            killed=killed,
        )

    def destroy(self) -> None:
        """Kill whatever is left of the process tree and remove the directories."""
        if self.proc.poll() is None:
            self.stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.stdout.close()
        remove_tree(self.root)


class LocalSandbox(Sandbox):
    """Runs each candidate in a fresh supervised process, taken from a pool of warm ones
    (`pool.py`) unless `pool` is PoolSize(depth=0)."""

    kind = "local"

    def __init__(self, data_dir: Path, limits: Limits, device: str = "auto",
                 pool: PoolSize | None = None, scratch: Path | None = None,
                 gpus: str = "auto") -> None:
        super().__init__(data_dir, limits, "cpu" if gpus == "none" else device)
        self.scratch = scratch  # where the per-candidate folders go (default: the temp dir)
        sweep_abandoned(scratch)
        self.gpus = gpus  # "auto" (the environment's CUDA_VISIBLE_DEVICES), "all", ids
        pool = pool or PoolSize()
        self._pool = None if pool.depth == 0 else WarmPool(
            self._slot, _Slot.destroy, Sizer(pool), name="local-sandbox-pool")

    def _slot(self) -> _Slot:
        return _Slot(self.data_dir, self.limits, self.device, self.gpus, self.scratch)

    def run(self, code: str, job: dict) -> Execution:
        slot: _Slot | None = None
        try:
            slot = self._pool.take() if self._pool else self._slot()
            waited = self._await_ready(slot)
            if slot.warmup is None:  # it ended before READY: no candidate code ran
                return warmup_failure(slot.collect(0.0, slot.wait(KILL_GRACE_SECONDS)))
            slot.submit(code, job)
            started = time.monotonic()
            killed = slot.wait(self.limits.timeout)
            execution = slot.collect(time.monotonic() - started, killed)
            execution.info.update(warmup_s=round(slot.warmup, 3), ready_wait_s=round(waited, 3),
                                  pool_depth=self._pool.depth() if self._pool else 0)
            return execution
        except Exception as exc:  # OSError, or a slot that could not start
            return Execution(None, 0.0, sandbox_error=f"local sandbox failed: {exc}")
        finally:
            if slot is not None:
                slot.destroy()
                if self._pool:
                    self._pool.release()

    def _await_ready(self, slot: _Slot) -> float:
        """Wait for the runner's READY (or its end); report the pool's measurements."""
        started = time.monotonic()
        if not slot.ready.wait(READY_TIMEOUT):
            raise OSError(f"the runner did not get ready within {READY_TIMEOUT:.0f}s")
        waited = time.monotonic() - started
        if self._pool:
            self._pool.observe(slot.warmup, waited, slot.footprint)
        return waited

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def _minimal_env(home: Path, limits: Limits, gpus: str = "auto") -> dict[str, str]:
    """No host secrets: only what Python and torch need. GPUs are numbered in PCI bus order,
    as NVML, nvidia-smi and Docker number them; `gpus` ids (or "none") set
    CUDA_VISIBLE_DEVICES, "all" clears it, "auto" keeps the environment's."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
        "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if limits.cpus:
        env["OMP_NUM_THREADS"] = str(max(1, int(limits.cpus)))
    for name in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    if gpus == "all":
        env.pop("CUDA_VISIBLE_DEVICES", None)
    elif gpus != "auto":
        env["CUDA_VISIBLE_DEVICES"] = "" if gpus == "none" else gpus
    return env


def _rlimits(limits: Limits, device: str):
    """Kernel limits set in the child before exec: file size always, data size on CPU.

    RLIMIT_DATA would break CUDA's large address-space reservations, so on a GPU the
    reaper's resident-memory watch is the memory limit.
    """
    memory = parse_size(limits.memory)

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 30, 2 << 30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if device == "cpu" or (device == "auto" and not os.path.exists("/dev/nvidiactl")):
            resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    return apply


def process_id(pid: int) -> str | None:
    """A live process's pid with its start time (a pid can be reused), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"  # field 22: starttime


def sweep_abandoned(scratch: Path | None) -> None:
    """Remove the sandbox folders whose host process is gone. Their reaper removes them when
    the host dies, but not when it dies with it (SIGKILLed together, as when a node goes), nor
    when the host died between making a folder and starting its reaper."""
    for root in Path(scratch or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        with contextlib.suppress(OSError):  # another user's, or removed meanwhile
            if _abandoned(root):
                remove_tree(root)


def _abandoned(root: Path) -> bool:
    try:
        owner = (root / OWNER_FILE).read_text()
        pid = int(owner.split()[0])
    except (FileNotFoundError, ValueError, IndexError):  # being written, or its host died first
        return time.time() - root.stat().st_mtime > OWNERLESS_SECONDS
    return process_id(pid) != owner


def remove_tree(root: Path) -> None:
    """Remove a directory tree the candidate may have made read-only."""
    with contextlib.suppress(OSError):
        os.chmod(root, 0o700)
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
    shutil.rmtree(root, ignore_errors=True)
