"""Pull the candidate's Python code out of an LLM reply and check it statically.

Nothing here executes the candidate code, and `extract_code` never raises.
"""

from __future__ import annotations

import ast
import builtins
import re
import textwrap
from dataclasses import dataclass

from orchestrator.llm.text import strip_thinking
from orchestrator.outcomes import CONTRACT_ERROR, EXTRACT_ERROR, OK, SYNTAX_ERROR

PYTHON_LANGS = frozenset({"", "python", "py", "python3", "py3", "pytorch", "torch", "ipython"})
OPEN_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`]*)[^`\n]*$")
CLASS_NET_LINE = re.compile(r"^class[ \t]+Net\b", re.MULTILINE)
CODE_START = re.compile(r"^(?:import|from|class|def|@)\b")
MAX_TRIM_LINES = 60
MAX_TRIM_CHARS = 200_000
BUILTIN_NAMES = frozenset(dir(builtins)) | {"__name__", "__file__", "__doc__"}
MAX_DEFINITION_ROUNDS = 8  # helpers of helpers: a chain this long is already unusual


@dataclass
class Extraction:
    """The outcome: a failure class (or ok), the code when one was found, and a message."""

    status: str
    code: str | None
    message: str


@dataclass
class Block:
    """One fenced code block."""

    lang: str
    code: str
    closed: bool


# -- text handling ---------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Unify newlines, drop reasoning traces and characters LLMs emit that Python rejects (NBSP,
    BOM, ZWSP)."""
    text = strip_thinking(text).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\u00a0", " ").replace("\ufeff", "").replace("\u200b", "")


def _closes(line: str, fence: str, indent: int) -> bool:
    """A closing fence: the same fence character, at least as long, indented at most 3 more.

    Text after it on the same line is tolerated (no Python line starts with a fence).
    """
    body = line.lstrip(" \t")
    return body.startswith(fence) and len(line) - len(body) <= indent + 3


def find_blocks(text: str) -> list[Block]:
    """Fenced blocks in order; an unterminated last fence runs to the end of the text."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = OPEN_FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, j = match["fence"], i + 1
        indent = len(lines[i]) - len(lines[i].lstrip(" \t"))
        while j < len(lines) and not _closes(lines[j], fence, indent):
            j += 1
        code = textwrap.dedent("\n".join(lines[i + 1 : j])).strip("\n")
        blocks.append(Block(match["lang"].lower(), code, closed=j < len(lines)))
        i = j + 1
    return blocks


# -- parsing ---------------------------------------------------------------------------------
def parse(code: str) -> ast.Module | None:
    """The AST, or None when the code does not parse (for any reason)."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def expand_leading_tabs(code: str) -> str:
    """Replace tabs in indentation by four spaces (mixed tab/space indentation)."""
    def fix(line: str) -> str:
        body = line.lstrip(" \t")
        return line[: len(line) - len(body)].replace("\t", "    ") + body

    return "\n".join(fix(line) for line in code.split("\n"))


def top_level_classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    """Top-level classes by name (a later definition wins, as at runtime)."""
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def net_class(tree: ast.Module) -> ast.ClassDef | None:
    """The class bound to the top-level name Net: `class Net` or `Net = SomeTopLevelClass`."""
    classes = top_level_classes(tree)
    found = None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Net":
            found = node
        elif _is_net_alias(node):
            found = classes.get(node.value.id)  # type: ignore[attr-defined]
    return found


def _is_net_alias(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "Net"
        and isinstance(node.value, ast.Name)
    )


def defines_net(code: str) -> bool:
    """Whether the code defines a top-level Net (textually when it does not parse)."""
    tree = parse(code)
    if tree is None:
        return bool(CLASS_NET_LINE.search(code))
    return net_class(tree) is not None


def has_init(code: str) -> bool:
    """Whether the code's Net defines __init__ (textually when it does not parse)."""
    tree = parse(code)
    if tree is None:
        return "def __init__" in code
    net = net_class(tree)
    return net is not None and any(
        isinstance(n, ast.FunctionDef) and n.name == "__init__" for n in net.body)


def looks_like_code(tree: ast.Module) -> bool:
    """Parsed text counts as code only with a top-level import, def or class."""
    kinds = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return any(isinstance(node, kinds) for node in tree.body)


# -- choosing the code -----------------------------------------------------------------------
def choose_block(blocks: list[Block]) -> Block | None:
    """The last block defining a complete Net (one with __init__), else the last defining Net,
    so a trailing fragment (a "fixed forward") does not replace the whole; else the largest
    Python block (last on ties)."""
    filled = [b for b in blocks if b.code.strip()]
    with_net = [b for b in filled if defines_net(b.code)]
    complete = [b for b in with_net if has_init(b.code)]
    if with_net:
        return (complete or with_net)[-1]
    python = [b for b in filled if b.lang in PYTHON_LANGS]
    if not python:
        return None
    return max(reversed(python), key=lambda b: len(b.code))


def unfenced_code(text: str) -> str | None:
    """Code from a reply without fences: all of it if it parses, else the region around Net."""
    tree = parse(text)
    if tree is not None:
        return text.strip("\n") if looks_like_code(tree) else None
    if not CLASS_NET_LINE.search(text):
        return None
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if CODE_START.match(line)), 0)
    region = lines[start:]
    return trim_trailing_prose(region)


def trim_trailing_prose(lines: list[str]) -> str:
    """Drop trailing lines until the rest parses (bounded); the whole region otherwise."""
    whole = "\n".join(lines).strip("\n")
    if len(whole) > MAX_TRIM_CHARS:
        return whole
    for cut in range(1, min(MAX_TRIM_LINES, len(lines) - 1) + 1):
        candidate = "\n".join(lines[:-cut]).strip("\n")
        if CLASS_NET_LINE.search(candidate) is None:
            break
        tree = parse(candidate)
        if tree is not None and net_class(tree) is not None:
            return candidate
    return whole


# -- imports from other blocks ---------------------------------------------------------------
def bound_names(tree: ast.AST) -> set[str]:
    """Names a module binds anywhere (assignments, defs, arguments, imports, handlers)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= import_binds(node)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def import_binds(node: ast.Import | ast.ImportFrom) -> set[str]:
    """Names an import statement binds."""
    if isinstance(node, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    return {a.asname or a.name for a in node.names if a.name != "*"}


def undefined_names(tree: ast.Module) -> set[str]:
    """Loaded names the code never binds and that are not builtins."""
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return loaded - bound_names(tree) - BUILTIN_NAMES


def definitions(code: str) -> list[tuple[str, set[str]]]:
    """Top-level imports, classes, functions and assignments of a block as (source, names
    bound); of a block that does not parse, its import lines."""
    tree = parse(code)
    if tree is None:
        found = []
        for line in code.split("\n"):
            sub = parse(line) if re.match(r"^(?:import|from)\s", line) else None
            if sub is not None and isinstance(sub.body[0], (ast.Import, ast.ImportFrom)):
                found.append((line, import_binds(sub.body[0])))
        return found
    lines = code.split("\n")
    found = []
    for node in tree.body:
        binds = statement_binds(node)
        if binds:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            found.append(("\n".join(lines[first - 1 : node.end_lineno]), binds))
    return found


def statement_binds(node: ast.stmt) -> set[str]:
    """Names a top-level import, class, function or assignment binds (others: none)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return import_binds(node)
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()


def add_missing_definitions(code: str, others: list[Block]) -> tuple[str, int]:
    """Prepend what other blocks define that the code uses but never defines: imports, helper
    classes and functions (a residual block in a block of its own), and in turn what those
    use. Returns the module and how many statements were added."""
    imports: list[str] = []
    helpers: list[str] = []
    for _ in range(MAX_DEFINITION_ROUNDS):
        tree = parse(_assemble(imports, helpers, code))
        missing = undefined_names(tree) if tree is not None else set()
        before, new = len(imports), []
        for block in others:
            for source, binds in definitions(block.code):
                if binds & missing and source not in imports + helpers + new:
                    missing -= binds  # a later block binding the same name: the first wins
                    is_import = source.lstrip().startswith(("import ", "from "))
                    (imports if is_import else new).append(source)
        if not new and len(imports) == before:
            break
        helpers = new + helpers  # what a helper needs (its base class) comes before it
    return _assemble(imports, helpers, code), len(imports) + len(helpers)


def _assemble(imports: list[str], helpers: list[str], code: str) -> str:
    parts = ["\n".join(imports), *helpers, code]
    return "\n\n".join(p for p in parts if p)


# -- checks ----------------------------------------------------------------------------------
def syntax_problem(code: str) -> str | None:
    """A 'line N: message' description of the first syntax error, or None."""
    try:
        ast.parse(code)
    except SyntaxError as exc:
        text = (exc.text or "").strip()
        where = f"line {exc.lineno}: " if exc.lineno else ""
        return f"{where}{exc.msg}" + (f": {text[:200]}" if text else "")
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def contract_problem(tree: ast.Module) -> str | None:
    """Why the module breaks the `Net()` contract, or None."""
    net = net_class(tree)
    if net is None:
        names = ", ".join(top_level_classes(tree)) or "none"
        return f"no top-level class Net (top-level classes found: {names})"
    inits = [n for n in net.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    if not inits:
        return None
    return init_problem(inits[-1].args)


def init_problem(args: ast.arguments) -> str | None:
    """Whether `Net.__init__` can be called with no arguments besides self."""
    positional = [*args.posonlyargs, *args.args]
    if not positional and args.vararg is None:
        return "Net.__init__ takes no self parameter"
    optional_from = len(positional) - len(args.defaults)
    required = [a.arg for i, a in enumerate(positional) if 0 < i < optional_from]
    keyword = zip(args.kwonlyargs, args.kw_defaults, strict=True)
    required += [a.arg for a, default in keyword if default is None]
    if required:
        return f"Net.__init__ requires arguments ({', '.join(required)}); Net() must work"
    return None


# -- entry point -----------------------------------------------------------------------------
def extract_code(reply: str) -> Extraction:
    """Find the candidate code in a reply and check syntax and the Net contract."""
    try:
        return _extract(reply)
    except Exception as exc:  # must never raise on any input
        return Extraction(EXTRACT_ERROR, None, f"extraction failed: {type(exc).__name__}: {exc}")


def _extract(reply: str) -> Extraction:
    text = normalize_text(reply if isinstance(reply, str) else str(reply or ""))
    blocks = find_blocks(text)
    chosen = choose_block(blocks)
    if chosen is not None:
        others = [b for b in blocks if b is not chosen and b.lang in PYTHON_LANGS]
        code, added = add_missing_definitions(chosen.code, others)
        where = f"fenced block {blocks.index(chosen) + 1} of {len(blocks)}"
        if added:
            where += f", with {added} import(s) and definition(s) from other blocks"
    else:
        code = unfenced_code(text)
        where = "unfenced reply"
    if not code or not code.strip():
        return Extraction(EXTRACT_ERROR, None, "no Python code found in the reply")
    return check_code(code, where)


def check_code(code: str, where: str) -> Extraction:
    """Syntax and contract checks on the chosen code."""
    problem = syntax_problem(code)
    if problem and "\t" in code:
        fixed = expand_leading_tabs(code)
        if syntax_problem(fixed) is None:
            code, problem = fixed, None
    if problem:
        return Extraction(SYNTAX_ERROR, code, f"syntax error in {where}: {problem}")
    tree = ast.parse(code)
    problem = contract_problem(tree)
    if problem:
        return Extraction(CONTRACT_ERROR, code, problem)
    lines = code.count("\n") + 1
    return Extraction(OK, code, f"{lines} lines from {where}")
