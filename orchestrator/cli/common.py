"""What every command module shares: the console, the one-line errors with their exit codes,
the command decorator, and the arguments and options several commands take."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator.llm.text import printable

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(printable(message))}", highlight=False,
                  soft_wrap=True)
    return typer.Exit(code)


def command(group: typer.Typer, name: str | None = None) -> Callable[[Callable], Callable]:
    """`group.command`, its help the docstring's paragraphs flowing (typer would keep the
    docstring's line breaks in the list of commands)."""
    def register(function: Callable) -> Callable:
        paragraphs = inspect.cleandoc(function.__doc__ or "").split("\n\n")
        return group.command(name, help="\n\n".join(" ".join(p.split()) for p in paragraphs))(
            function)
    return register


Opt = typer.Option
RunsArg = Annotated[list[str], typer.Argument(help="Run directories or names.")]
RunArg = Annotated[str, typer.Argument(metavar="RUN", help="Run directory or name.")]
ResultsDirOpt = Annotated[Path, Opt(help="Where run names are looked up.")]
DataDirOpt = Annotated[str | None, Opt(help="Dataset cache directory.")]
OllamaHostOpt = Annotated[str | None, Opt(envvar="OLLAMA_HOST", help="Ollama server URL.")]
EDIT_CORPUS_HELP = ("The corpus answers as whole files (whole), or, for a candidate with a "
                    "base (the code it edited, or the best before it), as the edit of that "
                    "base in search-replace or udiff form, after a prompt of that format.")
