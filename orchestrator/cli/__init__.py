"""The `orchestrator` command line: the commands and how their errors map to exit codes (2 for
a wrong setting or input, 3 for a run stopped by a fault, 130 for Ctrl-C). A search is
assembled by `orchestrator/assembly.py`; each module here holds a group of commands:

- `run.py`: `run`, a search;
- `results.py`: `report`, `retrain`, `show`, `export`, which read runs;
- `finetune.py`: `finetune` and `cycles`;
- `tools.py`: `ui`, `data`, `sandbox`, `models`;
- `common.py`: the console, errors and options they share.
"""

from __future__ import annotations

import sys

import typer

from orchestrator.cli import finetune, results, run, tools

app = typer.Typer(help="LLM-driven neural architecture search with feedback memory.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for group in (run, results, finetune, tools):  # in this order in --help
    app.add_typer(group.commands)


def main() -> None:  # pragma: no cover - console entry for `python -m orchestrator`
    sys.exit(app())
