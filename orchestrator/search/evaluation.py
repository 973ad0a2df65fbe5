"""Turn a sandbox's untrusted output into a classified outcome, scored on the host."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import orjson

from orchestrator import outcomes as fc
from orchestrator.config import RunConfig
from orchestrator.data.datasets import PreparedDataset
from orchestrator.gpu.plan import CANDIDATES_GPU_SHARE
from orchestrator.sandbox.base import Execution, Sandbox

MESSAGE_CHARS = 2000
TRACEBACK_CHARS = 4000
PHASE_CHARS = 40
SANDBOX_PHASE = "sandbox"  # a fault of the host's sandbox machinery, outside the runner


@dataclass
class Outcome:
    status: str
    accuracy: float | None = None  # the selection metric: validation accuracy, else test
    error: dict | None = None  # {type, message, traceback}
    metrics: dict = field(default_factory=dict)
    phase: str | None = None
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    repeats: dict | None = None  # {accuracies, test_accuracies}: one per training seed

    @property
    def ok(self) -> bool:
        return self.status == fc.OK

    def to_dict(self) -> dict:
        return {"status": self.status, "accuracy": self.accuracy, "error": self.error,
                "phase": self.phase}


def failure(status: str, message: str, type_: str | None = None, traceback: str = "",
            phase: str | None = None) -> Outcome:
    """An outcome for a failure of class `status`."""
    error = {"type": type_ or status, "message": message[:MESSAGE_CHARS],
             "traceback": traceback[-TRACEBACK_CHARS:]}
    return Outcome(status=status, error=error, phase=phase)


def key_traceback_line(traceback: str) -> str:
    """The most telling line of a traceback: the last frame in the candidate, else the last."""
    lines = [ln.strip() for ln in traceback.strip().splitlines() if ln.strip()]
    frames = [i for i, ln in enumerate(lines) if ln.startswith("File ") and "candidate" in ln]
    if frames and frames[-1] + 1 < len(lines):
        i = frames[-1]
        return f"{lines[i]}: {lines[i + 1]}"
    return lines[-1] if lines else ""


def score(execution: Execution, labels: np.ndarray, num_classes: int,
          val_count: int = 0) -> Outcome:
    """Classify what came back from the sandbox; compute accuracy from predictions only. The
    first `val_count` labels are the validation split: its accuracy is then the one that
    selects (`accuracy`), and the test accuracy is kept beside it."""
    outcome = _classify(execution, labels, num_classes, val_count)
    if execution.seconds:
        outcome.metrics.setdefault("sandbox_seconds", round(execution.seconds, 3))
    return outcome


def _classify(execution: Execution, labels: np.ndarray, num_classes: int,
              val_count: int) -> Outcome:
    result = _parse_result(execution.result_bytes)
    if execution.sandbox_error:
        return _sandbox_fault(execution.sandbox_error, result)
    if execution.killed:
        return _killed(execution)
    if result is None:
        return _no_result(execution)
    status, phase = result.get("status"), result.get("phase")
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    if not isinstance(status, str) or status not in fc.RUNNER_CLASSES:
        return failure(fc.RUNTIME_ERROR, f"runner reported an unknown status {status!r:.200}")
    phase = phase[:PHASE_CHARS] if isinstance(phase, str) else None
    if status == fc.SANDBOX_ERROR:
        return _sandbox_fault("the runner failed", result)
    if status != fc.OK:
        outcome = _runner_failure(status, result.get("error"), phase)
        outcome.metrics = _clean_metrics(metrics)
        return outcome
    try:
        predictions = load_predictions(execution.predictions_bytes, len(labels), num_classes)
    except ValueError as exc:
        return failure(fc.RUNTIME_ERROR, f"invalid predictions: {exc}", phase="predict")
    correct = predictions == labels.astype(np.int64)
    test = float(np.mean(correct[val_count:]))
    val = float(np.mean(correct[:val_count])) if val_count else None
    return Outcome(fc.OK, accuracy=test if val is None else val, test_accuracy=test,
                   val_accuracy=val, metrics=_clean_metrics(metrics), phase=phase)


def _sandbox_fault(message: str, result: dict | None) -> Outcome:
    """A `sandbox_error` with the runner's phase and error where it reported its own fault,
    else the phase "sandbox"."""
    if result is None or result.get("status") != fc.SANDBOX_ERROR:
        return failure(fc.SANDBOX_ERROR, message, phase=SANDBOX_PHASE)
    phase = result.get("phase")
    phase = phase[:PHASE_CHARS] if isinstance(phase, str) else SANDBOX_PHASE
    error = result.get("error") if isinstance(result.get("error"), dict) else {}
    if error.get("type") == fc.CROWDED_OUT:
        return failure(fc.SANDBOX_ERROR, str(error.get("message", "")), type_=fc.CROWDED_OUT,
                       traceback=str(error.get("traceback", "")), phase=phase)
    detail = f"{str(error.get('type', ''))[:200]}: {str(error.get('message', ''))}".strip(": ")
    return failure(fc.SANDBOX_ERROR, f"{message} in phase {phase}: {detail}",
                   traceback=str(error.get("traceback", "")), phase=phase)


def _killed(execution: Execution) -> Outcome:
    reason = {
        fc.TIMEOUT: "the candidate ran past the wall-clock limit and was killed",
        fc.OOM: "the candidate exceeded the memory limit and was killed",
        fc.OUTPUT_LIMIT: "the candidate printed more than the output limit and was killed",
    }.get(execution.killed, f"killed: {execution.killed}")
    status = execution.killed if execution.killed in fc.FAILURE_CLASSES else fc.RUNTIME_ERROR
    return failure(status, reason, traceback=execution.log_tail)


def _no_result(execution: Execution) -> Outcome:
    code = execution.exit_code
    tail = execution.log_tail.strip().splitlines()[-1:] or [""]
    if code is not None and code < 0 or (code or 0) > 128:
        message = f"the interpreter died (exit code {code}) without writing a result"
    else:
        message = f"the runner exited with code {code} without a valid result"
    if tail[0]:
        message += f"; last output: {tail[0][:300]}"
    return failure(fc.RUNTIME_ERROR, message, traceback=execution.log_tail)


def _parse_result(data: bytes | None) -> dict | None:
    if not data:
        return None
    try:
        result = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return result if isinstance(result, dict) else None


def _runner_failure(status: str, error: object, phase: object) -> Outcome:
    error = error if isinstance(error, dict) else {}
    return failure(
        status,
        str(error.get("message", ""))[:MESSAGE_CHARS] or status,
        type_=str(error.get("type", status))[:200],
        traceback=str(error.get("traceback", "")),
        phase=phase,
    )


def _clean_metrics(metrics: dict) -> dict:
    """Keep only numeric or short string metrics: the runner's output is untrusted."""
    clean = {}
    for key, value in list(metrics.items())[:50]:
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and np.isfinite(value):
            clean[str(key)[:64]] = value
        elif isinstance(value, str):
            clean[str(key)[:64]] = value[:200]
    return clean


def load_predictions(data: bytes | None, count: int, num_classes: int) -> np.ndarray:
    """Validate the predictions file: an integer .npy of shape [count] within [0, classes)."""
    if not data:
        raise ValueError("no predictions file")
    stream = io.BytesIO(data)
    try:  # the header first: a hostile file may claim any shape or be something else
        version = np.lib.format.read_magic(stream)
        readers = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = readers[version](stream)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ValueError(f"not a .npy array ({exc})") from None
    if dtype.kind not in "iu":
        raise ValueError(f"expected an integer array, got {dtype}")
    if shape != (count,):
        raise ValueError(f"expected shape ({count},), got {shape}")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"unreadable .npy array ({exc})") from None
    if count and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"class indices outside [0, {num_classes})")
    return array.astype(np.int64)


PLACE_KEYS = ("node", "host", "gpu_ids")  # where a cluster evaluation ran (text)


def gpu_share(config: RunConfig) -> float | None:
    """The GPU memory share of one candidate where no GPU plan gives it a budget: the
    candidates' part of the GPU, split between the chains that share it, or the fraction of a
    GPU Ray gives each task; None for a whole GPU."""
    if config.executor == "ray":
        gpus = config.ray_gpus
        return round(CANDIDATES_GPU_SHARE * gpus, 3) if gpus and gpus < 1 else None
    return round(CANDIDATES_GPU_SHARE / config.parallel, 3) if config.parallel > 1 else None



def job_for(config: RunConfig, dataset: PreparedDataset, seed: int | None = None,
            epochs: int | None = None, gpu_budget: int | None = None) -> dict:
    """The sandbox job of the run's protocol (another training seed or schedule when given);
    with a GPU plan's `gpu_budget` (bytes), that is the candidate's GPU memory limit, else its
    share of the GPU."""
    spec = dataset.spec
    return {
        "input_shape": list(spec.input_shape), "num_classes": spec.num_classes,
        "mean": list(spec.mean), "std": list(spec.std), "crop_padding": 4,
        "flip": spec.flip, "epochs": epochs or config.epochs, "batch_size": config.batch_size,
        "lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay,
        "seed": config.seed if seed is None else seed, "device": config.device,
        "precision": config.precision, "validate_batch": 2, "max_params": config.max_params,
        "gpu_memory_fraction": None if gpu_budget else gpu_share(config),
        "gpu_memory_budget": gpu_budget,
    }



def evaluate(sandbox: Sandbox, code: str, job: dict, dataset: PreparedDataset,
             labels: np.ndarray) -> Outcome:
    """One training of `code` in the sandbox, scored on the host against `labels` (the
    dataset's evaluation labels), with the sandbox's measurements among its metrics."""
    try:
        execution = sandbox.run(code, job)
    except Exception as exc:  # a sandbox bug must not end the search or blame the design
        execution = Execution(None, 0.0, sandbox_error=f"sandbox failed: {exc!r}")
    outcome = score(execution, labels, dataset.spec.num_classes, dataset.val_count)
    outcome.metrics.update({k: v for k, v in execution.info.items()
                            if isinstance(v, int | float) or k in PLACE_KEYS})
    return outcome



def averaged(outcomes: list[Outcome]) -> Outcome:
    """One outcome for successful repeats: mean accuracies, the first's metrics, each
    repeat's accuracies kept."""
    def mean(values: list[float | None]) -> float | None:
        return None if None in values else sum(values) / len(values)

    first = outcomes[0]
    return Outcome(
        fc.OK, accuracy=mean([o.accuracy for o in outcomes]), metrics=first.metrics,
        phase=first.phase, test_accuracy=mean([o.test_accuracy for o in outcomes]),
        val_accuracy=mean([o.val_accuracy for o in outcomes]),
        repeats={"accuracies": [o.accuracy for o in outcomes],
                 "test_accuracies": [o.test_accuracy for o in outcomes]})
