"""Prompt rendering (orchestrator/search/prompts.py) and what the search loop feeds into it."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import outcomes as fc
from orchestrator.assembly import novelty_gate, read_codes
from orchestrator.config import RunConfig
from orchestrator.data.datasets import SPECS, PreparedDataset
from orchestrator.llm.client import OllamaClient
from orchestrator.resources import PROMPTS_DIR
from orchestrator.sandbox.base import Limits
from orchestrator.sandbox.local import LocalSandbox
from orchestrator.sandbox.pool import PoolSize
from orchestrator.search.evaluation import Outcome
from orchestrator.search.loop import Search
from orchestrator.search.memory import Triple
from orchestrator.search.progress import Reporter
from orchestrator.search.prompts import (
    TEMPLATES,
    Attempt,
    GeneratorInput,
    PromptBook,
    Task,
    generator_parts,
)
from orchestrator.search.roles import Roles
from orchestrator.store.journal import Journal
from tests import replies
from tests.fake_ollama import Reply

TASK = Task("fashionmnist", (1, 28, 28), 10,
            {"epochs": 3, "lr": 0.025, "momentum": 0.85, "weight_decay": 0.0007,
             "batch_size": 96})
REFERENCE = Attempt(4, "class Net:\n    REFERENCE_MARKER = 1\n", "accuracy 81.20%", 0.812)
CURRENT = Attempt(7, "class Net:\n    CURRENT_MARKER = 1\n",
                  "failed with shape_error: expected [B, 10]")


@pytest.fixture(scope="module")
def book() -> PromptBook:
    return PromptBook()


def render(book: PromptBook, given: GeneratorInput, task: Task = TASK) -> tuple[str, str]:
    messages = book.generator(task, given)
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[0]["content"], messages[1]["content"]


def test_generator_prompt_states_the_task(book: PromptBook) -> None:
    system, user = render(book, GeneratorInput())
    assert system == (PROMPTS_DIR / "generator_system.txt").read_text().strip()
    assert "fashionmnist" in user
    assert "[B, 1, 28, 28]" in user
    assert "[B, 10]" in user
    assert "3 epoch(s)" in user
    assert "lr 0.025" in user
    assert "momentum 0.85" in user
    assert "weight decay\n  0.0007" in user or "weight decay 0.0007" in user
    assert "batch size 96" in user
    assert "No pretrained weights" in (PROMPTS_DIR / "generator.txt").read_text()
    assert "No pretrained weights" in user
    assert "$" not in user  # every placeholder was filled


def test_generator_prompt_without_context_has_no_code(book: PromptBook) -> None:
    _, user = render(book, GeneratorInput())
    assert "```python" not in user.split("Answer with")[0]
    for absent in ("Best architecture so far", "Architecture of the last iteration",
                   "Suggested improvements", "Top architecture", "Earlier attempt",
                   "Parameter budget"):
        assert absent not in user


def test_generator_prompt_with_reference_current_and_suggestions(book: PromptBook) -> None:
    given = GeneratorInput(reference=REFERENCE, current=CURRENT,
                           suggestions="  Add a residual connection SUGGESTION_MARKER.\n")
    _, user = render(book, given)
    assert ("Best architecture so far (the reference to improve on) (iteration 4, result: "
            "accuracy 81.20%):\n```python\nclass Net:\n    REFERENCE_MARKER = 1\n```") in user
    assert ("Architecture of the last iteration (iteration 7, result: failed with shape_error: "
            "expected [B, 10]):\n```python\nclass Net:\n    CURRENT_MARKER = 1\n```") in user
    assert "Suggested improvements for this iteration:\n" \
           "Add a residual connection SUGGESTION_MARKER.\n" in user
    assert user.index("REFERENCE_MARKER") < user.index("CURRENT_MARKER") \
        < user.index("SUGGESTION_MARKER")
    assert "Top architecture" not in user
    assert "Earlier attempt" not in user


def test_generator_prompt_reference_only(book: PromptBook) -> None:
    _, user = render(book, GeneratorInput(reference=REFERENCE))
    assert "REFERENCE_MARKER" in user
    assert "CURRENT_MARKER" not in user
    assert "Suggested improvements" not in user


def test_extended_prompt_lists_top_k_and_earlier_attempts(book: PromptBook) -> None:
    top = [Attempt(i, f"class Net:\n    TOP_{i} = 1\n", f"accuracy {90 - i}.00%")
           for i in (3, 1)]
    previous = [Attempt(i, f"class Net:\n    PREV_{i} = 1\n", "failed with nan_loss: x")
                for i in (5, 6)]
    _, user = render(book, GeneratorInput(top=top, previous=previous))
    assert "Top architecture #1 (iteration 3, result: accuracy 87.00%)" in user
    assert "Top architecture #2 (iteration 1, result: accuracy 89.00%)" in user
    assert user.count("Earlier attempt (iteration") == 2
    order = [user.index(m) for m in ("TOP_3", "TOP_1", "PREV_5", "PREV_6")]
    assert order == sorted(order)


def test_parameter_budget_only_when_set(book: PromptBook) -> None:
    budgeted = Task(TASK.dataset, TASK.input_shape, TASK.num_classes, TASK.protocol,
                    max_params=1_250_000)
    _, user = render(book, GeneratorInput(), budgeted)
    assert "- Parameter budget: at most 1,250,000 parameters." in user
    _, user = render(book, GeneratorInput(), TASK)
    assert "budget: at most" not in user
    assert "Parameter budget" not in user


def test_improver_prompt(book: PromptBook) -> None:
    history = [Triple(f"problem {i}", f"suggestion {i}", f"outcome {i}") for i in range(1, 4)]
    messages = book.improver(TASK, REFERENCE, CURRENT, history)
    system, user = messages[0]["content"], messages[1]["content"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert system == (PROMPTS_DIR / "improver_system.txt").read_text().strip()
    assert "fashionmnist" in user
    assert "[B, 1, 28, 28]" in user
    assert "3 epoch(s)" in user
    assert ("Best architecture so far (iteration 4, result: accuracy 81.20%):\n```python\n"
            "class Net:\n    REFERENCE_MARKER = 1\n```") in user
    assert ("Current architecture (iteration 7, result: failed with shape_error: expected "
            "[B, 10]):\n```python\nclass Net:\n    CURRENT_MARKER = 1\n```") in user
    for i in range(1, 4):
        assert (f"{i}. Problem: problem {i}\n   Suggestion: suggestion {i}\n"
                f"   Outcome: outcome {i}") in user
    positions = [user.index(f"Problem: problem {i}") for i in range(1, 4)]
    assert positions == sorted(positions)
    assert "oldest first" in user
    assert "$" not in user


def test_improver_prompt_without_history_or_best(book: PromptBook) -> None:
    user = book.improver(TASK, None, CURRENT, [])[1]["content"]
    assert "Recent improvement attempts" not in user
    assert "Problem:" not in user
    assert "Best architecture so far" not in user
    assert "CURRENT_MARKER" in user


def test_dollar_signs_and_braces_in_code_survive(book: PromptBook) -> None:
    code = ('class Net:\n    """costs $5, ${num_classes} and $dataset stay; {x} {{y}} %s"""\n'
            "    T = '$$'\n")
    attempt = Attempt(2, code, "accuracy 10.00%")
    suggestion = "replace $channels with ${width} {braces}"
    _, user = render(book, GeneratorInput(reference=attempt, suggestions=suggestion))
    assert code.strip() in user
    assert suggestion in user
    improver_user = book.improver(
        TASK, attempt, attempt, [Triple("$height", "{x}", "${budget}")])[1]["content"]
    assert code.strip() in improver_user
    assert "Problem: $height\n   Suggestion: {x}\n   Outcome: ${budget}" in improver_user


def copy_prompts(target: Path) -> Path:
    shutil.copytree(PROMPTS_DIR, target)
    return target


def test_custom_prompts_dir_is_used(tmp_path: Path) -> None:
    custom = copy_prompts(tmp_path / "prompts")
    (custom / "generator_system.txt").write_text("CUSTOM SYSTEM for generators\n")
    (custom / "generator.txt").write_text(
        "CUSTOM $dataset with $num_classes classes, cost $$3, $unknown_placeholder\n"
        "$reference$suggestions")
    (custom / "improver.txt").write_text("CUSTOM IMPROVER $dataset\n$history")
    book = PromptBook(custom)
    system, user = render(book, GeneratorInput(reference=REFERENCE, suggestions="tweak"))
    assert system == "CUSTOM SYSTEM for generators"
    assert user.startswith("CUSTOM fashionmnist with 10 classes, cost $3, $unknown_placeholder")
    assert "REFERENCE_MARKER" in user
    assert "tweak" in user
    assert "visionary" not in user + system
    improver = book.improver(TASK, None, CURRENT, [Triple("a", "b", "c")])
    assert improver[1]["content"].startswith("CUSTOM IMPROVER fashionmnist")
    assert "1. Problem: a" in improver[1]["content"]
    assert improver[0]["content"] == (PROMPTS_DIR / "improver_system.txt").read_text().strip()


@pytest.mark.parametrize("missing", TEMPLATES)
def test_missing_template_is_named(tmp_path: Path, missing: str) -> None:
    custom = copy_prompts(tmp_path / "prompts")
    (custom / f"{missing}.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        PromptBook(custom)
    assert f"['{missing}']" in str(info.value)  # that one, and only that one
    assert str(custom) in str(info.value)


def test_missing_prompts_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="generator"):
        PromptBook(tmp_path / "nowhere")


# -- the loop's use of the prompts -------------------------------------------------------------

CODES = {1: "class Net:\n    ITER_1 = 0.5\n", 2: "class Net(:\n    ITER_2 = 'syntax'\n",
         3: "class Net:\n    ITER_3 = 0.8\n", 5: "class Net:\n    ITER_5 = 0.6\n"}


def loop_records(journal: Journal) -> list[dict]:
    """Five iterations on disk: ok 0.5, syntax_error, ok 0.8, llm_error (no code), ok 0.6."""
    plan = [(1, fc.OK, 0.5), (2, fc.SYNTAX_ERROR, None), (3, fc.OK, 0.8), (4, fc.LLM_ERROR, None),
            (5, fc.OK, 0.6)]
    records = []
    for i, status, accuracy in plan:
        code_file = journal.write_file(f"iter_{i:04d}.py", CODES[i]) if i in CODES else None
        records.append({
            "iteration": i, "chain": 0, "status": status, "accuracy": accuracy,
            "error": None if status == fc.OK else {"type": status, "message": f"err {i}",
                                                   "traceback": ""},
            "code_file": code_file, "llm_calls": 2 * i,
            "triple": {"problem": f"problem {i}", "suggestion": f"suggestion {i}",
                       "outcome": f"outcome {i}"},
            "suggestions": None if status == fc.LLM_ERROR else {
                "reason": f"reason {i}", "inspiration": f"idea {i}",
                "suggestions": f"LOOP_SUGGESTION_{i}"},
        })
    return records


@pytest.fixture
def make_search(tmp_path: Path, tiny_cache: Path):
    def make(url: str = "http://127.0.0.1:9", **overrides: object) -> Search:
        settings = {"dataset": "fashionmnist", "sandbox": "local", "iterations": 10,
                    "top_k": 2, "history_size": 2, "lr": 0.05, "batch_size": 64, "epochs": 2}
        config = RunConfig(**{**settings, **overrides}).validate()
        journal = Journal(tmp_path / "run")
        journal.create(config.to_dict())
        records = loop_records(journal)
        dataset = PreparedDataset("fashionmnist", tiny_cache.parent, SPECS["fashionmnist"], {})
        roles = Roles(OllamaClient(url, retries=1), "coder:test", "improver:test", config.seed)
        box = LocalSandbox(tiny_cache, Limits(timeout=10), "cpu", pool=PoolSize(depth=0))
        reporter = Reporter(config.iterations, Console(file=io.StringIO()))
        codes = read_codes(journal, records)
        return Search(config, journal, roles, box, dataset, PromptBook(config.prompts_dir),
                      reporter, records, codes, novelty_gate(config.novelty_tau, records, codes))

    return make


def test_a_resumed_chain_and_the_novelty_gate_read_each_code_once(
        make_search, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: Counter[str] = Counter()
    read_text = Path.read_text

    def counted(path: Path, *args: object, **kwargs: object) -> str:
        reads[path.name] += 1
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    search = make_search()
    assert {name: n for name, n in reads.items() if name.startswith("iter_")} == {
        f"iter_{i:04d}.py": 1 for i in CODES}
    assert search.state.codes == CODES
    for i in (1, 3, 5):  # the successes, each its own nearest neighbour
        assert search.novelty.check(CODES[i]) == {
            "max_similarity": 1.0, "nearest_iteration": i, "nearest_chain": 0}


def generator_user(search: Search) -> str:
    return search.prompts.generator(search.task, search._generator_input())[1]["content"]


def test_loop_generator_input_from_the_journal(make_search) -> None:
    search = make_search()
    given = search._generator_input()
    assert given.reference.iteration == 3 and given.reference.code == CODES[3]
    assert given.reference.outcome == "accuracy 80.00%"
    assert given.current.iteration == 5
    assert given.suggestions == "LOOP_SUGGESTION_5"
    assert given.top == [] and given.previous == []
    user = generator_user(search)
    assert "lr 0.05" in user and "batch size 64" in user and "2 epoch(s)" in user
    assert "ITER_3" in user and "ITER_5" in user and "LOOP_SUGGESTION_5" in user
    assert "ITER_1" not in user and "ITER_2" not in user


def test_loop_extended_prompt_uses_top_k_and_last_history_size(make_search) -> None:
    given = make_search(extended_prompt=True)._generator_input()
    assert [a.iteration for a in given.top] == [3, 5]  # top_k=2 by accuracy
    assert [a.iteration for a in given.previous] == [3, 5]  # the last 2 with code
    user = generator_user(make_search(extended_prompt=True, top_k=3, history_size=3))
    assert user.count("Top architecture #") == 3
    assert "ITER_1" in user  # third best
    assert "Earlier attempt (iteration 2, result: failed with syntax_error: err 2)" in user


def test_loop_no_reference_drops_the_best_code(make_search) -> None:
    given = make_search(no_reference=True)._generator_input()
    assert given.reference is None
    assert given.current.iteration == 5
    assert "Best architecture so far" not in generator_user(make_search(no_reference=True))


def test_loop_budget_from_config(make_search) -> None:
    assert "at most 4,321 parameters" in generator_user(make_search(max_params=4321))
    assert "Parameter budget" not in generator_user(make_search())


def improver_history(search: Search, server) -> str:
    outcome = Outcome(fc.OK, accuracy=0.7)
    triple = Triple("problem 6", "suggestion 6", "outcome 6")
    call, diagnosis = search._improve(6, "class Net:\n    ITER_6 = 1\n", "", outcome, triple, {})
    assert call.error is None and diagnosis is not None
    return server.chat_requests()[-1]["messages"][-1]["content"]


def test_loop_improver_gets_the_last_k_triples(make_search, fake_ollama) -> None:
    server = fake_ollama(default=lambda body: _diagnosis())
    user = improver_history(make_search(url=server.url), server)
    # history_size=2: the window (iterations 3 and 5; 4 was an infrastructure fault) plus
    # this iteration's triple, cut to the last 2.
    assert "1. Problem: problem 5" in user
    assert "2. Problem: problem 6" in user
    assert "problem 3" not in user and "problem 4" not in user
    assert "Best architecture so far (iteration 3, result: accuracy 80.00%)" in user
    assert "Current architecture (iteration 6, result: accuracy 70.00%)" in user


def test_loop_no_history_sends_no_history_section(make_search, fake_ollama) -> None:
    server = fake_ollama(default=lambda body: _diagnosis())
    user = improver_history(make_search(url=server.url, no_history=True), server)
    assert "Recent improvement attempts" not in user
    assert "Problem:" not in user


def _diagnosis() -> Reply:
    return Reply(content=replies.diagnosis_json("r", "i", "s"))


# -- edit formats ------------------------------------------------------------------------------
@pytest.mark.parametrize(("edit_format", "instruction"), [
    ("search-replace", "<<<<<<< SEARCH"), ("udiff", "unified diff")])
def test_an_edit_prompt_names_what_to_edit(edit_format: str, instruction: str) -> None:
    book = PromptBook(edit_format=edit_format)
    failed = Attempt(5, "FAILED_MARKER = 1", "failed with shape_error: boom")
    _, user = render(book, GeneratorInput(reference=REFERENCE, edit=REFERENCE))
    assert f"Edit the best architecture so far (iteration {REFERENCE.iteration})" in user
    assert instruction in user and "REFERENCE_MARKER" in user
    _, user = render(book, GeneratorInput(reference=REFERENCE, current=failed, edit=failed))
    assert "Edit the architecture of the last iteration (iteration 5), which failed" in user
    assert "FAILED_MARKER" in user
    # Nothing to edit yet: the whole-file template asks for a first architecture.
    _, user = render(book, GeneratorInput())
    assert "Write the complete Python module" in user and instruction not in user


def test_a_prompts_dir_without_the_formats_template_is_refused_for_that_format(
        tmp_path: Path) -> None:
    custom = copy_prompts(tmp_path / "prompts")
    (custom / "generator_udiff.txt").unlink()
    PromptBook(custom)  # the whole format does not need it
    PromptBook(custom, "search-replace")
    with pytest.raises(FileNotFoundError, match=r"\['generator_udiff'\]"):
        PromptBook(custom, "udiff")


def test_an_edited_failed_code_is_kept_when_the_prompt_is_cut() -> None:
    failed = Attempt(4, "FAILED_MARKER = 1", "failed")
    given = GeneratorInput(reference=REFERENCE, current=failed, edit=failed)
    assert [what for what, _ in generator_parts(given)] == []
    given = GeneratorInput(reference=REFERENCE, current=failed)
    assert [what for what, _ in generator_parts(given)] == ["the last attempt's code (iteration 4)"]
