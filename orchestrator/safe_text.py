"""Text from untrusted JSON (LLM replies) made safe to store and encode."""

from __future__ import annotations


def valid_unicode(text: str) -> str:
    """`text` encodable as UTF-8: surrogate pairs (e.g. split across stream chunks) joined, lone
    surrogates, which a broken or hostile server can send as JSON escapes, replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
