"""Reports over one or more runs: Table 2-style summary, windows, failures, time, trajectory plot.

`build_report` writes `report.md`, `trajectory.png` and a self-contained `report.html` (the plot
embedded as a data URI, all journal text escaped) and returns the same content plus a
JSON-serialisable `metrics` dict. Numbers, tables and figures are written by `format`.
"""

from __future__ import annotations

import base64
import html
import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from orchestrator.analysis import paper, stats
from orchestrator.analysis.format import (
    Table,
    error_text,
    figure,
    interval,
    md_cell,
    num,
    pct,
    plain,
    png_bytes,
    pp,
    pval,
    secs,
    table_html,
    table_markdown,
)
from orchestrator.outcomes import FAILURE_CLASSES, OK
from orchestrator.store.records import (
    edit_figures,
    iteration_of,
    ordered,
    successes,
    summarize,
)
from orchestrator.store.run import Run


@dataclass
class Report:
    """What `build_report` produced: metrics (JSON-ready), markdown, html and written files."""

    metrics: dict
    markdown: str
    html: str
    files: dict[str, Path] = field(default_factory=dict)


def run_labels(runs: list[Run]) -> list[str]:
    """Column labels: run names, made unique."""
    labels: list[str] = []
    for run in runs:
        label = run.name
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


# ---------------------------------------------------------------- metrics


def _examples(records: list[dict]) -> dict[str, dict]:
    """Per failure class: count, first and last iteration, last error message."""
    out: dict[str, dict] = {}
    for i, rec in enumerate(ordered(records)):
        status = str(rec.get("status") or "unknown")
        if status == OK:
            continue
        it = iteration_of(rec, i + 1)
        entry = out.setdefault(status, {"count": 0, "first_iteration": it})
        entry["count"] += 1
        entry["last_iteration"] = it
        if rec.get("error"):
            entry["last_error"] = error_text(rec.get("error"))
    return out


def run_metrics(run: Run, window: int = 50, threshold: float | None = None,
                tau: float = 0.90) -> dict:
    """All statistics of one run, JSON-serialisable."""
    thr = threshold if threshold is not None else stats.default_threshold(run.dataset)
    overall = stats.window_summary(run.records, thr, tau)
    return {
        "name": run.name,
        "path": str(run.path),
        "dataset": run.dataset,
        "generator_model": run.config.get("generator_model"),
        "improver_model": run.config.get("improver_model"),
        "seed": run.config.get("seed"),
        "planned_iterations_per_chain": run.config.get("iterations"),
        "finished": run.summary is not None,
        "threshold": thr,
        "table2": summarize(run.records),
        "overall": overall,
        "windows": stats.windows(run.records, window, thr, tau),
        "failures": stats.failure_breakdown(run.records),
        "failure_examples": _examples(run.records),
        "times": stats.time_breakdown(run.records),
        "edit_formats": edit_figures(run.records),
        "prompts": stats.prompt_lengths(run.records, run.config.get("num_ctx_per_model") or {}),
        "warnings": list(run.warnings),
    }


# ---------------------------------------------------------------- tables


def best_place(summary: dict) -> str:
    """Where a run's best was found: "it. 7", or "it. 7, chain 2" in a run with chains."""
    chain = summary.get("best_chain")
    return f"it. {summary['best_iteration']}" + (f", chain {chain}" if chain else "")


def summary_table(ms: list[dict], labels: list[str]) -> Table:
    """The paper's Table 2, one column per run."""
    t2 = [m["table2"] for m in ms]

    def best(t: dict) -> str:
        return pct(t["best_accuracy"]) + (f" ({best_place(t)})"
                                          if t["best_iteration"] is not None else "")

    rows = [
        ["Dataset"] + [m["dataset"] for m in ms],
        ["Generator"] + [str(m["generator_model"] or "n/a") for m in ms],
        ["Improver"] + [str(m["improver_model"] or "n/a") for m in ms],
        ["Iterations (evaluated designs)"] + [_iterations(t) for t in t2],
        ["Attempts lost to faults (not counted)"] + [_lost(t) for t in t2],
        ["Successful evaluations"] + [str(t["successful"]) for t in t2],
        ["Success rate"] + [pct(t["success_rate"]) for t in t2],
        ["First accuracy"] + [pct(t["first_accuracy"]) for t in t2],
        ["Best accuracy"] + [best(t) for t in t2],
        ["Improvement"] + [pp(t["improvement"]) for t in t2],
        ["Spearman ρ"] + [num(t["spearman_rho"]) for t in t2],
        ["Spearman p"] + [pval(t["spearman_p"]) for t in t2],
        ["Kendall τ"] + [num(t["kendall_tau"]) for t in t2],
        ["Kendall p"] + [pval(t["kendall_p"]) for t in t2],
        ["Mean accuracy [95% CI]"]
        + [f"{pct(m['overall']['mean_acc'])} {interval(m['overall']['acc_ci'])}" for m in ms],
        ["Above threshold"] + [_above(m["overall"], m["threshold"]) for m in ms],
        ["Selected on"] + [SELECTION.get(t["metric"] or "test", "n/a") for t in t2],
        ["Best's test accuracy"] + [pct(t["best_test_accuracy"]) for t in t2],
        ["Seed sd of the metric"] + [_noise(t) for t in t2],
        ["Best's lead over the runner-up"] + [_lead(t) for t in t2],
    ]
    return Table("Search summary (Table 2)", ["Metric", *labels], rows)


def _iterations(t: dict) -> str:
    per_chain = t["iterations_per_chain"]
    if len(per_chain) < 2:
        return str(t["iterations"])
    return f"{t['iterations']} ({len(per_chain)} chains: {', '.join(map(str, per_chain.values()))})"


def _lost(t: dict) -> str:
    return ", ".join(f"{n} {cls}" for cls, n in t["lost"].items()) or "0"


SELECTION = {"val": "validation accuracy (test steers nothing)",
             "test": "test accuracy (the paper's protocol)"}


def _noise(t: dict) -> str:
    if t.get("seed_sd") is None:
        return "n/a (one seed per candidate; measure it with --repeats)"
    return f"{100 * t['seed_sd']:.2f} pp ({t['repeated']} candidates with several seeds)"


def _lead(t: dict) -> str:
    if t.get("lead") is None:
        return "n/a"
    if t.get("lead_p") is None:
        return f"{pp(t['lead'])} (no seed spread of both to compare)"
    verdict = "exceeds" if t["lead_exceeds_noise"] else "does not exceed"
    return f"{pp(t['lead'])}, {verdict} the seed noise (Welch p = {pval(t['lead_p'])})"


def paper_table(m: dict, label: str) -> Table | None:
    """The paper's Table 2 for the run's dataset and generator family, beside the run's own
    (its best as test accuracy, the paper's metric); None for a dataset the paper did not
    use."""
    rows = paper.paper_rows(m["dataset"], m["generator_model"])
    if not rows:
        return None
    t = m["table2"]
    mine = {**t, "best_accuracy": t["best_test_accuracy"],
            "first_accuracy": t["first_test_accuracy"]}
    lines = [("Iterations", "iterations", str), ("Success rate", "success_rate", pct),
             ("First accuracy (test)", "first_accuracy", pct),
             ("Best accuracy (test)", "best_accuracy", pct),
             ("Spearman ρ", "spearman_rho", num), ("Kendall τ", "kendall_tau", num)]
    table = [[name] + [fmt(mine[key]) if mine[key] is not None else "n/a"]
             + [fmt(r[key]) if r[key] is not None else "not legible in the source"
                for r in rows] for name, key, fmt in lines]
    return Table(f"{label} beside the paper ({paper.SOURCE})",
                 ["Metric", label, *(f"paper: {r['model']}" for r in rows)], table)


def _above(summary: dict, thr: float | None) -> str:
    if thr is None:
        return "n/a (no threshold)"
    return (f"{pct(summary['above_threshold_fraction'])} of successes ≥ {pct(thr, 0)} "
            f"({summary['above_threshold']})")


def windows_table(m: dict, label: str, window: int) -> Table:
    """NNGPT-style per-window statistics of one run."""
    thr = m["threshold"]
    rows = [
        [
            f"{w['start']}–{w['end']}", str(w["n"]), str(w["valid"]),
            f"{pct(w['valid_rate'])} {interval(w['valid_ci'])}",
            f"{pct(w['mean_acc'])} ± {pct(w['std_acc'])}", interval(w["acc_ci"]),
            pct(w["best_acc"]),
            "n/a" if thr is None else pct(w["above_threshold_fraction"]),
            "n/a" if w["novel"] is None else str(w["novel"]),
        ]
        for w in m["windows"]
    ]
    header = ["Iterations", "n", "Valid", "Valid rate [95% CI]", "Mean acc ± std",
              "Mean 95% CI", "Best", f"≥ {pct(thr, 0) if thr is not None else 'thr'}", "Novel"]
    return Table(f"Windows of {window} iterations: {label}", header, rows)


def failure_table(ms: list[dict], labels: list[str]) -> Table:
    """Counts of each failure class per run (share of the run's iterations), then the attempts
    lost to infrastructure faults, which no statistic counts (tried again)."""
    classes = sorted({c for m in ms for c in m["failures"]},
                     key=lambda c: (-sum(m["failures"].get(c, 0) for m in ms), c))
    rows = []
    for cls in classes:
        cells = []
        for m in ms:
            count, total = m["failures"].get(cls, 0), m["table2"]["iterations"]
            cells.append(f"{count} ({pct(count / total if total else None)})")
        rows.append([cls, *cells])
    if not rows:
        rows.append(["(no failures)", *["0" for _ in ms]])
    lost = sorted({c for m in ms for c in m["table2"]["lost"]})
    rows += [[f"{cls}: lost, tried again (not counted)",
              *[str(m["table2"]["lost"].get(cls, 0)) for m in ms]] for cls in lost]
    return Table("Failures", ["Class", *labels], rows)


def edit_table(ms: list[dict], labels: list[str]) -> Table:
    """Per run and edit format (store.records.edit_figures): replies, generated tokens per
    reply, the edits that applied, the whole files, and the valid share of the code that came
    out (edits applied and whole files)."""
    rows = [[label, fmt, str(f["replies"]),
             "n/a" if f["tokens_per_reply"] is None else f"{f['tokens_per_reply']:,.0f}",
             f"{pct(f['edit_apply_rate'])} ({f['edits_applied']} of {f['edits']})",
             str(f["whole"]), f"{pct(f['valid_rate'])} ({f['valid']} of {f['applied']})"]
            for m, label in zip(ms, labels, strict=True)
            for fmt, f in m["edit_formats"].items()]
    return Table("Edit formats", ["Run", "Format", "Replies", "Generated tokens per reply",
                                  "Edits applied", "Whole files", "Valid among applied"], rows)


def error_table(ms: list[dict], labels: list[str]) -> Table:
    """The last error message of each failure class, per run."""
    rows = [
        [label, cls, str(ex["count"]), f"{ex['first_iteration']}–{ex['last_iteration']}",
         ex.get("last_error", "")]
        for m, label in zip(ms, labels, strict=True)
        for cls, ex in m["failure_examples"].items()
    ]
    return Table("Latest error per class", ["Run", "Class", "Count", "Iterations", "Error"], rows)


def time_table(ms: list[dict], labels: list[str]) -> Table:
    """Wall-clock seconds per phase and LLM usage per role."""
    ts = [m["times"] for m in ms]
    rows = [[phase.capitalize()] + [secs(t["seconds"][phase], t["seconds"]["total"]) for t in ts]
            for phase in stats.PHASES]
    rows.append(["Total"] + [secs(t["seconds"]["total"]) for t in ts])
    rows.append(["Training (runner)"] + [secs(t["train_seconds"]) for t in ts])
    rows.append(["Evaluating failures"] + [secs(_failed_eval(t), t["seconds"]["evaluate"])
                                           for t in ts])
    for role in stats.ROLES:
        rows.append([f"{role.capitalize()} calls"] + [str(t["llm"][role]["calls"]) for t in ts])
        rows.append([f"{role.capitalize()} tokens (prompt / completion)"]
                    + [f"{t['llm'][role]['prompt_tokens']:,} / "
                       f"{t['llm'][role]['completion_tokens']:,}" for t in ts])
    return Table("Time and tokens", ["", *labels], rows)


def context_table(ms: list[dict], labels: list[str]) -> Table:
    """Each model's reserved num_ctx beside its prompts' measured length, in tokens."""
    rows = [[label, model, f"{p['num_ctx']:,}" if p["num_ctx"] else "-", str(p["calls"]),
             f"{p['median']:,.0f}", f"{p['p95']:,.0f}", f"{p['max']:,}",
             f"{p['max_with_reply']:,}"]
            for m, label in zip(ms, labels, strict=True) for model, p in m["prompts"].items()]
    return Table("Context: num_ctx and the prompts' measured length (tokens)",
                 ["Run", "Model", "num_ctx", "Calls", "Median prompt", "95th percentile",
                  "Longest", "Longest with reply"], rows)


def _failed_eval(times: dict) -> float:
    return sum(s for k, s in times["evaluate_by_status"].items() if k != OK)


def time_notes(ms: list[dict], labels: list[str]) -> list[str]:
    """One sentence per run on where the time went."""
    notes = []
    for m, label in zip(ms, labels, strict=True):
        sec = m["times"]["seconds"]
        if not sec["total"]:
            notes.append(f"{label}: no timings recorded.")
            continue
        phase = max(stats.PHASES, key=lambda p: sec[p])
        failed = _failed_eval(m["times"])
        share = f"{100 * failed / sec['evaluate']:.0f}%" if sec["evaluate"] else "0%"
        notes.append(f"{label}: {phase} took most of the time "
                     f"({100 * sec[phase] / sec['total']:.0f}% of {sec['total']:,.0f} s); "
                     f"{share} of evaluation time went to failed candidates.")
    return notes


# ---------------------------------------------------------------- rendering


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd}.note{color:#555}"""


def render_markdown(title: str, tables: list[Table], notes: list[str], warnings: list[str],
                    image: str | None) -> str:
    parts = [f"# {md_cell(title)}", ""]
    if image:
        parts += [f"![accuracy trajectory]({image})", ""]
    parts += [table_markdown(t) for t in tables]
    parts += ["## Where the time went", ""] + [f"- {md_cell(n)}" for n in notes] + [""]
    if warnings:
        parts += ["## Journal warnings", ""] + [f"- {md_cell(w)}" for w in warnings] + [""]
    return "\n".join(parts)


def render_html(title: str, tables: list[Table], notes: list[str], warnings: list[str],
                png: bytes | None) -> str:
    esc = html.escape
    img = ""
    if png:
        data = base64.b64encode(png).decode("ascii")
        img = f'<img alt="accuracy trajectory" src="data:image/png;base64,{data}">\n'
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    warn = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>\n{img}"
        + "".join(table_html(t) for t in tables)
        + f'<h2>Where the time went</h2><ul class="note">{items}</ul>\n'
        + (f'<h2>Journal warnings</h2><ul class="note">{warn}</ul>\n' if warnings else "")
        + "</body></html>\n"
    )


# ---------------------------------------------------------------- plot


def _class_colours() -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {cls: cmap(i % 20) for i, cls in enumerate(sorted(FAILURE_CLASSES))}


def _failures_by_class(records: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for j, rec in enumerate(ordered(records)):
        if rec.get("status") != OK:
            out.setdefault(str(rec.get("status") or "unknown"), []).append(
                iteration_of(rec, j + 1))
    return out


def plot_trajectory(runs: list[Run], labels: list[str], thresholds: list[float | None]) -> bytes:
    """Accuracy per iteration (points), best so far (steps), failures (x by class); PNG bytes."""
    fig = figure()
    ax = fig.add_subplot()
    colours, seen_classes = _class_colours(), set()
    top = 0.1
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        colour, label = f"C{i % 10}", plain(label)
        pairs = successes(run.records)
        if pairs:
            its, accs = zip(*pairs, strict=True)
            best = list(itertools.accumulate(accs, max))
            last = max(iteration_of(r, 0) for r in run.records)
            ax.scatter(its, accs, s=16, alpha=0.6, color=colour, linewidths=0)
            ax.step([*its, last], [*best, best[-1]], where="post", color=colour, lw=2,
                    label=f"{label} (best so far)")
            top = max(top, max(accs))
        else:
            ax.plot([], [], color=colour, lw=2, label=f"{label} (no success)")
        y_fail = -0.04 - 0.03 * i
        for cls, its in _failures_by_class(run.records).items():
            ax.scatter(its, [y_fail] * len(its), marker="x", s=22,
                       color=colours.get(cls, "black"),
                       label=None if cls in seen_classes else cls)
            seen_classes.add(cls)
    uniq = {t for t in thresholds if t is not None}
    if len(uniq) == 1:
        threshold = uniq.pop()
        ax.axhline(threshold, color="grey", ls=":", lw=1, label="threshold")
        top = max(top, threshold)  # keep the line in view
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylim(-0.06 - 0.03 * len(runs), min(1.02, top * 1.15 + 0.02))
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy after 1 epoch")
    datasets = plain(", ".join(dict.fromkeys(r.dataset for r in runs)))
    ax.set_title(f"Accuracy trajectory: {datasets}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2, framealpha=0.85)
    return png_bytes(fig)


# ---------------------------------------------------------------- entry points


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_report(runs: list[Run], window: int = 50, threshold: float | None = None,
                 out_dir: Path | None = None, tau: float = 0.90, write: bool = True) -> Report:
    """Compute, render and (unless write=False) write the report of one or more runs."""
    if not runs:
        raise ValueError("build_report needs at least one run")
    labels = run_labels(runs)
    ms = [run_metrics(r, window, threshold, tau) for r in runs]
    tables = [summary_table(ms, labels)]
    tables += [t for m, label in zip(ms, labels, strict=True) if (t := paper_table(m, label))]
    tables += [windows_table(m, label, window) for m, label in zip(ms, labels, strict=True)]
    tables += [failure_table(ms, labels), edit_table(ms, labels), error_table(ms, labels),
               time_table(ms, labels),
               context_table(ms, labels)]
    notes = time_notes(ms, labels)
    warnings = [f"{label}: {w}" for m, label in zip(ms, labels, strict=True) for w in m["warnings"]]
    title = f"Report: {', '.join(labels)}"
    png = plot_trajectory(runs, labels, [m["threshold"] for m in ms])
    metrics = {"generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
               "window": window, "tau": tau, "runs": ms}
    report = Report(metrics=metrics, html=render_html(title, tables, notes, warnings, png),
                    markdown=render_markdown(title, tables, notes, warnings, "trajectory.png"))
    if write:
        out = Path(out_dir) if out_dir is not None else runs[0].path
        out.mkdir(parents=True, exist_ok=True)
        report.files = {"markdown": out / "report.md", "png": out / "trajectory.png",
                        "html": out / "report.html"}
        _write(report.files["png"], png)
        _write(report.files["markdown"], report.markdown.encode("utf-8"))
        _write(report.files["html"], report.html.encode("utf-8"))
    return report
