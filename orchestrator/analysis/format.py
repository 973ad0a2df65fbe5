"""How the analysis writes what it found: numbers, intervals and errors as short text, tables as
Markdown and HTML, and figures at one size (the report, the per-cycle table and the retrain
summary share them).

Host code: matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIG_SIZE = (10.0, 5.5)  # inches; at FIG_DPI the PNG is 1000 x 550 pixels
FIG_DPI = 100
MESSAGE_CHARS = 200


# ---------------------------------------------------------------- numbers and text


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p == 0:
        return "< 1e-300"  # below float range
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def interval(ci: tuple[float, float] | list[float] | None) -> str:
    return "n/a" if ci is None else f"[{pct(ci[0])}, {pct(ci[1])}]"


def secs(x: float, total: float | None = None) -> str:
    share = f" ({100 * x / total:.0f}%)" if total else ""
    return f"{x:,.1f} s{share}"


def error_text(err: object, limit: int = MESSAGE_CHARS) -> str:
    """A one-line `Type: message` summary of a record's error (dict or string)."""
    if isinstance(err, dict):
        kind, msg = err.get("type") or "", err.get("message") or ""
        text = f"{kind}: {msg}" if kind and msg else str(kind or msg)
    else:
        text = "" if err is None else str(err)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    """A titled table of already formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]]


def md_cell(text: str) -> str:
    """Text as one Markdown table cell (one line, escaped)."""
    text = " ".join(str(text).split())
    return html.escape(text, quote=False).replace("|", "\\|")


def table_markdown(table: Table) -> str:
    lines = [f"## {table.title}", "", "| " + " | ".join(map(md_cell, table.header)) + " |",
             "|" + "|".join(" --- " for _ in table.header) + "|"]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def table_html(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                   for row in table.rows)
    return (f"<h2>{esc(table.title)}</h2>\n<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>\n")


# ---------------------------------------------------------------- figures


def figure() -> Figure:
    """A figure of FIG_SIZE at FIG_DPI, drawn off screen (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE, dpi=FIG_DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes at FIG_DPI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    return buf.getvalue()


def plain(text: str) -> str:
    """Journal text for matplotlib: `$` would start mathtext."""
    return text.replace("$", r"\$")
