"""The `orchestrator` command line."""

from __future__ import annotations

import inspect
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from orchestrator.analysis.format import pct
from orchestrator.assembly import Stopped, UserError, run_search, sandbox_errors
from orchestrator.config import EDIT_FORMATS, ConfigError, build, load_toml, plain_name
from orchestrator.data import datasets
from orchestrator.llm.client import LLMError, OllamaClient, full_model_name
from orchestrator.llm.text import printable
from orchestrator.store.run import CONFIG_FILE, ITERATIONS_FILE

app = typer.Typer(help="LLM-driven neural architecture search with feedback memory.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Prepare datasets into the local cache.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The Docker sandbox image.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(sandbox_app, name="sandbox")
console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(printable(message))}", highlight=False,
                  soft_wrap=True)
    return typer.Exit(code)


def command(group: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """`group.command`, its help the docstring's paragraphs flowing (typer would keep the
    docstring's line breaks in the list of commands)."""
    def register(function: Callable) -> Callable:
        paragraphs = inspect.cleandoc(function.__doc__ or "").split("\n\n")
        return group.command(name, help="\n\n".join(" ".join(p.split()) for p in paragraphs))(
            function)
    return register


Opt = typer.Option
RunsArg = Annotated[list[str], typer.Argument(help="Run directories or names.")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run directory or name.")]
ResultsDirOpt = Annotated[Path, Opt(help="Where run names are looked up.")]
DataDirOpt = Annotated[str | None, Opt(help="Dataset cache directory.")]
OllamaHostOpt = Annotated[str | None, Opt(envvar="OLLAMA_HOST", help="Ollama server URL.")]
EDIT_CORPUS_HELP = ("The corpus answers as whole files (whole), or, for a candidate with a "
                    "base (the code it edited, or the best before it), as the edit of that "
                    "base in search-replace or udiff form, after a prompt of that format.")


@command(app)
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


@command(data_app, "prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    source: Annotated[Path | None, Opt("--from", help="Folder with the original files.")] = None,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, Opt("--force", help="Rebuild an existing cache.")] = False,
) -> None:
    """Prepare NAME into the uint8 cache (download via torchvision, or --from DIR)."""
    try:
        prepared = datasets.prepare(name, data_dir, source, force=force)
    except datasets.DatasetError as exc:
        raise fail(str(exc)) from None
    console.print(f"{prepared.name}: {prepared.train_count} train, {prepared.test_count} test "
                  f"images in {prepared.root} (fingerprint {prepared.fingerprint})")


@command(sandbox_app, "build")
def sandbox_build(
    offline: Annotated[bool, Opt("--offline", help="Build the base from Debian, no registry.")]
    = False,
    rebuild: Annotated[bool, Opt("--rebuild", help="Rebuild even if up to date.")] = False,
) -> None:
    """Build the sandbox image (from a PyTorch CUDA image, or --offline)."""
    from orchestrator.sandbox.engine import SandboxUnavailable, connect
    from orchestrator.sandbox.image import ImageBuildError, ensure_image

    try:
        image_id = ensure_image(connect(), offline=offline, rebuild=rebuild)
    except (SandboxUnavailable, ImageBuildError) as exc:
        raise fail(str(exc)) from None
    console.print(f"sandbox image ready: {image_id}")


@command(app)
def report(
    runs: RunsArg,
    results_dir: ResultsDirOpt = Path("results"),
    window: Annotated[int, Opt(help="Iterations per statistics window.")] = 50,
    threshold: Annotated[float | None, Opt(help="Accuracy counted as good "
                                                "(default per dataset).")] = None,
    out_dir: Annotated[Path | None, Opt(help="Where to write the files "
                                            "(default: the first run).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Table 2 statistics, per-window statistics, plot, Markdown and HTML for runs; for a
    cycles directory, NNGPT's per-cycle table and plot."""
    from orchestrator.analysis.report import build_report
    from orchestrator.store.run import read_run

    if len(runs) == 1 and (Path(runs[0]) / "cycles.json").exists():
        _cycles_report(Path(runs[0]), threshold, out_dir, as_json)
        return
    try:
        loaded = [read_run(r, results_dir) for r in runs]
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None
    result = build_report(loaded, window=window, threshold=threshold, out_dir=out_dir)
    if as_json:
        print(orjson.dumps(result.metrics, option=orjson.OPT_INDENT_2).decode())
        return
    print(result.markdown)
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}", highlight=False)


def _cycles_report(root: Path, threshold: float | None, out_dir: Path | None,
                   as_json: bool) -> None:
    from orchestrator.analysis.cycles import write_cycles_report
    from orchestrator.finetune.cycles import CyclesError, report_rows

    try:
        rows = report_rows(root, threshold)
    except CyclesError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    markdown, files = write_cycles_report(rows, out_dir or root)
    print(markdown)
    console.print("\n".join(f"{kind}: {path}" for kind, path in files.items()), highlight=False)


@command(app)
def retrain(
    run_name: RunArg,
    top: Annotated[int, Opt(min=1, help="How many of the best distinct designs.")] = 10,
    epochs: Annotated[int, Opt(min=1, help="Training epochs of each.")] = 30,
    seeds: Annotated[int, Opt(min=1, help="Training seeds per design (run seed + 0, 1, ...).")]
    = 1,
    timeout: Annotated[float | None, Opt(help="Seconds per training (default: the run's "
                                              "timeout scaled by the epochs).")] = None,
    results_dir: ResultsDirOpt = Path("results"),
) -> None:
    """Train the top designs of a run for longer (resumable): converged test accuracy per
    design, and how well the one-epoch proxy ranked them."""
    from orchestrator.assembly import retrain as train_longer
    from orchestrator.search.retrain import RetrainError
    from orchestrator.store.run import read_run

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    again = f"orchestrator retrain {run_name} --top {top} --epochs {epochs} --seeds {seeds}" + (
        f" --timeout {timeout:g}" if timeout else "") + (
        f" --results-dir {results_dir}" if results_dir != Path("results") else "")
    try:
        text = train_longer(read_run(run_name, results_dir), top, epochs, seeds, timeout, say)
    except (RetrainError, ConfigError, datasets.DatasetError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except sandbox_errors() as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        say(f"\nstopped; the finished trainings are saved. Continue with: {again}")
        raise typer.Exit(130) from None
    print(text, end="")


@command(app)
def show(
    run_name: RunArg,
    iteration: Annotated[str, typer.Argument(help="Iteration number, or `best`.")],
    chain: Annotated[int | None, Opt(help="The chain, in a --parallel run (default: the "
                                          "first with that iteration).")] = None,
    results_dir: ResultsDirOpt = Path("results"),
) -> None:
    """One iteration: code, outcome, triple, suggestions and prompts."""
    from orchestrator.analysis.show import render_show
    from orchestrator.store.records import best_record, iteration_of, record_chain
    from orchestrator.store.run import read_run

    try:
        run = read_run(run_name, results_dir)
        if iteration == "best":
            best = best_record(run.records)
            if best is None:
                raise KeyError("no successful iteration yet")
            number, chain = iteration_of(best), record_chain(best)
        elif iteration.isdigit():
            number = int(iteration)
        else:
            raise fail(f"ITERATION is a number or `best`, not {iteration!r}")
        text = render_show(run, number, chain)
    except (FileNotFoundError, KeyError) as exc:
        raise fail(f"cannot show iteration {iteration} of {run_name}: {exc}") from None
    print(printable(text))


@command(app)
def export(
    runs: RunsArg,
    best: Annotated[Path | None, Opt(help="Write the best Net as a standalone module.")] = None,
    corpus: Annotated[Path | None, Opt(help="Write the prompt/code corpus (JSONL).")] = None,
    threshold: Annotated[float | None, Opt(help="Corpus accuracy threshold.")] = None,
    edit_format: Annotated[str, Opt(help=EDIT_CORPUS_HELP)] = "whole",
    results_dir: ResultsDirOpt = Path("results"),
) -> None:
    """Export the best architecture (--best) or a fine-tuning corpus (--corpus)."""
    from orchestrator.analysis.export import export_best
    from orchestrator.finetune.corpus import export_corpus
    from orchestrator.store.run import read_run

    if not best and not corpus:
        raise fail("say what to export: --best OUT.py and/or --corpus OUT.jsonl")
    if edit_format not in EDIT_FORMATS:
        raise fail(f"--edit-format {edit_format!r}: expected one of {', '.join(EDIT_FORMATS)}")
    try:
        loaded = [read_run(r, results_dir) for r in runs]
        if best:
            console.print(f"best Net: {export_best(loaded[0], best)}", highlight=False)
        if corpus:
            count = export_corpus(loaded, corpus, threshold=threshold, edit_format=edit_format)
            console.print(f"corpus: {count} examples in {corpus}", highlight=False)
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None


RankOpt = Annotated[int, Opt(help="LoRA rank.")]
AlphaOpt = Annotated[int, Opt(help="LoRA alpha.")]
EpochsOpt = Annotated[float, Opt("--epochs", help="Fine-tuning epochs over the corpus.")]
LrOpt = Annotated[float, Opt("--lr", help="Fine-tuning learning rate.")]
FourBitOpt = Annotated[bool, Opt("--load-in-4bit", help="QLoRA: load the base in 4 bits (GPU).")]
def _quantize(value: str | None) -> str | None:
    """Refuse at once a quantization Ollama would refuse only after the fine-tuning."""
    from orchestrator.finetune.publish import PublishError, check_quantize

    try:
        check_quantize(None if value is None or value == "none" else value)
    except PublishError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


QuantizeOpt = Annotated[str | None, Opt(
    help="Ollama quantization of the published model (q4_K_M, q4_K_S, q8_0, f16, f32; "
         "`none` keeps bf16).", callback=_quantize)]


@command(app)
def finetune(
    corpus: Annotated[Path, typer.Argument(help="Prompt-code corpus (JSONL, `messages`).")],
    base_model: Annotated[str, Opt(help="Hugging Face id or folder of the base model (the "
                                        "weights behind --base-tag).")],
    out: Annotated[Path, Opt(help="Where the checkpoints and the adapter go.")],
    tag: Annotated[str | None, Opt(help="Publish the merged model to Ollama as this tag.")]
    = None,
    base_tag: Annotated[str | None, Opt(help="Ollama model whose chat template and parameters "
                                             "the published one takes.")] = None,
    quantize: QuantizeOpt = "q4_K_M",
    ollama_host: OllamaHostOpt = None,
    rank: RankOpt = 32, alpha: AlphaOpt = 32, epochs: EpochsOpt = 5, lr: LrOpt = 1e-5,
    load_in_4bit: FourBitOpt = False,
) -> None:
    """LoRA fine-tune a base model on a corpus (resumes from --out), and optionally publish
    the merged model to Ollama."""
    from orchestrator.finetune.publish import merge, publish
    from orchestrator.finetune.train import FinetuneError, LoraSettings
    from orchestrator.finetune.train import finetune as train

    lora = LoraSettings(rank=rank, alpha=alpha, epochs=epochs, lr=lr, load_in_4bit=load_in_4bit)
    try:
        result = train(base_model, corpus, out, lora)
        console.print(f"adapter: {result.adapter_dir} (loss {result.train_loss:.4f}, "
                      f"{result.tokens_per_second:.0f} tokens/s)", highlight=False)
        if tag:
            merged = merge(base_model, result.adapter_dir, out / "merged")
            done = publish(ollama_host, merged, tag, base_tag,
                           quantize=None if quantize == "none" else quantize)
            console.print(f"published {tag} ({done.digest})", highlight=False)
    except (FinetuneError, LLMError, OSError) as exc:
        raise fail(str(exc)) from None


@command(app)
def cycles(
    name: Annotated[str, Opt(help="Cycles directory under --results-dir.")],
    config: Annotated[Path | None, Opt(help="TOML search settings of every cycle (as for "
                                             "`run`).")] = None,
    base_model: Annotated[str | None, Opt(help="Hugging Face id or folder of the base model "
                                               "behind --base-tag (with --resume: a "
                                               "correction, until a cycle fine-tunes).")]
    = None,
    base_tag: Annotated[str | None, Opt(help="Ollama model the first cycle generates with.")]
    = None,
    cycles_: Annotated[int, Opt("--cycles", help="Number of cycles.")] = 3,
    candidates: Annotated[int, Opt(help="Candidates generated per cycle.")] = 50,
    mode: Annotated[str, Opt(help="fixed (NNGPT's fixed prompt) or feedback (the "
                                  "feedback-memory search).")] = "fixed",
    threshold: Annotated[float | None, Opt(help="Accuracy to enter the corpus (default per "
                                                "dataset: CIFAR-10 0.40, CIFAR-100 0.20, "
                                                "SVHN 0.70).")] = None,
    tau: Annotated[float, Opt(help="Novelty: MinHash-Jaccard similarity below which a "
                                   "candidate is new.")] = 0.90,
    seed_corpus: Annotated[list[Path] | None, Opt(help="JSONL of prompt-code pairs to start "
                                                       "the corpus from.")] = None,
    from_run: Annotated[list[str] | None, Opt(help="Earlier run whose candidates start the "
                                                   "corpus.")] = None,
    tag_prefix: Annotated[str | None, Opt(help="Published tags are PREFIX:cN (default: the "
                                               "base tag's name + -nas).")] = None,
    quantize: QuantizeOpt = "q4_K_M",
    ollama_host: OllamaHostOpt = None,
    results_dir: Annotated[Path, Opt(help="Where the cycles directory goes.")] = Path("results"),
    delete_superseded: Annotated[bool, Opt("--delete-superseded", help="Delete cycle N-1's "
                                           "Ollama tag once cycle N has published.")] = False,
    edit_format: Annotated[str, Opt(help="whole, search-replace or udiff: what each cycle's "
                                         "search asks for (--edit-format of run) and "
                                         + EDIT_CORPUS_HELP[0].lower() + EDIT_CORPUS_HELP[1:])]
    = "whole",
    rank: RankOpt = 32, alpha: AlphaOpt = 32, epochs: EpochsOpt = 5, lr: LrOpt = 1e-5,
    load_in_4bit: FourBitOpt = False,
    resume: Annotated[bool, Opt("--resume", help="Continue the cycles --name.")] = False,
) -> None:
    """NNGPT fine-tuning cycles: search, admit good and novel candidates to the corpus, LoRA
    fine-tune, publish to Ollama, and search with the new model in the next cycle."""
    from orchestrator.finetune.corpus import CorpusError
    from orchestrator.finetune.cycles import Cycles, CyclesError, CycleSettings
    from orchestrator.finetune.train import FinetuneError, LoraSettings
    from orchestrator.store.run import read_run

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    try:
        root = results_dir / plain_name(name)
        if resume:
            cycles = Cycles.open(root, say)
            if base_model:
                cycles.rebase(base_model)
        else:
            if not (config and base_model and base_tag):
                raise UserError("new cycles need --config, --base-model and --base-tag")
            cfg = build(load_toml(config), {})
            settings = CycleSettings(
                name=name, base_model=base_model, base_tag=base_tag, cycles=cycles_,
                candidates=candidates, mode=mode, threshold=threshold, tau=tau,
                tag_prefix=tag_prefix, quantize=None if quantize == "none" else quantize,
                ollama_host=ollama_host or cfg.ollama_host, delete_superseded=delete_superseded,
                edit_format=edit_format,
                lora=LoraSettings(rank=rank, alpha=alpha, epochs=epochs, lr=lr,
                                  load_in_4bit=load_in_4bit))
            runs = [read_run(r, results_dir) for r in from_run or []]
            cycles = Cycles.create(root, settings, config, seed_corpus, runs, say)
        done = cycles.run()
    except (CyclesError, ConfigError, UserError, LLMError, FileNotFoundError,
            FinetuneError, CorpusError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        console.print(f"\nstopped; continue with: orchestrator cycles --name {name} --resume")
        raise typer.Exit(130) from None
    last = done[-1]
    console.print(f"done: {len(done)} cycles; corpus {last['corpus_size']}; the generator is "
                  f"now {last['tag']}", highlight=False)


@command(app)
def ui(
    results_dir: Annotated[Path, typer.Argument(help="Folder of runs to show.")] = Path("results"),
    host: Annotated[str, Opt(help="Address to listen on. Anything but loopback exposes every "
                                  "run's code, prompts and errors to that network.")]
    = "127.0.0.1",
    port: Annotated[int, Opt(help="Port to listen on.")] = 8765,
) -> None:
    """A live, read-only web view of the runs under RESULTS_DIR (the `ui` extra)."""
    from orchestrator import ui as web

    if absent := web.missing():
        raise fail(f"`orchestrator ui` needs {', '.join(absent)}: pip install 'orchestrator[ui]'")
    if not results_dir.is_dir():
        raise fail(f"no results folder at {results_dir}")
    if (results_dir / CONFIG_FILE).exists() or (results_dir / ITERATIONS_FILE).exists():
        raise fail(f"{results_dir} is a run folder; show the folder that holds it: "
                   f"orchestrator ui {results_dir.resolve().parent}")
    try:
        sock = web.bind(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", code=1) from None
    if host not in web.LOOPBACK:
        console.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach "
                      "it can read every run's code, prompts and errors", highlight=False)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"orchestrator ui: http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)",
                  highlight=False)
    web.serve(results_dir, sock, host)


models_app = typer.Typer(help="Models on the Ollama server.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models(
    ctx: typer.Context,
    ollama_host: Annotated[str | None, Opt(envvar="OLLAMA_HOST", help="Server URL.")] = None,
    config: Annotated[Path | None, Opt(help="TOML run config (marks its roles).")] = None,
) -> None:
    """List the server's models and mark the configured roles."""
    ctx.obj = ollama_host
    if ctx.invoked_subcommand:
        return
    try:
        cfg = build(load_toml(config) if config else {}, {})
        rows = OllamaClient(ollama_host).models.describe_models()
    except (ConfigError, LLMError) as exc:
        raise fail(str(exc)) from None
    roles = {cfg.generator_model: "generator", cfg.improver_model: "improver"}
    for row in rows:
        role = ", ".join(r for m, r in roles.items() if full_model_name(m) == row["name"])
        print(f"{row['name']:<40} {row['size'] / 1e9:6.1f} GB  {row['quantization']:<8} "
              f"{row['family']:<12} {role}")


@command(models_app, "pull")
def models_pull(ctx: typer.Context,
                name: Annotated[str, typer.Argument(help="Model to pull.")]) -> None:
    """Pull a model onto the server, with progress."""
    try:
        OllamaClient(ctx.obj).models.pull(name)
    except LLMError as exc:
        raise fail(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry for `python -m orchestrator`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
