"""The run's append-only journal under results/<name>/ (see docs/contracts.md)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

RECORDS = "iterations.jsonl"


class Journal:
    """One run directory. Every file a record points to is written before the record."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.candidates = self.root / "candidates"

    @property
    def exists(self) -> bool:
        return (self.root / "config.json").exists()

    def create(self, config: dict) -> None:
        self.candidates.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "config.json", orjson.dumps(config, option=orjson.OPT_INDENT_2))
        (self.root / RECORDS).touch()
        fsync_dir(self.root)

    def config(self) -> dict:
        return orjson.loads((self.root / "config.json").read_bytes())

    def update_config(self, config: dict) -> None:
        write_atomic(self.root / "config.json", orjson.dumps(config, option=orjson.OPT_INDENT_2))

    def records(self, repair: bool = False) -> list[dict]:
        """All complete records. A torn last line (a crash mid-write) is ignored, or cut off
        when `repair` is set so that the next append starts on a clean line."""
        path = self.root / RECORDS
        if not path.exists():
            return []
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if repair and end < len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        return [orjson.loads(line) for line in data[:end].splitlines() if line.strip()]

    def write_candidate(self, iteration: int, code: str) -> str:
        """Store an iteration's code; returns its path relative to the run directory."""
        path = self.candidates / f"iter_{iteration:04d}.py"
        write_atomic(path, code.encode())
        return str(path.relative_to(self.root))

    def append(self, record: dict) -> None:
        """Append one record, flushed and fsynced before returning."""
        with open(self.root / RECORDS, "ab") as f:
            f.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def write_best(self, code: str) -> None:
        write_atomic(self.root / "best.py", code.encode())

    def write_summary(self, summary: dict) -> None:
        write_atomic(self.root / "summary.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def summarize(records: list[dict]) -> dict:
    """summary.json: the paper's headline numbers, from the records alone."""
    successes = [r for r in records if r["status"] == "ok"]
    first = successes[0]["accuracy"] if successes else None
    best = max(successes, key=lambda r: r["accuracy"], default=None)
    return {
        "iterations": len(records),
        "successful": len(successes),
        "success_rate": len(successes) / len(records) if records else 0.0,
        "first_accuracy": first,
        "best_accuracy": best["accuracy"] if best else None,
        "best_iteration": best["iteration"] if best else None,
        "improvement": best["accuracy"] - first if best else None,
    }
