"""The iteration record: what one line of iterations.jsonl holds (docs/contracts.md, "Journal").

Records stay plain dicts (these are TypedDicts). A record written now has every key of
`IterationRecord`; one from an older journal may lack some, so readers use `.get`
(`store/records.py`). tests/test_journal.py checks that the field table of docs/contracts.md
names exactly these keys.
"""

from typing import NotRequired, TypedDict


class ErrorInfo(TypedDict):
    type: str  # the failure class, or the runner's error type (CrowdedOut, ...)
    message: str
    traceback: str


class Repeats(TypedDict):
    accuracies: list[float | None]  # the selection metric, one per training seed
    test_accuracies: list[float | None]


class TripleInfo(TypedDict):
    problem: str
    suggestion: str
    outcome: str


class Suggestions(TypedDict):
    reason: str
    inspiration: str
    suggestions: str


class Novelty(TypedDict):
    max_similarity: float
    nearest_iteration: int | None
    nearest_chain: int
    rejected: list[dict]  # each regenerated near-duplicate: its novelty and its seed


class EditInfo(TypedDict):
    format: str
    kind: str | None  # None without a reply: then only `format` and `kind`
    base_iteration: NotRequired[int | None]
    blocks: NotRequired[int]
    applied: NotRequired[bool]
    lines: NotRequired[int]
    file: NotRequired[str | None]


class LLMCall(TypedDict):
    model: str
    digest: str | None
    seed: int
    host: str
    temperature: NotRequired[float]  # only on a regeneration (hotter)
    prompt_tokens: NotRequired[int]  # this and the next four only when the call was answered
    completion_tokens: NotRequired[int]
    seconds: NotRequired[float]
    num_ctx: NotRequired[int | None]
    truncated: NotRequired[bool]
    prompt_dropped: NotRequired[list[str]]  # only when the prompt was cut to fit num_ctx


class LLMCalls(TypedDict):
    generator: LLMCall
    improver: LLMCall | None


class Timings(TypedDict):
    generate: float
    evaluate: float
    improve: float


class Prompts(TypedDict):
    generator: list[dict]
    improver: list[dict] | None


class IterationRecord(TypedDict):
    iteration: int
    attempt: int
    chain: int
    status: str  # an outcome class (orchestrator/outcomes.py)
    accuracy: float | None  # the selection metric
    metric: str  # "val" or "test"
    test_accuracy: float | None
    val_accuracy: float | None
    repeats: Repeats | None
    error: ErrorInfo | None
    phase: str | None
    code_file: str | None
    reply_file: str
    triple: TripleInfo
    suggestions: Suggestions | None
    improver_error: str | None
    novelty: Novelty | None
    edit: EditInfo
    llm: LLMCalls
    llm_calls: int
    timings: Timings
    best_accuracy: float | None
    best_iteration: int | None
    metrics: dict
    sandbox: dict
    prompts: Prompts
    time: float
