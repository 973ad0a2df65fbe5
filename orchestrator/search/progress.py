"""What the user sees while a search runs: a spinner per phase, one line per iteration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from orchestrator import outcomes as fc
from orchestrator.llm.text import printable
from orchestrator.store.records import lost


class Reporter:
    def __init__(self, total: int, console: Console | None = None, chains: int = 1) -> None:
        self.total = total
        self.console = console or Console(stderr=True)
        self.chains = chains
        self.last_error: str | None = None
        self.improver_errors = 0

    @contextlib.contextmanager
    def phase(self, iteration: int, name: str) -> Iterator[None]:
        """A live spinner while a slow phase runs (on a terminal, with one chain)."""
        if self.chains > 1:
            yield
            return
        with busy(self.console, f"[{iteration}/{self.total}] {name}…"):
            yield

    def iteration(self, record: dict, summary: dict) -> None:
        status, accuracy = record["status"], record["accuracy"]
        if status != fc.OK:
            self.last_error = status
        if record.get("improver_error"):
            self.improver_errors += 1
        improver = (f"  [red]improver errors {self.improver_errors}[/]"
                    if self.improver_errors else "")
        style = "green" if status == fc.OK else "yellow" if lost(record) else "red"
        again = "  [yellow]lost to a fault: this iteration runs again[/]" if lost(record) else ""
        acc = f"{accuracy:6.2%}" if accuracy is not None else "   -  "
        best = summary["best_accuracy"]
        best_text = f"{best:6.2%} (it {summary['best_iteration']})" if best is not None else "-"
        t = record["timings"]
        rate = "-" if summary["success_rate"] is None else f"{summary['success_rate']:6.1%}"
        chain = f"c{record.get('chain', 0)} " if self.chains > 1 else ""
        self.console.print(
            f"{chain}[{record['iteration']:>4}/{self.total}] [{style}]{status:<17}[/] acc {acc}  "
            f"best {best_text}  success {rate}  "
            f"last error {self.last_error or '-'}{improver}{again}  "
            f"[dim]gen {t['generate']:.1f}s eval {t['evaluate']:.1f}s "
            f"improve {t['improve']:.1f}s[/]",
            highlight=False, soft_wrap=True,
        )

    def note(self, message: str) -> None:
        self.console.print(escape(printable(message)), highlight=False)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(printable(message))}", highlight=False)


@contextlib.contextmanager
def busy(console: Console, text: str) -> Iterator[None]:
    """A spinner with the elapsed time while something slow runs (on a terminal only); it
    disappears when done."""
    if not console.is_terminal:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        progress.add_task(escape(text), total=None)
        yield
