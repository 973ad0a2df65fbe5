"""The fine-tuning corpus: NNGPT's selection (trained, above the dataset's threshold, novel
against the corpus and the same call's earlier candidates), provenance, crash-safe appends,
resumable selection, user seeds, and `orchestrator export --corpus`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.finetune.corpus import (
    DEFAULT_TAU,
    Corpus,
    CorpusError,
    Selection,
    default_system,
)
from orchestrator.search.novelty import jaccard
from orchestrator.store.journal import Journal
from orchestrator.store.run import read_run
from tests import replies

NET = replies.VALID_NET
OTHER = replies.VALID_NET_WIDER
# NET with a third conv stage: related (Jaccard ~0.74), but not a near-copy at tau 0.90.
NEAR = NET.replace(
    "            nn.MaxPool2d(2),\n        )",
    "            nn.MaxPool2d(2),\n"
    "            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),\n"
    "            nn.BatchNorm2d(64),\n"
    "            nn.ReLU(inplace=True),\n        )",
).replace("nn.Linear(32, num_classes)", "nn.Linear(64, num_classes)")
# NET with another docstring and a comment: the same code to the novelty filter.
COPY = NET.replace(
    '"""Two conv-bn-relu-pool stages, global average pooling and a linear classifier."""',
    '"""A small CNN."""  # same design',
).replace("        x = self.features(x)\n",
          "        # the features\n        x = self.features(x)\n")
THIRD = replies.WRONG_OUTPUT_NET.replace("nn.Linear(32, 7)  # wrong number of classes",
                                         "nn.Linear(32, 10)")


def test_the_nets_are_what_the_tests_assume() -> None:
    assert NEAR != NET and 0.6 < jaccard(NET, NEAR) < 0.8
    assert COPY != NET and jaccard(NET, COPY) == 1.0
    assert max(jaccard(a, b) for a, b in [(NET, OTHER), (NET, THIRD), (OTHER, THIRD),
                                          (NEAR, OTHER), (NEAR, THIRD)]) < 0.2


def make_run(root: Path, name: str, spec: list[tuple], dataset: str = "cifar10") -> Path:
    """A run journal from [(status, accuracy, code)] or [(status, accuracy, code, chain)],
    committed in that order; each record keeps the generator's chat messages."""
    journal = Journal(root / name)
    journal.create({"name": name, "dataset": dataset, "input_shape": [3, 32, 32],
                    "num_classes": 10})
    counters: dict[int, int] = {}
    for status, acc, code, *rest in spec:
        chain = rest[0] if rest else 0
        iteration = counters[chain] = counters.get(chain, 0) + 1
        code_file = journal.write_file(f"c{chain}_iter_{iteration:04d}.py", code)
        prompt = [{"role": "system", "content": "You design nets."},
                  {"role": "user", "content": f"Design a net ({name} {chain}/{iteration})"}]
        journal.commit({"iteration": iteration, "chain": chain, "status": status,
                        "accuracy": acc if status == "ok" else None, "code_file": code_file,
                        "prompts": {"generator": prompt, "improver": None}}, code)
    return journal.root


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dataset_thresholds_and_explicit_override(tmp_path: Path) -> None:
    run = read_run(make_run(tmp_path, "c10", [("ok", 0.41, NET), ("ok", 0.39, OTHER)]))
    corpus = Corpus(tmp_path / "corpus.jsonl")
    assert corpus.select(run) == Selection(admitted=1, below_threshold=1)  # cifar10: 0.40
    assert [e["source"]["accuracy"] for e in corpus.entries()] == [0.41]

    lower = Corpus(tmp_path / "lower.jsonl")
    assert lower.select(run, threshold=0.30) == Selection(admitted=2)
    higher = Corpus(tmp_path / "higher.jsonl")
    assert higher.select(run, threshold=0.50) == Selection(below_threshold=2)

    c100 = read_run(make_run(tmp_path, "c100", [("ok", 0.21, NET), ("ok", 0.19, OTHER)],
                             dataset="cifar100"))
    svhn = read_run(make_run(tmp_path, "svhn", [("ok", 0.71, NET), ("ok", 0.69, OTHER)],
                             dataset="svhn"))
    for run in (c100, svhn):
        got = Corpus(tmp_path / f"{run.name}.jsonl").select(run)
        assert got == Selection(admitted=1, below_threshold=1), run.name
    # A dataset without a default threshold: every candidate that trained is a candidate.
    odd = read_run(make_run(tmp_path, "odd", [("ok", 0.05, NET)], dataset="blobs"))
    assert Corpus(tmp_path / "odd.jsonl").select(odd) == Selection(admitted=1)


def test_duplicates_of_the_corpus_and_within_a_call_are_rejected(tmp_path: Path) -> None:
    corpus = Corpus(tmp_path / "corpus.jsonl")
    first = read_run(make_run(tmp_path, "first", [
        ("ok", 0.60, NET),
        ("ok", 0.70, COPY),  # a near-copy of the candidate just admitted
        ("ok", 0.30, OTHER),  # trained but below the threshold ...
        ("ok", 0.65, OTHER),  # ... so this copy of it is not novel within the cycle
        ("runtime_error", None, THIRD),  # failed: does not count as generated earlier ...
        ("ok", 0.55, THIRD),  # ... so this one is new
        ("ok", 0.50, NEAR),  # related to NET, but below tau: admitted
    ]))
    got = corpus.select(first, cycle=1)
    assert got == Selection(admitted=3, duplicates=2, below_threshold=1, failed=1)
    assert [e["source"]["iteration"] for e in corpus.entries()] == [1, 6, 7]

    second = read_run(make_run(tmp_path, "second", [("ok", 0.80, COPY), ("ok", 0.90, OTHER),
                                                    ("ok", 0.45, NEAR)]))
    got = corpus.select(second, cycle=2)
    assert got == Selection(admitted=1, duplicates=2)  # COPY and NEAR are in the corpus
    assert [(e["source"]["run"], e["source"]["iteration"]) for e in corpus.entries()] == [
        ("first", 1), ("first", 6), ("first", 7), ("second", 2)]
    assert len(corpus) == 4 == len(lines(tmp_path / "corpus.jsonl"))


def test_failed_candidates_are_never_admitted(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bad", [
        ("syntax_error", None, "def broken(:"), ("shape_error", None, NET),
        ("timeout", None, OTHER), ("ok", None, THIRD), ("ok", 0.9, NEAR)])
    (run_dir / "candidates" / "c0_iter_0005.py").unlink()  # a success whose code is gone
    corpus = Corpus(tmp_path / "corpus.jsonl")
    assert corpus.select(read_run(run_dir), threshold=0.0) == Selection(failed=5)
    assert len(corpus) == 0 and not (tmp_path / "corpus.jsonl").exists()


def test_entries_carry_the_prompt_code_and_provenance(tmp_path: Path) -> None:
    run = read_run(make_run(tmp_path, "prov", [("ok", 0.30, OTHER, 0), ("ok", 0.52, NET, 1)]))
    corpus = Corpus(tmp_path / "corpus.jsonl")
    corpus.select(run, cycle=3)
    [entry] = lines(tmp_path / "corpus.jsonl")
    assert entry == corpus.entries()[0]
    assert entry["messages"] == [
        {"role": "system", "content": "You design nets."},
        {"role": "user", "content": "Design a net (prov 1/1)"},
        {"role": "assistant", "content": NET},
    ]
    assert entry["source"] == {"run": "prov", "dataset": "cifar10", "iteration": 1, "chain": 1,
                               "accuracy": 0.52, "cycle": 3}


def test_a_record_without_stored_prompt_gets_the_task_and_system_message(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "old", [("ok", 0.5, NET)])
    path = run_dir / "iterations.jsonl"
    rec = json.loads(path.read_text())
    del rec["prompts"]
    path.write_text(json.dumps(rec) + "\n")
    corpus = Corpus(tmp_path / "corpus.jsonl")
    corpus.select(read_run(run_dir))
    system, user, code = corpus.entries()[0]["messages"]
    assert system == {"role": "system", "content": default_system()}
    assert "PyTorch" in default_system()
    assert user["role"] == "user" and "cifar10" in user["content"]
    assert "[B, 3, 32, 32]" in user["content"] and "[B, 10]" in user["content"]
    assert code == {"role": "assistant", "content": NET}


def test_a_second_select_adds_nothing(tmp_path: Path) -> None:
    run = read_run(make_run(tmp_path, "r", [("ok", 0.6, NET), ("ok", 0.7, COPY),
                                            ("ok", 0.5, OTHER), ("ok", 0.2, THIRD)]))
    path = tmp_path / "corpus.jsonl"
    assert Corpus(path).select(run, cycle=1) == Selection(admitted=2, duplicates=1,
                                                          below_threshold=1)
    before = path.read_bytes()
    corpus = Corpus(path)  # as after a restart
    assert len(corpus) == 2
    assert corpus.select(run, cycle=1) == Selection(already=2, duplicates=1, below_threshold=1)
    assert corpus.select(run, cycle=1) == Selection(already=2, duplicates=1, below_threshold=1)
    assert path.read_bytes() == before


def test_a_torn_last_line_is_cut_and_the_selection_resumes(tmp_path: Path) -> None:
    """A kill mid-append leaves part of a line: the next load cuts it, and selecting again
    writes that entry whole; the file ends as if nothing had happened."""
    run = read_run(make_run(tmp_path, "r", [("ok", 0.6, NET), ("ok", 0.5, OTHER),
                                            ("ok", 0.45, NEAR)]))
    path = tmp_path / "corpus.jsonl"
    Corpus(path).select(run, cycle=1)
    whole = path.read_bytes()
    cut = whole.rstrip(b"\n").rfind(b"\n") + 1
    last = whole[cut:]
    for torn in (last[: len(last) // 2], last[:-1]):  # half a line; all of it but the newline
        path.write_bytes(whole[:cut] + torn)
        corpus = Corpus(path)
        assert len(corpus) == 2 and corpus.warnings
        assert path.read_bytes() == whole[:cut]
        assert corpus.select(run, cycle=1) == Selection(admitted=1, already=2)
        assert path.read_bytes() == whole


def test_tau_is_respected(tmp_path: Path) -> None:
    run = read_run(make_run(tmp_path, "r", [("ok", 0.6, NET), ("ok", 0.5, NEAR)]))
    assert DEFAULT_TAU == 0.90
    assert Corpus(tmp_path / "default.jsonl").select(run) == Selection(admitted=2)  # ~0.74
    assert Corpus(tmp_path / "strict.jsonl", tau=0.7).select(run) == Selection(admitted=1,
                                                                              duplicates=1)
    # A corpus loaded from its file compares with the tau it is opened with.
    Corpus(tmp_path / "one.jsonl").select(read_run(make_run(tmp_path, "n", [("ok", 0.6, NET)])))
    near = read_run(make_run(tmp_path, "near", [("ok", 0.6, NEAR)]))
    assert Corpus(tmp_path / "one.jsonl", tau=0.7).select(near) == Selection(duplicates=1)
    assert Corpus(tmp_path / "one.jsonl", tau=0.9).select(near) == Selection(admitted=1)


def test_seed_from_user_pairs_in_both_formats(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    rows = [
        json.dumps({"messages": [{"role": "user", "content": "A CIFAR-10 net, please."},
                                 {"role": "assistant", "content": NET}]}),
        json.dumps({"prompt": "A wider net.", "code": OTHER}),
        "",
        json.dumps({"prompt": "The same net again.", "code": COPY}),  # near-copy of line 1
        json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Another."},
                                 {"role": "assistant", "content": THIRD}], "accuracy": 0.5}),
    ]
    seeds.write_text("\n".join(rows) + "\n")
    path = tmp_path / "corpus.jsonl"
    corpus = Corpus(path)
    assert corpus.seed(seeds) == Selection(admitted=3, duplicates=1)
    entries = lines(path)
    assert [e["source"] for e in entries] == [{"file": str(seeds.resolve()), "line": n}
                                             for n in (1, 2, 5)]
    assert entries[0]["messages"] == [
        {"role": "system", "content": default_system()},
        {"role": "user", "content": "A CIFAR-10 net, please."},
        {"role": "assistant", "content": NET}]
    assert entries[1]["messages"][1:] == [{"role": "user", "content": "A wider net."},
                                         {"role": "assistant", "content": OTHER}]
    assert entries[2]["messages"][0] == {"role": "system", "content": "Be brief."}

    again = Corpus(path)
    assert again.seed(seeds) == Selection(already=3, duplicates=1)
    # Candidates are novelty-filtered against the seeds.
    run = read_run(make_run(tmp_path, "r", [("ok", 0.6, COPY), ("ok", 0.6, NEAR)]))
    assert again.select(run) == Selection(admitted=1, duplicates=1)
    with pytest.raises(FileNotFoundError):
        again.seed(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON"),
    ('["a list"]', "not a prompt-code pair"),
    (json.dumps({"messages": [{"role": "user", "content": "no answer"}]}), "needs a user prompt"),
    (json.dumps({"prompt": "", "code": NET}), "needs a user prompt"),
])
def test_a_seed_line_without_a_pair_is_refused_before_any_is_added(tmp_path: Path, line: str,
                                                                    why: str) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"prompt": "A net.", "code": NET}) + "\n\n" + line + "\n")
    with pytest.raises(CorpusError, match=f"^seed corpus {re.escape(str(seeds))}:3: {why}"):
        Corpus(tmp_path / "corpus.jsonl").seed(seeds)
    assert not (tmp_path / "corpus.jsonl").exists()


def test_export_corpus_command_writes_examples_with_provenance(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    make_run(tmp_path, "a", [("ok", 0.6, NET), ("ok", 0.3, OTHER)])
    make_run(tmp_path, "b", [("ok", 0.7, COPY), ("ok", 0.5, OTHER)])
    out = tmp_path / "out" / "corpus.jsonl"
    result = CliRunner().invoke(app, ["export", "a", "b", "--corpus", str(out),
                                      "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "corpus: 2 examples" in result.output
    rows = lines(out)
    assert [(r["run"], r["iteration"], r["accuracy"], r["dataset"]) for r in rows] == [
        ("a", 1, 0.6, "cifar10"), ("b", 2, 0.5, "cifar10")]
    assert [r["source"] for r in rows] == [
        {"run": "a", "dataset": "cifar10", "iteration": 1, "chain": 0, "accuracy": 0.6,
         "cycle": None},
        {"run": "b", "dataset": "cifar10", "iteration": 2, "chain": 0, "accuracy": 0.5,
         "cycle": None}]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": OTHER}
    assert sorted(p.name for p in out.parent.iterdir()) == ["corpus.jsonl"]  # no leftovers


def test_an_edit_corpus_answers_with_the_edit_of_the_reference(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.search.edits import apply_reply

    make_run(tmp_path, "a", [("ok", 0.6, NET), ("shape_error", None, OTHER), ("ok", 0.7, NEAR)])
    out = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(app, ["export", "a", "--corpus", str(out), "--results-dir",
                                      str(tmp_path), "--edit-format", "udiff"])
    assert result.exit_code == 0, result.output
    first, near = lines(out)
    # The first design had nothing to edit: a whole-file example, as the search writes it.
    assert first["messages"][-1]["content"] == NET and "code" not in first
    # NEAR edits the best before it (iteration 1): the udiff prompt shows it as the reference,
    # the answer is the diff, and the code stays for the novelty filter.
    assert near["source"] | {"edit_format": "udiff", "base_iteration": 1} == near["source"]
    prompt, answer = near["messages"][-2]["content"], near["messages"][-1]["content"]
    assert "Edit the best architecture so far (iteration 1)" in prompt
    assert "answer with a unified diff" in prompt and NET.strip() in prompt
    assert answer.startswith("```diff\n--- a/net.py\n+++ b/net.py\n@@ ")
    assert "+            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False)," in answer
    assert apply_reply(answer, NET, "udiff").code == NEAR and near["code"] == NEAR
    refused = CliRunner().invoke(app, ["export", "a", "--corpus", str(out), "--results-dir",
                                       str(tmp_path), "--edit-format", "diff"])
    assert refused.exit_code == 2 and "expected one of whole, search-replace, udiff" in \
        refused.output


def test_an_edit_run_keeps_its_own_prompt_and_base(tmp_path: Path) -> None:
    root = make_run(tmp_path, "e", [("ok", 0.7, NET), ("ok", 0.6, OTHER), ("ok", 0.5, NEAR)])
    journal = (root / "iterations.jsonl")
    records = lines(journal)
    # Iteration 3 edited iteration 1 under search-replace, with the prompt the run sent.
    records[2]["edit"] = {"format": "search-replace", "kind": "edit", "base_iteration": 1}
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = Corpus(tmp_path / "corpus.jsonl", edit_format="search-replace")
    assert corpus.select(read_run(root), threshold=0.0).admitted == 3
    entry = corpus.entries()[2]
    assert entry["messages"][:-1] == [
        {"role": "system", "content": "You design nets."},
        {"role": "user", "content": "Design a net (e 0/3)"}]
    assert entry["messages"][-1]["content"].count("<<<<<<< SEARCH") >= 1
    # Iteration 2 (OTHER) had no edit record: it edits the best before it, iteration 1.
    assert corpus.entries()[1]["source"]["base_iteration"] == 1
    assert Corpus(tmp_path / "corpus.jsonl").select(read_run(root)).already == 3
