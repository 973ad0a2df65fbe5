"""The run journal (store/journal.py) and the feedback memory (search/memory.py)."""

from __future__ import annotations

import json
import re
import threading
import types
import typing
from pathlib import Path

import pytest

from orchestrator import outcomes as fc
from orchestrator.search.loop import SearchState
from orchestrator.search.memory import FeedbackMemory, Triple, remembered
from orchestrator.store.files import write_atomic
from orchestrator.store.journal import Journal
from orchestrator.store.record import IterationRecord
from orchestrator.store.records import best_record, summarize
from orchestrator.store.run import ITERATIONS_FILE as RECORDS


def record(iteration: int, status: str = fc.OK, accuracy: float | None = None,
           code_file: str | None = None, triple: dict | None = None, **extra: object) -> dict:
    """A journal record with the fields the journal and the memory look at."""
    if triple is None:
        triple = {"problem": f"p{iteration}", "suggestion": f"s{iteration}",
                  "outcome": f"o{iteration}"}
    return {"iteration": iteration, "status": status, "accuracy": accuracy,
            "error": None if status == fc.OK else {"type": status, "message": "m",
                                                   "traceback": ""},
            "code_file": code_file, "triple": triple, **extra}


def lines(journal: Journal) -> list[bytes]:
    return (journal.root / RECORDS).read_bytes().split(b"\n")


def summary_file(journal: Journal) -> dict:
    return json.loads((journal.root / "summary.json").read_text())


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "run")
    j.create({"dataset": "fashionmnist", "seed": 7, "models": {"coder:test": "abc"}})
    return j


def commit_code(journal: Journal, iteration: int, status: str, accuracy: float | None,
                code: str) -> dict:
    """Commit one iteration the way the loop does: code file first, then the record."""
    code_file = journal.write_file(f"iter_{iteration:04d}.py", code)
    rec = record(iteration, status, accuracy, code_file)
    journal.commit(rec, code)
    return rec


# -- create / config -------------------------------------------------------------------------

def test_create_writes_config_and_empty_journal(tmp_path: Path) -> None:
    config = {"dataset": "cifar10", "seed": 42, "nested": {"a": [1, 2.5, None]}, "flag": True}
    journal = Journal(tmp_path / "r")
    assert not journal.exists
    journal.create(config)
    assert journal.exists
    assert journal.config() == config
    assert Journal(tmp_path / "r").config() == config  # read back by a fresh reader
    assert (journal.root / RECORDS).read_bytes() == b""
    assert journal.candidates.is_dir()
    assert journal.records() == []
    journal.update_config({**config, "iterations": 9})
    assert Journal(tmp_path / "r").config()["iterations"] == 9


def test_write_file_returns_path_relative_to_run(journal: Journal) -> None:
    rel = journal.write_file("iter_0001.py", "class Net: pass\n")
    assert rel == "candidates/iter_0001.py"
    assert (journal.root / rel).read_text() == "class Net: pass\n"


def test_write_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "best.py"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.py"]


# -- commit ------------------------------------------------------------------------------------

def test_commit_appends_one_line_per_record(journal: Journal) -> None:
    recs = [record(1, fc.SYNTAX_ERROR), record(2, fc.OK, 0.5), record(3, fc.TIMEOUT)]
    for i, rec in enumerate(recs, 1):
        journal.commit(rec, "code")
        raw = lines(journal)
        assert raw[-1] == b""  # every append ends its line
        assert len(raw) == i + 1
    parsed = [json.loads(line) for line in lines(journal)[:-1]]
    assert parsed == recs
    assert Journal(journal.root).records() == recs


def test_best_py_only_on_strict_improvement_earliest_wins_ties(journal: Journal) -> None:
    best = journal.root / "best.py"
    commit_code(journal, 1, fc.SHAPE_ERROR, None, "failed")
    assert not best.exists()
    commit_code(journal, 2, fc.OK, 0.50, "net two")
    assert best.read_text() == "net two"
    commit_code(journal, 3, fc.OK, 0.40, "net three (worse)")
    assert best.read_text() == "net two"
    commit_code(journal, 4, fc.OK, 0.70, "net four")
    assert best.read_text() == "net four"
    commit_code(journal, 5, fc.OK, 0.70, "net five (tie)")
    assert best.read_text() == "net four"
    commit_code(journal, 6, fc.RUNTIME_ERROR, None, "crashing net")
    assert best.read_text() == "net four"
    assert summary_file(journal)["best_iteration"] == 4
    assert best_record(journal.records())["iteration"] == 4


def test_summary_json_hand_computed(journal: Journal) -> None:
    commit_code(journal, 1, fc.SYNTAX_ERROR, None, "x")
    assert head(summary_file(journal)) == {
        "iterations": 1, "successful": 0, "success_rate": 0.0, "first_accuracy": None,
        "best_accuracy": None, "best_iteration": None, "improvement": None}
    commit_code(journal, 2, fc.OK, 0.5, "a")
    commit_code(journal, 3, fc.OK, 0.75, "b")
    commit_code(journal, 4, fc.NAN_LOSS, None, "c")
    commit_code(journal, 5, fc.OK, 0.75, "d")
    summary = summary_file(journal)
    assert head(summary) == {
        "iterations": 5, "successful": 3, "success_rate": 0.6, "first_accuracy": 0.5,
        "best_accuracy": 0.75, "best_iteration": 3, "improvement": 0.25}
    assert journal.summary() == summary


def head(summary: dict) -> dict:
    """The summary's headline numbers (it also holds the rank correlations)."""
    keys = ("iterations", "successful", "success_rate", "first_accuracy", "best_accuracy",
            "best_iteration", "improvement")
    return {k: summary[k] for k in keys}


def test_summarize_edge_cases() -> None:
    assert head(summarize([])) == {
        "iterations": 0, "successful": 0, "success_rate": None, "first_accuracy": None,
        "best_accuracy": None, "best_iteration": None, "improvement": None}
    failures = [record(1, fc.TIMEOUT), record(2, fc.LLM_ERROR), record(3, fc.EXTRACT_ERROR)]
    # The llm_error is a lost attempt, not a design: it counts only in `lost`.
    assert head(summarize(failures)) == {
        "iterations": 2, "successful": 0, "success_rate": 0.0, "first_accuracy": None,
        "best_accuracy": None, "best_iteration": None, "improvement": None}
    assert summarize(failures)["lost"] == {fc.LLM_ERROR: 1}
    # The first success is the best: no improvement, not None.
    one = summarize([record(1, fc.OOM), record(2, fc.OK, 0.3), record(3, fc.OK, 0.2)])
    assert one["first_accuracy"] == 0.3
    assert one["best_accuracy"] == 0.3
    assert one["best_iteration"] == 2
    assert one["improvement"] == 0.0
    assert one["success_rate"] == pytest.approx(2 / 3)


def test_concurrent_commits_from_chains_keep_every_line_whole(journal: Journal) -> None:
    per_chain, chains = 8, 4

    def chain(c: int) -> None:
        for k in range(per_chain):
            journal.commit(record(k + 1, fc.OK, (c * per_chain + k) / 100, chain=c,
                                  pad="x" * 2000), f"code {c} {k}")

    threads = [threading.Thread(target=chain, args=(c,)) for c in range(chains)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    raw = lines(journal)
    assert raw[-1] == b""
    parsed = [json.loads(line) for line in raw[:-1]]
    assert len(parsed) == per_chain * chains
    assert sorted((r["chain"], r["iteration"]) for r in parsed) == [
        (c, k + 1) for c in range(chains) for k in range(per_chain)]
    top = max(r["accuracy"] for r in parsed)
    assert (journal.root / "best.py").read_text() == f"code {chains - 1} {per_chain - 1}"
    assert summary_file(journal)["best_accuracy"] == top


# -- crash recovery ----------------------------------------------------------------------------

TORN = b'{"iteration": 3, "status": "ok", "accur'


def test_torn_last_line_ignored_by_records_and_cut_by_load(journal: Journal) -> None:
    commit_code(journal, 1, fc.OK, 0.4, "one")
    commit_code(journal, 2, fc.SHAPE_ERROR, None, "two")
    path = journal.root / RECORDS
    with open(path, "ab") as f:  # a crash in the middle of the third append
        f.write(TORN)
    intact = path.read_bytes()

    reader = Journal(journal.root)
    assert [r["iteration"] for r in reader.records()] == [1, 2]
    assert path.read_bytes() == intact  # reading alone does not change the file

    resumed = Journal(journal.root)
    assert [r["iteration"] for r in resumed.load()] == [1, 2]
    assert path.read_bytes().endswith(b"\n")
    assert TORN not in path.read_bytes()

    commit_code(resumed, 3, fc.OK, 0.6, "three")
    raw = lines(resumed)
    assert raw[-1] == b""
    parsed = [json.loads(line) for line in raw[:-1]]  # every line parses
    assert [r["iteration"] for r in parsed] == [1, 2, 3]
    assert (journal.root / "best.py").read_text() == "three"
    assert summary_file(resumed)["iterations"] == 3


def test_commit_without_load_repairs_a_torn_tail(journal: Journal) -> None:
    commit_code(journal, 1, fc.OK, 0.4, "one")
    with open(journal.root / RECORDS, "ab") as f:
        f.write(TORN)
    fresh = Journal(journal.root)  # no load(): commit must still start on a clean line
    commit_code(fresh, 2, fc.OK, 0.3, "two")
    parsed = [json.loads(line) for line in lines(fresh)[:-1]]
    assert [r["iteration"] for r in parsed] == [1, 2]
    assert summary_file(fresh)["iterations"] == 2
    assert (journal.root / "best.py").read_text() == "one"


def test_load_rewrites_best_py_left_ahead_of_records(journal: Journal) -> None:
    commit_code(journal, 1, fc.OK, 0.4, "one")
    commit_code(journal, 2, fc.OK, 0.6, "two")
    commit_code(journal, 3, fc.OK, 0.5, "three")
    (journal.root / "best.py").write_text("code of an iteration the journal never recorded")
    records = Journal(journal.root).load()
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert (journal.root / "best.py").read_text() == "two"


def test_load_of_empty_journal(journal: Journal) -> None:
    assert journal.load() == []
    assert not (journal.root / "best.py").exists()
    assert journal.summary()["iterations"] == 0


# -- feedback memory ---------------------------------------------------------------------------

def triples(n: int) -> list[Triple]:
    return [Triple(f"problem {i}", f"suggestion {i}", f"outcome {i}") for i in range(n)]


@pytest.mark.parametrize("size", [1, 3, 5])
def test_memory_keeps_exactly_the_last_k_in_order(size: int) -> None:
    memory = FeedbackMemory(size)
    added = triples(8)
    for i, t in enumerate(added, 1):
        memory.add(t)
        assert memory.window() == added[max(0, i - size):i]
        assert len(memory) == min(i, size)


@pytest.mark.parametrize("size", [0, -1])
def test_memory_of_size_zero_keeps_nothing(size: int) -> None:
    memory = FeedbackMemory(size)
    for t in triples(4):
        memory.add(t)
    assert memory.window() == []
    assert len(memory) == 0


def test_memory_window_is_a_copy() -> None:
    memory = FeedbackMemory(2)
    memory.add(Triple("a", "b", "c"))
    memory.window().clear()
    assert memory.window() == [Triple("a", "b", "c")]


def window_after(records: list[dict], size: int) -> list[Triple]:
    """The window the loop's state holds after committing `records`."""
    state = SearchState(memory=FeedbackMemory(size))
    for rec in records:
        state.add(rec, None, None)
    return state.memory.window()


def test_memory_window_skips_infrastructure_faults_and_missing_triples() -> None:
    records = [
        record(1, fc.OK, 0.3),
        record(2, fc.SANDBOX_ERROR),
        record(3, fc.SHAPE_ERROR),
        record(4, fc.LLM_ERROR),
        record(5, fc.TIMEOUT),
        record(6, fc.OK, 0.5, triple={}),
        {"iteration": 7, "status": fc.OK, "accuracy": 0.1},  # no triple key at all
        record(8, fc.DUPLICATE),
        record(9, fc.OK, 0.6),
    ]
    kept = [r["iteration"] for r in records if remembered(r)]
    assert kept == [1, 3, 5, 8, 9]
    assert window_after(records, 3) == [Triple("p5", "s5", "o5"), Triple("p8", "s8", "o8"),
                                        Triple("p9", "s9", "o9")]
    assert window_after(records, 0) == []
    assert [t.problem for t in window_after(records, 10)] == [
        "p1", "p3", "p5", "p8", "p9"]


def test_triple_round_trips_through_a_record() -> None:
    t = Triple("too shallow", "add a residual block", "accuracy 81.00%")
    assert Triple(**t.to_dict()) == t
    assert t.to_dict() == {"problem": "too shallow", "suggestion": "add a residual block",
                           "outcome": "accuracy 81.00%"}


def test_the_journal_and_the_reader_agree_on_an_unterminated_last_record(journal: Journal) -> None:
    """A record is committed with its newline. A last line without one was cut short by a
    crash even when it parses, so the reader skips it (with a warning) as the writer does."""
    from orchestrator.store.run import read_run

    commit_code(journal, 1, fc.OK, 0.5, "a")
    with open(journal.root / RECORDS, "ab") as f:
        f.write(json.dumps(record(2, fc.OK, 0.9)).encode())  # complete JSON, no newline
    run = read_run(journal.root)
    assert [r["iteration"] for r in run.records] == [1]
    assert any("torn last line" in w for w in run.warnings)
    assert [r["iteration"] for r in journal.records()] == [1]


# -- the best, kept as records are added -------------------------------------------------------

def test_the_best_kept_as_records_are_added_is_best_record_of_them_all(tmp_path: Path) -> None:
    records = [
        record(1, fc.SYNTAX_ERROR),
        record(2, fc.OK, float("nan")),
        record(3, fc.OK, 0.4, metric="val", test_accuracy=0.9),
        record(4, fc.SHAPE_ERROR, 0.99),  # a failure's accuracy never counts
        record(5, fc.OK, 0.4, metric="val"),  # a tie: the first committed stays
        record(6, fc.OK, float("inf")),
        record(7, fc.LLM_ERROR),
        record(8, fc.OK, None),
        record(9, fc.OK, True),  # not a number
        record(10, fc.OK, 0.55, metric="test", test_accuracy=0.55),
        record(11, fc.OK, 0.55),
        record(12, fc.OK, 0.3),
    ]
    state = SearchState(memory=FeedbackMemory(2))
    journal = Journal(tmp_path / "run")
    journal.create({})
    for n, rec in enumerate(records, start=1):
        code_file = journal.write_file(f"iter_{n:04d}.py", f"# {n}")
        rec = {**rec, "code_file": code_file}
        state.add(rec, f"# {n}", None)
        summary = journal.commit(rec, f"# {n}")
        expected = best_record(state.records)
        assert state.best() is expected
        assert summary == summarize(state.records)
        best_py = (journal.root / "best.py")
        assert best_py.read_text() == f"# {expected['iteration']}" if expected \
            else not best_py.exists()
    assert state.best()["iteration"] == 10 and summary["best_iteration"] == 10


# -- the record's type, its documentation and a real record ------------------------------------

def typed_part(annotation: object) -> type | None:
    """The TypedDict an annotation names (itself, or within `X | None`), else None."""
    if typing.is_typeddict(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next((a for a in typing.get_args(annotation) if typing.is_typeddict(a)), None)
    return None


def keys_of(part: type) -> set[str]:
    return set(part.__required_keys__ | part.__optional_keys__)


def value_part(part: type) -> type | None:
    """The TypedDict that all of a part's values are (as `llm`'s generator and improver)."""
    values = {typed_part(a) for a in typing.get_type_hints(part).values()}
    return values.pop() if len(values) == 1 else None


def documented_fields() -> dict[str, list[set[str]]]:
    """The record fields of docs/contracts.md's table: name -> the key sets of its `{...}`."""
    text = (Path(__file__).parent.parent / "docs" / "contracts.md").read_text()
    section = text.split("## Journal", 1)[1].split("\n## ", 1)[0]
    table = section.split("\nRecord fields", 1)[1].split("| --- | --- |\n", 1)[1]
    fields = {}
    for row in table.split("\n\n", 1)[0].splitlines():
        cell = row.split(" | ", 1)[0].removeprefix("| ")
        name = re.match(r"`(\w+)`", cell).group(1)
        assert name not in fields, f"{name} documented twice"
        fields[name] = [set(re.split(r",\s*", group))
                        for group in re.findall(r"`\{([^}]*)\}`", cell)]
    return fields


def test_the_documented_record_fields_are_exactly_the_types_keys() -> None:
    documented = documented_fields()
    hints = typing.get_type_hints(IterationRecord)
    assert set(documented) == set(hints)
    for name, groups in documented.items():
        levels, part = [], typed_part(hints[name])
        while part is not None:
            levels.append(keys_of(part))
            part = value_part(part)
        assert groups == levels, name


def record_shape_errors(value: object, annotation: object, path: str = "record") -> list[str]:
    """Where a journal record departs from its type: a missing or an unknown key, in it or in
    any typed part of it."""
    part = typed_part(annotation)
    if part is None or value is None:
        return []
    if not isinstance(value, dict):
        return [f"{path} is not an object"]
    errors = [f"{path} lacks {key}" for key in sorted(part.__required_keys__ - set(value))]
    errors += [f"{path} has an unknown {key}" for key in sorted(set(value) - keys_of(part))]
    for key, hint in typing.get_type_hints(part).items():
        if key in value:
            errors += record_shape_errors(value[key], hint, f"{path}.{key}")
    return errors


def test_a_record_shape_check_names_what_is_missing_or_unknown() -> None:
    assert record_shape_errors({"iteration": 1}, IterationRecord)[:1] == ["record lacks accuracy"]
    hints = typing.get_type_hints(IterationRecord)
    assert record_shape_errors({"format": "whole", "kind": None}, hints["edit"]) == []
    assert record_shape_errors({"format": "whole", "kind": "edit", "size": 3}, hints["edit"]) \
        == ["record has an unknown size"]
