"""Export the best architecture of a run as a standalone module with provenance.

`export_best` writes the best `Net` with a provenance header. The fine-tuning corpus
(`orchestrator export --corpus`) is built in `orchestrator.finetune.corpus`.
"""

from __future__ import annotations

import ast
import math
import os
import pprint
from datetime import datetime
from pathlib import Path

from orchestrator.store.records import accuracy_of, best_record, record_chain
from orchestrator.store.run import BEST_FILE, Run


def _best_code(run: Run, rec: dict | None) -> str:
    code = run.code(rec) if rec else None
    if code is None and (run.path / BEST_FILE).is_file():
        code = (run.path / BEST_FILE).read_text(encoding="utf-8", errors="replace")
    if code is None:
        raise ValueError(f"run {run.name!r} has no successful candidate and no {BEST_FILE}")
    return code


def _provenance(run: Run, rec: dict | None) -> dict:
    summary = run.summary or {}
    rec = rec or {}
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    llm = rec.get("llm") if isinstance(rec.get("llm"), dict) else {}

    def model(role: str) -> object:
        call = llm.get(role) if isinstance(llm.get(role), dict) else {}
        return run.config.get(f"{role}_model") or call.get("model")

    return {
        "run": run.name,
        "dataset": run.dataset,
        "iteration": rec.get("iteration", summary.get("best_iteration")),
        "chain": record_chain(rec) if rec else summary.get("best_chain"),
        "accuracy": accuracy_of(rec) if rec else summary.get("best_accuracy"),
        "params": metrics.get("params"),
        "generator_model": model("generator"),
        "improver_model": model("improver"),
        "run_started": run.config.get("started_at") or _iso(_first_time(run.records)),
        "found": _iso(rec.get("time")),
        "exported": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _iso(epoch: object) -> str | None:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
        return None
    try:
        return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _first_time(records: list[dict]) -> object:
    times = [r.get("time") for r in records if isinstance(r.get("time"), (int, float))]
    return min(times, default=None)


def _literal(info: dict) -> dict:
    """Provenance values reduced to what `repr` writes as a valid Python literal."""
    def clean(v: object) -> object:
        if v is None or isinstance(v, (str, int)):
            return v
        return v if isinstance(v, float) and math.isfinite(v) else str(v)

    return {k: clean(v) for k, v in info.items()}


def _header(info: dict, has_docstring: bool) -> str:
    acc = info["accuracy"]
    acc_text = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "unknown"
    params = info["params"]
    lines = [
        f"Best architecture of run {info['run']!r} ({info['dataset']}).",
        f"Accuracy: {acc_text} (one-epoch proxy), iteration {info['iteration']}"
        + (f", chain {info['chain']}" if info["chain"] else "") + ", "
        f"parameters: {f'{params:,}' if isinstance(params, int) else 'unknown'}.",
        f"Models: generator {info['generator_model']}, improver {info['improver_model']}.",
        f"Run started: {info['run_started'] or 'unknown'}; found: {info['found'] or 'unknown'}; "
        f"exported: {info['exported']}.",
    ]
    lines = [" ".join(line.split()) for line in lines]  # journal text cannot break out
    if has_docstring:  # keep the candidate's own docstring first; state provenance in comments
        return "".join(f"# {line}\n" for line in lines)
    body = "\n".join(line.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for line in lines)
    return f'"""{body}\n"""\n'


def export_best(run: Run, out_path: str | Path) -> Path:
    """Write the best `Net` of `run` to `out_path` as an importable module with provenance."""
    rec = best_record(run.records)
    code = _best_code(run, rec)
    info = _provenance(run, rec)
    try:
        has_doc = ast.get_docstring(ast.parse(code)) is not None
    except SyntaxError as exc:
        raise ValueError(f"best code of run {run.name!r} does not parse: {exc}") from exc
    text = _header(info, has_doc) + "\n" + code.rstrip() + "\n\n"
    text += f"EXPORT_INFO = {pprint.pformat(_literal(info), sort_dicts=False)}\n"
    compile(text, str(out_path), "exec")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, text)
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
