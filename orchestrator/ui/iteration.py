"""One iteration as a view model: highlighted code, the two diffs, and the record's fields.

The code is highlighted by Pygments, which escapes what it formats; every other field is plain
text that the template escapes. Candidate code is only ever read as text.
"""

from __future__ import annotations

import difflib
import re
import statistics

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from orchestrator.analysis.stats import ROLES
from orchestrator.store.records import (
    accuracy_of,
    iteration_of,
    ordered,
    record_chain,
    repeat_accuracies,
)
from orchestrator.store.run import Run
from orchestrator.ui.data import iteration_url, run_url

FORMATTER = HtmlFormatter(cssclass="highlight", linenos="table")
NUMBERED = re.compile(r"(?:^|(?<=\s))(\d{1,2})[.)]\s+")
# A record's `metrics` (the runner's, the sandbox's and Ray's: docs/contracts.md) by label;
# a key not listed here is shown as it is.
METRIC_LABELS = {
    "params": "parameters", "flops": "FLOPs", "steps": "training steps",
    "final_loss": "final training loss", "device": "device",
    "import_seconds": "import of the candidate (s)", "train_seconds": "training (s)",
    "predict_seconds": "prediction (s)", "sandbox_seconds": "in the sandbox (s)",
    "ready_wait_s": "wait for a warm sandbox (s)", "pool_depth": "warm sandboxes kept ahead",
    "gpu_peak_bytes": "GPU memory peak", "gpu_budget_bytes": "GPU memory budget",
    "crowded_retries": "evaluations again (GPU crowded out)", "node": "Ray node",
    "host": "node host", "gpu_ids": "node GPUs", "node_seconds": "sandbox on the node (s)",
    "node_setup_s": "node set-up (s)", "ray_overhead_s": "Ray overhead (s)",
    "task_started": "Ray task started", "task_ended": "Ray task ended",
}


def highlight_css() -> str:
    return FORMATTER.get_style_defs(".highlight")


def highlighted(code: str) -> Markup:
    # Pygments escapes the code it formats (&, <, >, quotes): its output is safe markup.
    return Markup(highlight(code, PythonLexer(), FORMATTER))


def diff_lines(old: str, new: str, old_name: str, new_name: str) -> list[dict]:
    """A unified diff as lines tagged add / del / hunk / context (escaped by the template)."""
    out = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name,
                                     lineterm="", n=3):
        kind = ("meta" if line.startswith(("---", "+++")) else "hunk" if line.startswith("@@")
                else "add" if line.startswith("+") else "del" if line.startswith("-")
                else "context")
        out.append({"kind": kind, "text": line})
    return out


def _chain_records(run: Run, chain: int) -> list[dict]:
    return [r for r in ordered(run.records) if record_chain(r) == chain]


def reference_of(run: Run, rec: dict) -> dict | None:
    """The reference the Generator was given: the chain's best before this iteration, which the
    chain's previous record names as its best_iteration."""
    mine = _chain_records(run, record_chain(rec))
    earlier = [r for r in mine if iteration_of(r) < iteration_of(rec)]
    if not earlier:
        return None
    best = earlier[-1].get("best_iteration")
    return next((r for r in earlier if iteration_of(r) == best), None)


def previous_of(run: Run, rec: dict) -> dict | None:
    """The chain's latest earlier iteration that has code (looked for from the latest back,
    without reading the files)."""
    earlier = [r for r in _chain_records(run, record_chain(rec))
               if iteration_of(r) < iteration_of(rec)]
    return next((r for r in reversed(earlier) if run.code_path(r) is not None), None)


def _diff(run: Run, name: str, base: dict | None, rec: dict, code: str | None) -> dict | None:
    if base is None or code is None:
        return None
    old = run.code(base) or ""
    return {"iteration": iteration_of(base), "url": iteration_url(name, base),
            "lines": diff_lines(old, code, str(base.get("code_file")),
                                str(rec.get("code_file")))}


def numbered(items: list) -> list[str]:
    """The Improver's suggestions one per item: a text that numbers its points "1. … 2. …"
    (1, 2, 3 in order) is split at the numbers."""
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        marks: list[re.Match] = []
        for mark in NUMBERED.finditer(text):  # "1." at the start, then "2.", "3.", ...
            if int(mark.group(1)) == len(marks) + 1 and (marks or mark.start() == 0):
                marks.append(mark)
        if len(marks) < 2:
            out.append(text)
            continue
        ends = [m.start() for m in marks[1:]] + [len(text)]
        out += [text[m.end():end].strip() for m, end in zip(marks, ends, strict=True)]
    return [s for s in out if s]


def _metric_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10000:
        return f"{value:,}"
    return str(value)


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """A record's metrics as (label, text), each measurement once: the sandbox's warm-up
    (`warmup_s`, start to ready) and the runner's part of it (`warmup_seconds`) share a row."""
    rows = []
    for key, value in metrics.items():
        if key == "warmup_seconds" and "warmup_s" in metrics:
            continue
        if key == "warmup_s":
            text = f"{_metric_text(value)} from start to ready"
            if "warmup_seconds" in metrics:
                text += f", {_metric_text(metrics['warmup_seconds'])} of it the runner's set-up"
            rows.append(("sandbox warm-up (s)", text))
        elif key == "warmup_seconds":
            rows.append(("runner set-up (s)", _metric_text(value)))
        else:
            rows.append((METRIC_LABELS.get(key, key), _metric_text(value)))
    return rows


def _messages(prompt: object) -> list[dict]:
    if not isinstance(prompt, list):
        return []
    return [{"role": str(m.get("role")), "content": str(m.get("content"))}
            for m in prompt if isinstance(m, dict)]


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _neighbour(name: str, run: Run, rec: dict, step: int) -> str | None:
    mine = _chain_records(run, record_chain(rec))
    index = next(i for i, r in enumerate(mine) if r is rec) + step
    return iteration_url(name, mine[index]) if 0 <= index < len(mine) else None


def edit_text(edit: dict) -> str | None:
    """What the Generator's reply was under an edit format: edit blocks on which iteration,
    applied or not, or a whole file; None under `whole` (every reply is a whole file)."""
    fmt, kind, lines = edit.get("format"), edit.get("kind"), edit.get("lines")
    if fmt in (None, "whole") or kind is None:
        return None
    if kind != "edit":
        return f"{fmt}: the reply was a whole file ({lines} lines), taken as it is"
    blocks = edit.get("blocks")
    outcome = "applied" if edit.get("applied") else "not applied (edit_error)"
    return (f"{fmt}: {blocks} block{'' if blocks == 1 else 's'} ({lines} lines) on iteration "
            f"{edit.get('base_iteration')}, {outcome}")


def iteration_view(run: Run, name: str, rec: dict) -> dict:
    """Everything the iteration view shows."""
    code = run.code(rec)
    reference, previous = reference_of(run, rec), previous_of(run, rec)
    suggestions = _dict(rec.get("suggestions"))
    items = suggestions.get("suggestions")
    prompts = _dict(rec.get("prompts"))
    llm = _dict(rec.get("llm"))
    return {
        "run": name, "run_url": run_url(name), "iteration": iteration_of(rec),
        "chain": record_chain(rec),
        "chains": run.config.get("parallel") or 1, "status": rec.get("status"),
        "accuracy": accuracy_of(rec), "test_accuracy": rec.get("test_accuracy"),
        "val_accuracy": rec.get("val_accuracy"), "metric": rec.get("metric"),
        "accuracy_sd": statistics.stdev(seeds) if len(seeds := repeat_accuracies(rec)) > 1
        else None, "repeats": [f"{100 * a:.2f}%" for a in seeds],
        "best_accuracy": rec.get("best_accuracy"), "best_iteration": rec.get("best_iteration"),
        "phase": rec.get("phase"), "error": _dict(rec.get("error")) or None,
        "improver_error": rec.get("improver_error"),
        "code_file": rec.get("code_file"), "code": highlighted(code) if code else None,
        "reference": _diff(run, name, reference, rec, code),
        # the reference is often the previous iteration: then its diff is shown once
        "previous": None if previous is reference else _diff(run, name, previous, rec, code),
        "previous_is_reference": previous is not None and previous is reference,
        "triple": _dict(rec.get("triple")),
        "reason": suggestions.get("reason"), "inspiration": suggestions.get("inspiration"),
        "suggestions": numbered(items if isinstance(items, list) else [items] if items else []),
        "prompts": {role: _messages(prompts.get(role)) for role in ROLES},
        "reply": run.reply(rec),
        "metrics": metric_rows(_dict(rec.get("metrics"))), "timings": _dict(rec.get("timings")),
        "llm": {role: _dict(llm.get(role)) for role in ROLES if llm.get(role)},
        "novelty": _dict(rec.get("novelty")) or None,
        "edit": edit_text(_dict(rec.get("edit"))),
        "prev_url": _neighbour(name, run, rec, -1), "next_url": _neighbour(name, run, rec, 1),
    }
