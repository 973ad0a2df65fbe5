"""The GPU plan under `--executor ray`: a node that also runs one of the run's Ollama servers is
planned as the workstation is, from NVML read on that node (a Ray task pinned to it) and what
its server holds; its evaluations get that plan's budget. Other nodes keep the share of the
GPU that Ray gives each task.

A node runs a server when its address is the server's (a loopback server runs on the driver's
node). The budget is for the node's first GPU, where Ollama puts a model that fits one GPU;
a task given another GPU of that node gets the same, smaller budget."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import replace

from orchestrator.gpu.memory import GpuMemory, gpu_memory
from orchestrator.gpu.plan import Plan
from orchestrator.gpu.residency import Busy, Demand, Tenancy
from orchestrator.llm.client import OllamaClient


def server_address(host: str, driver: str) -> str:
    """The IP address a server URL points at; a loopback one is on the driver's node."""
    name = urllib.parse.urlsplit(host).hostname or ""
    with contextlib.suppress(OSError):
        name = socket.gethostbyname(name)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(name).is_loopback:
            return driver
    return name


def read_on(node_id: str):
    """A `gpu_memory()` reading taken on the Ray node `node_id`."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(gpu_memory).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))

    def read() -> list[GpuMemory]:
        return ray.get(task.remote())

    return read


def plan_ray_nodes(clients: Sequence[OllamaClient], roles: Sequence[str], demand: Demand,
                   gpus_per_task: float, num_ctx: dict[str, int],
                   busy: Busy) -> dict[str, Plan]:
    """Node id -> the GPU plan of each live GPU node of the cluster that runs one of the
    servers; the tasks that can share its GPU are the chains, up to 1 / `gpus_per_task`."""
    import ray

    if not gpus_per_task:
        return {}  # the evaluations use no GPU
    driver = ray.util.get_node_ip_address()
    at = {client.host: server_address(client.host, driver) for client in clients}
    per_gpu = max(1, int(1 / gpus_per_task)) if gpus_per_task < 1 else 1
    plans = {}
    for node in ray.nodes():
        here = [c for c in clients if at[c.host] == node["NodeManagerAddress"]]
        if not (node["Alive"] and node["Resources"].get("GPU") and here):
            continue
        node_demand = replace(demand, gpu_index=0, chains=min(demand.chains, per_gpu))
        tenancy = Tenancy(here, roles, node_demand, read=read_on(node["NodeID"]), busy=busy,
                          local=here)
        plans[node["NodeID"]] = tenancy.settle(num_ctx)
    return plans
