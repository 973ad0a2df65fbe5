"""One iteration as a view model: highlighted code, the two diffs, and the record's fields.

The code is highlighted by Pygments, which escapes what it formats; every other field is plain
text that the template escapes. Candidate code is only ever read as text.
"""

from __future__ import annotations

import difflib
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


def iteration_view(run: Run, name: str, rec: dict) -> dict:
    """Everything the iteration view shows."""
    code = run.code(rec)
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
        "reference": _diff(run, name, reference_of(run, rec), rec, code),
        "previous": _diff(run, name, previous_of(run, rec), rec, code),
        "triple": _dict(rec.get("triple")),
        "reason": suggestions.get("reason"), "inspiration": suggestions.get("inspiration"),
        "suggestions": items if isinstance(items, list) else [items] if items else [],
        "prompts": {role: _messages(prompts.get(role)) for role in ROLES},
        "reply": run.reply(rec),
        "metrics": _dict(rec.get("metrics")), "timings": _dict(rec.get("timings")),
        "llm": {role: _dict(llm.get(role)) for role in ROLES if llm.get(role)},
        "novelty": _dict(rec.get("novelty")) or None,
        "prev_url": _neighbour(name, run, rec, -1), "next_url": _neighbour(name, run, rec, 1),
    }
