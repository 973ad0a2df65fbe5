"""The runs under a results folder as view models: plain dicts, ready for JSON or a template.

Everything is read through `orchestrator.store.run` (the one reader of a run's files) and derived
with `orchestrator.store.records` and `orchestrator.analysis.stats`; nothing here writes.

A run's status: *finished* when its journal holds every planned iteration (config `iterations`
per chain, counted as evaluated designs: attempts lost to faults are tried again); else
*running* when its journal changed within `stale_after` (3 median iteration times, at least 5
minutes); else *stopped* (interrupted, killed, or ended by faults: whether a process still
holds the journal is not knowable from here). summary.json cannot tell: the journal rewrites it
after every iteration.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from orchestrator.analysis import stats
from orchestrator.search.failures import OK
from orchestrator.store.records import (
    accuracy_of,
    best_record,
    designs,
    iteration_of,
    number,
    ordered,
    record_chain,
    summarize,
)
from orchestrator.store.run import (
    BEST_FILE,
    CONFIG_FILE,
    ITERATIONS_FILE,
    SUMMARY_FILE,
    Run,
    read_run,
)

MIN_STALE_SECONDS = 300.0
STALE_ITERATIONS = 3


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class Runs:
    """The run directories directly under `root`, each read again only when its files change."""

    root: Path

    def __post_init__(self) -> None:
        self._cache: dict[str, tuple[tuple, Run]] = {}

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and not
                      d.name.startswith(".") and ((d / CONFIG_FILE).exists()
                                                  or (d / ITERATIONS_FILE).exists()))

    def signatures(self) -> dict[str, tuple]:
        """A cheap fingerprint per run (sizes and mtimes of its journal files): what the live
        view watches."""
        return {name: self._files_signature(self.root / name) for name in self.names()}

    @staticmethod
    def _files_signature(path: Path) -> tuple:
        return tuple(_signature(path / f) for f in (CONFIG_FILE, ITERATIONS_FILE, SUMMARY_FILE))

    def get(self, name: str) -> Run:
        """The run called `name`; KeyError for anything that is not a run directory's name
        (so no path can be smuggled through it)."""
        if name not in self.names():
            raise KeyError(name)
        sig = self._files_signature(self.root / name)
        cached = self._cache.get(name)
        if cached is None or cached[0] != sig:
            cached = (sig, read_run(self.root / name))
            self._cache[name] = cached
        return cached[1]


# ---------------------------------------------------------------- facts about a run


def record_times(run: Run) -> list[float]:
    return sorted(t for t in (number(r.get("time")) for r in run.records) if t is not None)


def stale_after(times: list[float]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    median = statistics.median(gaps) if gaps else 0.0
    return max(MIN_STALE_SECONDS, STALE_ITERATIONS * median)


def planned(run: Run) -> int | None:
    """Iterations the run was started for, over all its chains."""
    per_chain, chains = run.config.get("iterations"), run.config.get("parallel") or 1
    ok = isinstance(per_chain, int) and isinstance(chains, int)
    return per_chain * chains if ok else None


def run_status(run: Run, now: float | None = None) -> str:
    total = planned(run)
    if total is not None and len(designs(run.records)) >= total:
        return "finished"
    now = time.time() if now is None else now
    sig = _signature(run.path / ITERATIONS_FILE) or _signature(run.path / CONFIG_FILE)
    changed = sig[1] / 1e9 if sig else 0.0
    return "running" if now - changed <= stale_after(record_times(run)) else "stopped"


def iterations_per_hour(run: Run) -> float | None:
    times = record_times(run)
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0]) * 3600


def run_url(name: str) -> str:
    return f"/runs/{quote(name, safe='')}"


def iteration_url(name: str, rec: dict) -> str:
    return f"{run_url(name)}/iterations/{iteration_of(rec)}?chain={record_chain(rec)}"


def started(run: Run) -> float | None:
    """When the run started (epoch seconds): its first record's time, else (no record yet)
    when its config.json was written."""
    times = record_times(run)
    if times:
        return times[0]
    sig = _signature(run.path / CONFIG_FILE)
    return sig[1] / 1e9 if sig else None


def best_file(run: Run) -> Path | None:
    """The run's best.py, if it is a file inside the run folder (a link out of it is not)."""
    root = run.path.resolve()
    path = (root / BEST_FILE).resolve()
    return path if root in path.parents and path.is_file() else None


def best_links(run: Run, name: str) -> dict:
    """Where the run's best is: its iteration's page and the download of best.py."""
    best = best_record(designs(run.records))
    return {"best_url": iteration_url(name, best) if best else None,
            "best_code_url": f"{run_url(name)}/best.py" if best_file(run) else None}


def run_row(run: Run, name: str) -> dict:
    """One line of the runs list."""
    table2 = summarize(run.records)
    return {
        "started": started(run), **best_links(run, name),
        "name": name, "url": run_url(name), "dataset": run.dataset,
        "generator_model": run.config.get("generator_model"),
        "improver_model": run.config.get("improver_model"),
        "status": run_status(run), "iterations": table2["iterations"],
        "lost": sum(table2["lost"].values()),
        "planned": planned(run), "chains": run.config.get("parallel") or 1,
        "success_rate": table2["success_rate"], "best_accuracy": table2["best_accuracy"],
        "best_test_accuracy": table2["best_test_accuracy"],
        "iterations_per_hour": iterations_per_hour(run),
    }


def default_window(n: int) -> int:
    return 10 if n <= 200 else 50


def _table_row(name: str, rec: dict) -> dict:
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    timings = rec.get("timings") if isinstance(rec.get("timings"), dict) else {}
    error = rec.get("error") if isinstance(rec.get("error"), dict) else {}
    return {
        "iteration": iteration_of(rec), "chain": record_chain(rec),
        "status": str(rec.get("status") or "unknown"), "accuracy": accuracy_of(rec),
        "test_accuracy": number(rec.get("test_accuracy")),
        "best_accuracy": number(rec.get("best_accuracy")),
        "params": number(metrics.get("params")), "flops": number(metrics.get("flops")),
        "seconds": sum(v for v in map(number, timings.values()) if v is not None),
        "error": f"{error.get('type') or ''}: {error.get('message') or ''}".strip(": ")[:160],
        "url": iteration_url(name, rec),
    }


def trajectory(name: str, records: list[dict]) -> dict:
    """The Figure-2 plot per chain: every success, the best-so-far steps, failures by class."""
    chains: dict[int, dict] = {}
    for rec in ordered(designs(records)):
        chain = chains.setdefault(record_chain(rec), {"points": [], "best": [], "failures": {}})
        it, acc, url = iteration_of(rec), accuracy_of(rec), iteration_url(name, rec)
        if acc is not None:
            chain["points"].append({"x": it, "y": acc, "url": url})
            top = max(acc, chain["best"][-1]["y"]) if chain["best"] else acc
            chain["best"].append({"x": it, "y": top})
        elif rec.get("status") != OK:
            cls = str(rec.get("status") or "unknown")
            chain["failures"].setdefault(cls, []).append({"x": it, "url": url})
    last = max((iteration_of(r) for r in records), default=0)
    for chain in chains.values():
        if chain["best"]:
            chain["best"].append({"x": last, "y": chain["best"][-1]["y"]})
    return {"chains": [{"chain": c, **chains[c]} for c in sorted(chains)]}


def failures_over_time(records: list[dict], size: int) -> dict:
    """Counts of each failure class of the designs per window of `size` iterations."""
    groups: dict[int, dict[str, int]] = {}
    ends: dict[int, int] = {}
    for rec in ordered(designs(records)):
        key = (iteration_of(rec) - 1) // size
        window = groups.setdefault(key, {})
        ends[key] = max(ends.get(key, 0), iteration_of(rec))
        if rec.get("status") != OK:
            cls = str(rec.get("status") or "unknown")
            window[cls] = window.get(cls, 0) + 1
    keys = sorted(groups)
    classes = sorted({c for g in groups.values() for c in g})
    return {"labels": [f"{k * size + 1}-{ends[k]}" for k in keys],
            "classes": {c: [groups[k].get(c, 0) for k in keys] for c in classes}}


def run_detail(run: Run, name: str, window: int | None = None) -> dict:
    """Everything the run view shows, as JSON."""
    size = window or default_window(len(run.records))
    threshold = stats.default_threshold(run.dataset)
    return {
        **run_row(run, name), "window": size, "threshold": threshold,
        "select_on": run.config.get("select_on", "test"),
        "rows": [_table_row(name, r) for r in ordered(run.records)],
        "trajectory": trajectory(name, run.records),
        "failures": failures_over_time(run.records, size),
        "windows": stats.windows(run.records, size, threshold),
        "warnings": list(run.warnings),
    }
