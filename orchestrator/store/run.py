"""Read a run directory (results/<name>/): the one reader of its files, for the journal's own
resume as for reports, exports and inspection.

Tolerant: a run still in progress, or one whose host was killed, may end in a torn last line
(the writer was interrupted mid-record); such lines are skipped and noted in `Run.warnings`,
never fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from orchestrator.store.records import lost, record_chain

CONFIG_FILE = "config.json"
ITERATIONS_FILE = "iterations.jsonl"
SUMMARY_FILE = "summary.json"
BEST_FILE = "best.py"


@dataclass
class Run:
    """One run's journal: its directory, config, iteration records and summary (if finished)."""

    path: Path
    config: dict
    records: list[dict]
    summary: dict | None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset") or "unknown")

    def record(self, iteration: int, chain: int | None = None) -> dict:
        """The record of `iteration` (and `chain`, when given): its design, else its last lost
        attempt; KeyError if absent."""
        found = [rec for rec in self.records if rec.get("iteration") == iteration
                 and (chain is None or record_chain(rec) == chain)]
        if found:
            return next((rec for rec in found if not lost(rec)), found[-1])
        where = f" in chain {chain}" if chain is not None else ""
        raise KeyError(f"run {self.name!r} has no record for iteration {iteration}{where}")

    def code_path(self, rec: dict, key: str = "code_file") -> Path | None:
        """The file a record points to (`code_file`, or `reply_file`), if it exists inside the
        run directory."""
        rel = rec.get(key)
        if not isinstance(rel, str) or not rel:
            return None
        root = self.path.resolve()
        target = (root / rel).resolve()
        if root not in target.parents or not target.is_file():
            return None
        return target

    def code(self, rec: dict) -> str | None:
        """The candidate code of a record, or None when its file is missing."""
        return self._text(self.code_path(rec))

    def reply(self, rec: dict) -> str | None:
        """The Code Generator's raw reply of a record, or None when its file is missing."""
        return self._text(self.code_path(rec, "reply_file"))

    @staticmethod
    def _text(path: Path | None) -> str | None:
        return path.read_text(encoding="utf-8", errors="replace") if path else None


def resolve_run_dir(path_or_name: str | Path, results_dir: Path = Path("results")) -> Path:
    """A run directory given as a path or as a name under `results_dir`."""
    candidates = [Path(path_or_name), Path(results_dir) / str(path_or_name)]
    for cand in candidates:
        if cand.is_dir() and ((cand / CONFIG_FILE).exists() or (cand / ITERATIONS_FILE).exists()):
            return cand
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(
        f"no run found for {str(path_or_name)!r}: tried {tried} "
        f"(a run directory holds {CONFIG_FILE} and {ITERATIONS_FILE})"
    )


def _read_json(path: Path, warnings: list[str]) -> dict | None:
    if not path.exists():
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        warnings.append(f"{path.name}: unreadable JSON ({exc})")
        return None
    return data if isinstance(data, dict) else None


def read_records(path: Path, warnings: list[str] | None = None) -> list[dict]:
    """Parse iterations.jsonl; a torn last line and unparsable lines are skipped with a
    warning."""
    warnings = warnings if warnings is not None else []
    chunk = read_records_from(path, 0, 0, warnings)
    if chunk.torn:
        warnings.append(f"{path.name}:{chunk.lines + 1}: torn last line skipped")
    return chunk.records


class Chunk(NamedTuple):
    """Records read from a journal with the byte offset of each one's line, the offset and
    whole-line count reached, and whether a torn (unfinished) line follows."""

    records: list[dict]
    offset: int
    lines: int
    torn: bool
    starts: list[int]


def read_records_from(path: Path, offset: int, lines_before: int,
                      warnings: list[str] | None = None,
                      keep: Callable[[dict], dict] | None = None) -> Chunk:
    """The records of the whole lines of iterations.jsonl from byte `offset` on (the end of
    `lines_before` whole lines read earlier): a growing journal is read once, a line at a time.
    `keep` maps each record to what is kept of it. Unparsable lines are skipped with a warning;
    a torn last line (no newline yet) is left for the next read."""
    warnings = warnings if warnings is not None else []
    records: list[dict] = []
    starts: list[int] = []
    lineno, at, torn = lines_before, offset, False
    if not path.exists():
        return Chunk(records, offset, lines_before, torn, starts)
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                torn = bool(line.strip())
                break
            lineno, start, at = lineno + 1, at, at + len(line)
            if not line.strip():
                continue
            try:
                rec: Any = orjson.loads(line)
            except orjson.JSONDecodeError:
                warnings.append(f"{path.name}:{lineno}: unparsable line skipped")
                continue
            if isinstance(rec, dict):
                records.append(keep(rec) if keep else rec)
                starts.append(start)
            else:
                warnings.append(f"{path.name}:{lineno}: not a JSON object, skipped")
    return Chunk(records, at, lineno, torn, starts)


def read_meta(run_dir: Path, warnings: list[str]) -> tuple[dict, dict | None]:
    """A run directory's config (empty when missing, with a warning) and summary."""
    config = _read_json(run_dir / CONFIG_FILE, warnings) or {}
    if not (run_dir / CONFIG_FILE).exists():
        warnings.append(f"{CONFIG_FILE} missing")
    return config, _read_json(run_dir / SUMMARY_FILE, warnings)


def read_run(path_or_name: str | Path, results_dir: Path = Path("results")) -> Run:
    """Load a run from its directory or from its name under `results_dir`."""
    run_dir = resolve_run_dir(path_or_name, results_dir)
    warnings: list[str] = []
    config, summary = read_meta(run_dir, warnings)
    records = read_records(run_dir / ITERATIONS_FILE, warnings)
    return Run(path=run_dir, config=config, records=records, summary=summary, warnings=warnings)
