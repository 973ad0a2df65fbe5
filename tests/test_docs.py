"""The docs say what the tree holds: the layout table in docs/contracts.md names every module of
the package and only those, the README's and the docs pages' links lead to files, and CI runs
exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orchestrator"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SKIPPED = {"__init__.py", "__main__.py"}


def section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def layout_rows() -> list[tuple[str, str]]:
    """(part, what it holds) per row of the layout table in contracts.md, "The parts"."""
    parts = section((DOCS / "contracts.md").read_text(), "## The parts")
    rows = [line.split("|")[1:3] for line in parts.splitlines() if line.startswith("| `")]
    return [(part.strip(), holds.strip()) for part, holds in rows]


def named_in_layout() -> tuple[set[str], set[str]]:
    """The packages and modules the table names, as paths from the repository root.

    A row's first name is its part: `orchestrator/x/` (a package) or `orchestrator/x.py`. A
    module name without a slash is in the row's part (`loop.py` in `orchestrator/search/`),
    one with a slash is in the package (`analysis/report.py`)."""
    packages: set[str] = set()
    modules: set[str] = set()
    for part, holds in layout_rows():
        names = re.findall(r"`([\w./]+)`", f"{part} {holds}")
        first = names[0]
        folder = first if first.endswith("/") else first.rpartition("/")[0] + "/"
        if first.endswith("/"):
            packages.add(first)
        for name in names:
            if not name.endswith(".py") or name in SKIPPED:
                continue
            if name.startswith("orchestrator/"):
                modules.add(name)
            elif "/" in name:
                modules.add(f"orchestrator/{name}")
            else:
                modules.add(folder + name)
    return packages, modules


def in_tree() -> tuple[set[str], set[str]]:
    """The packages (folders with an `__init__.py`, below the top) and modules of the tree."""
    files = [path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")]
    packages = {f.removesuffix("__init__.py") for f in files
                if f.endswith("/__init__.py") and f != "orchestrator/__init__.py"}
    modules = {f for f in files if f.rpartition("/")[2] not in SKIPPED}
    return packages, modules


def test_the_layout_table_names_every_module_and_only_those():
    named_packages, named_modules = named_in_layout()
    packages, modules = in_tree()
    wrong = [f"{what}: {sorted(paths)}" for what, paths in [
        ("packages missing from the table", packages - named_packages),
        ("packages the table names that do not exist", named_packages - packages),
        ("modules missing from the table", modules - named_modules),
        ("modules the table names that do not exist", named_modules - modules)] if paths]
    assert not wrong, "the layout table in docs/contracts.md:\n" + "\n".join(wrong)


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images that point into the repository."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t for t in targets if not re.match(r"[a-z]+:|#", t)]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as
    hyphens."""
    prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    headings = re.findall(r"^#+ (.*)$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_of_the_readme_and_the_docs_lead_to_files_and_headings():
    broken = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in links(page):
            path, _, anchor = target.partition("#")
            file = page.parent / path
            if not file.exists() or anchor and file.suffix == ".md" and \
                    anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files or headings that do not exist:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_ci_runs_exactly_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", section(README.read_text(),
                                                        "## The two commands"), re.S)
    assert len(commands) == 2, commands  # the main job, then the tests
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == commands[1], (ci[-1], commands[1])
