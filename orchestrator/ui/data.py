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

import contextlib
import gc
import itertools
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import orjson

from orchestrator.analysis import stats
from orchestrator.outcomes import OK
from orchestrator.store.records import (
    accuracy_of,
    best_record,
    designs,
    edit_figures,
    iteration_of,
    lost,
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
    read_meta,
    read_records_from,
)

MIN_STALE_SECONDS = 300.0
STALE_ITERATIONS = 3


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


HEAVY = ("prompts", "triple", "suggestions")  # the long texts only an iteration's page shows


def _slim(rec: dict) -> dict:
    """`rec`, a record just parsed, without its long texts (prompts as sent, the triple, the
    diagnosis, the traceback): what the run view needs, a fraction of the journal's size.
    Changes `rec` itself (its error is replaced, not changed)."""
    for key in HEAVY:
        rec.pop(key, None)
    if isinstance(rec.get("error"), dict):
        rec["error"] = {k: v for k, v in rec["error"].items() if k != "traceback"}
    return rec


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while a journal's records are parsed and worked out:
    they hold no cycles, and the collector's passes over the millions of new objects took a
    third of the time of reading a 10,000-iteration journal."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class WindowMemo:
    """The window statistics of one run, each window summarised again only when its designs
    changed (a growing journal changes its last window only). Kept for one window size and
    threshold at a time: another drops what was kept. `computed` counts the summaries worked
    out."""

    def __init__(self) -> None:
        self._key: tuple[int, float | None] | None = None
        self._kept: dict[int, tuple[list[dict], dict]] = {}
        self.computed = 0

    def windows(self, in_order: list[dict], size: int, threshold: float | None) -> list[dict]:
        """`stats.windows(in_order, size, threshold)` of designs in (iteration, chain) order."""
        if self._key != (size, threshold):
            self._key, self._kept = (size, threshold), {}
        out, kept = [], {}
        for start, end, group in stats.groups_in_order(in_order, size):
            before = self._kept.get(start)
            same = before is not None and len(before[0]) == len(group) and all(
                a is b for a, b in zip(before[0], group, strict=True))
            if not same:
                before = (group, stats.window_summary(group, threshold))
                self.computed += 1
            kept[start] = before
            out.append({"start": start, "end": end, **before[1]})
        self._kept = kept
        return out


@dataclass
class _Parsed:
    """A cached run (its records slimmed), where each record's line starts, how far its
    journal was read: (inode, bytes, whole lines), its window statistics, the table rows of
    its first records (made when first asked for), and its aggregates over the last window
    size asked for (while its files do not change)."""

    signature: tuple
    run: Run
    starts: list[int]
    read: tuple[int, int, int]
    record_warnings: list[str]
    memo: WindowMemo
    table: list[list]
    aggregates: dict[int, dict] = field(default_factory=dict)


@dataclass
class Runs:
    """The run directories directly under `root`. Each is read again only when its files
    change, and then only its journal's new lines; at most `max_cached` runs and
    `max_records` records in all are kept parsed (the least recently shown runs are dropped,
    never the one just shown), without their records' long texts, which `full` reads back for
    one record. Safe to use from several threads: one reads or works out a run at a time."""

    root: Path
    max_cached: int = 8  # the most runs a comparison shows (compare.MAX_RUNS) fit
    max_records: int = 100_000  # slimmed, about 2.4 KB each (measured): some 240 MB

    def __post_init__(self) -> None:
        self._cache: OrderedDict[str, _Parsed] = OrderedDict()
        self._rows: dict[str, tuple[tuple, dict, tuple]] = {}
        self._lock = threading.RLock()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and not
                      d.name.startswith(".") and ((d / CONFIG_FILE).exists()
                                                  or (d / ITERATIONS_FILE).exists()))

    def cached(self) -> list[str]:
        """The runs held parsed, least recently shown first."""
        return list(self._cache)

    def signatures(self) -> dict[str, tuple]:
        """A cheap fingerprint per run (sizes and mtimes of its journal files): what the live
        view watches."""
        return {name: self._files_signature(self.root / name) for name in self.names()}

    @staticmethod
    def _files_signature(path: Path) -> tuple:
        return tuple(_signature(path / f) for f in (CONFIG_FILE, ITERATIONS_FILE, SUMMARY_FILE))

    def meta(self, name: str) -> Run:
        """The run called `name` without its records (its config and summary: what a page
        names before it asks for the records); KeyError as `get`."""
        if name not in self.names():
            raise KeyError(name)
        warnings: list[str] = []
        config, summary = read_meta(self.root / name, warnings)
        return Run(path=self.root / name, config=config, summary=summary, records=[],
                   warnings=warnings)

    def current(self, name: str) -> bool:
        """Whether run `name` is held parsed as its files are now."""
        with self._lock:
            parsed = self._cache.get(name)
            return parsed is not None and parsed.signature == self._files_signature(
                self.root / name)

    def get(self, name: str) -> Run:
        """The run called `name`; KeyError for anything that is not a run directory's name
        (so no path can be smuggled through it)."""
        with self._lock:
            return self._get(name)

    def _get(self, name: str) -> Run:
        if name not in self.names():
            raise KeyError(name)
        sig = self._files_signature(self.root / name)
        cached = self._cache.pop(name, None)
        if cached is None or cached.signature != sig:
            cached = self._read(self.root / name, sig, cached)
        self._cache[name] = cached
        while len(self._cache) > 1 and (len(self._cache) > self.max_cached or sum(
                len(p.run.records) for p in self._cache.values()) > self.max_records):
            self._cache.popitem(last=False)
        return cached.run

    def memo(self, name: str) -> WindowMemo | None:
        """The window statistics kept for run `name`, while it is parsed."""
        parsed = self._cache.get(name)
        return parsed.memo if parsed else None

    def detail(self, name: str, window: int | None = None, since: int = 0) -> dict:
        """`run_detail` of run `name`, with what is kept of it: its window statistics, table
        rows and (while its files do not change) aggregates are not worked out again."""
        with self._lock, _collector_paused():
            run = self._get(name)
            parsed = self._cache[name]
            return run_detail(run, name, window, since, parsed.memo, parsed.table,
                              parsed.aggregates)

    def rows(self) -> list[dict]:
        """The runs list: each run's line is kept while its files do not change, so that the
        list does not read the journals that dropped out of the cache again; the status is
        worked out afresh (it turns to stopped with time alone)."""
        with self._lock:
            return self._list()

    def _list(self) -> list[dict]:
        names = self.names()
        self._rows = {n: kept for n, kept in self._rows.items() if n in names}
        out = []
        for name in names:
            sig = self._files_signature(self.root / name)
            kept = self._rows.get(name)
            if kept is None or kept[0] != sig:
                run = self._get(name)
                kept = self._rows[name] = (sig, run_row(run, name), status_inputs(run))
            out.append({**kept[1], "status": status_from(kept[2])})
        return out

    def full(self, name: str, rec: dict) -> dict:
        """`rec`, a record of `get(name)`, whole: read back from its line of the journal (as
        it is when that line changed since)."""
        with self._lock:
            parsed = self._cache.get(name)
        records = parsed.run.records if parsed else []
        index = next((i for i, r in enumerate(records) if r is rec), None)
        if parsed is None or index is None:
            return rec
        with open(parsed.run.path / ITERATIONS_FILE, "rb") as f:
            f.seek(parsed.starts[index])
            line = f.readline()
        try:
            whole = orjson.loads(line)
        except orjson.JSONDecodeError:
            return rec
        return whole if isinstance(whole, dict) and _slim(dict(whole)) == rec else rec

    @staticmethod
    def _read(path: Path, sig: tuple, before: _Parsed | None) -> _Parsed:
        """Read a run, its journal from where `before` stopped when the file only grew."""
        journal = path / ITERATIONS_FILE
        try:
            st = journal.stat()
            inode, size = st.st_ino, st.st_size
        except OSError:
            inode, size = 0, 0
        grew = before is not None and before.read[0] == inode and size >= before.read[1]
        records = before.run.records if grew else []
        starts = before.starts if grew else []
        record_warnings = before.record_warnings if grew else []
        offset, lines = before.read[1:] if grew else (0, 0)
        with _collector_paused():
            chunk = read_records_from(journal, offset, lines, record_warnings, keep=_slim)
        warnings: list[str] = []
        config, summary = read_meta(path, warnings)
        torn = [f"{ITERATIONS_FILE}:{chunk.lines + 1}: torn last line skipped"
                ] if chunk.torn else []
        run = Run(path=path, config=config, summary=summary,
                  records=[*records, *chunk.records],
                  warnings=[*warnings, *record_warnings, *torn])
        return _Parsed(sig, run, [*starts, *chunk.starts], (inode, chunk.offset, chunk.lines),
                       record_warnings, before.memo if before else WindowMemo(),
                       before.table if grew else [])


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


def status_inputs(run: Run) -> tuple[Path, bool, float]:
    """What a run's status depends on besides the clock: its folder, whether every planned
    iteration is in, and how long it may go quiet while running."""
    total = planned(run)
    finished = total is not None and len(designs(run.records)) >= total
    return run.path, finished, stale_after(record_times(run))


def status_from(inputs: tuple[Path, bool, float], now: float | None = None) -> str:
    path, finished, stale = inputs
    if finished:
        return "finished"
    now = time.time() if now is None else now
    sig = _signature(path / ITERATIONS_FILE) or _signature(path / CONFIG_FILE)
    changed = sig[1] / 1e9 if sig else 0.0
    return "running" if now - changed <= stale else "stopped"


def run_status(run: Run, now: float | None = None) -> str:
    return status_from(status_inputs(run), now)


def iterations_per_hour(run: Run) -> float | None:
    times = record_times(run)
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0]) * 3600


def run_url(name: str) -> str:
    return f"/runs/{quote(name, safe='')}"


def iteration_url(name: str, rec: dict) -> str | None:
    """The page of a record; None when its iteration is not a whole number (no page has it)."""
    it = rec.get("iteration")
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        return None
    return f"{run_url(name)}/iterations/{it}?chain={record_chain(rec)}"


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


def best_links(run: Run, name: str, best: dict | None) -> dict:
    """Where the run's best (`best`) is: its iteration's page and the download of best.py."""
    return {"best_url": iteration_url(name, best) if best else None,
            "best_code_url": f"{run_url(name)}/best.py" if best_file(run) else None}


def run_row(run: Run, name: str) -> dict:
    """One line of the runs list."""
    best = best_record(designs(run.records))
    table2 = summarize(run.records, best)
    return {
        "started": started(run), **best_links(run, name, best),
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


# A table row's fields: the JSON sends each row as a list of them, in this order (a 10,000-row
# run is then half the bytes it is as objects).
COLUMNS = ("iteration", "chain", "status", "accuracy", "test_accuracy", "best_accuracy",
           "params", "flops", "seconds", "error", "url", "lost")


def _table_row(name: str, rec: dict) -> list:
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    timings = rec.get("timings") if isinstance(rec.get("timings"), dict) else {}
    error = rec.get("error") if isinstance(rec.get("error"), dict) else {}
    return [
        iteration_of(rec), record_chain(rec), str(rec.get("status") or "unknown"),
        accuracy_of(rec), number(rec.get("test_accuracy")), number(rec.get("best_accuracy")),
        number(metrics.get("params")), number(metrics.get("flops")),
        sum(v for v in map(number, timings.values()) if v is not None),
        f"{error.get('type') or ''}: {error.get('message') or ''}".strip(": ")[:160],
        iteration_url(name, rec), lost(rec),
    ]


def table_rows(name: str, records: list[dict], table: list[list]) -> list[list]:
    """`table`, the rows (in COLUMNS) of the first of `records`, extended to all of them."""
    table.extend(_table_row(name, r) for r in records[len(table):])
    return table


def failures_over_time(in_order: list[dict], size: int) -> dict:
    """Counts of each failure class per window of `size` iterations, of designs in
    (iteration, chain) order."""
    groups: dict[int, dict[str, int]] = {}
    ends: dict[int, int] = {}
    for rec in in_order:
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


def run_aggregates(run: Run, name: str, size: int, memo: WindowMemo) -> dict:
    """What the run view shows of the run as a whole, over windows of `size` iterations."""
    threshold = stats.default_threshold(run.dataset)
    in_order = ordered(designs(run.records))
    return {
        **run_row(run, name), "window": size, "threshold": threshold,
        "select_on": run.config.get("select_on", "test"),
        "per_chain": run.config.get("iterations") if isinstance(
            run.config.get("iterations"), int) else None,
        "failures": failures_over_time(in_order, size),
        "windows": memo.windows(in_order, size, threshold),
        "edit_formats": edit_figures(run.records),
        "warnings": list(run.warnings),
    }


def run_detail(run: Run, name: str, window: int | None = None, since: int = 0,
               memo: WindowMemo | None = None, table: list[list] | None = None,
               kept: dict[int, dict] | None = None) -> dict:
    """Everything the run view shows, as JSON: the aggregates whole, and the table rows of the
    journal's records from the `since`-th on (all of them when the journal holds fewer: it was
    rewritten), each a list of its COLUMNS. The window statistics come through `memo` when
    given; `table`, when given, holds the rows of the first records, and gets those of the
    others; `kept`, when given, holds the aggregates of this very run for one window size (the
    status is worked out afresh: it turns to stopped with time alone)."""
    size = window or default_window(len(run.records))
    kept = kept if kept is not None else {}
    if size not in kept:
        kept.clear()
        kept[size] = run_aggregates(run, name, size, memo or WindowMemo())
    since = since if since <= len(run.records) else 0
    return {
        **kept[size], "status": run_status(run), "total": len(run.records), "since": since,
        "columns": COLUMNS,
        "rows": table_rows(name, run.records, table if table is not None else [])[since:],
    }
