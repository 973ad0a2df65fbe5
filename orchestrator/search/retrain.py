"""`orchestrator retrain`: train the top designs of a run for longer, to see whether the
one-epoch proxy ranks them as full training does.

The designs are the run's successes ranked by the selection metric (`accuracy`), one per
distinct code (its sha256), the best K. Each is trained for E epochs with the run's protocol
(dataset subset, split, optimiser, augmentation, sandbox) and S training seeds (run seed + s).
Every evaluation is one fsynced line of results/<run>/retrain/retrain.jsonl; a rerun of the
same command skips what is done, so a killed retrain continues where it stopped. Infrastructure
faults (`sandbox_error`) are journaled but not done: a rerun tries them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from orchestrator import outcomes as fc
from orchestrator.analysis.format import num, pct, pval
from orchestrator.config import RunConfig, for_resume
from orchestrator.data.datasets import PreparedDataset
from orchestrator.sandbox.base import Sandbox
from orchestrator.search.evaluation import Outcome, evaluate, job_for
from orchestrator.store.files import append_line, cut_torn_tail, write_atomic
from orchestrator.store.records import (
    accuracy_of,
    correlations,
    iteration_of,
    number,
    record_chain,
    test_accuracy_of,
)
from orchestrator.store.run import Run, read_records

RETRAIN_DIR = "retrain"
JOURNAL_FILE = "retrain.jsonl"
SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "retrain.md"
KEY_CHARS = 16


class RetrainError(Exception):
    """Nothing to retrain, or a run that cannot be retrained as it was run."""


@dataclass(frozen=True)
class Design:
    """One distinct successful design of the run: its best-ranked record and its code."""

    rank: int
    key: str  # sha256 of the code, first 16 hex digits
    record: dict
    code: str

    @property
    def iteration(self) -> int:
        return iteration_of(self.record)

    @property
    def chain(self) -> int:
        return record_chain(self.record)


@dataclass(frozen=True)
class Plan:
    """What to train: the designs, the schedule and the training seeds."""

    designs: list[Design]
    epochs: int
    seeds: list[int]
    metric: str  # the run's selection metric: "val" or "test"
    proxy_epochs: int  # the run's own schedule

    def evaluations(self) -> list[tuple[Design, int]]:
        return [(d, s) for d in self.designs for s in self.seeds]


def code_key(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()[:KEY_CHARS]


def top_designs(run: Run, k: int) -> list[Design]:
    """The run's successes by `accuracy` descending (ties: commit order), one per distinct
    code (the best-ranked kept), the first `k`."""
    ranked = sorted((r for r in run.records if accuracy_of(r) is not None),
                    key=lambda r: -accuracy_of(r))  # stable: commit order on ties
    designs: list[Design] = []
    seen: set[str] = set()
    for rec in ranked:
        code = run.code(rec)
        if code is None or (key := code_key(code)) in seen:
            continue
        seen.add(key)
        designs.append(Design(len(designs) + 1, key, rec, code))
        if len(designs) == k:
            break
    if not designs:
        raise RetrainError(f"run {run.name!r} has no successful design to retrain "
                           f"({len(run.records)} iterations, none ok with its code file)")
    return designs


def retrain_config(run: Run, epochs: int, timeout: float | None) -> RunConfig:
    """The run's config for one sandbox, with a timeout scaled by the schedule (or `timeout`)."""
    if not run.config:
        raise RetrainError(f"run {run.name!r} has no readable config.json")
    cfg, _ = for_resume(run.config, {})
    scaled = cfg.timeout * max(1.0, epochs / cfg.epochs)
    return dataclasses.replace(cfg, parallel=1, timeout=timeout or scaled)


def check_dataset(run: Run, dataset: PreparedDataset) -> None:
    """The retrain must see the data the run saw."""
    stored = run.config.get("dataset_fingerprint")
    if stored and stored != dataset.fingerprint:
        raise RetrainError(f"the dataset is not the one run {run.name!r} used (fingerprint "
                           f"{dataset.fingerprint}, the run's {stored}): prepare the same data")


def retrain_dir(run: Run) -> Path:
    return run.path / RETRAIN_DIR


def load_journal(path: Path) -> list[dict]:
    """The journal's lines, after cutting a torn last line (a killed retrain's)."""
    cut_torn_tail(path)
    return read_records(path)


def entry_id(line: dict) -> tuple[str, int, int]:
    return str(line.get("key")), int(line.get("epochs", 0)), int(line.get("seed", 0))


def done(lines: Sequence[dict]) -> set[tuple[str, int, int]]:
    """(key, epochs, seed) evaluated for good: anything but an infrastructure fault."""
    return {entry_id(ln) for ln in lines if ln.get("status") not in fc.INFRASTRUCTURE_CLASSES}


def journal_line(plan: Plan, design: Design, seed: int, outcome: Outcome) -> dict:
    rec, metrics = design.record, outcome.metrics
    error = outcome.error or {}
    return {
        "key": design.key, "epochs": plan.epochs, "seed": seed,
        "iteration": design.iteration, "chain": design.chain, "metric": plan.metric,
        "proxy_epochs": plan.proxy_epochs, "proxy_accuracy": accuracy_of(rec),
        "proxy_test_accuracy": test_accuracy_of(rec),
        "status": outcome.status, "test_accuracy": outcome.test_accuracy,
        "val_accuracy": outcome.val_accuracy, "params": _count(metrics.get("params")),
        "train_seconds": number(metrics.get("train_seconds")),
        "sandbox_seconds": number(metrics.get("sandbox_seconds")),
        "error": str(error.get("message", ""))[:500] or None,
        "time": round(time.time(), 3),
    }


def run_plan(plan: Plan, sandbox: Sandbox, cfg: RunConfig, dataset: PreparedDataset,
             journal: Path, say: Callable[[str], None],
             busy: Callable[[str], AbstractContextManager] = lambda _: nullcontext()
             ) -> list[dict]:
    """Train every (design, seed) not done yet, one journal line each; all the lines. `busy`
    wraps each training (a progress display)."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    lines = load_journal(journal)
    finished = done(lines)
    labels = dataset.test_labels()
    for design, seed in plan.evaluations():
        if (design.key, plan.epochs, seed) in finished:
            continue
        job = job_for(cfg, dataset, seed=seed, epochs=plan.epochs)
        with busy(_training(plan, design, seed, cfg.timeout)):
            outcome = evaluate(sandbox, design.code, job, dataset, labels)
        line = journal_line(plan, design, seed, outcome)
        append_line(journal, orjson.dumps(line) + b"\n")
        lines.append(line)
        say(_progress(plan, design, seed, line))
    return lines


def _which(plan: Plan, design: Design, seed: int) -> str:
    where = f"it. {design.iteration}" + (f" (chain {design.chain})" if design.chain else "")
    s = plan.seeds.index(seed) + 1
    return f"design {design.rank}/{len(plan.designs)} seed {s}/{len(plan.seeds)}: {where}"


def _training(plan: Plan, design: Design, seed: int, timeout: float) -> str:
    return f"{_which(plan, design, seed)}, training {plan.epochs} epochs (limit {timeout:.0f} s)"


def _progress(plan: Plan, design: Design, seed: int, line: dict) -> str:
    head = (f"{_which(plan, design, seed)}, "
            f"{plan.metric} {pct(line['proxy_accuracy'], 2)} after {plan.proxy_epochs} epoch(s)")
    seconds = line["sandbox_seconds"]
    took = f", {seconds:.0f} s" if seconds is not None else ""
    if line["status"] != fc.OK:
        return f"{head} ... {line['status']}: {line['error'] or ''}"[:300] + took
    return f"{head} ... {pct(line['test_accuracy'], 2)} test after {plan.epochs} epochs{took}"


def summarize(plan: Plan, lines: Sequence[dict], run_name: str) -> dict:
    """summary.json: per design its converged test accuracy over the seeds, and how the
    one-epoch proxy correlates with it over the designs that converged (`correlations`:
    exact permutation p-values for up to EXACT_MAX_N designs)."""
    latest = {entry_id(ln): ln for ln in lines}
    designs = [_design_summary(d, [latest.get((d.key, plan.epochs, s)) for s in plan.seeds])
               for d in plan.designs]
    converged = [d for d in designs if d["test_mean"] is not None]
    with_test = [d for d in converged if d["proxy_test_accuracy"] is not None]
    return {
        "run": run_name, "epochs": plan.epochs, "seeds": plan.seeds, "metric": plan.metric,
        "proxy_epochs": plan.proxy_epochs, "designs": designs,
        "correlations": {
            "selection": {"n": len(converged), **correlations(
                [d["proxy_accuracy"] for d in converged], [d["test_mean"] for d in converged])},
            "test": {"n": len(with_test), **correlations(
                [d["proxy_test_accuracy"] for d in with_test],
                [d["test_mean"] for d in with_test])},
        },
    }


def _design_summary(design: Design, lines: list[dict | None]) -> dict:
    present = [ln for ln in lines if ln is not None]
    ok = [ln for ln in present if ln["status"] == fc.OK and ln.get("test_accuracy") is not None]
    tests = [float(ln["test_accuracy"]) for ln in ok]
    vals = [float(ln["val_accuracy"]) for ln in ok if ln.get("val_accuracy") is not None]
    trains = [float(ln["train_seconds"]) for ln in ok if ln.get("train_seconds") is not None]
    params = next((ln["params"] for ln in present if ln.get("params") is not None), None)
    return {
        "rank": design.rank, "key": design.key, "iteration": design.iteration,
        "chain": design.chain, "proxy_accuracy": accuracy_of(design.record),
        "proxy_test_accuracy": test_accuracy_of(design.record),
        "test_accuracies": tests, "test_mean": float(np.mean(tests)) if tests else None,
        "test_sd": float(np.std(tests, ddof=1)) if len(tests) > 1 else None,
        "val_mean": float(np.mean(vals)) if vals else None,
        "params": params if params is not None else _count(
            (design.record.get("metrics") or {}).get("params")),
        "train_seconds_mean": float(np.mean(trains)) if trains else None,
        "done": len(present), "failures": [ln["status"] for ln in present
                                           if ln["status"] != fc.OK],
    }


def markdown(summary: dict) -> str:
    """The summary as Markdown: one row per design, then the correlations."""
    metric, proxy = summary["metric"], summary["proxy_epochs"]
    seeds = ", ".join(str(s) for s in summary["seeds"])
    out = [f"# Retraining the best designs of {summary['run']}", "",
           f"{len(summary['designs'])} designs, {summary['epochs']} epochs, seeds {seeds}; "
           f"ranked by {metric} accuracy after {proxy} epoch(s).", "",
           f"| Rank | Iteration | {proxy}-epoch {metric} | Converged test % (mean ± sd) | "
           "Params | Train time | Failures |",
           "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for d in summary["designs"]:
        where = f"{d['iteration']}" + (f" (chain {d['chain']})" if d["chain"] else "")
        sd = "" if d["test_sd"] is None else f" ± {d['test_sd'] * 100:.2f}"  # one seed: none
        acc = "-" if d["test_mean"] is None else f"{d['test_mean'] * 100:.2f}{sd}"
        runs = f" ({len(d['test_accuracies'])}/{len(summary['seeds'])})" \
            if len(d["test_accuracies"]) != len(summary["seeds"]) else ""
        params = "-" if d["params"] is None else f"{int(d['params']):,}"
        train = "-" if d["train_seconds_mean"] is None else f"{d['train_seconds_mean']:.1f} s"
        fails = ", ".join(d["failures"]) or "-"
        out.append(f"| {d['rank']} | {where} | {pct(d['proxy_accuracy'], 2)} | {acc}{runs} | "
                   f"{params} | {train} | {fails} |")
    out += ["", f"Proxy ({proxy} epoch) vs converged test accuracy, over the designs that "
            "converged:", "", "| Proxy | n | Spearman ρ | p | Kendall τ | p |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, label in (("selection", f"{metric} accuracy"), ("test", "test accuracy")):
        c = summary["correlations"][name]
        out.append(f"| {label} | {c['n']} | {num(c['spearman_rho'])} | {pval(c['spearman_p'])}"
                   f" | {num(c['kendall_tau'])} | {pval(c['kendall_p'])} |")
    return "\n".join(out) + "\n"


def write_summary(directory: Path, summary: dict) -> str:
    """summary.json and retrain.md (atomically); the Markdown."""
    text = markdown(summary)
    write_atomic(directory / SUMMARY_FILE, orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    write_atomic(directory / MARKDOWN_FILE, text.encode())
    return text


def _count(value: object) -> int | None:
    value = number(value)
    return None if value is None else int(value)
