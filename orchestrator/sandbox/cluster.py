"""Evaluations on a Ray cluster: each candidate is a Ray task that runs it in the sandbox of the
node it lands on (a fresh Docker container, or the local sandbox), never in Ray's own
`runtime_env` containers.

The search, the journal, the LLM roles and the test labels stay in the driver. What a task
needs of the dataset (the `sandbox/` folder: images and training labels only) goes into Ray's
object store once per fingerprint and is written to a node-local folder the first time a task
on that node needs it. The task returns the raw `Execution`; the driver scores it.

On the node, a worker keeps its sandbox between tasks, so pre-warming works per node (per
worker process). A Docker sandbox there is given the GPUs Ray assigned to the task by device
id: Ray's CUDA_VISIBLE_DEVICES reaches the worker, not the Docker daemon. Each sandbox first
removes the containers a dead driver left on its node.

A node that also runs one of the run's Ollama servers gets the GPU plan's budget for its
evaluations (`orchestrator/gpu/nodes.py`); the others the share of the GPU Ray gives a task.

Faults: a task that outlives the sandbox's own time limits is cancelled (force: its worker,
and with it the container's lifeline, dies) and the iteration is a `sandbox_error`; a task
lost with its node or worker returned nothing, so it is retried once, then a `sandbox_error`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.sandbox.base import READY_TIMEOUT, Execution, Limits, Sandbox

RAY_GRACE = 60.0  # seconds past the sandbox's own limits before the driver gives a task up
DATA_ROOT = "orchestrator-ray-data"  # node-local dataset copies, under the temp dir


class ClusterUnavailable(RuntimeError):
    """Ray cannot be used as asked; the message says how to fix it."""


@dataclass(frozen=True)
class NodeSpec:
    """How a node builds its sandbox: everything but the data and the GPUs."""

    kind: str  # "docker" or "local"
    limits: Limits
    device: str
    runtime: str | None = None
    warm_pool: int | None = None
    offline_build: bool = False


def connect(address: str | None) -> dict:
    """Join the cluster at `address` (default: RAY_ADDRESS, else a new local Ray); its
    resources."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterUnavailable("--executor ray needs Ray: pip install 'orchestrator[ray]'") \
            from exc
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace="orchestrator", log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterUnavailable(f"cannot join the Ray cluster at {address}: {exc}; start "
                                     "one with `ray start --head`, or leave --ray-address "
                                     "unset for a local Ray") from exc
    return ray.cluster_resources()


_DATA: dict[tuple[str, str], object] = {}  # (Ray session, fingerprint) -> ObjectRef of files
_DATA_LOCK = threading.Lock()


def share_data(sandbox_dir: Path, fingerprint: str) -> object:
    """The dataset's sandbox/ files in the object store, put once per fingerprint and Ray
    session."""
    import ray

    context = ray.get_runtime_context()  # a new Ray session has new node ids
    key = (f"{context.get_node_id()}/{context.get_job_id()}", fingerprint)
    with _DATA_LOCK:
        if key not in _DATA:
            files = {p.name: p.read_bytes() for p in sorted(Path(sandbox_dir).iterdir())
                     if p.is_file()}
            _DATA[key] = ray.put(files)
        return _DATA[key]


class RaySandbox(Sandbox):
    """One chain's evaluations as Ray tasks, one in flight at a time."""

    kind = "ray"

    def __init__(self, spec: NodeSpec, sandbox_dir: Path, fingerprint: str,
                 gpus_per_task: float, cpus_per_task: float,
                 budgets: dict[str, int] | None = None) -> None:
        """`budgets`: node id -> the GPU memory budget of an evaluation there, for the nodes
        the GPU plan covers (orchestrator/gpu/nodes.py)."""
        super().__init__(Path(sandbox_dir), spec.limits, spec.device)
        self.spec, self.fingerprint = spec, fingerprint
        self.gpus, self.cpus = gpus_per_task, cpus_per_task
        self.budgets = budgets or {}
        self.data = share_data(sandbox_dir, fingerprint)
        self.deadline = spec.limits.timeout + READY_TIMEOUT + RAY_GRACE

    def run(self, code: str, job: dict) -> Execution:
        import ray
        import ray.exceptions as rex

        lost = ""
        job = {**job, "gpu_budgets": self.budgets}
        for _attempt in range(2):
            ref = _task().options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0) \
                .remote(self.spec, [self.data], self.fingerprint, code, job)
            started = time.perf_counter()
            try:
                execution = ray.get(ref, timeout=self.deadline)
            except rex.GetTimeoutError:
                ray.cancel(ref, force=True)
                return Execution(None, self.deadline, sandbox_error=(
                    f"the Ray task outlived {self.deadline:.0f} s and was cancelled"))
            except rex.RayTaskError as exc:  # the node's sandbox itself failed
                return Execution(None, 0.0, sandbox_error=f"on its node: {exc.cause!r}"[:2000])
            except rex.RayError as exc:  # node or worker lost: nothing came back
                lost = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                continue
            # What Ray adds to the node's own sandbox time: scheduling, transfer, start-up.
            execution.info["ray_overhead_s"] = round(
                time.perf_counter() - started - execution.info["node_seconds"], 3)
            return execution
        return Execution(None, 0.0, sandbox_error=f"the Ray task was lost twice ({lost})")

    def describe(self) -> dict:
        return {"kind": self.kind, "node_sandbox": self.spec.kind, "gpus_per_task": self.gpus,
                "cpus_per_task": self.cpus}


# -- on the node -----------------------------------------------------------------------------
_BOXES: dict[tuple, Sandbox] = {}  # per worker process: its sandbox, kept warm between tasks


def _node_data(data: list, fingerprint: str) -> Path:
    """The dataset's sandbox/ folder on this node, written from the object store once."""
    import ray

    root = Path(tempfile.gettempdir()) / DATA_ROOT / fingerprint / "sandbox"
    if root.is_dir():
        return root
    stage = root.parent.with_name(f".{fingerprint}.{os.getpid()}.tmp")
    (stage / "sandbox").mkdir(parents=True, exist_ok=True)
    for name, blob in ray.get(data[0]).items():
        (stage / "sandbox" / name).write_bytes(blob)
    with contextlib.suppress(OSError):  # another worker may have won the race
        os.replace(stage, root.parent)
    return root


def _node_sandbox(spec: NodeSpec, data_dir: Path, gpu_ids: tuple[str, ...]) -> Sandbox:
    key = (repr(spec), str(data_dir), gpu_ids)
    if key not in _BOXES:
        from orchestrator.sandbox.pool import PoolSize

        pool = PoolSize(depth=spec.warm_pool, share=1.0)
        if spec.kind == "local":
            from orchestrator.sandbox.local import LocalSandbox

            _BOXES[key] = LocalSandbox(data_dir, spec.limits, spec.device, pool)
        else:
            from orchestrator.sandbox.docker import DockerSandbox
            from orchestrator.sandbox.engine import connect as docker_connect
            from orchestrator.sandbox.image import ensure_image
            from orchestrator.sandbox.orphans import remove_orphans

            client = docker_connect()
            remove_orphans(client)  # left on this node by a driver that was killed
            ensure_image(client, offline=spec.offline_build, progress=False)
            _BOXES[key] = DockerSandbox(data_dir, spec.limits, spec.device,
                                        gpus=",".join(gpu_ids) or "none", runtime=spec.runtime,
                                        pool=pool, client=client)
    return _BOXES[key]


def _evaluate_here(spec: NodeSpec, data: list, fingerprint: str, code: str,
                   job: dict) -> Execution:
    import ray

    started, clock = time.time(), time.perf_counter()
    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    budget = job.pop("gpu_budgets", {}).get(ray.get_runtime_context().get_node_id())
    if budget:  # a node the GPU plan covers: its budget instead of the task's share
        job = {**job, "gpu_memory_budget": budget, "gpu_memory_fraction": None}
    box = _node_sandbox(spec, _node_data(data, fingerprint), gpu_ids)
    run_started = time.perf_counter()
    execution = box.run(code, job)
    execution.info.update(node=ray.get_runtime_context().get_node_id(),
                          host=socket.gethostname(), gpu_ids=",".join(gpu_ids),
                          task_started=started, task_ended=time.time(),
                          node_seconds=round(time.perf_counter() - run_started, 3),
                          node_setup_s=round(run_started - clock, 3))
    return execution


@functools.cache
def _task():
    """The Ray task, made on first use: importing this module needs no Ray."""
    import ray

    return ray.remote(_evaluate_here)
