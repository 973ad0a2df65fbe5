"""Evaluations on Ray (`--executor ray`): real Ray (a local instance with logical GPUs, and
`ray.cluster_utils.Cluster` with several nodes), the real local sandbox on each node, the
scripted Ollama server and real training on small data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from orchestrator import outcomes as fc
from orchestrator.sandbox.base import Limits
from orchestrator.search.evaluation import score
from tests import replies
from tests.fake_ollama import Reply
from tests.helpers import eventually, parent, runners, tiny_job, waiting_for_its_job
from tests.test_search_e2e import DIAGNOSIS, by_role, orchestrator, read_records, run_args

ray = pytest.importorskip("ray", reason="NOT TESTED: the [ray] extra is not installed")
from ray.cluster_utils import Cluster  # noqa: E402

from orchestrator.sandbox.cluster import DATA_ROOT, NodeSpec, RaySandbox  # noqa: E402

pytestmark = pytest.mark.slow

SLOW_NET = replies.VALID_NET.replace(
    "super().__init__()", "super().__init__()\n        __import__('time').sleep({seconds})")


def spec(timeout: float = 120.0) -> NodeSpec:
    return NodeSpec("local", Limits(timeout=timeout, memory="2g"), "cpu", warm_pool=0)


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=4, num_gpus=2, namespace="orchestrator",
             log_to_driver=False)
    yield
    ray.shutdown()


def test_tasks_get_distinct_gpus_and_never_more_than_the_gpus_run_at_once(local_ray,
                                                                           tiny_cache):
    boxes = [RaySandbox(spec(), tiny_cache, "tiny", gpus_per_task=1, cpus_per_task=1)
             for _ in range(4)]  # four chains, two GPUs
    executions = []

    def chain(box: RaySandbox) -> None:
        for _ in range(2):
            executions.append(box.run(SLOW_NET.replace("{seconds}", "1"), tiny_job()))

    threads = [threading.Thread(target=chain, args=(b,)) for b in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    assert len(executions) == 8
    assert all(score(e, labels, 10).status == fc.OK for e in executions), \
        [e.sandbox_error or e.log_tail[-300:] for e in executions]
    # The node's copy of the data is the sandbox/ folder: the test labels never left the driver.
    copied = Path(tempfile.gettempdir()) / DATA_ROOT / "tiny" / "sandbox"
    assert sorted(p.name for p in copied.iterdir()) == sorted(
        p.name for p in tiny_cache.iterdir())
    assert not list(copied.parent.rglob("test_y*"))
    spans = [(e.info["task_started"], e.info["task_ended"], e.info["gpu_ids"])
             for e in executions]
    assert {gpu for *_, gpu in spans} == {"0", "1"}  # one GPU each, both used
    for start, _, _ in spans:  # whenever a task starts, the tasks running hold distinct GPUs
        running = [g for s, e, g in spans if s <= start < e]
        assert len(running) <= 2 and len(set(running)) == len(running), spans


def test_a_task_past_its_deadline_is_cancelled_as_a_sandbox_error(local_ray, tiny_cache):
    box = RaySandbox(spec(), tiny_cache, "tiny", gpus_per_task=0, cpus_per_task=1)
    deadline, box.deadline = box.deadline, 3.0  # far below the candidate's 600 s sleep
    execution = box.run(SLOW_NET.replace("{seconds}", "600"), tiny_job())
    assert execution.sandbox_error and "cancelled" in execution.sandbox_error
    box.deadline = deadline
    after = box.run(replies.VALID_NET, tiny_job())  # the chain goes on
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    assert score(after, labels, 10).status == fc.OK


KILLS_ITS_WORKER = SLOW_NET.replace("{seconds}", "0").replace("super().__init__()", """\
super().__init__()
        import os, signal
        open(MARKER, "a").write("attempt\\n")
        pid = os.getppid()
        while pid > 1:  # up to the Ray worker that runs this task, and kill it
            if b"ray::" in open(f"/proc/{pid}/cmdline", "rb").read():
                os.kill(pid, signal.SIGKILL)
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])""", 1)


def test_a_task_whose_worker_dies_twice_is_a_sandbox_error(local_ray, tiny_cache, tmp_path):
    """A task lost with its worker returns nothing: it is retried once, then the iteration
    is a sandbox_error that says so."""
    marker = tmp_path / "attempts"
    box = RaySandbox(spec(), tiny_cache, "tiny", gpus_per_task=0, cpus_per_task=1)
    execution = box.run(f"MARKER = {str(marker)!r}\n" + KILLS_ITS_WORKER, tiny_job())
    assert execution.sandbox_error.startswith("the Ray task was lost twice ("), \
        execution.sandbox_error
    assert marker.read_text() == "attempt\n" * 2


@pytest.fixture
def cluster():
    """A head that runs no evaluation, and two nodes with one CPU each."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def ancestors(pid: int) -> list[int]:
    """`pid` and its parents, from /proc (up to the first that is gone)."""
    chain = [pid]
    while pid > 1:
        try:
            pid = parent(pid)
        except (OSError, IndexError):
            break
        chain.append(pid)
    return chain


def test_a_node_lost_mid_evaluation_is_retried_on_another(cluster, tiny_cache, tmp_path):
    c, nodes = cluster
    ray.init(address=c.address, namespace="orchestrator", log_to_driver=False)
    marker = tmp_path / "started"
    code = SLOW_NET.replace("{seconds}", "3").replace(
        "super().__init__()",
        f"super().__init__()\n        open({str(marker)!r}, 'a').write(f'{{__import__(\"os\")"
        f".getpid()}}\\n')", 1)
    box = RaySandbox(spec(), tiny_cache, "tiny", gpus_per_task=0, cpus_per_task=1)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(box.run(code, tiny_job())))
    worker.start()
    while not (marker.read_text() if marker.exists() else "").endswith("\n"):
        assert worker.is_alive()  # the candidate has not started, or not written its pid yet
        worker.join(timeout=0.05)
    # Its node: the one whose raylet started the worker that runs it.
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in nodes}
    pid = int(marker.read_text().split()[0])
    victim = next(raylets[p] for p in ancestors(pid) if p in raylets)
    c.remove_node(victim, allow_graceful=False)
    worker.join(timeout=600)
    (execution,) = result
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    assert score(execution, labels, 10).status == fc.OK, execution.sandbox_error
    assert execution.info["node"] != victim.node_id


def test_a_search_spreads_over_the_nodes_and_resumes_after_kill_9(cluster, fake_ollama,
                                                                  fashion_data_dir, tmp_path):
    c, _ = cluster
    killed = threading.Event()
    driver: list = []
    generated = [replies.VALID_NET, replies.VALID_NET_WIDER] * 6

    def generate(body: dict) -> Reply:
        if len(generated) == 8 and not killed.is_set():  # the fifth request: kill the driver
            killed.set()
            driver[0].kill()
        return Reply(content=generated.pop(0))

    server = fake_ollama(default=by_role([generate] * 12, DIAGNOSIS * 2))
    args = [*run_args(server, fashion_data_dir, tmp_path, "ray", 3), "--parallel", "2",
            "--executor", "ray", "--ray-address", c.address, "--train-samples", "2000"]
    first = orchestrator(*args, scratch=tmp_path)
    driver.append(first)
    output, _ = first.communicate(timeout=900)
    assert killed.is_set() and first.returncode == -9, output

    resumed = orchestrator("--name", "ray", "--results-dir", str(tmp_path), "--resume",
                           "--ray-address", c.address, scratch=tmp_path)
    output, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, output
    records = read_records(tmp_path / "ray")
    for chain in (0, 1):
        mine = [r["iteration"] for r in records if r["chain"] == chain]
        assert mine == [1, 2, 3], records
    assert all(r["status"] == fc.OK for r in records), [r.get("error") for r in records]
    nodes = {r["metrics"]["node"] for r in records}
    assert len(nodes) == 2  # both nodes evaluated candidates
    config = json.loads((tmp_path / "ray" / "config.json").read_text())
    assert config["executor"] == "ray" and config["sandbox_info"]["kind"] == "ray"
    assert (tmp_path / "ray" / "best.py").read_text() != ""


@pytest.mark.docker
def test_the_docker_sandbox_runs_under_ray_and_leaves_no_container(local_ray, tiny_cache):
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        pytest.skip(f"NOT TESTED: Docker under Ray: no Docker engine reachable ({exc!r:.100})")
    from orchestrator.sandbox.image import ensure_image

    ensure_image(client, offline=True, progress=False)
    node = NodeSpec("docker", Limits(timeout=300, memory="2g", cpus=1), "cpu", warm_pool=0,
                    offline_build=True)
    box = RaySandbox(node, tiny_cache, "tiny-docker", gpus_per_task=0, cpus_per_task=1)
    label = {"label": "org.orchestrator.sandbox=1"}
    before = {c.id for c in client.containers.list(all=True, filters=label)}
    execution = box.run(replies.VALID_NET, tiny_job())
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    assert score(execution, labels, 10).status == fc.OK, (execution.sandbox_error,
                                                          execution.log_tail[-500:])
    assert execution.info["gpu_ids"] == ""  # no GPU asked, none given to the container
    # The candidate's container is gone (warm_pool=0: none is kept ready for the next one).
    assert {c.id for c in client.containers.list(all=True, filters=label)} <= before


def test_a_gpu_node_that_runs_the_ollama_server_is_planned_and_its_tasks_get_the_budget(
        fake_ollama, fashion_data_dir, tmp_path, monkeypatch):
    """The cluster's GPU node is this machine, where the (loopback) server runs: its GPU is
    planned from NVML read on the node (the simulated GPU, there too), and its evaluations get
    the plan's budget."""
    from tests.fake_gpu import SimulatedGPU

    gpu = SimulatedGPU(tmp_path / "gpus.json", [24 << 30])
    for name, value in gpu.env().items():  # the nodes' processes read NVML from it too
        monkeypatch.setenv(name, value)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    c.add_node(num_cpus=1, num_gpus=1)
    c.wait_for_nodes()
    try:
        server = fake_ollama(gpu=gpu, default=by_role([replies.VALID_NET] * 2, DIAGNOSIS))
        args = [*run_args(server, fashion_data_dir, tmp_path, "planned", 2), "--executor",
                "ray", "--ray-address", c.address, "--train-samples", "2000"]
        args[args.index("--device") + 1] = "auto"
        proc = orchestrator(*args, scratch=tmp_path, env=gpu.env())
        output, _ = proc.communicate(timeout=900)
    finally:
        ray.shutdown()
        c.shutdown()
    assert proc.returncode == 0, output
    config = json.loads((tmp_path / "planned" / "config.json").read_text())
    ((node, plan),) = config["gpu_plans_by_node"].items()
    assert plan["gpu"]["total"] == 24 << 30 and plan["chains"] == 1
    assert {h["model"] for h in plan["holdings"]} == {"coder:test", "improver:test"}
    records = read_records(tmp_path / "planned")
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert {r["metrics"]["node"] for r in records} == {node}
    assert [r["metrics"]["gpu_budget_bytes"] for r in records] == [plan["budget"]] * 2
    assert f"Ray node {node[:12]}, which runs an Ollama server:" in output


def test_nodes_without_a_server_of_the_run_keep_their_share(local_ray, fake_ollama):
    from orchestrator.gpu.nodes import plan_ray_nodes
    from orchestrator.gpu.residency import Demand
    from orchestrator.llm.client import OllamaClient

    demand = Demand(None, 2, None, 1 << 20, 2 << 30)
    elsewhere = OllamaClient("http://192.0.2.1:11434")  # TEST-NET-1: not a node of the cluster
    assert plan_ray_nodes([elsewhere], ["coder:test"], demand, 1.0, {}, None) == {}
    here = OllamaClient(fake_ollama().url)  # loopback: the driver's node, which has the GPUs
    assert plan_ray_nodes([here], ["coder:test"], demand, 0.0, {}, None) == {}  # no GPU asked


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def own_pids():
    """A command runner into a PID namespace of this test's own, where `ray stop --force` stops
    this test's Ray and nothing else on the machine; every process in it is killed afterwards."""
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("NOT TESTED: needs unshare and nsenter (util-linux)")
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                               "sleep", "infinity"])
    try:
        eventually(lambda: children(holder.pid) or holder.poll() is not None, 30,
                   "the namespace's first process starts")
        if holder.poll() is not None:
            pytest.skip("NOT TESTED: this host does not let the tests make a PID namespace")
        (init,) = children(holder.pid)

        def inside(*command: str, **popen: object) -> subprocess.Popen:
            return subprocess.Popen(["nsenter", "--target", str(init), "--pid", "--mount",
                                     *command], **popen)

        yield inside
    finally:
        holder.kill()  # its child, the namespace's init, takes every process in it along
        holder.wait()


def raylets() -> set[int]:
    """The raylet processes on this machine."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{entry}/comm").read_text().strip() == "raylet":
                found.add(int(entry))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lost_node_then_ray_stop_force_leave_no_warm_runner(own_pids, fake_ollama,
                                                              fashion_data_dir):
    """Two nodes started with `ray start` run a search. The second node's raylet is killed, then
    `ray stop --force` runs: no runner of the run is left polling for a job that never comes."""
    inside: Callable[..., subprocess.Popen] = own_pids
    scratch = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "TMPDIR": str(scratch), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    ray_cli, port = str(Path(sys.executable).with_name("ray")), free_port()

    def ray_start(*args: str) -> set[int]:
        """Start a node; its raylet."""
        before = raylets()
        assert inside(ray_cli, "start", "--num-cpus", "1", *args, env=env).wait() == 0
        return raylets() - before

    told = threading.Event()  # the LLM answers the chains' second requests only when done

    def hold(body: dict) -> Reply:
        told.wait(900)
        return Reply(content=replies.VALID_NET)

    server = fake_ollama(default=by_role([replies.VALID_NET] * 2 + [hold] * 2, DIAGNOSIS * 2))
    driver = None
    try:
        ray_start("--head", "--port", str(port), "--include-dashboard", "false")
        (second,) = ray_start("--address", f"127.0.0.1:{port}")
        driver = inside(sys.executable, "-m", "orchestrator", "run",
                        *run_args(server, fashion_data_dir, scratch, "lost", 2),
                        "--parallel", "2", "--executor", "ray", "--ray-address",
                        f"127.0.0.1:{port}", "--train-samples", "1000", env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        eventually(lambda: any(waiting_for_its_job(p) and second in ancestors(p)
                               for p in runners(scratch)), 600,
                   "a warm runner on the second node waits for its next job")
        os.kill(second, signal.SIGKILL)
        assert inside(ray_cli, "stop", "--force", env=env, stdout=subprocess.DEVNULL).wait() == 0
        eventually(lambda: not runners(scratch), 60, "every runner of the run is gone")
    finally:
        told.set()
        if driver is not None:
            driver.kill()
            driver.communicate()
        shutil.rmtree(scratch, ignore_errors=True)
