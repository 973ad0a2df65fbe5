"""The closed set of outcome classes of an iteration (see docs/contracts.md, "Failure classes").

The ground floor: every layer may import it, and it imports nothing from orchestrator."""

OK = "ok"
EXTRACT_ERROR = "extract_error"
SYNTAX_ERROR = "syntax_error"
CONTRACT_ERROR = "contract_error"
INSTANTIATE_ERROR = "instantiate_error"
SHAPE_ERROR = "shape_error"
RUNTIME_ERROR = "runtime_error"
NAN_LOSS = "nan_loss"
TIMEOUT = "timeout"
OOM = "oom"
CUDA_OOM = "cuda_oom"
OUTPUT_LIMIT = "output_limit"
SANDBOX_ERROR = "sandbox_error"
LLM_ERROR = "llm_error"
DUPLICATE = "duplicate"  # a near-copy of an earlier candidate, not evaluated (--novelty reject)
EDIT_ERROR = "edit_error"  # an edit (--edit-format) that cannot be applied to its base code

# Every outcome class, OK first. Append new classes at the end: store/tracking.py numbers them
# by position for MLflow, and those numbers are in users' MLflow data.
OUTCOMES = (
    OK, EXTRACT_ERROR, SYNTAX_ERROR, CONTRACT_ERROR, INSTANTIATE_ERROR, SHAPE_ERROR, RUNTIME_ERROR,
    NAN_LOSS, TIMEOUT, OOM, CUDA_OOM, OUTPUT_LIMIT, SANDBOX_ERROR, LLM_ERROR, DUPLICATE, EDIT_ERROR,
)
FAILURE_CLASSES = frozenset(OUTCOMES) - {OK}
# Classes a runner may report in result.json; anything else there is not trusted. The runner
# reports its own faults (before or around the candidate's calls) as SANDBOX_ERROR.
RUNNER_CLASSES = frozenset({
    OK, CONTRACT_ERROR, INSTANTIATE_ERROR, SHAPE_ERROR, RUNTIME_ERROR, NAN_LOSS, OOM, CUDA_OOM,
    SANDBOX_ERROR,
})
# Not the candidate's fault: the Prompt Improver is not told the candidate caused them.
INFRASTRUCTURE_CLASSES = frozenset({SANDBOX_ERROR, LLM_ERROR})
# The error type of a `sandbox_error` the runner reports for a CUDA out-of-memory error within
# the candidate's GPU budget: another tenant took the memory. The iteration evaluates it again
# once (sandbox-image/runner.py spells it too).
CROWDED_OUT = "CrowdedOut"
