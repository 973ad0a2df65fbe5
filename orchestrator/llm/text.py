"""Untrusted text made safe: LLM replies to parse and store (encodable Unicode, reasoning traces
removed), and candidate output to print (no terminal control sequences)."""

from __future__ import annotations

import re

# Reasoning models (DeepSeek-R1, Qwen3, ...) served by an Ollama that does not separate their
# thinking put it in the content between these tags, first; one cut by num_predict has no end.
THINKING = re.compile(r"<(think|thinking)>.*?</\1>", re.DOTALL | re.IGNORECASE)
UNCLOSED_THINKING = re.compile(r"\s*<(think|thinking)>", re.IGNORECASE)
# C0 controls but tab and newline (ESC starts ANSI/OSC sequences, CR overwrites the line),
# DEL and the C1 controls (CSI, OSC, ... as single characters).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def valid_unicode(text: str) -> str:
    """`text` encodable as UTF-8: surrogate pairs (e.g. split across stream chunks) joined, lone
    surrogates, which a broken or hostile server can send as JSON escapes, replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def printable(text: str) -> str:
    """`text` with terminal control characters replaced by U+FFFD, for printing what a candidate
    or a server wrote (the journal keeps the original)."""
    return CONTROL.sub("\ufffd", text)


def strip_thinking(text: str) -> str:
    """`text` without <think>...</think> reasoning traces, whose drafts are not the answer;
    empty when it is an unfinished trace."""
    text = THINKING.sub("", text)
    return "" if UNCLOSED_THINKING.match(text) else text
