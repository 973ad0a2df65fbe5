"""Assembling a run from its settings: the config and journal, the dataset, the Ollama servers
and their models, the GPU plan, the sandboxes and the search chains. `orchestrator run` calls
`run_search`, `orchestrator retrain` calls `retrain`. Nothing here knows the command line: a
setting or setup the user can fix raises `UserError`, a run that stopped on a fault or Ctrl-C
raises `Stopped`."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from orchestrator import __version__
from orchestrator import outcomes as fc
from orchestrator.config import RunConfig, build, for_resume, plain_name
from orchestrator.data import datasets
from orchestrator.gpu.memory import candidates_gpu
from orchestrator.gpu.plan import Plan
from orchestrator.gpu.residency import Demand, PlanBroken, Tenancy, Watch, keep_alive_for
from orchestrator.llm.client import GenerationOptions, OllamaClient, takes_schema_format
from orchestrator.llm.servers import Servers
from orchestrator.sandbox.base import READY_TIMEOUT, Limits, Sandbox, parse_size
from orchestrator.sandbox.pool import PoolSize
from orchestrator.search.diagnosis import bounded_schema
from orchestrator.search.loop import InfrastructureDown, Search, run_chains
from orchestrator.search.progress import Reporter, busy
from orchestrator.search.prompts import (
    OUTCOME_CHARS,
    PromptBook,
    context_needs,
    diagnosis_chars,
    task_for,
)
from orchestrator.search.roles import CHAIN_SEED_STRIDE, Roles
from orchestrator.store.journal import Journal, JournalError

if TYPE_CHECKING:
    from orchestrator.search.novelty import NoveltyGate
    from orchestrator.store.run import Run

console = Console(stderr=True)


class UserError(Exception):
    """A setting or setup the user can fix: one line, before anything is journaled."""


class Stopped(Exception):
    """The search stopped before its end, every finished iteration saved: on a fault it could
    not go on through (`fault`), or on Ctrl-C (`fault` None)."""

    def __init__(self, name: str, saved: int, fault: str | None = None) -> None:
        super().__init__(fault or "interrupted")
        self.name, self.saved, self.fault = name, saved, fault


def sandbox_errors() -> tuple[type[Exception], ...]:
    """The sandbox and cluster setup errors (their modules load only when asked)."""
    from orchestrator.sandbox.cluster import ClusterUnavailable
    from orchestrator.sandbox.engine import SandboxUnavailable
    from orchestrator.sandbox.image import ImageBuildError

    return SandboxUnavailable, ImageBuildError, ClusterUnavailable


def run_search(settings: dict, cli: dict, resume: bool) -> dict:
    """Set up every part from the config, then run the chains; returns the summary.

    Every --ollama-host is checked at start (version, models, num_ctx). One that does not
    answer is an error naming it, not skipped: the user asked for it, a mistyped host should
    not silently cost throughput, and the models are checked (or pulled) on each server before
    the run relies on them. Once running, a server that goes down is failed over (Servers).
    The role models are loaded before any candidate starts, and the GPU they share with the
    candidates is planned (orchestrator/gpu/): a plan that cannot work stops here, before
    anything is journaled."""
    cfg, journal = _run_config(settings, cli, resume)
    _require_tracking(cfg)
    dataset = prepared_dataset(cfg)
    reporter = Reporter(cfg.iterations, console, chains=cfg.parallel)
    keep_alive = keep_alive_for(cfg.keep_alive, longest_gap(cfg))
    servers = Servers([OllamaClient(host, GenerationOptions(
        temperature=cfg.temperature, top_p=cfg.top_p, num_predict=cfg.num_predict,
        num_ctx=cfg.num_ctx, request_timeout=cfg.request_timeout, keep_alive=keep_alive,
        think_tokens=cfg.think_tokens), on_warning=reporter.warn) for host in cfg.hosts()],
        on_warning=reporter.warn)
    versions = {client.host: client.check_server() for client in servers.clients}
    ollama_version = min(versions.values(), key=takes_schema_format)  # an old one decides
    diagnosis_format = _diagnosis_format(ollama_version, cfg.num_predict, reporter)
    digests = _ensure_models(cfg, servers, reporter)
    think = _think_per_role(cfg, servers.clients)
    prompts = PromptBook(cfg.prompts_dir, cfg.edit_format)
    tenancy = _tenancy(cfg, dataset, servers)
    num_ctx = _num_ctx_start(cfg, dataset, prompts, journal, resume, tenancy,
                             bounded=diagnosis_format != "json",
                             thinking=_thinking_per_role(cfg, servers.clients, think))
    with contextlib.ExitStack() as stack:
        stack.callback(tenancy.release, num_ctx, cfg.keep_alive)  # after the run: as asked
        plan = _settle(tenancy, num_ctx, reporter)
        nodes = _ray_node_plans(cfg, tenancy, num_ctx, reporter) if cfg.executor == "ray" \
            else {}
        warm = plan.warm if plan.gpu else None
        budgets = {node: node_plan.budget for node, node_plan in nodes.items()}
        boxes = [stack.enter_context(box) for box in sandboxes(cfg, dataset, warm, budgets)]
        stored = {**cfg.to_dict(), "models": digests, "sandbox_info": boxes[0].describe(),
                  "dataset_fingerprint": dataset.fingerprint, "version": __version__,
                  "ollama_version": ollama_version, "num_ctx_per_model": num_ctx,
                  "keep_alive_sent": keep_alive, "gpu_plan": plan.to_dict(),
                  "python": platform.python_version()}
        if nodes:
            stored["gpu_plans_by_node"] = {node: p.to_dict() for node, p in nodes.items()}
        if len(servers.clients) > 1:
            stored["ollama_servers"] = versions
        if resume:
            journal.update_config({**journal.config(), **stored})
        else:
            journal.create(stored)
        records = journal.load()
        codes = read_codes(journal, records)
        reporter.note(f"run {cfg.name}: {journal.root}; {planned_text(cfg)}")
        novelty = novelty_gate(cfg.novelty_tau, records, codes)
        watch = Watch(tenancy, plan, reporter.warn)
        searches = [
            Search(cfg, journal, Roles(servers, cfg.generator_model, cfg.improver_model,
                                       cfg.seed + chain * CHAIN_SEED_STRIDE, digests,
                                       diagnosis_format, think, chain),
                   box, dataset, prompts, reporter, records, codes, novelty, chain, watch)
            for chain, box in enumerate(boxes)
        ]
        try:
            with _tracker(cfg, journal, stored, reporter):
                run_chains(searches)
        except KeyboardInterrupt:
            raise Stopped(cfg.name, journal.summary()["iterations"]) from None
        except (InfrastructureDown, PlanBroken, JournalError) as exc:
            raise Stopped(cfg.name, journal.summary()["iterations"], str(exc)) from None
    return journal.summary()


def planned_text(cfg: RunConfig) -> str:
    """What the run will evaluate, in the words of --iterations (per chain)."""
    if cfg.parallel == 1:
        return f"{cfg.iterations} iterations"
    return (f"{cfg.parallel} chains x {cfg.iterations} iterations each = "
            f"{cfg.parallel * cfg.iterations} evaluated designs")


def longest_gap(cfg: RunConfig) -> float:
    """The longest a role's model can wait between two calls of the run: an evaluation (every
    repeat, and a crowded-out candidate's second try, each with its sandbox's warm-up) and the
    other role's calls."""
    return (cfg.repeats + 1) * (cfg.timeout + READY_TIMEOUT) + 2 * cfg.request_timeout


def _tenancy(cfg: RunConfig, dataset: datasets.PreparedDataset, servers: Servers) -> Tenancy:
    """The role models on the servers and the GPU the candidates train on (none under Ray:
    its nodes' GPUs keep their share of each)."""
    spec = dataset.spec
    images = dataset.train_count + dataset.test_count
    data_bytes = images * math.prod(spec.input_shape) + 8 * dataset.train_count  # labels int64
    index = None if cfg.executor == "ray" else candidates_gpu(cfg.sandbox, cfg.gpus, cfg.device)
    demand = Demand(index, cfg.parallel, cfg.warm_pool, data_bytes, parse_size(cfg.min_gpu_budget))
    return Tenancy(servers.clients, [cfg.generator_model, cfg.improver_model], demand,
                   busy=lambda text: busy(console, text))


def _settle(tenancy: Tenancy, num_ctx: dict[str, int], reporter: Reporter) -> Plan:
    """Load the role models and state the GPU plan; one that cannot work is refused (the
    models it loaded are unloaded again, so that the next try finds the memory)."""
    plan = tenancy.settle(num_ctx)
    for line in plan.lines():
        reporter.note(line)
    refusal = plan.refusal()
    if refusal:
        tenancy.release(num_ctx, "0")
        raise UserError(refusal)
    return plan


def _ray_node_plans(cfg: RunConfig, tenancy: Tenancy, num_ctx: dict[str, int],
                    reporter: Reporter) -> dict[str, Plan]:
    """The GPU plans of the Ray nodes that also run one of the servers (node id -> plan); one
    that cannot work is refused, as on one machine."""
    from orchestrator.gpu.nodes import plan_ray_nodes
    from orchestrator.sandbox.cluster import connect

    gpus = _ray_gpus(cfg, connect(cfg.ray_address))
    plans = plan_ray_nodes(tenancy.clients, tenancy.roles, tenancy.demand, gpus, num_ctx,
                           tenancy.busy)
    for node, plan in plans.items():
        reporter.note(f"Ray node {node[:12]}, which runs an Ollama server:")
        for line in plan.lines():
            reporter.note(f"  {line}")
        refusal = plan.refusal()
        if refusal:
            tenancy.release(num_ctx, "0")
            raise UserError(f"on Ray node {node[:12]}: {refusal}")
    return plans


def _require_tracking(cfg: RunConfig) -> None:
    """--track mlflow without MLflow installed is a setup error, before anything starts."""
    if cfg.track:
        from orchestrator.store.tracking import TrackingUnavailable, require_mlflow

        try:
            require_mlflow()
        except TrackingUnavailable as exc:
            raise UserError(str(exc)) from None


def _tracker(cfg: RunConfig, journal: Journal, settings: dict,
             reporter: Reporter) -> contextlib.AbstractContextManager:
    """The MLflow mirror of the journal around the search (--track mlflow), else nothing."""
    if not cfg.track:
        return contextlib.nullcontext()
    from orchestrator.analysis.report import build_report
    from orchestrator.store.run import read_run
    from orchestrator.store.tracking import Tracker

    def report(out: Path) -> None:
        build_report([read_run(journal.root)], out_dir=out)

    return Tracker(journal, settings, cfg.tracking_uri, cfg.name or journal.root.name,
                   cfg.parallel, reporter.warn, report)


def _num_ctx_start(cfg: RunConfig, dataset: datasets.PreparedDataset, prompts: PromptBook,
                   journal: Journal, resume: bool, tenancy: Tenancy, bounded: bool,
                   thinking: dict[str, bool]) -> dict[str, int]:
    """Each model's num_ctx for the run, fixed on every server: the value a resumed run stored,
    else as much as the prompts can need (a thinking role's trace too) and the GPU plan
    affords (`Tenancy.fitted_num_ctx`); a configured num_ctx wins (set_num_ctx)."""
    stored = (journal.config().get("num_ctx_per_model") or {}) if resume else {}
    needs = context_needs(prompts, task_for(cfg, dataset), cfg, OUTCOME_CHARS,
                          diagnosis_chars(cfg.num_predict, bounded), thinking)
    fitted = {} if set(needs) <= set(stored) else tenancy.fitted_num_ctx(needs)
    sizes = {model: stored.get(model) or fitted[model] for model in needs}
    return [client.models.set_num_ctx(sizes) for client in tenancy.clients][0]


def _ensure_models(cfg: RunConfig, servers: Servers, reporter: Reporter) -> dict[str, str]:
    """Both models on every server (pulled where missing, unless --no-pull); model -> digest
    on the first server. A model whose digest differs between servers is warned about: the
    records name each call's server and its digest."""
    models = [cfg.generator_model, cfg.improver_model]
    for client in servers.clients:
        servers.digests[client.host] = client.models.ensure_models(models, pull=not cfg.no_pull)
    first, *others = servers.clients
    digests = servers.digests[first.host]
    for client in others:
        for model in models:
            if servers.digests[client.host][model] != digests[model]:
                reporter.warn(f"{model} differs between {first.host} and {client.host} "
                              "(another digest): pull the same version on every server for "
                              "comparable calls")
    return digests


def _think_per_role(cfg: RunConfig, clients: list[OllamaClient]) -> dict[str, bool | None]:
    """Each role's think option as sent, as set: true only where the model can think on every
    server (asking one that cannot is a setting error); false to any model, which every
    server accepts (server/routes.go, ChatHandler, refuses only true), so that no server's
    thinking model thinks by default."""
    think: dict[str, bool | None] = {}
    for role, model, wanted in (("generator", cfg.generator_model, cfg.generator_think),
                                ("improver", cfg.improver_model, cfg.improver_think)):
        if wanted and not all(client.models.thinks(model) for client in clients):
            raise UserError(f"{role}-think = true, but {model} cannot think (it is not a "
                            f"reasoning model); drop the setting or choose one that is")
        think[role] = wanted
    return think


def _thinking_per_role(cfg: RunConfig, clients: list[OllamaClient],
                       think: dict[str, bool | None]) -> dict[str, bool]:
    """Whether each role's model thinks with the think option sent (on any server: the num_ctx
    fixed for all of them must hold its trace)."""
    models = {"generator": cfg.generator_model, "improver": cfg.improver_model}
    return {role: any(client.models.will_think(model, think[role]) for client in clients)
            for role, model in models.items()}


def _diagnosis_format(version: str, num_predict: int, reporter: Reporter) -> dict | str:
    """The Improver's `format`: the diagnosis schema, or "json" for Ollama before 0.5."""
    if takes_schema_format(version):
        return bounded_schema(num_predict)
    reporter.warn(f"Ollama {version} predates structured outputs (0.5): the diagnosis is asked "
                  "as plain JSON; upgrade Ollama for schema-constrained replies")
    return "json"


def _run_config(settings: dict, cli: dict, resume: bool) -> tuple[RunConfig, Journal]:
    cfg, journal = _new_or_resumed(settings, cli, resume)
    if cfg.track:  # stored absolute: a resume from another folder finds the same mirror
        from orchestrator.store.tracking import resolve_uri

        cfg.tracking_uri = resolve_uri(cfg.tracking_uri)
    return cfg, journal


def _new_or_resumed(settings: dict, cli: dict, resume: bool) -> tuple[RunConfig, Journal]:
    if resume:
        name = cli.get("name") or settings.get("name")
        if not name:
            raise UserError("--resume needs --name of the run to continue")
        plain_name(name)
        journal = Journal(Path(cli.get("results_dir") or settings.get("results_dir")
                               or "results") / name)
        if not journal.exists:
            raise UserError(f"no run to resume at {journal.root}")
        cfg, ignored = for_resume(journal.config(), {**settings, **cli})
        if ignored:
            console.print(f"[yellow]note:[/] a resumed run keeps its settings; ignored: "
                          f"{', '.join(ignored)}")
        return cfg, journal
    cfg = build(settings, cli)
    cfg.name = cfg.name or f"{cfg.dataset}-{datetime.now():%Y%m%d-%H%M%S}"
    journal = Journal(Path(cfg.results_dir) / cfg.name)
    if journal.exists:
        raise UserError(f"run {cfg.name} already exists in {cfg.results_dir}: pass --resume "
                        "to continue it, or choose another --name")
    return cfg, journal


def prepared_dataset(cfg: RunConfig) -> datasets.PreparedDataset:
    return datasets.for_run(cfg.dataset, cfg.data_dir, cfg.train_samples, cfg.test_samples,
                            cfg.seed, cfg.select_on, cfg.val_fraction, console.print)


def read_codes(journal: Journal, records: list[dict]) -> dict[str, str]:
    """Every record's code by its file, read once for the chains' states and the novelty gate."""
    return {record["code_file"]: (journal.root / record["code_file"]).read_text()
            for record in records if record.get("code_file")}


def novelty_gate(tau: float, records: list[dict], codes: dict[str, str]) -> NoveltyGate:
    """The run-wide novelty index, holding every candidate evaluated successfully so far."""
    from orchestrator.search.novelty import NoveltyGate  # datasketch: only when running

    gate = NoveltyGate(tau)
    for record in records:
        if record["status"] == fc.OK:
            gate.add(record.get("chain", 0), record["iteration"], codes[record["code_file"]])
    return gate


def sandboxes(cfg: RunConfig, dataset: datasets.PreparedDataset,
               warm_gpu: int | None = None, budgets: dict[str, int] | None = None
               ) -> list[Sandbox]:
    """One sandbox per chain (each keeps its own pre-warmed candidate environment); `warm_gpu`
    is the GPU memory the GPU plan set aside for all chains' warm sandboxes, `budgets` the
    evaluations' GPU budgets on the Ray nodes it covers."""
    # Chains share the cores: oversubscribed OpenMP threads slow every candidate down.
    cpus = cfg.cpus or (max(1.0, (os.cpu_count() or 1) / cfg.parallel) if cfg.parallel > 1
                        else None)
    limits = Limits(timeout=cfg.timeout, memory=cfg.memory, cpus=cpus)
    pool = PoolSize(depth=cfg.warm_pool, share=1 / cfg.parallel,
                    gpu_bytes=None if warm_gpu is None else warm_gpu // cfg.parallel)
    if cfg.executor == "ray":
        return _ray_sandboxes(cfg, dataset, limits, budgets or {})
    if cfg.sandbox == "local":
        from orchestrator.sandbox.local import LocalSandbox

        return [LocalSandbox(dataset.sandbox_dir, limits, cfg.device, pool, gpus=cfg.gpus)
                for _ in range(cfg.parallel)]
    from orchestrator.sandbox.docker import DockerSandbox
    from orchestrator.sandbox.engine import check_engine, connect
    from orchestrator.sandbox.image import ensure_image
    from orchestrator.sandbox.orphans import remove_orphans

    client = connect()
    check_engine(client, gpus=cfg.gpus, runtime=cfg.runtime)
    removed = remove_orphans(client)  # left by a run that was killed with SIGKILL
    if removed:
        console.print(f"removed {removed} sandbox container(s) of a killed run")
    ensure_image(client, offline=cfg.offline_build)
    return [DockerSandbox(dataset.sandbox_dir, limits, cfg.device, gpus=cfg.gpus,
                          runtime=cfg.runtime, pool=pool, client=client)
            for _ in range(cfg.parallel)]


def _ray_sandboxes(cfg: RunConfig, dataset: datasets.PreparedDataset, limits: Limits,
                   budgets: dict[str, int]) -> list[Sandbox]:
    """One RaySandbox per chain; each node builds the configured sandbox for its tasks."""
    from orchestrator.sandbox.cluster import NodeSpec, RaySandbox, connect

    resources = connect(cfg.ray_address)
    gpus = _ray_gpus(cfg, resources)
    cpus = cfg.cpus or 1.0
    console.print(f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
                  f"{cpus:g} CPU and {gpus:g} GPU per evaluation", highlight=False)
    node_limits = Limits(timeout=limits.timeout, memory=limits.memory, cpus=cpus)
    spec = NodeSpec(cfg.sandbox, node_limits, cfg.device, cfg.runtime, cfg.warm_pool,
                    cfg.offline_build)
    return [RaySandbox(spec, dataset.sandbox_dir, dataset.fingerprint, gpus, cpus, budgets)
            for _ in range(cfg.parallel)]


def retrain(run: Run, top: int, epochs: int, seeds: int, timeout: float | None,
            say: Callable[[str], None]) -> str:
    """Train the `top` designs of `run` for `epochs` with `seeds` training seeds each, in a
    sandbox as the run had (resuming the finished trainings); the summary's text."""
    from orchestrator.search import retrain as rt

    cfg = rt.retrain_config(run, epochs, timeout)
    plan = rt.Plan(rt.top_designs(run, top), epochs, [cfg.seed + s for s in range(seeds)],
                   cfg.select_on, cfg.epochs)
    dataset = prepared_dataset(cfg)
    rt.check_dataset(run, dataset)
    out = rt.retrain_dir(run)
    say(f"retraining {len(plan.designs)} designs of {run.name} for {epochs} epochs, "
        f"{seeds} seed(s) each: {out}")
    with sandboxes(cfg, dataset)[0] as box:
        lines = rt.run_plan(plan, box, cfg, dataset, out / rt.JOURNAL_FILE, say,
                            lambda text: busy(console, text))
    return rt.write_summary(out, rt.summarize(plan, lines, run.name))


def _ray_gpus(cfg: RunConfig, resources: dict) -> float:
    """GPUs per evaluation: --ray-gpus, else 1 when the cluster has GPUs (and the candidates
    may use them)."""
    if cfg.ray_gpus is not None:
        return cfg.ray_gpus
    return 1.0 if resources.get("GPU", 0) >= 1 and cfg.device != "cpu" else 0.0




