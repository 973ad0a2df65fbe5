"""LLM reply text made safe to parse and store: encodable Unicode, reasoning traces removed."""

from __future__ import annotations

import re

# Reasoning models (DeepSeek-R1, Qwen3, ...) served by an Ollama that does not separate their
# thinking put it in the content between these tags, first; one cut by num_predict has no end.
THINKING = re.compile(r"<(think|thinking)>.*?</\1>", re.DOTALL | re.IGNORECASE)
UNCLOSED_THINKING = re.compile(r"\s*<(think|thinking)>", re.IGNORECASE)


def valid_unicode(text: str) -> str:
    """`text` encodable as UTF-8: surrogate pairs (e.g. split across stream chunks) joined, lone
    surrogates, which a broken or hostile server can send as JSON escapes, replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def strip_thinking(text: str) -> str:
    """`text` without <think>...</think> reasoning traces, whose drafts are not the answer;
    empty when it is an unfinished trace."""
    text = THINKING.sub("", text)
    return "" if UNCLOSED_THINKING.match(text) else text
