"""The package keeps the layers docs/contracts.md lists: every import of orchestrator goes to
the importer's own part or a lower layer, only the entry points import the search loop, and
every module stays short enough to read."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orchestrator"
CONTRACTS = ROOT / "docs" / "contracts.md"
LOOP = "orchestrator.search.loop"
LOOP_IMPORTERS = {"orchestrator/assembly.py"}
ENTRY_POINT = ("__main__", "cli")  # `python -m orchestrator` runs cli.main: allowed in a layer
MAX_LINES = 500  # no module over this
CLI_LINES = 450  # each command module under this


def parts_section() -> str:
    text = CONTRACTS.read_text()
    return text.split("\n## The parts\n", 1)[1].split("\n## ", 1)[0]


def layers() -> dict[str, int]:
    """Each part's layer (1 is the lowest), from the numbered list in "The parts"."""
    return {name: int(number)
            for number, line in re.findall(r"^(\d+)\. (.*)$", parts_section(), re.M)
            for name in re.findall(r"`([\w.]+)`", line)}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def part_of(path: Path) -> str | None:
    """The top-level part a module belongs to (`search`, `cli`, ...); None for the package's
    own `__init__.py`, which only holds the version."""
    first = path.relative_to(PACKAGE).parts[0]
    return None if first == "__init__.py" else first.removesuffix(".py")


def tree_parts() -> set[str]:
    return {part for path in modules() if (part := part_of(path))}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every orchestrator name the module imports, in functions too;
    `from A import b` gives `A.b`."""
    dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "orchestrator" or name.startswith("orchestrator."):
                yield node.lineno, name


def target_part(name: str, known: set[str]) -> str | None:
    """The part an imported name lives in; None for the package root (`__version__`)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in known else None


def test_every_part_has_one_layer():
    listed, present = set(layers()), tree_parts()
    assert not present - listed, (
        f"parts of orchestrator/ missing from the layer list in docs/contracts.md: "
        f"{sorted(present - listed)}")
    assert not listed - present, (
        f"the layer list in docs/contracts.md names parts that do not exist: "
        f"{sorted(listed - present)}")


def test_imports_go_to_the_same_part_or_a_lower_layer():
    layer = layers()
    known = set(layer) | tree_parts()
    wrong = []
    for path in modules():
        source = part_of(path)
        if source is None:
            continue
        for line, name in imports(path):
            target = target_part(name, known)
            if target in (None, source) or (source, target) == ENTRY_POINT:
                continue
            if source not in layer or target not in layer:
                wrong.append(f"{rel(path)}:{line} imports {name}: "
                             f"{source if source not in layer else target} has no layer")
            elif layer[target] == layer[source]:
                wrong.append(f"{rel(path)}:{line} imports {name}: {source} and {target} share "
                             f"layer {layer[source]}, and parts of one layer do not import "
                             "each other")
            elif layer[target] > layer[source]:
                wrong.append(f"{rel(path)}:{line} imports {name}: {source} (layer "
                             f"{layer[source]}) may not import {target} (layer {layer[target]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_only_the_entry_points_import_the_search_loop():
    wrong = [f"{rel(path)}:{line} imports {name}"
             for path in modules() if rel(path) not in LOOP_IMPORTERS
             for line, name in imports(path) if name == LOOP or name.startswith(LOOP + ".")]
    assert not wrong, (f"only {sorted(LOOP_IMPORTERS)} may import {LOOP}:\n" + "\n".join(wrong))


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_is_over_500_lines():
    long = [f"{rel(path)}: {n} lines" for path in modules() if (n := line_count(path)) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_each_command_module_stays_under_450_lines():
    long = [f"{rel(path)}: {n} lines" for path in sorted((PACKAGE / "cli").glob("*.py"))
            if (n := line_count(path)) >= CLI_LINES]
    assert not long, f"command modules of {CLI_LINES} lines or more:\n" + "\n".join(long)
