"""Applying the Code Generator's edits (--edit-format search-replace or udiff) to a base code.

A reply holds SEARCH/REPLACE blocks or unified-diff hunks, several per reply, applied in order
to the base (the reference, or the current code after a failure). Each block's old text is
located by an exact match, then by one that ignores whitespace, then by a bounded fuzzy match
(difflib ratio at least `threshold`). Old text found nowhere, or in two places, refuses the
whole edit, never applied in a guessed place: EDIT_ERROR, naming the block and the nearest text
there. A reply without edit blocks is read as a whole file (a complete Net is taken as is).
Unified diffs are parsed here, not with `unidiff`: that library refuses the hunks models write
(headers without line numbers or with wrong counts, no file header). Nothing here raises.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from orchestrator.config import EDIT_FORMATS, RunConfig
from orchestrator.outcomes import DUPLICATE, EDIT_ERROR, EXTRACT_ERROR, INFRASTRUCTURE_CLASSES, OK
from orchestrator.search.extract import check_code, extract_code, normalize_text
from orchestrator.search.prompts import Attempt, GeneratorInput

WHOLE, SEARCH_REPLACE, UDIFF = EDIT_FORMATS
DEFAULT_THRESHOLD = RunConfig.edit_match_threshold  # difflib ratio, whitespace removed
MAX_BLOCKS = 64  # more blocks than this in one reply: refused
FUZZY_MAX_BASE_LINES = 2000  # the fuzzy search runs only within these bounds
FUZZY_MAX_BLOCK_LINES = 200
SHOWN_LINES = 4  # lines of a block, and of the nearest text, an error message quotes

SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\b.*$")
DIVIDER = re.compile(r"^\s*={5,9}\s*$")
REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\b.*$")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


@dataclass
class Block:
    """One edit: `old` lines to find in the code, `new` lines to put in their place."""

    number: int
    old: list[str]
    new: list[str]


@dataclass
class Applied:
    """What a reply made of the base: the status (ok, edit_error, or the checks' class), the
    code, a message, and what the journal keeps of the edit."""

    status: str
    code: str | None
    message: str
    kind: str  # "edit": blocks applied (or refused); "whole": read as a whole file
    blocks: int = 0
    edit: str = ""  # the blocks as the reply wrote them
    base: int | None = None  # the iteration whose code the edit changed (set by the loop)

    @property
    def applied(self) -> bool:
        return self.status != EDIT_ERROR


class EditError(ValueError):
    """A block cannot be read or placed; the message says which and why."""


# -- parsing ---------------------------------------------------------------------------------
def parse_search_replace(text: str) -> tuple[list[Block], str]:
    """The SEARCH/REPLACE blocks of a reply and their raw text; EditError for a block cut
    short."""
    lines, blocks, raw = text.split("\n"), [], []
    i = 0
    while i < len(lines):
        if not SEARCH.match(lines[i]):
            i += 1
            continue
        start, number = i, len(blocks) + 1
        divider = _next(lines, i + 1, DIVIDER)
        end = _next(lines, (divider or i) + 1, REPLACE) if divider is not None else None
        if divider is None or end is None:
            missing = "=======" if divider is None else ">>>>>>> REPLACE"
            raise EditError(f"block {number} has no {missing} line (a reply cut short?)")
        blocks.append(Block(number, lines[start + 1:divider], lines[divider + 1:end]))
        raw.append("\n".join(lines[start:end + 1]))
        i = end + 1
    return blocks, "\n".join(raw)


def _next(lines: list[str], start: int, marker: re.Pattern) -> int | None:
    """The index of the next line matching `marker`, stopping at a new SEARCH line."""
    for j in range(start, len(lines)):
        if marker.match(lines[j]):
            return j
        if SEARCH.match(lines[j]):
            return None
    return None


def parse_udiff(text: str) -> tuple[list[Block], str]:
    """The hunks of a unified diff in a reply (line numbers in @@ headers are ignored, as
    models get them wrong) and their raw text. A hunk runs from its @@ line while lines start
    with ' ', '-' or '+' (an empty line is empty context); a fence, a file header or prose
    ends it."""
    lines, hunks, raw = text.split("\n"), [], []
    current: list[str] | None = None
    for k, line in enumerate(lines):
        if line.startswith("@@"):
            current = [line]
            hunks.append(current)
        elif current is None:
            continue
        elif FENCE.match(line) or (line.startswith("--- ") and k + 1 < len(lines)
                                   and lines[k + 1].startswith("+++ ")):
            current = None
        elif line == "" or line[0] in " +-":
            current.append(line)
        elif not line.startswith("\\"):  # "\ No newline at end of file" is skipped
            current = None
    blocks = []
    for number, hunk in enumerate(hunks, 1):
        body = hunk[1:]
        while body and body[-1].strip() == "":
            body.pop()
        old = [ln[1:] for ln in body if ln[:1] in (" ", "-", "")]
        new = [ln[1:] for ln in body if ln[:1] in (" ", "+", "")]
        blocks.append(Block(number, old, new))
        raw.append("\n".join([hunk[0], *body]))
    return blocks, "\n".join(raw)


PARSERS = {SEARCH_REPLACE: parse_search_replace, UDIFF: parse_udiff}


# -- locating --------------------------------------------------------------------------------
def _squash(line: str) -> str:
    return "".join(line.split())


def _trimmed(lines: list[str]) -> list[str]:
    """`lines` without blank lines at either end."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _matches(base: list[str], old: list[str], same) -> list[int]:
    width = len(old)
    return [i for i in range(len(base) - width + 1)
            if all(same(base[i + j], old[j]) for j in range(width))]


def _fuzzy(base: list[str], old: list[str]) -> list[tuple[float, int]]:
    """(difflib ratio, start) of every window of len(old) lines, best first, whitespace
    removed (indentation would make any two lines of a block look alike)."""
    squashed = [_squash(line) for line in base]
    target, width = "\n".join(_squash(line) for line in old), len(old)
    scored = []
    for i in range(max(len(base) - width + 1, 1)):
        matcher = difflib.SequenceMatcher(None, "\n".join(squashed[i:i + width]), target,
                                          autojunk=False)
        scored.append((matcher.ratio(), i))
    return sorted(scored, key=lambda s: (-s[0], s[1]))


def _quote(lines: list[str]) -> str:
    shown = [ln.strip() for ln in lines[:SHOWN_LINES]]
    more = len(lines) - SHOWN_LINES
    return " | ".join(shown) + (f" | ... ({more} more lines)" if more > 0 else "")


def locate(base: list[str], block: Block, threshold: float) -> tuple[int, int, bool]:
    """(start, end, exact) of the one place in `base` the block's old text occupies: an exact
    match, else one ignoring whitespace, else the single best fuzzy window; EditError when it
    is found nowhere or in more than one place."""
    old = block.old
    if not _trimmed(old):
        raise EditError(f"block {block.number} has no old text to find (no context lines): "
                        "it cannot be placed")
    exact = _matches(base, old, str.__eq__)
    if len(exact) == 1:
        return exact[0], exact[0] + len(old), True
    core = _trimmed(old)
    loose = exact or _matches(base, core, lambda a, b: _squash(a) == _squash(b))
    width = len(core) if not exact else len(old)
    if len(loose) > 1:
        places = ", ".join(str(i + 1) for i in loose[:5])
        raise EditError(f"block {block.number} [{_quote(core)}] matches {len(loose)} places "
                        f"(lines {places}): give more context lines so that it matches one")
    if loose:
        return loose[0], loose[0] + width, False
    if len(base) > FUZZY_MAX_BASE_LINES or len(core) > FUZZY_MAX_BLOCK_LINES:
        raise EditError(f"block {block.number} [{_quote(core)}] is not in the code (too large "
                        "for a fuzzy search)")
    scored = _fuzzy(base, core)
    best_ratio, best = scored[0]
    if best_ratio >= threshold:
        rivals = [i for ratio, i in scored[1:] if ratio >= threshold and abs(i - best) >= len(core)]
        if rivals:
            raise EditError(f"block {block.number} [{_quote(core)}] is close to {1 + len(rivals)}"
                            f" places (lines {best + 1}, {rivals[0] + 1}): give more context")
        return best, best + len(core), False
    nearest = base[best:best + len(core)]
    raise EditError(f"block {block.number} [{_quote(core)}] is not in the code; the nearest "
                    f"text there (line {best + 1}, similarity {best_ratio:.2f}) is "
                    f"[{_quote(nearest)}]")


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _reindented(new: list[str], old: list[str], found: list[str]) -> list[str]:
    """`new` shifted by the indentation difference between the old text and where it was
    found (a block written one level off)."""
    first_old = next((ln for ln in old if ln.strip()), "")
    first_found = next((ln for ln in found if ln.strip()), "")
    have, want = _indent(first_old), _indent(first_found)
    if have == want:
        return new
    if want.startswith(have):
        extra = want[len(have):]
        return [extra + ln if ln.strip() else ln for ln in new]
    if have.startswith(want):
        cut = len(have) - len(want)
        return [ln[cut:] if ln[:cut].strip() == "" else ln.lstrip() for ln in new]
    return new


def apply_blocks(base: str, blocks: list[Block], threshold: float) -> str:
    """`base` with every block applied in order (each to the result of those before)."""
    lines = base.split("\n")
    for block in blocks:
        start, end, exact = locate(lines, block, threshold)
        if exact:
            lines[start:end] = block.new
        else:
            new = _edges_cut(block.new, block.old)
            lines[start:end] = _reindented(new, block.old, lines[start:end])
    return "\n".join(lines)


def _edges_cut(new: list[str], old: list[str]) -> list[str]:
    """`new` without as many blank lines at each end as `old` had (the matched text left them
    out)."""
    lead = next((i for i, ln in enumerate(old) if ln.strip()), 0)
    trail = next((i for i, ln in enumerate(reversed(old)) if ln.strip()), 0)
    while lead and new and not new[0].strip():
        new, lead = new[1:], lead - 1
    while trail and new and not new[-1].strip():
        new, trail = new[:-1], trail - 1
    return new


# -- entry point -----------------------------------------------------------------------------
def apply_reply(reply: str, base: str | None, edit_format: str,
                threshold: float = DEFAULT_THRESHOLD) -> Applied:
    """The code a reply makes of `base`: its edits applied and the result checked as a whole
    file is (syntax, the Net contract). Without a base, or with the whole format, or when the
    reply holds no edit block, the reply is read as a whole file."""
    try:
        return _apply(reply, base, edit_format, threshold)
    except Exception as exc:  # must never raise on any input
        return Applied(EDIT_ERROR, None, f"edit failed: {type(exc).__name__}: {exc}", "edit")


def _apply(reply: str, base: str | None, edit_format: str, threshold: float) -> Applied:
    if edit_format == WHOLE or base is None:
        return _whole(reply)
    text = normalize_text(reply if isinstance(reply, str) else str(reply or ""))
    try:
        blocks, raw = PARSERS[edit_format](text)
    except EditError as exc:
        return Applied(EDIT_ERROR, None, str(exc), "edit")
    if not blocks:
        whole = _whole(reply)
        if whole.status == EXTRACT_ERROR:
            return Applied(EDIT_ERROR, None, f"the reply holds no {edit_format} edit and no "
                           f"complete module ({whole.message})", "edit")
        return whole
    if len(blocks) > MAX_BLOCKS:
        return Applied(EDIT_ERROR, None, f"{len(blocks)} edit blocks, more than {MAX_BLOCKS}",
                       "edit", len(blocks), raw)
    try:
        code = apply_blocks(base, blocks, threshold)
    except EditError as exc:
        return Applied(EDIT_ERROR, None, str(exc), "edit", len(blocks), raw)
    checked = check_code(code, f"the code after {len(blocks)} edit block(s)")
    return Applied(checked.status, checked.code, checked.message, "edit", len(blocks), raw)


def _whole(reply: str) -> Applied:
    extraction = extract_code(reply)
    return Applied(extraction.status, extraction.code, extraction.message, "whole")


# -- writing edits (the fine-tuning corpus) --------------------------------------------------
CONTEXT_TRIES = (3, 5, 8, 13)  # context lines tried until every block places in one spot


def render_edit(base: str, code: str, edit_format: str) -> str | None:
    """A reply in `edit_format` that turns `base` into `code` when applied here: udiff hunks or
    SEARCH/REPLACE blocks, with as much context as it takes for every block to match one place
    only; None when no such edit exists (or the codes are equal)."""
    old, new = base.split("\n"), code.split("\n")
    if old == new:
        return None
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for context in CONTEXT_TRIES:
        groups = list(matcher.get_grouped_opcodes(context))
        if edit_format == UDIFF:
            body = "\n".join(difflib.unified_diff(old, new, "a/net.py", "b/net.py", n=context,
                                                  lineterm=""))
            reply = f"```diff\n{body}\n```"
        else:
            reply = "\n\n".join(_search_replace(old, new, g) for g in groups)
        applied = apply_reply(reply, base, edit_format)
        if applied.kind == "edit" and applied.code == code:
            return reply
    return None


def _search_replace(old: list[str], new: list[str], group: list[tuple]) -> str:
    """One SEARCH/REPLACE block for a group of difflib opcodes."""
    i1, j1 = group[0][1], group[0][3]
    i2, j2 = group[-1][2], group[-1][4]
    search, replace = "\n".join(old[i1:i2]), "\n".join(new[j1:j2])
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def edit_base(given: GeneratorInput, last: dict | None) -> Attempt | None:
    """The code an edit changes: the last attempt's after it failed (not as a duplicate or
    by an infrastructure fault), else the reference, else the last attempt's; None before
    there is any code (a first architecture is written whole)."""
    failed = last is not None and last["status"] not in ({OK, DUPLICATE} | INFRASTRUCTURE_CLASSES)
    if failed and given.current is not None:
        return given.current
    return given.reference or given.current



def edit_info(edit_format: str, edit: Applied | None, edit_file: str | None) -> dict:
    """What the record keeps of the edit: the format, how the reply was read ("edit" or
    "whole"; None without a reply), the iteration it edited, its blocks, whether it applied,
    its size in lines (the edit's, or the whole code's), and the file of its raw blocks.
    The reply's tokens are the generator's completion_tokens."""
    if edit is None:
        return {"format": edit_format, "kind": None}
    text = edit.edit if edit.kind == "edit" else (edit.code or "")
    return {"format": edit_format, "kind": edit.kind, "base_iteration": edit.base,
            "blocks": edit.blocks, "applied": edit.applied,
            "lines": text.count("\n") + 1 if text else 0, "file": edit_file}
