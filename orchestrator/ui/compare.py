"""Runs side by side, the paper's Figure 2 and its ablations: their best-so-far lines, their
Table 2 (`orchestrator.analysis.report`, as `orchestrator report` prints it for several runs)
and the settings that differ between them."""

from __future__ import annotations

from orchestrator.analysis import report
from orchestrator.store.records import (
    accuracy_of,
    designs,
    iteration_of,
    ordered,
    record_chain,
    summarize,
)
from orchestrator.store.run import Run
from orchestrator.ui.data import Runs, run_url
from orchestrator.ui.settings import differing

MIN_RUNS, MAX_RUNS = 2, 8


class TooMany(ValueError):
    """Fewer than MIN_RUNS or more than MAX_RUNS distinct runs were asked for."""


def pick(runs: Runs, names: list[str]) -> list[tuple[str, Run]]:
    """The runs named (each once, in the order given); TooMany for too few or too many,
    KeyError for a name that is not a run's."""
    names = list(dict.fromkeys(names))
    if not MIN_RUNS <= len(names) <= MAX_RUNS:
        raise TooMany(f"compare {MIN_RUNS} to {MAX_RUNS} runs (/compare?run=A&run=B), "
                      f"not {len(names)}")
    return [(name, runs.get(name)) for name in names]


def compare_view(picked: list[tuple[str, Run]]) -> dict:
    """The page: Table 2 with one column per run, and the settings that differ."""
    names = [name for name, _ in picked]
    # Table 2 shows no per-window statistics: one window spares computing them (at 2,000
    # iterations, 50-iteration windows are half the cost of run_metrics)
    table = report.summary_table([report.run_metrics(run, window=max(1, len(run.records)))
                                  for _, run in picked], names)
    return {"runs": [{"name": name, "url": run_url(name)} for name in names],
            "table2": table, "settings": differing([run.config for _, run in picked])}


def compare_lines(picked: list[tuple[str, Run]]) -> dict:
    """The chart, as JSON: per run, each chain's best-so-far line and the chain that holds
    the run's best (its line is the run's; the others are shown on request)."""
    return {"runs": [{
        "name": name, "url": run_url(name),
        "best_chain": summarize(run.records)["best_chain"],
        "chains": best_lines(run.records),
    } for name, run in picked]}


def best_lines(records: list[dict]) -> list[dict]:
    """Per chain, its best accuracy so far as steps `{x: iteration, y}`, drawn on to the run's
    last iteration."""
    chains: dict[int, list[dict]] = {}
    for rec in ordered(designs(records)):
        line = chains.setdefault(record_chain(rec), [])
        acc = accuracy_of(rec)
        if acc is not None:
            line.append({"x": iteration_of(rec), "y": max(acc, line[-1]["y"]) if line else acc})
    last = max((iteration_of(r) for r in records), default=0)
    return [{"chain": c, "best": [*line, {"x": last, "y": line[-1]["y"]}] if line else []}
            for c, line in sorted(chains.items())]
