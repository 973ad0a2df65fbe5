"""Code-level novelty: MinHash-Jaccard similarity over token shingles (NNGPT's filter).

Code is lexed with Python's own `tokenize`; layout tokens (NEWLINE, NL, INDENT, DEDENT,
ENCODING, ENDMARKER), comments and docstrings are dropped, everything else (identifiers,
keywords, literals, operators) is kept verbatim. A shingle is k = 10 consecutive tokens.

Consequences, by design: comments, docstrings and formatting do not change the shingle set;
renaming an identifier changes every shingle that covers one of its occurrences (up to k per
occurrence), so renaming a few locals in a long module keeps it a near-duplicate while renaming
everything makes it look novel. Novelty here is textual, not a property of the computation graph.
"""

from __future__ import annotations

import ast
import io
import json
import threading
import tokenize
from collections.abc import Hashable, Iterable
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

SHINGLE_K = 10
NUM_PERM = 256
TAU = 0.90
# Below this many entries a query that LSH answers with no candidate is checked against all
# entries, so that a sub-threshold maximum similarity can still be reported.
EXHAUSTIVE_LIMIT = 20000
_SEP = "\x1f"
_DROP = frozenset(
    {
        tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
        tokenize.ENCODING, tokenize.ENDMARKER,
    }
)

Span = tuple[tuple[int, int], tuple[int, int]]


def _char_col(lines: list[str], lineno: int, byte_col: int) -> int:
    """Convert ast's UTF-8 byte column to tokenize's character column."""
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def docstring_spans(code: str) -> list[Span]:
    """(start, end) positions of module/class/function docstrings ([] if code does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    lines = code.splitlines(keepends=True)
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    spans = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None) if isinstance(node, kinds) else None
        if not body or not isinstance(body[0], ast.Expr):
            continue
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            start = (value.lineno, _char_col(lines, value.lineno, value.col_offset))
            end_line = value.end_lineno or value.lineno
            end = (end_line, _char_col(lines, end_line, value.end_col_offset or 0))
            spans.append((start, end))
    return spans


def tokens(code: str) -> list[str]:
    """Significant tokens of `code`; a whitespace split when it does not tokenize."""
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type not in _DROP and t.string.strip()]
    except (tokenize.TokenError, SyntaxError, ValueError):
        return code.split()
    spans = docstring_spans(code) if any(t.type == tokenize.STRING for t in toks) else []
    return [t.string for t in toks
            if not (t.type == tokenize.STRING and any(a <= t.start and t.end <= b
                                                      for a, b in spans))]


def shingles(code: str, k: int = SHINGLE_K) -> set[str]:
    """The set of k-token shingles of `code` (one shingle when it has fewer than k tokens)."""
    toks = tokens(code)
    if not toks:
        return set()
    if len(toks) <= k:
        return {_SEP.join(toks)}
    return {_SEP.join(toks[i : i + k]) for i in range(len(toks) - k + 1)}


def jaccard(code_a: str, code_b: str, k: int = SHINGLE_K) -> float:
    """Exact Jaccard similarity of two codes' shingle sets (1.0 for two empty sets)."""
    a, b = shingles(code_a, k), shingles(code_b, k)
    return len(a & b) / len(a | b) if a | b else 1.0


def minhash(code: str, num_perm: int = NUM_PERM, k: int = SHINGLE_K) -> MinHash:
    """MinHash signature of the shingle set of `code`."""
    m = MinHash(num_perm=num_perm)
    m.update_batch([s.encode("utf-8") for s in shingles(code, k)])
    return m


class NoveltyIndex:
    """Archive of code signatures answering "how similar is this to anything seen?".

    LSH (threshold tau) proposes candidates; their MinHash Jaccard estimates give the maximum.
    When LSH proposes nothing and the index is small, every entry is compared (vectorised), so
    a below-tau maximum and its nearest key are still reported.
    """

    def __init__(self, tau: float = TAU, num_perm: int = NUM_PERM, k: int = SHINGLE_K) -> None:
        self.tau, self.num_perm, self.k = tau, num_perm, k
        try:
            self._lsh: MinHashLSH | None = MinHashLSH(threshold=tau, num_perm=num_perm)
        except ValueError:  # extreme tau (e.g. 0.99) leaves LSH no bands: always scan
            self._lsh = None
        self._rows: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []
        self._matrix = np.zeros((16, num_perm), dtype=np.uint64)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def signature(self, code: str | MinHash) -> MinHash:
        """The MinHash of `code` with this index's settings (a MinHash is passed through)."""
        if not isinstance(code, MinHash):
            return minhash(code, self.num_perm, self.k)
        if len(code.hashvalues) != self.num_perm:
            raise ValueError(f"signature has {len(code.hashvalues)} permutations, "
                             f"index uses {self.num_perm}")
        return code

    def add(self, key: Hashable, code: str | MinHash) -> MinHash:
        """Index `code` (or its signature) under `key`; an existing key is replaced."""
        sig = self.signature(code)
        if key in self._rows:
            if self._lsh is not None:
                self._lsh.remove(key)
            row = self._rows[key]
        else:
            row = len(self._keys)
            if row == len(self._matrix):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
            self._rows[key] = row
            self._keys.append(key)
        if self._lsh is not None:
            self._lsh.insert(key, sig)
        self._matrix[row] = sig.hashvalues
        return sig

    def query(self, code: str | MinHash) -> tuple[float, Hashable | None]:
        """(max estimated Jaccard similarity, key of the nearest entry); (0.0, None) if empty."""
        if not self._keys:
            return 0.0, None
        sig = self.signature(code)
        found = self._lsh.query(sig) if self._lsh is not None else []
        rows = [self._rows[key] for key in found]
        if not rows and (self._lsh is None or len(self._keys) <= EXHAUSTIVE_LIMIT):
            rows = list(range(len(self._keys)))
        if not rows:
            return 0.0, None
        rows.sort()
        sims = (self._matrix[rows] == sig.hashvalues).mean(axis=1)
        best = int(np.argmax(sims))
        return float(sims[best]), self._keys[rows[best]]

    def is_duplicate(self, code: str | MinHash) -> bool:
        """True when some indexed entry is at least `tau` similar to `code`."""
        return self.query(code)[0] >= self.tau

    def add_corpus(self, paths: Iterable[str | Path]) -> int:
        """Index reference code: .py files, folders of them, or chat-format .jsonl corpora."""
        added = 0
        for path in map(Path, paths):
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            for file in files:
                for key, code in _corpus_entries(file):
                    self.add(key, code)
                    added += 1
        return added


def _corpus_entries(file: Path) -> Iterable[tuple[str, str]]:
    """(key, code) pairs of one reference file."""
    if file.suffix != ".jsonl":
        yield str(file), file.read_text(encoding="utf-8", errors="replace")
        return
    for n, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines()):
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        messages = item.get("messages") if isinstance(item, dict) else None
        for msg in messages if isinstance(messages, list) else []:
            if isinstance(msg, dict) and msg.get("role") == "assistant":
                yield f"{file}:{n + 1}", str(msg.get("content", ""))


class NoveltyGate:
    """The run-wide novelty index, shared by the chains (datasketch's LSH is not thread-safe)."""

    def __init__(self, tau: float) -> None:
        self.index = NoveltyIndex(tau=tau)
        self._lock = threading.Lock()

    def check(self, code: str) -> dict:
        with self._lock:
            similarity, key = self.index.query(code)
        chain, iteration = key if isinstance(key, tuple) else (0, key)
        return {"max_similarity": round(similarity, 4), "nearest_iteration": iteration,
                "nearest_chain": chain}

    def add(self, chain: int, iteration: int, code: str) -> None:
        with self._lock:
            self.index.add(iteration if chain == 0 else (chain, iteration), code)
