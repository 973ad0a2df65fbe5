"""The fine-tuning corpus: prompt-code pairs selected as NNGPT selects them.

A candidate of a run enters the corpus when it (i) trained (status ok, finite accuracy), (ii)
reached the accuracy threshold (per dataset by default: `stats.DEFAULT_THRESHOLDS`, NNGPT's
40/20/70 % for CIFAR-10/CIFAR-100/SVHN; none for a dataset without one) and (iii) is novel:
its MinHash-Jaccard similarity is below tau to every corpus entry and to every candidate
earlier in the same selection that trained, admitted or not (NNGPT compares with the corpus and
with the earlier generations of the cycle).

`corpus.jsonl` holds one chat-format entry per line, with its provenance:
`{"messages": [system, user, assistant], "source": {...}}`; the assistant message is the code,
the system and user messages the prompt the generator got (a task description and the default
system message where the record kept none). `source` is `{run, dataset, iteration, chain,
accuracy, cycle}` for a candidate and `{file, line}` for a user-given pair (`Corpus.seed`).
Entries are appended one fsynced line at a time; a torn last line (a kill mid-write) is cut off
when the corpus is loaded again, and a selection repeated after a crash skips the candidates
already in (counted as `already`), so the outer loop can simply run it again.

With an edit format (`search-replace` or `udiff`, as `--edit-format` of `run`), a candidate
with a base (the code its iteration edited, or in a whole-file run the best of its chain
before it: the reference its prompt showed) becomes an edit example: the prompt of that
format (the one the run sent, or one rendered from prompts/ with the base and the suggestions
the iteration got) and, as the answer, the edit that turns the base into the candidate
(`search.edits.render_edit`, checked to apply). Such an entry keeps the candidate's code in
`code` for the novelty filter; a candidate without a base stays a whole-file example, as the
search writes a first architecture whole.

`export_corpus` (`orchestrator export --corpus`) builds a fresh corpus from finished runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from datasketch import MinHash

from orchestrator.analysis import stats
from orchestrator.config import RunConfig
from orchestrator.data.datasets import SPECS
from orchestrator.outcomes import OK
from orchestrator.resources import PROMPTS_DIR
from orchestrator.search.edits import WHOLE, render_edit
from orchestrator.search.evaluation import Outcome
from orchestrator.search.novelty import TAU, NoveltyIndex
from orchestrator.search.prompts import Attempt, GeneratorInput, PromptBook, Task, describe
from orchestrator.store.files import append_line, cut_torn_tail, fsync_dir, write_atomic
from orchestrator.store.records import accuracy_of, best_record, lost, record_chain
from orchestrator.store.run import Run, read_records

DEFAULT_TAU = TAU  # 0.90, NNGPT's near-duplicate threshold
SYSTEM_FALLBACK = ("You are an expert PyTorch architecture designer. You write complete, "
                   "correct, runnable code.")


@dataclass
class Selection:
    """What one `select` or `seed` call did with each candidate (every one counted once)."""

    admitted: int = 0
    duplicates: int = 0  # trained and good enough, but a near-copy (similarity >= tau)
    below_threshold: int = 0
    failed: int = 0  # did not train (or no code)
    already: int = 0  # in the corpus from an earlier call (a resumed selection)


@functools.cache
def default_system() -> str:
    """The generator's system message (prompts/generator_system.txt) for prompts without one."""
    try:
        text = (PROMPTS_DIR / "generator_system.txt").read_text(encoding="utf-8").strip()
    except OSError:
        return SYSTEM_FALLBACK
    return text or SYSTEM_FALLBACK


def with_system(messages: list[dict]) -> list[dict]:
    """`messages` with the default system message first when they have none."""
    if any(m["role"] == "system" for m in messages):
        return messages
    return [{"role": "system", "content": default_system()}, *messages]


def task_prompt(run: Run) -> str:
    """A task description for a record without a stored generator prompt."""
    cfg = run.config
    shape = cfg.get("input_shape")
    classes = cfg.get("num_classes")
    detail = ""
    if shape:
        detail += f" Inputs are tensors of shape [B, {', '.join(map(str, shape))}]."
    if classes:
        detail += f" The output must be logits of shape [B, {classes}]."
    return (
        f"Write a PyTorch image classifier for the {run.dataset} dataset, trained from scratch "
        f"without pre-trained weights.{detail} Define `class Net(nn.Module)` whose constructor "
        "takes no arguments, with `__init__` and `forward`. Return only the Python code."
    )


def prompt_messages(run: Run, rec: dict) -> list[dict]:
    """The generator's prompt as chat messages, system first: the stored messages, the stored
    text, or a task description."""
    prompts = rec.get("prompts") if isinstance(rec.get("prompts"), dict) else {}
    prompt = prompts.get("generator")
    if isinstance(prompt, str) and prompt.strip():
        return with_system([{"role": "user", "content": prompt}])
    if isinstance(prompt, list):  # the loop stores the chat messages it sent
        msgs = [{"role": m["role"], "content": m["content"]} for m in prompt
                if isinstance(m, dict) and m.get("role") in ("system", "user")
                and isinstance(m.get("content"), str)]
        if any(m["role"] == "user" for m in msgs):
            return with_system(msgs)
    return with_system([{"role": "user", "content": task_prompt(run)}])


def entry_code(entry: dict) -> str | None:
    """The code of a corpus entry: its `code` (an edit example's candidate), else its last
    assistant message."""
    if isinstance(entry.get("code"), str):
        return entry["code"]
    messages = entry.get("messages")
    for msg in reversed(messages if isinstance(messages, list) else []):
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            content = msg.get("content")
            return content if isinstance(content, str) else None
    return None


def _source_key(source: object) -> tuple | None:
    """What identifies an entry's origin: (run, chain, iteration) or (file, line)."""
    if not isinstance(source, dict):
        return None
    if "run" in source:
        return ("run", source.get("run"), source.get("chain", 0), source.get("iteration"))
    if "file" in source:
        return ("file", source.get("file"), source.get("line"))
    return None


PAIR_FORMS = ('{"messages": [...]} ending in the assistant\'s code, or '
              '{"prompt": ..., "code": ...}')


class CorpusError(ValueError):
    """A user-given corpus file cannot be used; the message names the file and line."""


def _pair(line: bytes) -> tuple[list[dict], str]:
    """(prompt messages, code) of a user-given line: `{"messages": [...]}` (the code is the
    last assistant message) or `{"prompt": ..., "code": ...}`; ValueError saying what is
    wrong when it holds no such pair."""
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if isinstance(item, dict) and isinstance(item.get("messages"), list):
        msgs = [{"role": m["role"], "content": m["content"]} for m in item["messages"]
                if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=0)
        prompt, code = msgs[:last], msgs[last]["content"] if last else ""
    elif isinstance(item, dict) and isinstance(item.get("prompt"), str) \
            and isinstance(item.get("code"), str):
        prompt, code = [{"role": "user", "content": item["prompt"]}], item["code"]
    else:
        raise ValueError(f"not a prompt-code pair: write {PAIR_FORMS}")
    if not code.strip() or not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise ValueError("needs a user prompt and, after it, non-empty code")
    return with_system(prompt), code


def seed_pairs(jsonl: Path) -> list[tuple[int, list[dict], str]]:
    """(line number, prompt, code) of every non-blank line of a seed file; CorpusError naming
    `file:line` at the first line that holds no pair."""
    path = Path(jsonl)
    pairs = []
    for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if line.strip():
            try:
                pairs.append((n, *_pair(line)))
            except ValueError as exc:
                raise CorpusError(f"seed corpus {path}:{n}: {exc}") from None
    return pairs


class Corpus:
    """`corpus.jsonl`, loaded and indexed for novelty; grown by `seed` and `select`."""

    def __init__(self, path: Path, tau: float = DEFAULT_TAU, edit_format: str = WHOLE) -> None:
        self.path = Path(path)
        self.tau = tau
        self.edit_format = edit_format
        self.warnings: list[str] = []
        self._entries: list[dict] = []
        self._sources: set[tuple] = set()
        self._index = NoveltyIndex(tau=tau)
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[dict]:
        return list(self._entries)

    def _load(self) -> None:
        """Read the entries, cutting off a torn last line so the next append starts clean."""
        if cut_torn_tail(self.path):
            self.warnings.append(f"{self.path.name}: torn last line cut off")
        for entry in read_records(self.path, self.warnings):
            key = _source_key(entry.get("source"))
            if key is not None:
                self._sources.add(key)
            code = entry_code(entry)
            if code is not None:
                self._index.add(len(self._entries), code)
            self._entries.append(entry)

    def reference(self, paths: Iterable[str | Path]) -> int:
        """Index reference code that candidates must be novel against without adding it to
        the corpus: .py files, folders of them, chat-format .jsonl corpora."""
        return self._index.add_corpus(paths)

    def seed(self, jsonl: Path) -> Selection:
        """Add user-given prompt-code pairs (one JSON object a line), novelty-filtered like
        candidates; no accuracy threshold. CorpusError, before adding any, for a line that
        holds no pair."""
        file = str(Path(jsonl).resolve())
        got, seen = Selection(), NoveltyIndex(tau=self.tau)
        for n, prompt, code in seed_pairs(jsonl):
            key = ("file", file, n)
            if key in self._sources:
                got.already += 1
                continue
            entry = {"messages": [*prompt, {"role": "assistant", "content": code}],
                     "source": {"file": file, "line": n}}
            self._consider(got, seen, key, entry, code, below=False)
        return got

    def select(self, run: Run, cycle: int | None = None,
               threshold: float | None = None) -> Selection:
        """Admit the run's good and novel candidates, in commit order (see the module
        docstring). `threshold` None: the default of the run's dataset, if it has one."""
        thr = threshold if threshold is not None else stats.default_threshold(run.dataset)
        got, seen = Selection(), NoveltyIndex(tau=self.tau)
        for rec in run.records:
            chain, iteration = record_chain(rec), rec.get("iteration")
            key = ("run", run.name, chain, iteration)
            if key in self._sources:
                got.already += 1
                continue
            acc = accuracy_of(rec)
            code = run.code(rec) if acc is not None else None
            if acc is None or code is None:
                got.failed += 1
                continue
            entry = {"messages": [*prompt_messages(run, rec),
                                  {"role": "assistant", "content": code}],
                     "source": {"run": run.name, "dataset": run.dataset, "iteration": iteration,
                                "chain": chain, "accuracy": acc, "cycle": cycle}}
            if self.edit_format != WHOLE:
                entry = edit_entry(run, rec, entry, code, self.edit_format)
            self._consider(got, seen, key, entry, code, below=thr is not None and acc < thr)
        return got

    def _consider(self, got: Selection, seen: NoveltyIndex, key: tuple, entry: dict,
                  code: str, below: bool) -> None:
        """Admit `entry` unless below the threshold or a near-copy of the corpus or of a
        candidate earlier in this call (`seen`, which then remembers it)."""
        sig = self._index.signature(code)
        if below:
            got.below_threshold += 1
        elif max(self._index.query(sig)[0], seen.query(sig)[0]) >= self.tau:
            got.duplicates += 1
        else:
            self._append(key, entry, sig)
            got.admitted += 1
            return
        seen.add(len(seen), sig)

    def _append(self, key: tuple, entry: dict, sig: MinHash) -> None:
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, orjson.dumps(entry) + b"\n")
        if new:
            fsync_dir(self.path.parent)
        self._index.add(len(self._entries), sig)
        self._entries.append(entry)
        self._sources.add(key)


def edit_entry(run: Run, rec: dict, entry: dict, code: str, edit_format: str) -> dict:
    """`entry` as an edit example in `edit_format` (see the module docstring); as it is when
    the candidate has no base or no edit turns the base into it."""
    base = edit_base_record(run, rec)
    base_code = run.code(base) if base else None
    answer = render_edit(base_code, code, edit_format) if base_code else None
    if answer is None:
        return entry
    stored = rec.get("edit") or {}
    if stored.get("kind") == "edit" and stored.get("format") == edit_format:
        prompt = prompt_messages(run, rec)
    elif run.dataset in SPECS:
        prompt = edit_prompt(run, rec, base, base_code, edit_format)
    else:  # no task to describe in an edit prompt
        return entry
    source = {**entry["source"], "edit_format": edit_format, "base_iteration": base["iteration"]}
    return {"messages": [*prompt, {"role": "assistant", "content": answer}], "code": code,
            "source": source}


def edit_base_record(run: Run, rec: dict) -> dict | None:
    """The record whose code `rec`'s iteration edited (its `edit.base_iteration`), else the
    best of its chain before it (the reference of a whole-file prompt); None for neither."""
    chain = record_chain(rec)
    before = [r for r in run.records[:run.records.index(rec)]
              if record_chain(r) == chain and not lost(r)]
    wanted = (rec.get("edit") or {}).get("base_iteration")
    if wanted is not None:
        return next((r for r in reversed(before) if r.get("iteration") == wanted), None)
    return best_record(before)


def edit_prompt(run: Run, rec: dict, base: dict, base_code: str, edit_format: str
                ) -> list[dict]:
    """The Generator's prompt in `edit_format` (from the default prompts/) with `base` as the
    reference to edit and the suggestions `rec`'s iteration got."""
    cfg, spec = run.config, SPECS[run.dataset]
    protocol = {k: cfg.get(k, getattr(RunConfig, k))
                for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size")}
    task = Task(run.dataset, tuple(spec.input_shape), spec.num_classes, protocol,
                cfg.get("max_params"))
    before = run.records[:run.records.index(rec)]
    advice = next((r["suggestions"] for r in reversed(before)
                   if record_chain(r) == record_chain(rec) and r.get("suggestions")), None)
    reference = Attempt(base["iteration"], base_code,
                        describe(Outcome(OK, accuracy_of(base))), accuracy_of(base))
    given = GeneratorInput(reference=reference, edit=reference,
                           suggestions=advice.get("suggestions") if advice else None)
    return PromptBook(edit_format=edit_format).generator(task, given)


def export_line(entry: dict) -> dict:
    """An exported example: the entry, with its run, dataset, iteration and accuracy also at
    the top level (the export format before provenance was added)."""
    source = entry.get("source") if isinstance(entry.get("source"), dict) else {}
    return {"messages": entry["messages"], **({"code": entry["code"]} if "code" in entry else {}),
            "accuracy": source.get("accuracy"),
            "run": source.get("run"), "dataset": source.get("dataset"),
            "iteration": source.get("iteration"), "source": source}


def export_corpus(runs: Iterable[Run], out_path: str | Path, threshold: float | None = None,
                  tau: float = DEFAULT_TAU, reference: Iterable[str | Path] = (),
                  edit_format: str = WHOLE) -> int:
    """Write a fresh corpus of `runs` (selected one run after another, see the module
    docstring) as JSONL; returns the number of examples written.

    `threshold` None uses each run's dataset default (stats.DEFAULT_THRESHOLDS); a dataset
    without a default then accepts every success. `reference` code counts as already in.
    `edit_format` other than whole writes edit examples where a candidate has a base.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.building")
    building.unlink(missing_ok=True)
    try:
        corpus = Corpus(building, tau, edit_format)
        corpus.reference(reference)
        for run in runs:
            corpus.select(run, threshold=threshold)
        write_atomic(out, b"".join(orjson.dumps(export_line(e)) + b"\n"
                                   for e in corpus.entries()))
    finally:
        building.unlink(missing_ok=True)
    return len(corpus)
