"""The Prompt Improver's reply: {reason, inspiration, suggestions}, parsed leniently."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.llm.text import strip_thinking, valid_unicode

DIAGNOSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string"},
        "inspiration": {"type": "string"},
        "suggestions": {"type": "string"},
    },
    "required": ["reason", "inspiration", "suggestions"],
}

def field_chars(num_predict: int) -> int | None:
    """The most characters of each diagnosis field: num_predict / 4, so the three fit within
    num_predict tokens even at one character a token (a rambling small model writes runs of
    digits, one token each); None (no bound) when num_predict is unlimited."""
    return max(1, num_predict // 4) if num_predict > 0 else None


def bounded_schema(num_predict: int) -> dict[str, Any]:
    """DIAGNOSIS_SCHEMA with each field at most `field_chars` long, so the server's grammar
    closes the JSON before the reply is cut."""
    bound = field_chars(num_predict)
    if bound is None:
        return DIAGNOSIS_SCHEMA
    fields = {k: {**v, "maxLength": bound} for k, v in DIAGNOSIS_SCHEMA["properties"].items()}
    return {**DIAGNOSIS_SCHEMA, "properties": fields}


SYNONYMS: dict[str, tuple[str, ...]] = {
    "reason": (
        "reason", "reasons", "problem", "problems", "diagnosis", "analysis", "issue", "issues",
        "cause", "root_cause", "explanation", "error_analysis",
    ),
    "inspiration": (
        "inspiration", "inspirations", "idea", "ideas", "insight", "insights", "reference",
        "references", "motivation", "related_work",
    ),
    "suggestions": (
        "suggestions", "suggestion", "improvements", "improvement", "recommendations",
        "recommendation", "changes", "next_steps", "fixes", "fix", "actions", "proposal",
    ),
}
FIELD_OF = {syn: field for field, syns in SYNONYMS.items() for syn in syns}
FENCE = re.compile(r"(?:```|~~~)[ \t]*[\w-]*[ \t]*\n(.*?)(?:```|~~~|\Z)", re.DOTALL)
TRAILING_COMMA = re.compile(r",\s*([}\]])")
MAX_OBJECTS = 200
KEY = r"(?P<key>[A-Za-z][A-Za-z _-]{1,30}?)"
HEADER = re.compile(r"^[#>*_ \t-]*" + KEY + r"[ \t]*[*_]*[ \t]*[:：][*_]*[ \t]*(?P<rest>.*)$")
HEADING = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*|\*\*)" + KEY + r"[ \t]*(?:\*\*)?[ \t]*(?P<rest>)$")


class DiagnosisError(ValueError):
    """The reply holds nothing usable as a diagnosis."""


@dataclass
class Diagnosis:
    """The Prompt Improver's diagnosis of the last iteration."""

    reason: str
    inspiration: str
    suggestions: str

    def to_dict(self) -> dict[str, str]:
        """A plain dict with the three fields."""
        return asdict(self)


# -- value handling --------------------------------------------------------------------------
def normalize_key(key: object) -> str:
    """'Root Cause' / 'root-cause' -> 'root_cause'."""
    return re.sub(r"[\s-]+", "_", str(key).strip().lower())


def as_text(value: Any) -> str:
    """A field value as text: lists become numbered lines, dicts 'key: value' lines."""
    if value is None:
        return ""
    if isinstance(value, str):
        return valid_unicode(value).strip()  # JSON escapes may decode to lone surrogates
    if isinstance(value, (list, tuple)):
        items = [as_text(v) for v in value]
        return "\n".join(f"{i}. {item}" for i, item in enumerate(filter(None, items), start=1))
    if isinstance(value, Mapping):
        return "\n".join(f"{k}: {as_text(v)}" for k, v in value.items() if as_text(v))
    return valid_unicode(str(value)).strip()


def from_mapping(obj: Mapping[str, Any]) -> Diagnosis | None:
    """A Diagnosis from a dict with known (or synonym) keys; one level of nesting allowed."""
    fields: dict[str, str] = {}
    for key, value in obj.items():
        field = FIELD_OF.get(normalize_key(key))
        if field and field not in fields:
            fields[field] = as_text(value)
    if not fields:
        nested = [v for v in obj.values() if isinstance(v, Mapping)]
        return from_mapping(nested[0]) if len(nested) == 1 else None
    if not fields.get("suggestions"):
        return None
    return Diagnosis(fields.get("reason", ""), fields.get("inspiration", ""), fields["suggestions"])


# -- finding JSON ----------------------------------------------------------------------------
def balanced_objects(text: str) -> list[str]:
    """Balanced {...} spans in order of their opening brace, found in one pass.

    Quotes count as strings only inside braces, so prose apostrophes and quotes around the
    JSON do not derail the scan; a single quote opens a string only after a JSON delimiter.
    """
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    quote, escaped = "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            spans.append((stack.pop(), i))
        elif stack and (ch == '"' or ch == "'" and _after_delimiter(text, i)):
            quote = ch
    spans.sort()
    return [text[a : b + 1] for a, b in spans[:MAX_OBJECTS]]


def _after_delimiter(text: str, i: int) -> bool:
    """Whether a quote at i follows a JSON-ish delimiter (so it is not an apostrophe)."""
    j = i - 1
    while j >= 0 and text[j] in " \t\n":
        j -= 1
    return j >= 0 and text[j] in "{[,:"


def load_object(span: str) -> Any:
    """json, then json without trailing commas, then a Python literal; None if none works."""
    for attempt in (span, TRAILING_COMMA.sub(r"\1", span)):
        try:
            return json.loads(attempt)
        except ValueError:
            pass
    try:
        return ast.literal_eval(span)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def candidates(text: str) -> Iterator[str]:
    """Texts that might be the JSON object: whole reply, fenced blocks, braced spans."""
    yield text.strip()
    for match in FENCE.finditer(text):
        yield match.group(1).strip()
    yield from balanced_objects(text)


def from_json(text: str) -> Diagnosis | None:
    """The first candidate that parses to a usable diagnosis."""
    for candidate in candidates(text):
        if not candidate.startswith("{"):
            continue
        obj = load_object(candidate)
        if isinstance(obj, Mapping):
            found = from_mapping(obj)
            if found is not None:
                return found
    return None


# -- prose with headings ---------------------------------------------------------------------
def from_headings(text: str) -> Diagnosis | None:
    """'Reason: ...' / '**Suggestions**:' sections in prose, when there is no JSON."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.split("\n"):
        match = HEADER.match(line) or HEADING.match(line)
        field = FIELD_OF.get(normalize_key(match["key"])) if match else None
        if field and match:
            current = field
            sections.setdefault(field, []).append(match["rest"])
        elif current is not None:
            sections[current].append(line)
    fields = {k: "\n".join(v).strip() for k, v in sections.items()}
    if not fields.get("suggestions"):
        return None
    return Diagnosis(fields.get("reason", ""), fields.get("inspiration", ""), fields["suggestions"])


def parse_diagnosis(text: str) -> Diagnosis:
    """The diagnosis in a reply; DiagnosisError when nothing usable is there."""
    text = strip_thinking(text or "").replace("\r\n", "\n")
    found = from_json(text) or from_headings(text)
    if found is None:
        raise DiagnosisError(f"no usable diagnosis in the reply: {text[:200]!r}")
    return found
