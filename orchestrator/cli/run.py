"""`orchestrator run`: a search, new or resumed."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.analysis.format import pct
from orchestrator.assembly import Stopped, UserError, run_search, sandbox_errors
from orchestrator.cli.common import DataDirOpt, Opt, command, console, fail
from orchestrator.config import ConfigError, load_toml
from orchestrator.data import datasets
from orchestrator.llm.client import LLMError

commands = typer.Typer()


@command(commands)
def run(
    dataset: Annotated[str | None, Opt(help="cifar10, cifar100, svhn, mnist, fashionmnist, "
                                            "imagenette")] = None,
    iterations: Annotated[int | None, Opt(help="Iterations per chain (default 100): each "
                                               "chain ends with this many evaluated designs, "
                                               "so --parallel P evaluates P times as many; "
                                               "attempts lost to a server or sandbox fault "
                                               "are tried again.")] = None,
    generator_model: Annotated[str | None, Opt(help="Ollama model of the Code Generator.")] = None,
    improver_model: Annotated[str | None, Opt(help="Ollama model of the Prompt Improver.")] = None,
    ollama_host: Annotated[list[str] | None, Opt(
        envvar="OLLAMA_HOST", help="Ollama server URL; repeat it for several servers (the "
        "chains are spread over them, and move off a server that goes down).")] = None,
    sandbox: Annotated[str | None, Opt(help="docker (default) or local.")] = None,
    data_dir: DataDirOpt = None,
    results_dir: Annotated[str | None, Opt(help="Where runs are written.")] = None,
    name: Annotated[str | None, Opt(help="Run name (directory under results).")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue the stopped run --name.")] = False,
    seed: Annotated[int | None, Opt(help="Run seed (LLM seed = seed + call counter).")] = None,
    history_size: Annotated[int | None, Opt(help="Feedback memory window K.")] = None,
    timeout: Annotated[float | None, Opt(help="Seconds per candidate.")] = None,
    memory: Annotated[str | None, Opt(help="Memory limit per candidate, e.g. 8g.")] = None,
    cpus: Annotated[float | None, Opt(help="CPU quota per candidate (docker).")] = None,
    gpus: Annotated[str | None, Opt(help="all, none or device ids like 0,1, numbered as "
                                         "nvidia-smi does (docker; for the local sandbox, "
                                         "CUDA_VISIBLE_DEVICES).")] = None,
    runtime: Annotated[str | None, Opt(help="Docker runtime, e.g. runsc (gVisor).")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda.")] = None,
    precision: Annotated[str | None, Opt(help="fp32 (TF32 allowed) or bf16.")] = None,
    train_samples: Annotated[int | None, Opt(help="Seeded training subset size.")] = None,
    test_samples: Annotated[int | None, Opt(help="Seeded test subset size.")] = None,
    extended_prompt: Annotated[bool, Opt("--extended-prompt",
                                         help="Add top-k and recent attempts.")] = False,
    no_history: Annotated[bool, Opt("--no-history", help="Ablation: no memory.")] = False,
    no_reference: Annotated[bool, Opt("--no-reference", help="Ablation: no best code.")] = False,
    no_improver: Annotated[bool, Opt("--no-improver", help="Ablation: no improver.")] = False,
    no_pull: Annotated[bool, Opt("--no-pull", help="Fail if a model is missing.")] = False,
    parallel: Annotated[int | None, Opt(help="Independent search chains sharing the GPU.")]
    = None,
    warm_pool: Annotated[int | None, Opt(help="Warm sandboxes kept ready per chain (default: "
                                              "sized from measured times and memory; 0: off).")]
    = None,
    novelty: Annotated[str | None, Opt(help="record (default) or reject near-duplicates.")]
    = None,
    edit_format: Annotated[str | None, Opt(help="What the Code Generator writes: whole "
                                              "(default: complete files), or edits of the "
                                              "reference (of the last code after it failed): "
                                              "search-replace blocks or udiff hunks.")] = None,
    edit_match_threshold: Annotated[float | None, Opt(help="difflib similarity (whitespace "
                                                           "removed) an edit block's old text "
                                                           "needs where no exact or "
                                                           "whitespace-insensitive match is "
                                                           "found [0.95].")] = None,
    executor: Annotated[str | None, Opt(help="local (default) or ray: each evaluation a Ray "
                                             "task on a node of the cluster.")] = None,
    ray_address: Annotated[str | None, Opt(help="Ray cluster (default: RAY_ADDRESS, else a "
                                                "local Ray).")] = None,
    ray_gpus: Annotated[float | None, Opt(help="GPUs per evaluation under Ray (default: 1 if "
                                               "the cluster has GPUs, else 0).")] = None,
    select_on: Annotated[str | None, Opt(help="val (default: a held-out part of the training "
                                              "set selects; test accuracy steers nothing) or "
                                              "test (the paper's protocol).")] = None,
    val_fraction: Annotated[float | None, Opt(help="Validation share of the training set, "
                                                   "stratified and seeded [0.1].")] = None,
    repeats: Annotated[int | None, Opt(help="Evaluations per candidate with different "
                                            "training seeds (the proxy's seed noise) [1].")]
    = None,
    preset: Annotated[str | None, Opt(help="paper: every protocol value of the paper (under "
                                           "the TOML file and these flags).")] = None,
    max_params: Annotated[int | None, Opt(help="Parameter budget per candidate.")] = None,
    track: Annotated[str | None, Opt(help="mlflow: mirror the run into MLflow (the [mlflow] "
                                          "extra).")] = None,
    tracking_uri: Annotated[str | None, Opt(help="MLflow tracking URI or folder (default: "
                                                 "MLFLOW_TRACKING_URI, else ./mlruns).")]
    = None,
    config: Annotated[Path | None, Opt(help="TOML file with any of these settings.")] = None,
) -> None:
    """Run (or --resume) a search."""
    cli = {k: v for k, v in locals().items() if k not in ("resume", "config")}
    cli["ollama_host"] = (ollama_host[0] if len(ollama_host) == 1 else list(ollama_host)) \
        if ollama_host else None
    # SIGTERM unwinds like Ctrl-C does, so every sandbox (container) is removed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        settings = load_toml(config) if config else {}
        summary = run_search(settings, cli, resume)
    except (ConfigError, datasets.DatasetError, LLMError, UserError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except sandbox_errors() as exc:
        raise fail(str(exc)) from None
    except Stopped as stop:
        again = f"orchestrator run --name {stop.name} --resume"
        if stop.fault is None:  # Ctrl-C
            console.print(f"\nstopped; {stop.saved} iterations are saved. Continue with: {again}")
            raise typer.Exit(130) from None
        raise fail(f"stopped: {stop.fault}. {stop.saved} iterations are saved; fix the cause, "
                   f"then: {again}", code=3) from None
    lost = sum(summary["lost"].values())
    console.print(f"done: {summary['successful']}/{summary['iterations']} successful, "
                  f"best accuracy {pct(summary['best_accuracy'], 2)} "
                  f"(iteration {summary['best_iteration']})"
                  + (f"; {lost} attempts lost to faults were tried again" if lost else ""),
                  highlight=False)
