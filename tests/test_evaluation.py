"""Scoring untrusted sandbox output (search/evaluation.py) with hand-built Executions."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from numpy.lib import format as npy_format

from orchestrator import outcomes as fc
from orchestrator.sandbox.base import Execution
from orchestrator.search.evaluation import (
    MESSAGE_CHARS,
    TRACEBACK_CHARS,
    key_traceback_line,
    load_predictions,
    score,
)

LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.uint8)
CLASSES = 10
# 7 of the 10 predictions match LABELS (indices 2, 5 and 9 are wrong).
PREDICTED = np.array([0, 1, 0, 3, 4, 4, 6, 7, 8, 1], dtype=np.int64)
ACCURACY = 0.7


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...], descr: str = "<i8", payload: bytes = b"") -> bytes:
    """A .npy file whose header claims `shape`, followed by `payload` bytes of data."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                            "shape": shape})
    return buf.getvalue() + payload


def result(status: str = fc.OK, **fields: object) -> bytes:
    body = {"status": status, "phase": "predict", "error": None,
            "metrics": {"params": 1234, "steps": 10, "final_loss": 0.5, "device": "cpu"}}
    body.update(fields)
    return json.dumps(body).encode()


def execution(result_bytes: bytes | None = None, predictions: bytes | None = None,
              **fields: object) -> Execution:
    fields.setdefault("exit_code", 0)
    fields.setdefault("seconds", 2.5)
    return Execution(result_bytes=result_bytes, predictions_bytes=predictions, **fields)


def assert_runtime_error(outcome, *words: str) -> None:
    assert outcome.status == fc.RUNTIME_ERROR
    assert outcome.accuracy is None
    assert not outcome.ok
    for word in words:
        assert word in outcome.error["message"]


# -- success ---------------------------------------------------------------------------------

def test_ok_accuracy_is_computed_from_predictions_on_the_host() -> None:
    outcome = score(execution(result(), npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.ok
    assert outcome.status == fc.OK
    assert outcome.accuracy == pytest.approx(ACCURACY)
    assert outcome.error is None
    assert outcome.phase == "predict"
    assert outcome.metrics == {"params": 1234, "steps": 10, "final_loss": 0.5, "device": "cpu",
                               "sandbox_seconds": 2.5}


def test_all_right_and_all_wrong() -> None:
    right = score(execution(result(), npy(LABELS.astype(np.int64))), LABELS, CLASSES)
    assert right.accuracy == 1.0
    wrong = score(execution(result(), npy((LABELS.astype(np.int64) + 1) % 10)), LABELS, CLASSES)
    assert wrong.status == fc.OK
    assert wrong.accuracy == 0.0


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint16, ">i8"])
def test_any_integer_dtype_is_accepted(dtype) -> None:
    outcome = score(execution(result(), npy(PREDICTED.astype(dtype))), LABELS, CLASSES)
    assert outcome.accuracy == pytest.approx(ACCURACY)


def test_claimed_accuracy_in_result_json_is_ignored() -> None:
    claims = result(accuracy=0.99, metrics={"accuracy": 0.99, "test_accuracy": 1.0})
    outcome = score(execution(claims, npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.accuracy == pytest.approx(ACCURACY)


def test_hostile_metrics_are_dropped_or_trimmed() -> None:
    metrics = {
        "params": 10, "huge": 1e308, "big_int": 18446744073709551615, "negative": -3,
        "nested": {"accuracy": 0.99}, "listed": [1, 2, 3], "none": None, "flag": True,
        "long_text": "y" * 5000, "k" * 500: 1,
    }
    outcome = score(execution(result(metrics=metrics), npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.accuracy == pytest.approx(ACCURACY)
    m = outcome.metrics
    assert {"nested", "listed", "none", "flag"}.isdisjoint(m)
    assert m["huge"] == 1e308
    assert m["big_int"] == 18446744073709551615
    assert m["negative"] == -3
    assert m["long_text"] == "y" * 200
    assert m["k" * 64] == 1
    assert all(len(k) <= 64 for k in m)
    for value in m.values():
        assert isinstance(value, int | float | str) and not isinstance(value, bool)
        if isinstance(value, float):
            assert math.isfinite(value)


def test_metrics_are_capped_in_number() -> None:
    metrics = {f"m{i}": i for i in range(500)}
    outcome = score(execution(result(metrics=metrics), npy(PREDICTED)), LABELS, CLASSES)
    assert len(outcome.metrics) <= 51  # 50 from the runner plus sandbox_seconds


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_in_result_json_cannot_score(literal: bytes) -> None:
    """Python's json writes NaN/Infinity; strict JSON has none: such a result is not trusted."""
    body = result().replace(b'"final_loss": 0.5', b'"final_loss": ' + literal)
    assert literal in body
    outcome = score(execution(body, npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.accuracy is None
    assert outcome.status != fc.OK
    assert all(math.isfinite(v) for v in outcome.metrics.values() if isinstance(v, float))


def test_metrics_that_are_not_a_dict_are_ignored() -> None:
    outcome = score(execution(result(metrics=[1, 2, 3]), npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.accuracy == pytest.approx(ACCURACY)
    assert outcome.metrics == {"sandbox_seconds": 2.5}


# -- invalid predictions ---------------------------------------------------------------------

def pickled_object_array() -> bytes:
    return npy(np.array([0, 1, "two", None, {"x": 1}, 5, 6, 7, 8, 9], dtype=object),
               allow_pickle=True)


INVALID_PREDICTIONS = {
    "missing": None,
    "empty": b"",
    "float array": npy(PREDICTED.astype(np.float32)),
    "bool array": npy(np.ones(10, dtype=bool)),
    "too short": npy(PREDICTED[:9]),
    "too long": npy(np.concatenate([PREDICTED, PREDICTED])),
    "2-d": npy(PREDICTED.reshape(2, 5)),
    "column": npy(PREDICTED.reshape(10, 1)),
    "scalar": npy(np.array(3)),
    "class out of range": npy(np.where(np.arange(10) == 4, 10, PREDICTED)),
    "huge class": npy(np.full(10, 2**40, dtype=np.int64)),
    "negative": npy(np.where(np.arange(10) == 4, -1, PREDICTED)),
    "pickled object array": pickled_object_array(),
    "truncated": npy(PREDICTED)[:-5],
    "header only": npy(PREDICTED)[:100],
    "garbage": bytes(range(256)) * 3,
    "text": b"0 1 2 3 4 5 6 7 8 9\n",
    "raw pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
    "npz archive": (lambda: (b := io.BytesIO(), np.savez(b, a=PREDICTED), b.getvalue())[2])(),
    "structured": npy(np.zeros(10, dtype=[("a", "<i8")])),
    "complex": npy(PREDICTED.astype(np.complex64)),
}


@pytest.mark.parametrize("name", list(INVALID_PREDICTIONS))
def test_invalid_predictions_are_a_runtime_error(name: str) -> None:
    data = INVALID_PREDICTIONS[name]
    outcome = score(execution(result(), data), LABELS, CLASSES)
    assert_runtime_error(outcome, "invalid predictions")
    assert outcome.phase == "predict"
    with pytest.raises(ValueError):
        load_predictions(data, len(LABELS), CLASSES)


def test_pickled_predictions_are_never_unpickled() -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    data = npy(np.array([Boom()] * 10, dtype=object), allow_pickle=True)
    outcome = score(execution(result(), data), LABELS, CLASSES)
    assert_runtime_error(outcome, "invalid predictions")


def test_load_predictions_returns_int64() -> None:
    loaded = load_predictions(npy(PREDICTED.astype(np.uint8)), 10, CLASSES)
    assert loaded.dtype == np.int64
    assert loaded.tolist() == PREDICTED.tolist()
    assert load_predictions(npy(np.zeros(0, dtype=np.int64)), 0, CLASSES).shape == (0,)


def test_fake_zip_predictions_are_a_runtime_error() -> None:
    data = b"PK\x03\x04" + b"not really a zip archive" * 4
    outcome = score(execution(result(), data), LABELS, CLASSES)
    assert_runtime_error(outcome, "invalid predictions")


def test_npy_header_claiming_a_huge_shape_is_a_runtime_error() -> None:
    data = npy_header_only((2**59,), payload=b"\x00" * 80)
    outcome = score(execution(result(), data), LABELS, CLASSES)
    assert_runtime_error(outcome, "invalid predictions")


# -- untrusted result.json -------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"not json at all", b"{\"status\": \"ok\"", b"[\"ok\"]", b"\"ok\"", b"42", b"null",
    b"\xff\xfe\x00garbage",
])
def test_result_that_is_not_a_json_object_is_a_runtime_error(body: bytes) -> None:
    outcome = score(execution(body, npy(PREDICTED)), LABELS, CLASSES)
    assert_runtime_error(outcome, "without a valid result")


@pytest.mark.parametrize("status", ["excellent", "OK", "", None, 1, fc.TIMEOUT,
                                    fc.OUTPUT_LIMIT, fc.LLM_ERROR, fc.EXTRACT_ERROR,
                                    fc.DUPLICATE])
def test_status_the_runner_may_not_report_is_a_runtime_error(status: object) -> None:
    assert status not in fc.RUNNER_CLASSES
    outcome = score(execution(result(status=status), npy(PREDICTED)), LABELS, CLASSES)
    assert_runtime_error(outcome, "unknown status")


def test_missing_status_is_a_runtime_error() -> None:
    body = json.dumps({"phase": "predict", "metrics": {}}).encode()
    assert_runtime_error(score(execution(body, npy(PREDICTED)), LABELS, CLASSES),
                         "unknown status")


@pytest.mark.parametrize("status", [["ok"], {"ok": True}])
def test_unhashable_status_is_a_runtime_error(status: object) -> None:
    outcome = score(execution(result(status=status), npy(PREDICTED)), LABELS, CLASSES)
    assert_runtime_error(outcome, "unknown status")


@pytest.mark.parametrize("status", sorted(fc.RUNNER_CLASSES - {fc.OK, fc.SANDBOX_ERROR}))
def test_runner_failures_pass_through(status: str) -> None:
    error = {"type": "RuntimeError", "message": "mat1 and mat2 shapes cannot be multiplied",
             "traceback": 'File "candidate.py", line 9, in forward\n  return self.fc(x)'}
    body = result(status=status, phase="train", error=error,
                  metrics={"params": 5, "junk": {"a": 1}})
    outcome = score(execution(body, npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.status == status
    assert outcome.accuracy is None  # predictions are not scored for a failure
    assert outcome.phase == "train"
    assert outcome.error == error
    assert outcome.metrics == {"params": 5, "sandbox_seconds": 2.5}


RUNNER_FAULT = {"type": "ValueError", "message": "Expected a torch.device with a specified index",
                "traceback": "Traceback ...\nValueError: Expected a torch.device"}


def test_a_runner_fault_is_a_sandbox_error_with_its_phase() -> None:
    """The runner's own fault (here the GPU memory share) is infrastructure, never the
    candidate's runtime_error, and names the runner's phase."""
    body = result(status=fc.SANDBOX_ERROR, phase="memory_share", error=RUNNER_FAULT, metrics={})
    outcome = score(execution(body, exit_code=2), LABELS, CLASSES)
    assert (outcome.status, outcome.phase, outcome.accuracy) == (
        fc.SANDBOX_ERROR, "memory_share", None)
    assert outcome.status in fc.INFRASTRUCTURE_CLASSES
    assert outcome.error["message"] == ("the runner failed in phase memory_share: ValueError: "
                                        "Expected a torch.device with a specified index")
    assert outcome.error["traceback"] == RUNNER_FAULT["traceback"]


def test_a_sandbox_that_ended_while_warming_up_keeps_the_runner_phase() -> None:
    body = result(status=fc.SANDBOX_ERROR, phase="data" + "x" * 500, error=RUNNER_FAULT)
    outcome = score(execution(body, sandbox_error="the sandbox ended while warming up"),
                    LABELS, CLASSES)
    assert outcome.status == fc.SANDBOX_ERROR and outcome.phase == ("data" + "x" * 500)[:40]
    assert outcome.error["message"].startswith("the sandbox ended while warming up in phase data")
    host_only = score(execution(sandbox_error="Docker API error"), LABELS, CLASSES)
    assert (host_only.phase, host_only.error["message"]) == ("sandbox", "Docker API error")


def test_runner_failure_error_is_trimmed() -> None:
    error = {"type": "T" * 1000, "message": "M" * 10_000,
             "traceback": "start " + "x" * 20_000 + " end"}
    outcome = score(execution(result(status=fc.RUNTIME_ERROR, error=error)), LABELS, CLASSES)
    assert outcome.status == fc.RUNTIME_ERROR
    assert outcome.error["message"] == "M" * MESSAGE_CHARS
    assert len(outcome.error["traceback"]) == TRACEBACK_CHARS
    assert outcome.error["traceback"].endswith(" end")  # the tail is what matters
    assert len(outcome.error["type"]) <= 200


@pytest.mark.parametrize("error", [None, "a string", ["list"], {}])
def test_runner_failure_with_malformed_error(error: object) -> None:
    body = result(status=fc.SHAPE_ERROR, error=error, phase=["not", "a", "string"])
    outcome = score(execution(body), LABELS, CLASSES)
    assert outcome.status == fc.SHAPE_ERROR
    assert outcome.error["message"] == fc.SHAPE_ERROR
    assert outcome.error["type"] == fc.SHAPE_ERROR
    assert outcome.error["traceback"] == ""
    assert outcome.phase is None


def test_ok_phase_is_a_string_or_none() -> None:
    body = result(phase={"nested": ["x" * 100]})
    outcome = score(execution(body, npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.accuracy == pytest.approx(ACCURACY)
    assert outcome.phase is None or isinstance(outcome.phase, str)


# -- host-side outcomes ----------------------------------------------------------------------

@pytest.mark.parametrize("killed", [fc.TIMEOUT, fc.OOM, fc.OUTPUT_LIMIT])
def test_killed_sandbox_gets_that_class_whatever_it_wrote(killed: str) -> None:
    ex = execution(result(), npy(PREDICTED), killed=killed, exit_code=-9,
                   log_tail="epoch 1\nstill training")
    outcome = score(ex, LABELS, CLASSES)
    assert outcome.status == killed
    assert outcome.accuracy is None
    assert "killed" in outcome.error["message"]
    assert outcome.error["traceback"] == "epoch 1\nstill training"


def test_unknown_kill_reason_is_a_runtime_error() -> None:
    outcome = score(execution(killed="cosmic ray"), LABELS, CLASSES)
    assert_runtime_error(outcome, "cosmic ray")


def test_sandbox_error_wins_over_everything() -> None:
    ex = execution(result(), npy(PREDICTED), killed=fc.TIMEOUT,
                   sandbox_error="docker daemon went away")
    outcome = score(ex, LABELS, CLASSES)
    assert outcome.status == fc.SANDBOX_ERROR
    assert outcome.accuracy is None
    assert outcome.error["message"] == "docker daemon went away"


@pytest.mark.parametrize("code", [-11, 139, -9])
def test_interpreter_death_without_result(code: int) -> None:
    ex = execution(exit_code=code, log_tail="loading\nSegmentation fault (core dumped)\n")
    outcome = score(ex, LABELS, CLASSES)
    assert_runtime_error(outcome, "interpreter died", f"exit code {code}",
                         "Segmentation fault (core dumped)")


@pytest.mark.parametrize("code", [1, 2, 0, None])
def test_runner_exit_without_result(code: int | None) -> None:
    """Exit code 2 without result.json is no proof of a runner fault: a sandbox the candidate
    wrecked (a fork bomb under gVisor) ends that way too."""
    outcome = score(execution(exit_code=code, log_tail=""), LABELS, CLASSES)
    assert_runtime_error(outcome, f"exited with code {code}", "without a valid result")
    assert "interpreter died" not in outcome.error["message"]


def test_last_output_line_in_message_is_capped() -> None:
    ex = execution(exit_code=1, log_tail="first\n" + "z" * 5000)
    outcome = score(ex, LABELS, CLASSES)
    assert "z" * 300 in outcome.error["message"]
    assert "z" * 301 not in outcome.error["message"]
    assert "first" not in outcome.error["message"]


def test_sandbox_seconds_metric_only_when_measured() -> None:
    outcome = score(execution(result(), npy(PREDICTED), seconds=0.0), LABELS, CLASSES)
    assert "sandbox_seconds" not in outcome.metrics
    outcome = score(execution(result(), npy(PREDICTED), seconds=1.23456), LABELS, CLASSES)
    assert outcome.metrics["sandbox_seconds"] == 1.235


def test_outcome_to_dict() -> None:
    outcome = score(execution(result(), npy(PREDICTED)), LABELS, CLASSES)
    assert outcome.to_dict() == {"status": fc.OK, "accuracy": pytest.approx(ACCURACY),
                                 "error": None, "phase": "predict"}


# -- key_traceback_line ----------------------------------------------------------------------

TRACEBACK = """Traceback (most recent call last):
  File "/runner/runner.py", line 300, in train
    loss = model(x)
  File "/job/candidate.py", line 12, in forward
    x = self.block(x)
  File "/job/candidate.py", line 30, in block
    return self.conv(x).view(-1, 99)
  File "/usr/lib/python3/torch/nn/modules/module.py", line 1500, in _call_impl
    return forward_call(*args)
RuntimeError: shape '[-1, 99]' is invalid for input of size 1024
"""


def test_key_traceback_line_picks_the_last_candidate_frame() -> None:
    assert key_traceback_line(TRACEBACK) == (
        'File "/job/candidate.py", line 30, in block: return self.conv(x).view(-1, 99)')


def test_key_traceback_line_falls_back_to_the_last_line() -> None:
    no_candidate = 'Traceback:\n  File "/runner/runner.py", line 1\n    boom()\nMemoryError\n'
    assert key_traceback_line(no_candidate) == "MemoryError"
    frame_last = 'Traceback:\n  File "/job/candidate.py", line 3, in <module>'
    assert key_traceback_line(frame_last) == 'File "/job/candidate.py", line 3, in <module>'
    assert key_traceback_line("") == ""
    assert key_traceback_line("\n  \n") == ""
