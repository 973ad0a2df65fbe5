"""NNGPT's per-cycle table and plot: how the generator changes from one fine-tuning cycle to
the next.

Per cycle: candidates generated (n), valid ones (trained: status ok, finite accuracy), the valid
rate with its Wilson 95% interval, best and mean accuracy (mean with a Student-t 95% interval
cut to [0, 100%]),
the share of valid candidates at or above the accuracy threshold, the novel candidates admitted
to the corpus, the corpus size after the cycle, the model the cycle published (tag) and its
fine-tuning loss. The statistics are `stats.window_summary` over the cycle's records.
"""

from __future__ import annotations

import math
from pathlib import Path

from orchestrator.analysis import stats
from orchestrator.analysis.format import figure, interval, num, pct, png_bytes
from orchestrator.llm.text import printable


def cycle_metrics(cycles: list[dict], threshold: float | None, tau: float = 0.90) -> list[dict]:
    """One row per cycle, in cycle order: `cycle`, the `stats.window_summary` fields of its
    records (`n`, `valid`, `valid_rate`, `valid_ci`, `mean_acc`, `std_acc`, `acc_ci`,
    `best_acc`, `above_threshold`, `above_threshold_fraction`, `above_threshold_ci`, `novel`),
    `threshold`, and the cycle's `admitted`, `duplicates`, `corpus_size`, `tag`,
    `train_loss`."""
    rows = []
    for cycle in sorted(cycles, key=lambda c: c["cycle"]):
        rows.append({
            "cycle": cycle["cycle"],
            **stats.window_summary(cycle.get("records") or [], threshold, tau),
            "threshold": threshold,
            "admitted": cycle.get("admitted"),
            "duplicates": cycle.get("duplicates"),
            "corpus_size": cycle.get("corpus_size"),
            "tag": cycle.get("tag"),
            "train_loss": cycle.get("train_loss"),
        })
    return rows


def _cell(value: object) -> str:
    """User text (a tag) as one printable table cell."""
    text = " ".join(printable(str(value)).split())
    return text.replace("|", "\\|") if text else "n/a"


def _count(value: object) -> str:
    return "n/a" if value is None else str(value)


def _loss(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return num(float(value), 4)


def cycles_markdown(rows: list[dict]) -> str:
    """The rows of `cycle_metrics` as a Markdown table, one line per cycle (like NNGPT's)."""
    thr = next((r["threshold"] for r in rows if r.get("threshold") is not None), None)
    header = ["Cycle", "n", "Valid", "Valid rate [95% CI]", "Best", "Mean [95% CI]",
              f"≥ {pct(thr, 0)}" if thr is not None else "≥ thr", "Novel admitted", "Corpus",
              "Train loss", "Tag"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        cells = [
            str(r["cycle"]), str(r["n"]), str(r["valid"]),
            f"{pct(r['valid_rate'])} {interval(r['valid_ci'])}",
            pct(r["best_acc"]),
            f"{pct(r['mean_acc'])} {interval(r['acc_ci'])}",
            pct(r["above_threshold_fraction"]) if r.get("threshold") is not None else "n/a",
            _count(r.get("admitted")), _count(r.get("corpus_size")),
            _loss(r.get("train_loss")), _cell(r.get("tag") or ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def cycles_plot(rows: list[dict]) -> bytes:
    """Valid rate (Wilson 95% band), mean accuracy (Student-t 95% band cut to [0, 1]), best
    accuracy and the share above the threshold against the cycle; PNG bytes."""
    fig = figure()
    ax = fig.add_subplot()
    xs = [r["cycle"] for r in rows]

    def band(key: str, side: int) -> list[float]:
        return [_nan(r[key][side]) if r.get(key) else math.nan for r in rows]

    series = [
        ("valid rate", "valid_rate", "valid_ci", "C0"),
        ("mean accuracy", "mean_acc", "acc_ci", "C1"),
        ("best accuracy", "best_acc", None, "C2"),
    ]
    thr = next((r["threshold"] for r in rows if r.get("threshold") is not None), None)
    if thr is not None:
        series.append((f"share ≥ {pct(thr, 0)}", "above_threshold_fraction", None, "C3"))
    for label, key, ci, colour in series:
        ax.plot(xs, [_nan(r.get(key)) for r in rows], marker="o", color=colour, lw=2,
                label=label + (" (95% CI)" if ci else ""))
        if ci:
            ax.fill_between(xs, band(ci, 0), band(ci, 1), color=colour, alpha=0.15, lw=0)
    if thr is not None:
        ax.axhline(thr, color="grey", ls=":", lw=1, label="threshold")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("cycle")
    ax.set_ylabel("rate / first-epoch accuracy")
    if xs:
        ax.set_xticks(xs)
    ax.set_title("Fine-tuning cycles")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85)
    return png_bytes(fig)


def write_cycles_report(rows: list[dict], out: Path) -> tuple[str, dict[str, Path]]:
    """The table (cycles.md) and the plot (cycles.png) of `rows` in `out`: the table's text,
    and each file by its kind."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "cycles.md", "plot": out / "cycles.png"}
    markdown = cycles_markdown(rows)
    files["markdown"].write_text(markdown)
    files["plot"].write_bytes(cycles_plot(rows))
    return markdown, files
