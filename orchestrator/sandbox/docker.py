"""Docker sandbox: one fresh, locked-down container per candidate, always removed afterwards.

Each candidate runs `sandbox-image/runner.py` in its own container of the sandbox image
(`orchestrator.sandbox.image`): no network, read-only root filesystem, a size-capped tmpfs /tmp,
an unprivileged user (10001) with no capabilities and no-new-privileges, docker-init as PID 1, and
memory / swap / pids / CPU / file-size / open-file limits. Its only mounts are the job directory
(read-only, /job), the dataset's sandbox/ folder (read-only, /data: no test labels exist there)
and two fresh host files, /out/result.json and /out/predictions.npy, the only places on disk it
can write (each capped by the file-size limit, so a candidate cannot fill the host's disk); they
are read back with size caps and without following symlinks, then deleted. Never the Docker
socket, no host environment variables.

The host enforces a wall-clock timeout (the container is killed), the output cap (a log-reading
thread kills the container past `limits.output_bytes`) and reports OOM kills. Everything that
comes back is untrusted: `orchestrator/search/evaluation.py` validates result.json and
recomputes the accuracy from predictions.npy and the test labels, which no container ever sees.

Pre-warming (default): containers for the next candidates are started (`runner.py --wait`:
`import torch`, data loading) ahead of need by a pool (`pool.py`), so their start-up overlaps the
LLM's generation and the evaluations before them. `run()` takes the oldest, waits for its `READY`
line, writes candidate.py and then job.json (atomically) into its job directory, and counts the
timeout from there. Each container runs exactly one candidate.

Lifeline: the host stays attached to each container's stdin until it removes the container. If
the host process dies without cleaning up (SIGKILL, OOM killer), the engine closes that stdin and
the runner (`--lifeline`) exits at once, freeing memory and GPU; `remove_orphans`, called by the
next run, removes such containers and their host folders.

A container's slot, log pump, lifeline and removal are `orchestrator.sandbox.containers`'.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

import docker
import docker.errors
import docker.types
import requests

from orchestrator.sandbox.base import (
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
from orchestrator.sandbox.containers import LogPump, Registry, Slot, attach_lifeline, output_file
from orchestrator.sandbox.engine import SandboxUnavailable, check_engine, connect, device_requests
from orchestrator.sandbox.image import IMAGE, image_id
from orchestrator.sandbox.orphans import (
    FOLDER_PREFIXES,
    LABEL,
    LABEL_INSTANCE,
    OUTPUT_FILES,
    process_labels,
)
from orchestrator.sandbox.pool import PoolSize, Sizer, WarmPool
from orchestrator.store.files import read_capped

SANDBOX_USER = "10001:10001"
KILL_WAIT = 30.0  # seconds to wait for a killed container to stop
LOG_DRAIN = 10.0  # seconds to wait for the log reader after the container stopped
OOM_EVENT_WAIT = 5.0  # seconds a SIGKILLed container's late "oom" event is waited for
FSIZE_LIMIT = 256 << 20  # largest file the candidate may write: bounds its disk use
SHM_MAX = 1 << 30
# gVisor's own host threads (sentry, gofer, ptrace stubs: about 75 for an idle runner) count
# against the container's pids cgroup; they are added to `limits.pids` under runsc.
GVISOR_PIDS_EXTRA = 128


class _Fault(Exception):
    """An infrastructure fault during one run: becomes Execution.sandbox_error."""


class DockerSandbox(Sandbox):
    """Candidates in fresh Docker containers (see the module docstring).

    `limits.timeout` is read by each run(); the other limits when a container is created, which
    for the pre-warmed one is ahead of its run(). Not for concurrent use from several threads
    (run() holds a lock). The engine must share the host's filesystem (bind mounts of host temp
    directories): a local engine, not a remote DOCKER_HOST.
    """

    kind = "docker"

    def __init__(
        self,
        data_dir: Path,
        limits: Limits,
        device: str = "auto",
        gpus: str = "auto",
        runtime: str | None = None,
        image: str = IMAGE,
        pool: PoolSize | None = None,
        client: docker.DockerClient | None = None,
    ) -> None:
        super().__init__(Path(data_dir).resolve(), limits, device)
        self.client = client or connect()
        info = check_engine(self.client, gpus, runtime)
        self.gpus: str = info["resolved_gpus"]
        self.runtime = runtime
        self._runtime_name = runtime or info.get("DefaultRuntime") or "runc"
        self._gvisor = "runsc" in self._runtime_name or "gvisor" in self._runtime_name
        self.image = image
        if device == "cuda" and self.gpus == "none":
            raise SandboxUnavailable(
                "device cuda needs GPUs in the container: pass --gpus all (or a list such as "
                "0,1), or --device cpu."
            )
        # No GPU in the container: the runner need not probe CUDA.
        self._runner_device = "cpu" if (device == "auto" and self.gpus == "none") else device
        self._ncpu = int(info.get("NCPU") or os.cpu_count() or 1)
        self._instance = uuid.uuid4().hex[:12]
        self._creator = process_labels()
        self._registry = Registry(self.client, self._instance)
        self._finalizer = weakref.finalize(self, self._registry.cleanup)
        self._lock = threading.Lock()
        pool = pool or PoolSize()
        self._pool = None if pool.depth == 0 else WarmPool(
            lambda: self._new_slot(wait=True), self._registry.destroy, Sizer(pool),
            name="docker-sandbox-pool")

    # ------------------------------------------------------------------ public

    def run(self, code: str, job: dict) -> Execution:
        """Run one candidate in a fresh container; never raises for infrastructure faults
        (they come back as `sandbox_error`), except KeyboardInterrupt after cleaning up."""
        with self._lock:
            slot: Slot | None = None
            teardown_error: str | None = None
            info: dict = {"runtime": self._runtime_name, "prewarmed": self._pool is not None}
            try:
                slot = self._pool.take() if self._pool else self._new_slot(
                    wait=False, code=code, job=job)
                self._hand_over(slot, code, job)
                ex = self._supervise(slot)
                if slot.pump is not None and not slot.pump.ready.is_set() and self._pool:
                    ex = warmup_failure(ex)  # it ended before READY: no candidate code ran
            except _Fault as e:
                ex = Execution(exit_code=None, seconds=0.0, sandbox_error=str(e))
                if slot is not None and slot.pump is not None:
                    ex.log_tail = slot.pump.tail()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                ex = Execution(
                    exit_code=None, seconds=0.0,
                    sandbox_error=f"Docker API error while running the sandbox: {_short(e)}",
                )
            except OSError as e:
                ex = Execution(
                    exit_code=None, seconds=0.0,
                    sandbox_error=f"cannot hand the job to the sandbox: {_short(e)}",
                )
            finally:
                if slot is not None:
                    t = time.perf_counter()
                    try:
                        self._registry.destroy(slot)
                    except (docker.errors.DockerException, requests.RequestException) as e:
                        teardown_error = f"could not remove the sandbox container: {_short(e)}"
                    info.update(slot.timings, teardown_s=round(time.perf_counter() - t, 3))
                    if slot.container is not None:
                        info["container_id"] = slot.container.id
                    info["host_out_dir"] = str(slot.out_dir) if slot.out_dir else None
                    if self._pool:
                        self._pool.release()
            if teardown_error and ex.sandbox_error is None:
                ex.sandbox_error = teardown_error
            ex.info = {**info, **ex.info}
            return ex

    def describe(self) -> dict:
        try:
            iid = image_id(self.client, self.image)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            iid = None
        return {
            "kind": self.kind, "image": self.image, "image_id": iid,
            "runtime": self._runtime_name, "gpus": self.gpus,
        }

    def close(self) -> None:
        """Destroy the pre-warmed containers and anything else this sandbox still holds."""
        if self._pool is not None:
            self._pool.close()
        self._finalizer()  # runs _registry.cleanup once

    # ------------------------------------------------------------------ containers

    def _container_config(self, wait: bool) -> dict:
        lim = self.limits
        memory = parse_size(lim.memory)
        threads = max(1, int(lim.cpus)) if lim.cpus else self._ncpu
        command = ["--job", "/job", "--data", "/data", "--out", "/out", "--lifeline",
                   "--device", self._runner_device] + (["--wait"] if wait else [])
        log_max = max(4 * lim.output_bytes, 1 << 20)
        config = dict(
            image=self.image,
            command=command,
            labels={LABEL: "1", **self._creator, LABEL_INSTANCE: self._instance},
            hostname="sandbox",
            user=SANDBOX_USER,
            working_dir="/tmp",
            environment={
                "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
            },
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={parse_size(lim.tmpfs)},mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            init=True,
            ipc_mode="private",
            mem_limit=memory,
            memswap_limit=memory,
            pids_limit=lim.pids + (GVISOR_PIDS_EXTRA if self._gvisor else 0),
            shm_size=min(SHM_MAX, memory // 2),
            oom_score_adj=500,
            ulimits=[
                docker.types.Ulimit(name="nofile", soft=1024, hard=4096),
                docker.types.Ulimit(name="fsize", soft=FSIZE_LIMIT, hard=FSIZE_LIMIT),
            ],
            log_config=docker.types.LogConfig(
                type="json-file", config={"max-size": str(log_max), "max-file": "2"}
            ),
            # stdin is the runner's lifeline (`attach_lifeline`). With stdin_open, detach=False
            # makes docker-py set StdinOnce: the engine closes the container's stdin when our
            # attached socket closes. create() itself never waits for the container.
            stdin_open=True,
            detach=False,
        )
        if lim.cpus:
            config["nano_cpus"] = int(lim.cpus * 1e9)
        if self.runtime:
            config["runtime"] = self.runtime
        requests_ = device_requests(self.gpus)
        if requests_:
            config["device_requests"] = requests_
        return config

    def _new_slot(self, wait: bool, code: str | None = None, job: dict | None = None) -> Slot:
        """Create and start a container (job written first unless `wait`); errors in .error."""
        slot = Slot()
        if not self._registry.add(slot):
            slot.error = "the sandbox is closed"
            return slot
        try:
            if not self.data_dir.is_dir():
                raise _Fault(f"the data directory {self.data_dir} does not exist")
            slot.job_dir = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIXES[0]))
            slot.out_dir = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIXES[1]))
            os.chmod(slot.job_dir, 0o755)
            if not wait:
                write_job(slot.job_dir, code or "", job or {})
            config = self._container_config(wait)
            config["mounts"] = [
                docker.types.Mount("/job", str(slot.job_dir), type="bind", read_only=True),
                docker.types.Mount("/data", str(self.data_dir), type="bind", read_only=True),
                *(docker.types.Mount(f"/out/{name}", str(output_file(slot.out_dir / name)),
                                     type="bind", read_only=False) for name in OUTPUT_FILES),
            ]
            t = time.perf_counter()
            slot.container = self.client.containers.create(**config)
            slot.lifeline = attach_lifeline(slot.container)
            slot.timings["create_s"] = round(time.perf_counter() - t, 3)
            if self._registry.closed:  # close() ran meanwhile (e.g. at exit)
                self._registry.destroy(slot)
                raise _Fault("the sandbox is closed")
            t = time.perf_counter()
            slot.container.start()
            slot.started_at, slot.started_wall = time.perf_counter(), time.time()
            slot.timings["start_s"] = round(slot.started_at - t, 3)
            slot.pump = LogPump(slot.container, self.limits.output_bytes)
            slot.pump.start()
        except _Fault as e:
            slot.error = str(e)
        except docker.errors.ImageNotFound:
            slot.error = (
                f"the sandbox image {self.image} is missing: build it with "
                "`orchestrator sandbox build` (add --offline without registry access)."
            )
        except docker.errors.APIError as e:
            slot.error = f"Docker could not start the sandbox container: {_short(e)}"
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            slot.error = f"Docker API error while starting the sandbox: {_short(e)}"
        except OSError as e:
            slot.error = f"cannot prepare the sandbox directories: {e}"
        return slot

    def _hand_over(self, slot: Slot, code: str, job: dict) -> None:
        """Give a pre-warmed container its job once it is READY (a cold one has it already);
        the timeout counts from `slot.started_at`. A pre-warmed one that ended before READY
        gets no job: its output tells why. Raises _Fault on faults."""
        if slot.error:
            raise _Fault(slot.error)
        if self._pool is None:
            return
        assert slot.pump is not None and slot.job_dir is not None
        t = time.perf_counter()
        slot.pump.wake.wait(READY_TIMEOUT)
        waited = time.perf_counter() - t
        slot.timings["ready_wait_s"] = round(waited, 3)
        warmup = slot.pump.ready_at - slot.started_at if slot.pump.ready_at else None
        self._pool.observe(warmup, waited, slot.pump.footprint)
        slot.timings["pool_depth"] = self._pool.depth()
        if warmup is None:
            if not slot.pump.wake.is_set():  # neither READY nor ended
                raise _Fault(f"the pre-warmed sandbox did not become READY within "
                             f"{READY_TIMEOUT:.0f}s")
            return
        slot.timings["warmup_s"] = round(warmup, 3)
        write_job(slot.job_dir, code, job)
        slot.started_at = time.perf_counter()

    def _supervise(self, slot: Slot) -> Execution:
        """Wait for the container with the timeout; kill it past the timeout; read outputs."""
        container, pump = slot.container, slot.pump
        assert container is not None and pump is not None and slot.out_dir is not None
        deadline = slot.started_at + self.limits.timeout
        status: dict | None = None
        timed_out = False
        while status is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            try:
                status = container.wait(timeout=max(1, int(remaining + 0.999)))
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                container.reload()  # raises if the engine is gone; else check the deadline
                if container.status not in ("created", "running", "restarting", "paused"):
                    status = container.wait(timeout=KILL_WAIT)
        ended = time.perf_counter()
        if timed_out:
            with contextlib.suppress(docker.errors.APIError):
                container.kill()
            status = container.wait(timeout=KILL_WAIT)
        pump.join(LOG_DRAIN)
        container.reload()
        state = container.attrs.get("State", {})
        exit_code = status.get("StatusCode") if status else state.get("ExitCode")
        killed = None
        if pump.over_limit:
            killed = "output_limit"
        elif timed_out:
            killed = "timeout"
        elif state.get("OOMKilled") or (exit_code == 137 and self._late_oom(container, slot)):
            killed = "oom"
        return Execution(
            exit_code=exit_code,
            seconds=round(ended - slot.started_at, 3),
            log_tail=pump.tail(),
            # Empty: the runner did not get to write it (the files exist from the start).
            result_bytes=read_capped(slot.out_dir / "result.json", RESULT_MAX_BYTES) or None,
            predictions_bytes=read_capped(
                slot.out_dir / "predictions.npy", PREDICTIONS_MAX_BYTES) or None,
            killed=killed,
            info={"output_bytes": pump.total, "oom_killed": bool(state.get("OOMKilled"))},
        )

    def _late_oom(self, container, slot: Slot) -> bool:
        """Whether the engine logs an "oom" event for this SIGKILLed container within
        OOM_EVENT_WAIT. Docker sets State.OOMKilled when containerd's OOM event reaches it
        (moby daemon/monitor.go, ProcessEvent: EventOOM), and that event can come after the
        exit (EventExit) under load: seen 40 ms late under gVisor, so one inspect right after
        `wait()` called such a candidate a runtime error. The event log replays from `since`, so
        an event that came already is found at once; only a kill that was no OOM waits."""
        stream = self.client.events(
            since=int(slot.started_wall) - 1, until=int(time.time() + OOM_EVENT_WAIT) + 1,
            filters={"container": container.id, "event": "oom"}, decode=True)
        try:
            return next(iter(stream), None) is not None
        finally:
            stream.close()


def _short(e: BaseException) -> str:
    text = getattr(e, "explanation", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())[:300]
