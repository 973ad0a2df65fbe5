"""Parsing the Prompt Improver's replies."""

from __future__ import annotations

import json

import pytest

from orchestrator.search.diagnosis import (
    DIAGNOSIS_SCHEMA,
    Diagnosis,
    DiagnosisError,
    bounded_schema,
    parse_diagnosis,
)
from tests.replies import (
    DIAGNOSIS_GARBAGE,
    DIAGNOSIS_LIST_SUGGESTIONS,
    DIAGNOSIS_PROSE_WRAPPED,
    NO_CODE_REPLY,
    diagnosis_json,
)


def test_schema_requires_three_strings() -> None:
    assert DIAGNOSIS_SCHEMA["type"] == "object"
    assert set(DIAGNOSIS_SCHEMA["required"]) == {"reason", "inspiration", "suggestions"}
    assert all(p == {"type": "string"} for p in DIAGNOSIS_SCHEMA["properties"].values())
    json.dumps(DIAGNOSIS_SCHEMA)


def test_the_schema_sent_bounds_each_field_by_num_predict() -> None:
    """A rambling model (a real 270M one did) runs a field into num_predict and the JSON is
    cut; with each field at most num_predict characters the grammar closes it in time."""
    bounded = bounded_schema(512)
    assert [p["maxLength"] for p in bounded["properties"].values()] == [128] * 3
    assert bounded["required"] == DIAGNOSIS_SCHEMA["required"]
    assert "maxLength" not in DIAGNOSIS_SCHEMA["properties"]["reason"]  # the base unchanged
    assert bounded_schema(0) == bounded_schema(-1) == DIAGNOSIS_SCHEMA  # unlimited


def test_plain_json() -> None:
    found = parse_diagnosis(diagnosis_json("too shallow", "ResNet", "add a residual stage"))
    assert found == Diagnosis("too shallow", "ResNet", "add a residual stage")
    assert found.to_dict() == {
        "reason": "too shallow", "inspiration": "ResNet", "suggestions": "add a residual stage",
    }


def test_json_in_prose_and_fence_with_braces_in_strings() -> None:
    found = parse_diagnosis(DIAGNOSIS_PROSE_WRAPPED)
    assert found.reason.startswith("The first Linear layer expects 4096 features {64*8*8}")
    assert "Network in Network" in found.inspiration
    assert "AdaptiveAvgPool2d(1)" in found.suggestions


def test_list_suggestions_and_capitalised_keys() -> None:
    found = parse_diagnosis(DIAGNOSIS_LIST_SUGGESTIONS)
    assert found.reason.startswith("Accuracy plateaued")
    assert found.suggestions.split("\n") == [
        "1. Add a third conv stage with 128 channels.",
        "2. Use two 3x3 convolutions per stage.",
        "3. Add dropout 0.3 before the classifier.",
    ]


def test_json_embedded_in_prose_without_fence() -> None:
    body = json.dumps({"reason": "NaN loss {lr too high}", "inspiration": "", "suggestions": "x"})
    text = f"Sure {{not json}} -- here's what I think: {body} Hope it's useful {{\"a\": 1}}"
    assert parse_diagnosis(text) == Diagnosis("NaN loss {lr too high}", "", "x")


def test_bare_fence() -> None:
    text = "Analysis:\n```\n" + diagnosis_json("r", "i", "s") + "\n```\n"
    assert parse_diagnosis(text) == Diagnosis("r", "i", "s")


@pytest.mark.parametrize(
    "obj",
    [
        {"problem": "r", "idea": "i", "suggestion": "s"},
        {"Root Cause": "r", "Inspiration": "i", "Improvements": "s"},
        {"diagnosis": {"reason": "r", "inspiration": "i", "suggestions": "s"}},
        {"REASON": "r", "INSPIRATION": "i", "next-steps": ["s"]},
    ],
)
def test_synonyms_case_and_nesting(obj: dict[str, object]) -> None:
    found = parse_diagnosis(json.dumps(obj))
    assert found.reason == "r" and found.inspiration == "i"
    assert found.suggestions in {"s", "1. s"}


def test_lenient_json_variants() -> None:
    trailing = '{"reason": "r", "inspiration": "i", "suggestions": "s",}'
    python_dict = "{'reason': 'r', 'inspiration': \"don't\", 'suggestions': 's'}"
    assert parse_diagnosis(trailing) == Diagnosis("r", "i", "s")
    assert parse_diagnosis(python_dict) == Diagnosis("r", "don't", "s")


def test_missing_optional_fields_are_empty() -> None:
    assert parse_diagnosis('{"suggestions": "use BN"}') == Diagnosis("", "", "use BN")


def test_prose_with_headings() -> None:
    text = (
        "**Reason:** the model overfits after two epochs.\n\n"
        "## Inspiration\nDropout (Srivastava et al.)\n\n"
        "Suggestions:\n- add dropout 0.3\n- use weight decay\n"
    )
    found = parse_diagnosis(text)
    assert found.reason == "the model overfits after two epochs."
    assert found.inspiration == "Dropout (Srivastava et al.)"
    assert found.suggestions == "- add dropout 0.3\n- use weight decay"


@pytest.mark.parametrize(
    "text",
    [
        DIAGNOSIS_GARBAGE,
        NO_CODE_REPLY,
        "",
        "{}",
        '{"reason": "r", "inspiration": "i", "suggestions": ""}',
        '{"reason": "r", "inspiration": "i", "suggestions": []}',
        '{"reason": "only a reason"}',
        "[1, 2, 3]",
        "{" * 50_000 + "}" * 10,
        "*" * 5_000 + "x",
    ],
)
def test_nothing_usable_raises(text: str) -> None:
    with pytest.raises(DiagnosisError):
        parse_diagnosis(text)


def test_diagnosis_error_is_a_value_error() -> None:
    assert issubclass(DiagnosisError, ValueError)


def test_json_fence_after_large_noise() -> None:
    noise = "{ unbalanced prose with 'quotes' and \"more\" " * 20_000
    text = noise + "\n```json\n" + diagnosis_json("r", "i", "s") + "\n```\n"
    assert parse_diagnosis(text) == Diagnosis("r", "i", "s")


def test_json_escaped_lone_surrogates_are_replaced() -> None:
    reply = ('{"reason": "odd \\ud800", "inspiration": "\\udfff", '
             '"suggestions": ["a \\ud83d\\ude00", "b"]}')
    found = parse_diagnosis(reply)
    assert found == Diagnosis("odd \ufffd", "\ufffd", "1. a \U0001f600\n2. b")
    assert json.dumps(found.to_dict(), ensure_ascii=False).encode("utf-8")


def test_a_reasoning_trace_with_a_draft_diagnosis_is_ignored() -> None:
    draft = diagnosis_json("draft reason", "draft", "draft suggestion")
    final = diagnosis_json("final reason", "ResNet", "add skip connections")
    found = parse_diagnosis(f"<think>Maybe {draft}? No, look again.</think>\n{final}")
    assert found == Diagnosis("final reason", "ResNet", "add skip connections")
