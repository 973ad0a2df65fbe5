"""What every reader derives from a run's iteration records: one definition each.

The best record, the run summary (`summary.json`, the paper's Table 2) and record order are
defined here only, so the journal, `report`, `show` and `export` cannot disagree.

A record is a *success* when its status is "ok" and its accuracy is a finite number. A record
is *lost* when an infrastructure fault (the LLM server's or the sandbox's) ended it before a
design was evaluated: the chain tries that iteration again, so a run of N iterations ends with N
designs per chain. Lost records stay in the journal as history; the statistics count designs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as sps

from orchestrator.outcomes import EDIT_ERROR, INFRASTRUCTURE_CLASSES, OK


def record_chain(rec: dict) -> int:
    """The chain of a record (absent means 0)."""
    chain = rec.get("chain", 0)
    return chain if isinstance(chain, int) and not isinstance(chain, bool) else 0


def iteration_of(rec: dict, default: int = 0) -> int:
    """The iteration number of a record (`default` when the field is missing)."""
    it = rec.get("iteration")
    return it if isinstance(it, int) and not isinstance(it, bool) else default


def lost(rec: dict) -> bool:
    """An attempt lost to an infrastructure fault: history, not a design of the method."""
    return rec.get("status") in INFRASTRUCTURE_CLASSES


def designs(records: Iterable[dict]) -> list[dict]:
    """The records that are designs: every record but the lost ones."""
    return [r for r in records if not lost(r)]


def lost_counts(records: Iterable[dict]) -> dict[str, int]:
    """How many attempts each infrastructure fault class lost."""
    counts = Counter(str(r["status"]) for r in records if lost(r))
    return dict(sorted(counts.items()))


NUMBERS = (int, float)  # a tuple: `int | float` would build a union on every call


def number(value: object) -> float | None:
    """A journal value as a finite float, else None (journals are read, not trusted)."""
    ok = isinstance(value, NUMBERS) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def accuracy_of(rec: dict) -> float | None:
    """The accuracy (the selection metric) of a successful record as a float, else None."""
    return number(rec.get("accuracy")) if rec.get("status") == OK else None


def test_accuracy_of(rec: dict) -> float | None:
    """The test accuracy of a successful record: its `test_accuracy`, or for a record from
    before that field (selected on test) its accuracy; else None."""
    if accuracy_of(rec) is None:
        return None
    return number(rec.get("test_accuracy", rec.get("accuracy")))


def ordered(records: Iterable[dict]) -> list[dict]:
    """Records in (iteration, chain) order; stable for equal keys."""
    indexed = [(iteration_of(r, i + 1), record_chain(r), i, r) for i, r in enumerate(records)]
    return [r for *_, r in sorted(indexed, key=lambda t: t[:3])]


def successes(records: Iterable[dict]) -> list[tuple[int, float]]:
    """(iteration, accuracy) of the successful records, in iteration order."""
    return _success_pairs(ordered(records))


def _success_pairs(in_order: Sequence[dict]) -> list[tuple[int, float]]:
    pairs = []
    for i, rec in enumerate(in_order):
        acc = accuracy_of(rec)
        if acc is not None:
            pairs.append((iteration_of(rec, i + 1), acc))
    return pairs


def best_of(best: dict | None, record: dict) -> dict | None:
    """The best record once `record` is committed after those whose best is `best`: `record`
    only when it is strictly more accurate, so on ties the one committed first stays (best.py
    is replaced only then). Keeps the best incrementally."""
    acc = accuracy_of(record)
    if acc is not None and (best is None or acc > accuracy_of(best)):
        return record
    return best


def best_record(records: Iterable[dict]) -> dict | None:
    """The most accurate successful record; on ties the one committed first, which is the one
    best.py holds (the journal replaces it only on a strictly better accuracy)."""
    best: dict | None = None
    for rec in records:
        best = best_of(best, rec)
    return best


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


EXACT_MAX_N = 8  # up to 8! = 40,320 pairings, rank correlations get exact permutation p-values


def _spearman(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho of rank vectors: their Pearson correlation, along `axis` (pearsonr takes
    no axis in scipy 1.10, the floor)."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))


def _kendall_s(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Concordant minus discordant pairs: the numerator of Kendall's tau-b, whose denominator
    (the ties of each side) is the same in every pairing, so it orders pairings as tau-b does."""
    i, j = np.triu_indices(a.shape[axis], 1)
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    return np.sum(np.sign(a[..., i] - a[..., j]) * np.sign(b[..., i] - b[..., j]), axis=-1)


def _exact_p(x: np.ndarray, y: np.ndarray, statistic: Callable) -> float:
    """Two-sided p-value of `statistic(x, y)` over all n! orders of x against y (exact)."""
    return float(sps.permutation_test(
        (x,), lambda a, axis=-1: statistic(a, np.broadcast_to(y, a.shape), axis),
        permutation_type="pairings", vectorized=True,
        n_resamples=math.factorial(len(x))).pvalue)


def correlations(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float | None]:
    """Spearman rho and Kendall tau-b with their two-sided p-values (None where undefined).
    Up to EXACT_MAX_N pairs the p-values are exact permutation tests over every pairing (ties
    included); above, scipy's: Spearman's t approximation, Kendall's exact null without ties
    and its normal approximation with them."""
    out: dict[str, float | None] = dict.fromkeys(
        ("spearman_rho", "spearman_p", "kendall_tau", "kendall_p")
    )
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) < 2 or np.ptp(y) == 0 or np.ptp(x) == 0:
        return out
    rho, tau = sps.spearmanr(x, y), sps.kendalltau(x, y)
    out["spearman_rho"], out["spearman_p"] = _finite(rho.statistic), _finite(rho.pvalue)
    out["kendall_tau"], out["kendall_p"] = _finite(tau.statistic), _finite(tau.pvalue)
    if len(x) <= EXACT_MAX_N:
        out["spearman_p"] = _exact_p(sps.rankdata(x), sps.rankdata(y), _spearman)
        out["kendall_p"] = _exact_p(x, y, _kendall_s)
    return out


def repeat_accuracies(rec: dict) -> list[float]:
    """The selection accuracy of each training seed of a record evaluated with --repeats."""
    repeats = rec.get("repeats")
    values = repeats.get("accuracies") if isinstance(repeats, dict) else None
    if not isinstance(values, list):
        return []
    return [x for v in values if (x := number(v)) is not None]


def seed_noise(records: Sequence[dict], best: dict | None) -> dict:
    """The proxy's seed noise: the pooled standard deviation of the selection metric over the
    successes evaluated with several seeds, and whether the best's lead over the runner-up
    exceeds it (Welch's t-test of their per-seed accuracies, p < 0.05). None where there are
    no repeats. `best` is the records' best_record."""
    spread = [np.var(a, ddof=1) for r in records
              if accuracy_of(r) is not None and len(a := repeat_accuracies(r)) >= 2]
    out: dict = {"seed_sd": math.sqrt(float(np.mean(spread))) if spread else None,
                 "repeated": len(spread), "lead": None, "lead_p": None,
                 "lead_exceeds_noise": None}
    ranked = sorted((r for r in records if accuracy_of(r) is not None),
                    key=lambda r: -accuracy_of(r))
    runner_up = next((r for r in ranked if r is not best), None)
    if best is None or runner_up is None:
        return out
    out["lead"] = accuracy_of(best) - accuracy_of(runner_up)
    a, b = repeat_accuracies(best), repeat_accuracies(runner_up)
    if len(a) >= 2 and len(b) >= 2 and np.ptp(a + b) > 0:
        p = _finite(sps.ttest_ind(a, b, equal_var=False).pvalue)
        out["lead_p"] = p
        out["lead_exceeds_noise"] = p is not None and p < 0.05 and out["lead"] > 0
    return out


def summarize(records: Sequence[dict], best: dict | None = None) -> dict:
    """summary.json, the paper's Table 2 for one run: iterations (evaluated designs, all chains
    together; `iterations_per_chain` splits them), successes, success rate, first/best
    accuracy, improvement, and Spearman/Kendall between iteration number and accuracy over the
    successes (None where undefined). Lost attempts count only in `lost`, by fault class.
    Accuracy is the selection metric (`metric`: val or test); the best's test accuracy and the
    seed noise come with it. `best`, the records' best_record where the caller keeps it, spares
    computing it again."""
    lost_by_class = lost_counts(records)
    records = designs(records)
    in_order = ordered(records)
    pairs = _success_pairs(in_order)
    total = len(records)
    first = pairs[0][1] if pairs else None
    first_rec = next((r for r in in_order if accuracy_of(r) is not None), None)
    best = best or best_record(records)
    best_acc = accuracy_of(best) if best else None
    per_chain = Counter(record_chain(r) for r in records)
    return {
        "metric": str(records[0].get("metric", "test")) if records else None,
        "first_test_accuracy": test_accuracy_of(first_rec) if first_rec else None,
        "best_test_accuracy": test_accuracy_of(best) if best else None,
        "iterations": total,
        "iterations_per_chain": {str(c): per_chain[c] for c in sorted(per_chain)},
        "lost": lost_by_class,
        "successful": len(pairs),
        "success_rate": len(pairs) / total if total else None,
        "first_accuracy": first,
        "first_iteration": pairs[0][0] if pairs else None,
        "best_accuracy": best_acc,
        "best_iteration": iteration_of(best) if best else None,
        "best_chain": record_chain(best) if best else None,
        "improvement": best_acc - first if best_acc is not None and first is not None else None,
        **correlations([p[0] for p in pairs], [p[1] for p in pairs]),
        **seed_noise(records, best),
    }


def edit_format_of(rec: dict) -> str:
    """The edit format a record's code was asked in ("whole" for records before the setting)."""
    edit = rec.get("edit") if isinstance(rec.get("edit"), dict) else {}
    fmt = edit.get("format")
    return fmt if isinstance(fmt, str) else "whole"


def _applied(rec: dict) -> bool:
    """Whether a reply's code came out of it: its edit applied, or a whole file was read."""
    edit = rec.get("edit") if isinstance(rec.get("edit"), dict) else {}
    applied = edit.get("applied")
    return applied if isinstance(applied, bool) else rec.get("status") != EDIT_ERROR


def edit_figures(records: Iterable[dict]) -> dict[str, dict]:
    """Per edit format, over the attempts that got a reply (the lost ones lack it): replies;
    generated tokens per reply (the generator's completion_tokens, mean over the replies that
    report them); the replies read as edits, how many of those applied and the edit-apply rate
    (None without edits); the replies read as whole files; the replies whose code came out
    (an edit applied, or a whole file), and the valid (ok) rate among those. The report shows
    these; the UI should too."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        if not lost(rec):
            groups.setdefault(edit_format_of(rec), []).append(rec)
    out = {}
    for fmt, recs in sorted(groups.items()):
        edits = [r for r in recs if (r.get("edit") or {}).get("kind") == "edit"]
        edits_applied = sum(_applied(r) for r in edits)
        tokens = [t for r in recs if (t := number(((r.get("llm") or {}).get("generator") or {})
                                                  .get("completion_tokens"))) is not None]
        applied = [r for r in recs if _applied(r)]
        valid = sum(accuracy_of(r) is not None for r in applied)
        out[fmt] = {
            "replies": len(recs),
            "tokens_per_reply": sum(tokens) / len(tokens) if tokens else None,
            "edits": len(edits), "edits_applied": edits_applied,
            "edit_apply_rate": edits_applied / len(edits) if edits else None,
            "whole": len(recs) - len(edits), "applied": len(applied), "valid": valid,
            "valid_rate": valid / len(applied) if applied else None,
        }
    return out
