"""One num_ctx per model for the whole run: Ollama reloads a model whose num_ctx changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import RunConfig
from orchestrator.llm.client import prompt_chars
from orchestrator.llm.models import auto_num_ctx
from orchestrator.search.diagnosis import field_chars
from orchestrator.search.memory import Triple
from orchestrator.search.prompts import (
    OUTCOME_CHARS,
    Attempt,
    GeneratorInput,
    PromptBook,
    Task,
    context_needs,
    diagnosis_chars,
)
from tests import replies
from tests.fake_ollama import Reply
from tests.test_search_e2e import by_role, orchestrator, read_records, run_args

TASK = Task("fashionmnist", (1, 28, 28), 10, {"epochs": 1, "lr": 0.01, "momentum": 0.9,
                                             "weight_decay": 5e-4, "batch_size": 128})
ONE_MODEL = {"generator_model": "coder:test", "improver_model": "coder:test"}
# Diagnoses as long as the schema lets them be (512 characters a field at num_predict 2048)
# make the prompts grow from iteration to iteration, as real ones do.
DIAGNOSES = [replies.diagnosis_json(f"problem {i}", f"idea {i}",
                                    f"suggestion {i}: widen the second stage. " * 12)
             for i in range(8)]
NETS = [replies.VALID_NET, replies.VALID_NET_WIDER] * 4


@pytest.fixture(scope="module")
def book() -> PromptBook:
    return PromptBook()


def sizes(book: PromptBook, **settings: Any) -> dict[str, int]:
    """The most each model's prompts can need, diagnoses bounded by the schema."""
    config = RunConfig(**settings)
    needs = context_needs(book, TASK, config, OUTCOME_CHARS,
                          diagnosis_chars(config.num_predict, bounded=True))
    return {model: most for model, (_, most) in needs.items()}


# -- sizing ----------------------------------------------------------------------------------
def test_roles_on_one_model_share_the_larger_size(book: PromptBook) -> None:
    apart = sizes(book, generator_model="coder:test", improver_model="improver:test")
    shared = sizes(book, **ONE_MODEL)
    assert apart["improver:test"] > apart["coder:test"]  # K = 5 diagnoses outweigh 1
    assert shared == {"coder:test": apart["improver:test"]}
    assert sizes(book, generator_model="llama3.1", improver_model="llama3.1:latest") == {
        "llama3.1:latest": apart["improver:test"]}


def test_size_counts_every_code_at_num_predict_tokens_and_diagnoses_at_the_schema(
        book: PromptBook) -> None:
    for num_predict in (512, 2048):
        apart = sizes(book, num_predict=num_predict, generator_model="g", improver_model="i")
        # generator: reference, current, suggestions; improver: best, current, 5 triples;
        # both: the reply. A diagnosis field is at most num_predict / 4 characters, a third
        # of that in tokens by the generous estimate. The template text adds less than 4096.
        field = field_chars(num_predict) // 3
        for model, floor in (("g:latest", 3 * num_predict + 2 * field),
                             ("i:latest", 3 * num_predict + 5 * 2 * field)):
            assert floor <= apart[model] < floor + 4096 and apart[model] % 1024 == 0


def test_size_grows_with_the_window_and_the_extended_prompt(book: PromptBook) -> None:
    base = sizes(book, generator_model="g", improver_model="i")
    wider = sizes(book, generator_model="g", improver_model="i", history_size=11)
    extended = sizes(book, generator_model="g", improver_model="i", extended_prompt=True,
                     top_k=3, history_size=5)
    # six more triples of two 512-character fields: about 2048 tokens more
    assert wider["i:latest"] >= base["i:latest"] + 1024
    assert extended["g:latest"] >= base["g:latest"] + (3 + 5) * 2048
    assert extended["i:latest"] == base["i:latest"]  # the extended prompt is the Generator's


def test_no_realistic_prompt_needs_more_than_the_size(book: PromptBook) -> None:
    num_predict = 1024
    code = "y" * (3 * num_predict)  # num_predict tokens by the generous estimate
    field = "z" * field_chars(num_predict)  # a diagnosis field as long as the schema allows
    outcome = "failed with runtime_error: " + "z" * OUTCOME_CHARS
    attempt = Attempt(123, code, outcome[:OUTCOME_CHARS])
    size = sizes(book, num_predict=num_predict, **ONE_MODEL)["coder:test"]
    generator = book.generator(TASK, GeneratorInput(attempt, attempt, field))
    triples = [Triple(field, field, outcome)] * 5
    improver = book.improver(TASK, attempt, attempt, triples)
    for messages in (generator, improver):
        assert auto_num_ctx(prompt_chars(messages), num_predict) <= size


# -- a real run ------------------------------------------------------------------------------
def one_model_run(server, data_dir: Path, results: Path, name: str, iterations: int
                  ) -> list[str]:
    """run_args with both roles on coder:test and a small data subset."""
    args = run_args(server, data_dir, results, name, iterations)
    for flag, value in (("--improver-model", "coder:test"), ("--train-samples", "1000"),
                        ("--test-samples", "200")):
        args[args.index(flag) + 1] = value
    return args


def sent_num_ctx(server) -> list[int]:
    """num_ctx of the generating calls (not the loads without messages)."""
    return [b["options"]["num_ctx"] for b in server.chat_requests()]


def journaled_num_ctx(run_dir: Path) -> set[int]:
    return {r["llm"][role]["num_ctx"] for r in read_records(run_dir)
            for role in ("generator", "improver")}


@pytest.mark.slow
def test_both_roles_on_one_model_load_it_once(fake_ollama, fashion_data_dir, tmp_path, book):
    server = fake_ollama(default=by_role(NETS, DIAGNOSES))
    proc = orchestrator(*one_model_run(server, fashion_data_dir, tmp_path, "once", 4))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output

    assert server.loads() == {"coder:test": 1}, sent_num_ctx(server)
    assert server.reloads() == 0
    chats = server.chat_requests()
    # keep_alive outlasts the run's longest gap: 2 x (300 s + 300 s warm-up) + 2 x 600 s
    assert len(chats) == 8 and all(b.get("keep_alive") == "2400s" for b in chats)
    config = json.loads((tmp_path / "once" / "config.json").read_text())
    (num_ctx,) = config["num_ctx_per_model"].values()
    assert config["num_ctx_per_model"] == sizes(book, **ONE_MODEL) == {"coder:test": num_ctx}
    assert config["keep_alive"] == "30m" and config["keep_alive_sent"] == "2400s"
    assert set(sent_num_ctx(server)) == {num_ctx}
    assert journaled_num_ctx(tmp_path / "once") == {num_ctx}


@pytest.mark.slow
def test_a_model_that_can_think_gets_room_for_its_trace_unless_told_not_to(
        fake_ollama, fashion_data_dir, tmp_path, book):
    """improver_think unset (the default): Ollama lets a model that can think think
    (server/routes.go, ChatHandler), so the Improver's num_predict and its model's num_ctx hold
    think_tokens for the trace; the Generator's think = false (the default) leaves it none."""
    diagnosis = Reply(content=DIAGNOSES[0], thinking="Let me weigh the options. " * 50)
    server = fake_ollama(thinking=True, default=by_role([replies.VALID_NET], [diagnosis]))
    proc = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "thinks", 1))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output

    generator, improver = server.chat_requests()
    assert generator["think"] is False and "think" not in improver
    assert [b["options"]["num_predict"] for b in (generator, improver)] == [2048, 2048 + 4096]
    plain = sizes(book, generator_model="coder:test", improver_model="improver:test")
    config = json.loads((tmp_path / "thinks" / "config.json").read_text())
    assert config["num_ctx_per_model"] == {"coder:test": plain["coder:test"],
                                           "improver:test": plain["improver:test"] + 4096}
    assert improver["options"]["num_ctx"] == plain["improver:test"] + 4096
    (record,) = read_records(tmp_path / "thinks")
    assert record["suggestions"]["suggestions"].startswith("suggestion 0: widen")


@pytest.mark.slow
def test_think_false_reaches_every_server_even_where_the_model_cannot_think(
        fake_ollama, fashion_data_dir, tmp_path):
    """Two servers disagree whether the Generator's model can think. Its think = false (the
    default) is sent to both: the real server accepts false from any model and refuses only
    true (server/routes.go, ChatHandler); left out, the thinking one would think."""
    plain = fake_ollama(default=by_role([replies.VALID_NET], DIAGNOSES))
    thinking = fake_ollama(thinking=True, default=by_role([replies.VALID_NET], DIAGNOSES))
    args = run_args(plain, fashion_data_dir, tmp_path, "mixed", 1)
    proc = orchestrator(*args, "--ollama-host", thinking.url, "--parallel", "2")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    generators = [b for server in (plain, thinking) for b in server.chat_requests()
                  if not b.get("format")]
    assert len(generators) == 2 and all(b["think"] is False for b in generators)


@pytest.mark.slow
def test_a_resumed_run_starts_from_the_stored_num_ctx(fake_ollama, fashion_data_dir, tmp_path):
    server = fake_ollama(default=by_role(NETS, DIAGNOSES))
    first = orchestrator(*one_model_run(server, fashion_data_dir, tmp_path, "again", 1))
    assert first.communicate(timeout=900)[0] and first.returncode == 0
    config_file = tmp_path / "again" / "config.json"
    config = json.loads(config_file.read_text())
    stored = config["num_ctx_per_model"]["coder:test"] + 1024  # as if it had grown
    config["num_ctx_per_model"] = {"coder:test": stored}
    config_file.write_text(json.dumps(config))

    second = orchestrator(*one_model_run(server, fashion_data_dir, tmp_path, "again", 2),
                          "--resume")
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output
    assert sent_num_ctx(server)[2:] == [stored, stored]
    assert json.loads(config_file.read_text())["num_ctx_per_model"] == {"coder:test": stored}
    assert read_records(tmp_path / "again")[1]["llm"]["improver"]["num_ctx"] == stored
