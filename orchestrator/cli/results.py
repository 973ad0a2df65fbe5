"""The commands that read runs: `report`, `retrain` (the proxy checked), `show`, `export`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from orchestrator.assembly import sandbox_errors
from orchestrator.cli.common import (
    EDIT_CORPUS_HELP,
    Opt,
    ResultsDirOpt,
    RunArg,
    RunsArg,
    command,
    console,
    fail,
)
from orchestrator.config import EDIT_FORMATS, ConfigError
from orchestrator.data import datasets
from orchestrator.llm.text import printable

commands = typer.Typer()


@command(commands)
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


@command(commands)
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


@command(commands)
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


@command(commands)
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
