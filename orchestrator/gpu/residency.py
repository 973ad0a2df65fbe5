"""Keeping the role models resident beside the candidates: they are loaded with the run's
options before any candidate starts, the GPU plan is made from what the server then holds, and
the holding is watched while the run goes.

Ollama measures free GPU memory when it loads a model and never again (`server/sched.go`,
`updateFreeSpace`): a model that reloads while candidates hold memory is placed partly on the
CPU, and many times slower. So the models are loaded first, kept for longer than any gap
between two calls of the run (`keep_alive_for`), and a reload or a spill is a fault the run
stops on (`Watch`)."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from orchestrator.gpu.memory import GpuMemory, gpu_memory
from orchestrator.gpu.plan import (
    CUDA_CONTEXT_BYTES,
    MIB,
    Holding,
    ModelShape,
    Plan,
    fitted_num_ctx,
    headroom,
    kv_bytes_per_token,
    sandbox_footprint,
    size_text,
    warm_reservation,
)
from orchestrator.llm.client import LLMError, OllamaClient, full_model_name
from orchestrator.llm.models import Running

GROWTH_TOLERANCE = 256 * MIB  # a holding this much above the plan is a reload or a new model
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
Busy = Callable[[str], AbstractContextManager]


class PlanBroken(RuntimeError):
    """The GPU plan no longer holds during the run: the run stops (resumable)."""


@dataclass(frozen=True)
class Demand:
    """What the run asks of the candidates' GPU."""

    gpu_index: int | None  # NVML index of the candidates' GPU; None: none of this machine
    chains: int
    warm_pool: int | None  # warm sandboxes per chain as asked; None: sized automatically
    data_bytes: int  # one sandbox's data on the GPU
    floor: int  # min-gpu-budget


def duration_seconds(text: str) -> float:
    """A Go duration as Ollama reads keep_alive ("30m", "1h30m", "0"); negative: forever."""
    parts = re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)", text)
    seconds = sum(float(n) * UNITS[u] for n, u in parts)
    return -math.inf if text.strip().startswith("-") else seconds


def keep_alive_for(configured: str, longest_gap: float) -> str:
    """The keep_alive sent with every call: the configured one, raised to `longest_gap` seconds
    (the longest a model can wait between two calls of the run) so that Ollama never unloads
    a role's model mid-run; a negative one (forever) as it is."""
    seconds = duration_seconds(configured)
    if seconds < 0 or seconds >= longest_gap:
        return configured
    return f"{math.ceil(longest_gap)}s"


def is_local(host: str) -> bool:
    """Whether an Ollama server at `host` (a URL) runs on this machine, and so on its GPUs."""
    name = (urllib.parse.urlsplit(host).hostname or "").lower()
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name).is_loopback or name in own_addresses()
    return name == "localhost" or name in (socket.gethostname().lower(),
                                           socket.getfqdn().lower())


def own_addresses() -> set[str]:
    with contextlib.suppress(OSError):
        return set(socket.gethostbyname_ex(socket.gethostname())[2])
    return set()


def holding(running: Running, host: str, kv_per_token: int | None = None) -> Holding:
    return Holding(running.model, running.size, running.size_vram, running.context_length,
                   kv_per_token, host)


class Tenancy:
    """The role models on the run's servers and the candidates' GPU (see the module
    docstring); `read` is where GPU memory comes from (NVML)."""

    def __init__(self, clients: Sequence[OllamaClient], roles: Sequence[str], demand: Demand,
                 read: Callable[[], list[GpuMemory]] = gpu_memory,
                 busy: Busy = lambda text: contextlib.nullcontext(),
                 local: Sequence[OllamaClient] | None = None) -> None:
        """`local`: the servers on the machine whose GPU `read` reads (default: those on this
        machine)."""
        self.clients, self.demand, self.read, self.busy = list(clients), demand, read, busy
        self.roles = list(dict.fromkeys(full_model_name(m) for m in roles))
        self.local = list(local) if local is not None else [
            c for c in self.clients if is_local(c.host)]
        self.kv = {m: kv_bytes_per_token(self.clients[0].models.model_info(m))
                   for m in self.roles}
        self.gpus = self.read()
        self.gpu = self._gpu(self.gpus)

    def _gpu(self, gpus: list[GpuMemory]) -> GpuMemory | None:
        return next((g for g in gpus if g.index == self.demand.gpu_index), None)

    @property
    def warm(self) -> int:
        if self.gpu is None:
            return 0
        d = self.demand
        return warm_reservation(self.gpu.total, d.chains, d.warm_pool,
                                sandbox_footprint(d.data_bytes))

    def fitted_num_ctx(self, needs: dict[str, tuple[int, int]]) -> dict[str, int]:
        """Each model's num_ctx: as much as its prompts can need, less where the predicted KV
        cache of `chains` parallel slots would leave a candidate under the floor."""
        if self.gpu is None:
            return {model: most for model, (_, most) in needs.items()}
        weights = {m["name"]: m["size"] for m in self.clients[0].models.describe_models()}
        shapes = {m: ModelShape(m, weights.get(m, 0), self.kv.get(m)) for m in needs}
        d = self.demand
        ours = sum(h.size_vram for h in self.on_this_machine(self.holdings(self.clients))
                   if h.model in self.roles)
        room = (self.gpu.free + ours - headroom(self.gpu.total) - self.warm
                - d.chains * (CUDA_CONTEXT_BYTES + d.floor))
        return fitted_num_ctx(needs, shapes, room, slots=d.chains)

    def settle(self, num_ctx: dict[str, int]) -> Plan:
        """Load every role model on every server with its num_ctx (one that sits partly on
        the CPU is unloaded and loaded again first), then plan from what the servers hold and
        what the GPU has left."""
        loaded = []
        for client in self.clients:
            for model in self.roles:
                now = self.find(client, model)
                if now is not None and now.spilled:
                    client.models.unload(model)
                with self.busy(f"loading {model} into Ollama at {client.host} (num_ctx "
                               f"{num_ctx[model]})"):
                    client.models.load(model, num_ctx[model])
                after = self.find(client, model)
                if after is not None:
                    loaded.append(after)
        held = self.holdings(self.clients)
        missing = [h for h in loaded if not any((g.host, g.model) == (h.host, h.model)
                                                for g in held)]
        gpu = self._gpu(self.read())
        return Plan(self.gpu, gpu.free if gpu else 0, self.on_this_machine(held), self.roles,
                    self.demand.chains, self.warm, self.demand.floor, loaded, missing,
                    self.gpus)

    def release(self, num_ctx: dict[str, int], keep_alive: str) -> None:
        """Give the role models the configured keep_alive again ("0": unload them now), once
        the run ends or its plan is refused; a server that does not answer is left alone."""
        for client in self.clients:
            for model in self.roles:
                with contextlib.suppress(LLMError):
                    if duration_seconds(keep_alive) == 0:
                        client.models.unload(model)
                    elif self.find(client, model) is not None:
                        client.models.load(model, num_ctx[model], keep_alive)

    def find(self, client: OllamaClient, model: str) -> Holding | None:
        return next((h for h in self.holdings([client]) if h.model == model), None)

    def holdings(self, clients: Sequence[OllamaClient]) -> list[Holding]:
        """What the servers hold now, each model named with its server where there are
        several."""
        named = len(self.clients) > 1
        return [holding(r, client.host if named else "", self.kv.get(r.model))
                for client in clients for r in client.models.running()]

    def on_this_machine(self, held: list[Holding]) -> list[Holding]:
        """The holdings of the servers on this machine, the ones on its GPUs."""
        hosts = {c.host for c in self.local} if len(self.clients) > 1 else {""}
        return [h for h in held if h.host in hosts] if self.local else []


class Watch:
    """The plan during the run: what the servers hold is re-read before each evaluation. A
    role model that went partly to the CPU stops the run; a holding on this machine that grew
    past the plan (a reload, another model) shrinks the candidates' budget, or stops the run
    when it would fall below the floor."""

    def __init__(self, tenancy: Tenancy, plan: Plan, warn: Callable[[str], None]) -> None:
        self.tenancy, self.warn = tenancy, warn
        self._plan = plan
        self._lock = threading.Lock()

    @property
    def plan(self) -> Plan:
        with self._lock:
            return self._plan

    def budget(self) -> int | None:
        return self.plan.budget

    def check(self) -> None:
        """Raise PlanBroken when the plan no longer holds; re-plan when it can."""
        tenancy = self.tenancy
        try:
            everywhere = tenancy.holdings(tenancy.clients)
        except LLMError:
            return  # the server's own faults surface in its calls
        local = tenancy.on_this_machine(everywhere)
        for h in everywhere:
            if h.model in tenancy.roles and h.spilled:
                at = f" at {h.host}" if h.host else ""
                raise PlanBroken(
                    f"Ollama{at} moved part of {h.model} to the CPU (only "
                    f"{size_text(h.size_vram)} of {size_text(h.size)} on the GPU): it was "
                    "reloaded while the candidates held GPU memory, and generates many times "
                    "slower now")
        with self._lock:
            plan = self._plan
            grown = sum(h.size_vram for h in local) - plan.held_vram
            if grown <= GROWTH_TOLERANCE:
                return
            new = plan.after_growth(grown, local)
            if new.budget is not None and new.budget < new.floor:
                raise PlanBroken(
                    f"Ollama holds {size_text(grown)} more GPU memory than planned ("
                    f"{', '.join(h.model for h in local)}): each candidate would get "
                    f"{size_text(new.budget)}, less than min-gpu-budget {size_text(new.floor)}")
            self._plan = new
        if new.budget is not None:
            self.warn(f"Ollama holds {size_text(grown)} more GPU memory than planned ("
                      f"{', '.join(h.model for h in local)}): each candidate's budget is now "
                      f"{size_text(new.budget)}")
