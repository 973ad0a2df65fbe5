"""The run's append-only journal under results/<name>/: creating, committing, resuming (see
docs/contracts.md). Reading goes through `run.read_records`, the one reader."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from orchestrator.store.files import append_line, cut_torn_tail, fsync_dir, write_atomic
from orchestrator.store.records import best_of, best_record, summarize
from orchestrator.store.run import (
    BEST_FILE,
    CONFIG_FILE,
    ITERATIONS_FILE,
    SUMMARY_FILE,
    read_records,
)


class JournalError(RuntimeError):
    """The journal could not be written (disk full, quota, permissions); the records written
    before are intact."""


@contextlib.contextmanager
def _writing(root: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise JournalError(f"cannot write the journal in {root}: {exc.strerror or exc}") from exc


class Journal:
    """One run directory. Every file a record points to is written before the record.

    Several search chains may commit to one journal from their own threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.candidates = self.root / "candidates"
        self._lock = threading.Lock()
        self._records: list[dict] | None = None
        self._best: dict | None = None  # best_record(self._records), kept as records commit
        # Called with each record once it is durable, outside the lock, from the committing
        # thread (a mirror such as store/tracking.py); an observer must not raise or block.
        self.on_commit: list[Callable[[dict], None]] = []

    @property
    def exists(self) -> bool:
        return (self.root / CONFIG_FILE).exists()

    def create(self, config: dict) -> None:
        self.candidates.mkdir(parents=True, exist_ok=True)
        self.update_config(config)
        (self.root / ITERATIONS_FILE).touch()
        fsync_dir(self.root)

    def config(self) -> dict:
        return orjson.loads((self.root / CONFIG_FILE).read_bytes())

    def update_config(self, config: dict) -> None:
        write_atomic(self.root / CONFIG_FILE, orjson.dumps(config, option=orjson.OPT_INDENT_2))

    def records(self, repair: bool = False) -> list[dict]:
        """All complete records. A torn last line (a crash mid-write) is ignored, or cut off
        when `repair` is set so that the next append starts on a clean line."""
        path = self.root / ITERATIONS_FILE
        if repair:
            cut_torn_tail(path)
        return read_records(path)

    def load(self) -> list[dict]:
        """The records so far (a torn tail cut off); later commits are added to them.

        best.py is rewritten from the records: a crash may have left it ahead of them."""
        with self._lock:
            self._load()
            if self._best:
                self.write_best((self.root / self._best["code_file"]).read_text())
            else:
                (self.root / BEST_FILE).unlink(missing_ok=True)
            return list(self._records)

    def write_file(self, name: str, text: str) -> str:
        """Store a candidate's file (code, reply); returns its path relative to the run."""
        path = self.candidates / name
        with _writing(self.root):
            write_atomic(path, text.encode())
        return str(path.relative_to(self.root))

    def commit(self, record: dict, code: str | None) -> dict:
        """Append a record (fsynced), then bring best.py and summary.json up to date;
        returns the new summary."""
        with self._lock, _writing(self.root):
            if self._records is None:
                self._load()
            self._append(record)
            self._records.append(record)
            if best_of(self._best, record) is record:  # strictly better
                self._best = record
                self.write_best(code)
            summary = summarize(self._records, self._best)
            self.write_summary(summary)
        for observer in list(self.on_commit):
            observer(record)
        return summary

    def summary(self) -> dict:
        with self._lock:
            return summarize(self._records or [], self._best)

    def _load(self) -> None:
        self._records = self.records(repair=True)
        self._best = best_record(self._records)

    def _append(self, record: dict) -> None:
        append_line(self.root / ITERATIONS_FILE,
                    orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def write_best(self, code: str) -> None:
        write_atomic(self.root / BEST_FILE, code.encode())

    def write_summary(self, summary: dict) -> None:
        write_atomic(self.root / SUMMARY_FILE, orjson.dumps(summary, option=orjson.OPT_INDENT_2))

