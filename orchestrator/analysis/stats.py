"""Statistics over a run's iteration records (pure functions, no I/O).

The run summary (the paper's Table 2) and the best record are defined once, in
`orchestrator.store.records`.

- `windows`: NNGPT-style per-window summaries (valid rate with a Wilson 95% interval, mean/std
  accuracy with a Student-t 95% interval cut to [0, 1], fraction above a quality threshold,
  novel count).
- `failure_breakdown`, `time_breakdown`: where iterations failed and where the time went.

Windows and failure counts are over designs: attempts lost to an infrastructure fault (see
`orchestrator.store.records.lost`) are not the method's, and are counted apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import ndtri, stdtrit

from orchestrator.outcomes import OK
from orchestrator.store.records import accuracy_of, designs, iteration_of, ordered

# First-epoch accuracy thresholds for "above threshold" (NNGPT uses 40/20/70 % for
# CIFAR-10/CIFAR-100/SVHN; the others are this project's choices for easier/harder sets).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "cifar10": 0.40,
    "cifar100": 0.20,
    "svhn": 0.70,
    "mnist": 0.90,
    "fashionmnist": 0.80,
    "imagenette": 0.40,
}
PHASES = ("generate", "evaluate", "improve")
ROLES = ("generator", "improver")


def default_threshold(dataset: str | None) -> float | None:
    """The default accuracy threshold of a dataset name ("CIFAR-10" -> 0.40), or None."""
    key = "".join(ch for ch in str(dataset or "").lower() if ch.isalnum())
    return DEFAULT_THRESHOLDS.get(key)


def _num(value: object) -> float:
    """A finite float from a journal value, 0.0 for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for k successes out of n, inside [0, 1] (None when n == 0)."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    # scipy's binomtest(k, n).proportion_ci(method="wilson"), the same operations, without
    # the test's p-value, which took a millisecond (the UI works out hundreds of windows)
    z = float(ndtri(0.5 + 0.5 * conf))
    p = k / n
    denom = 2 * (n + z**2)
    center = (2 * n * p + z**2) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z**2)
    return (0.0 if k == 0 else center - delta), (1.0 if k == n else center + delta)


def accuracy_interval(values: Sequence[float], conf: float = 0.95) -> tuple[float, float] | None:
    """Confidence interval for the mean of accuracies in [0, 1]: Student's t interval cut to
    [0, 1] (None with fewer than two values). The mean lies in [0, 1], so the cut interval
    covers it exactly as often as the t interval does; it only drops impossible values."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return None
    if np.ptp(arr) == 0:  # no spread: scipy's interval would be nan
        return float(arr[0]), float(arr[0])
    # scipy's ttest_1samp(arr, 0).confidence_interval(conf), the same operations, without the
    # test, which took a millisecond a window; stdtrit is the t quantile that t.ppf calls
    mean, sem = float(np.mean(arr)), float(np.std(arr, ddof=1)) / math.sqrt(arr.size)
    half = float(stdtrit(arr.size - 1, 0.5 + 0.5 * conf)) * sem
    return max(0.0, mean - half), min(1.0, mean + half)


def _novel_count(records: Sequence[dict], tau: float) -> int | None:
    sims = [
        r["novelty"].get("max_similarity")
        for r in records
        if isinstance(r.get("novelty"), dict)
    ]
    sims = [s for s in sims if isinstance(s, (int, float)) and not isinstance(s, bool)]
    return sum(s < tau for s in sims) if sims else None


def window_summary(
    records: Sequence[dict], threshold: float | None = None, tau: float = 0.90
) -> dict:
    """NNGPT per-cycle statistics over one group of records (its designs: lost attempts left
    out)."""
    records = designs(records)
    accs = [a for a in (accuracy_of(r) for r in records) if a is not None]
    n, valid = len(records), len(accs)
    above = sum(a >= threshold for a in accs) if threshold is not None else None
    return {
        "n": n,
        "valid": valid,
        "valid_rate": valid / n if n else None,
        "valid_ci": wilson_interval(valid, n),
        "mean_acc": float(np.mean(accs)) if accs else None,
        "std_acc": float(np.std(accs, ddof=1)) if valid > 1 else None,
        "acc_ci": accuracy_interval(accs),
        "best_acc": max(accs) if accs else None,
        "above_threshold": above,
        "above_threshold_fraction": above / valid if above is not None and valid else None,
        "above_threshold_ci": wilson_interval(above, valid) if above is not None else None,
        "novel": _novel_count(records, tau),
    }


def windows(
    records: Sequence[dict], size: int = 50, threshold: float | None = None, tau: float = 0.90
) -> list[dict]:
    """Summaries of iterations 1..size, size+1..2*size, ... (windows without records skipped;
    lost attempts left out)."""
    return [{"start": start, "end": end, **window_summary(group, threshold, tau)}
            for start, end, group in window_groups(records, size)]


def window_groups(records: Sequence[dict], size: int) -> list[tuple[int, int, list[dict]]]:
    """(first iteration, last iteration present, designs) of each window of `size` iterations
    that holds designs, in order: what `windows` summarises."""
    return groups_in_order(ordered(designs(records)), size)


def groups_in_order(in_order: Sequence[dict], size: int) -> list[tuple[int, int, list[dict]]]:
    """`window_groups` of designs already in (iteration, chain) order."""
    if size < 1:
        raise ValueError("window size must be >= 1")
    groups: dict[int, list[dict]] = {}
    for i, rec in enumerate(in_order):
        groups.setdefault((iteration_of(rec, i + 1) - 1) // size, []).append(rec)
    out = []
    for idx in sorted(groups):
        start = idx * size + 1
        out.append((start, max(iteration_of(r, start) for r in groups[idx]), groups[idx]))
    return out


def failure_breakdown(records: Iterable[dict]) -> dict[str, int]:
    """Count of each failure class of the designs (status other than "ok"), most frequent
    first; lost attempts are not counted (`records.lost_counts` counts them)."""
    counts = Counter(str(r.get("status") or "unknown") for r in designs(records))
    counts.pop(OK, None)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def prompt_lengths(records: Sequence[dict], num_ctx: dict[str, int]) -> dict[str, dict]:
    """Per model, the prompts' measured length (the server's prompt_eval_count) beside the
    num_ctx the run reserved for it: calls, median, 95th percentile and longest prompt, and
    the longest prompt plus its reply, in tokens."""
    prompts: dict[str, list[int]] = {}
    whole: dict[str, list[int]] = {}
    for rec in records:
        llm_rec = rec.get("llm") if isinstance(rec.get("llm"), dict) else {}
        for role in ROLES:
            call = llm_rec.get(role)
            if not isinstance(call, dict) or not isinstance(call.get("prompt_tokens"), int):
                continue
            model = str(call.get("model"))
            prompts.setdefault(model, []).append(call["prompt_tokens"])
            whole.setdefault(model, []).append(
                call["prompt_tokens"] + int(_num(call.get("completion_tokens"))))
    out = {}
    for model, lengths in prompts.items():
        out[model] = {"num_ctx": num_ctx.get(model) or num_ctx.get(f"{model}:latest"),
                      "calls": len(lengths), "median": float(np.median(lengths)),
                      "p95": float(np.percentile(lengths, 95)), "max": max(lengths),
                      "max_with_reply": max(whole[model])}
    return out


def time_breakdown(records: Sequence[dict]) -> dict:
    """Seconds per phase, evaluation seconds per outcome, and LLM usage per role."""
    seconds = dict.fromkeys(PHASES, 0.0)
    by_status: Counter[str] = Counter()
    llm = {role: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
           for role in ROLES}
    train = 0.0
    for rec in records:
        timings = rec.get("timings") if isinstance(rec.get("timings"), dict) else {}
        for phase in PHASES:
            seconds[phase] += _num(timings.get(phase))
        by_status[str(rec.get("status") or "unknown")] += _num(timings.get("evaluate"))
        metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
        train += _num(metrics.get("train_seconds"))
        llm_rec = rec.get("llm") if isinstance(rec.get("llm"), dict) else {}
        for role in ROLES:
            call = llm_rec.get(role)
            if not isinstance(call, dict):
                continue
            llm[role]["calls"] += 1
            llm[role]["prompt_tokens"] += int(_num(call.get("prompt_tokens")))
            llm[role]["completion_tokens"] += int(_num(call.get("completion_tokens")))
            llm[role]["seconds"] += _num(call.get("seconds"))
    seconds["total"] = sum(seconds[p] for p in PHASES)
    return {
        "seconds": seconds,
        "evaluate_by_status": dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
        "train_seconds": train,
        "llm": llm,
    }
