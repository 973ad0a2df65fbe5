"""The closed search loop: generate -> check -> evaluate -> improve -> record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import failures as fc
from .config import RunConfig
from .datasets import PreparedDataset
from .diagnosis import Diagnosis
from .evaluation import Outcome, failure, key_traceback_line, score
from .extract import extract_code
from .journal import Journal, summarize
from .memory import FeedbackMemory, Triple, remembered
from .progress import Reporter
from .prompts import Attempt, GeneratorInput, PromptBook, Task
from .roles import RoleCall, Roles
from .sandbox.base import Sandbox

OUTCOME_CHARS = 600
FIRST_TRIPLE = ("none yet: first architecture", "write a first architecture for the task")
NO_DIAGNOSIS = ("no diagnosis available", "none: improve on the reference architecture")


@dataclass
class SearchState:
    """Everything the next iteration depends on, rebuilt from the journal on resume."""

    memory: FeedbackMemory
    records: list[dict] = field(default_factory=list)
    codes: dict[int, str] = field(default_factory=dict)  # iteration -> code
    diagnosis: Diagnosis | None = None  # the Improver's advice for the next iteration

    @property
    def iteration(self) -> int:
        return self.records[-1]["iteration"] if self.records else 0

    @property
    def llm_calls(self) -> int:
        return self.records[-1]["llm_calls"] if self.records else 0

    def best(self) -> dict | None:
        ok = [r for r in self.records if r["status"] == fc.OK]
        return max(ok, key=lambda r: r["accuracy"], default=None)

    def add(self, record: dict, code: str | None, diagnosis: Diagnosis | None) -> None:
        self.records.append(record)
        if code is not None:
            self.codes[record["iteration"]] = code
        if remembered(record):
            self.memory.add(Triple(**record["triple"]))
        if diagnosis is not None or record["status"] not in fc.INFRASTRUCTURE_CLASSES:
            self.diagnosis = diagnosis

    @classmethod
    def from_journal(cls, journal: Journal, history_size: int) -> SearchState:
        state = cls(memory=FeedbackMemory(history_size))
        for record in journal.records(repair=True):
            code_file = record.get("code_file")
            code = (journal.root / code_file).read_text() if code_file else None
            reply = record.get("suggestions")
            state.add(record, code, Diagnosis(**reply) if reply else None)
        return state


class Search:
    """Runs iterations until the configured count, journaling each before the next."""

    def __init__(self, config: RunConfig, journal: Journal, roles: Roles, sandbox: Sandbox,
                 dataset: PreparedDataset, prompts: PromptBook, reporter: Reporter) -> None:
        self.config, self.journal, self.roles, self.sandbox = config, journal, roles, sandbox
        self.dataset, self.prompts, self.reporter = dataset, prompts, reporter
        self.labels = dataset.test_labels()
        spec = dataset.spec
        self.task = Task(dataset.name, tuple(spec.input_shape), spec.num_classes, {
            "epochs": config.epochs, "lr": config.lr, "momentum": config.momentum,
            "weight_decay": config.weight_decay, "batch_size": config.batch_size})
        self.state = SearchState.from_journal(journal, config.history_size)
        roles.calls = self.state.llm_calls

    def run(self) -> dict:
        self._rewrite_best()
        for i in range(self.state.iteration + 1, self.config.iterations + 1):
            self.step(i)
        return summarize(self.state.records)

    def step(self, i: int) -> dict:
        """One iteration, recorded (fsynced) before it returns."""
        timings: dict[str, float] = {}
        generation, code, outcome = self._generate(i, timings)
        if outcome is None:
            outcome = self._evaluate(i, code, timings)
        triple = self._triple(outcome)
        improve_call, diagnosis = self._improve(i, code, generation.text, outcome, triple, timings)
        record = self._record(i, generation, improve_call, diagnosis, code, outcome, triple,
                              timings)
        self.journal.append(record)
        self.state.add(record, code, diagnosis)
        if record["best_iteration"] == i:
            self.journal.write_best(code)
        self.journal.write_summary(summarize(self.state.records))
        self.reporter.iteration(record, summarize(self.state.records))
        return record

    def _generate(self, i: int, timings: dict) -> tuple[RoleCall, str | None, Outcome | None]:
        messages = self.prompts.generator(self.task, self._generator_input())
        with self.reporter.phase(i, "generating"):
            started = time.monotonic()
            call = self.roles.generate(messages)
            timings["generate"] = round(time.monotonic() - started, 3)
        if call.error:
            return call, None, failure(fc.LLM_ERROR, call.error)
        extraction = extract_code(call.text)
        if extraction.status != fc.OK:
            return call, extraction.code, failure(extraction.status, extraction.message)
        return call, extraction.code, None

    def _evaluate(self, i: int, code: str, timings: dict) -> Outcome:
        with self.reporter.phase(i, "evaluating"):
            started = time.monotonic()
            execution = self.sandbox.run(code, self.job())
            timings["evaluate"] = round(time.monotonic() - started, 3)
        outcome = score(execution, self.labels, self.dataset.spec.num_classes)
        outcome.metrics.update({k: v for k, v in execution.info.items()
                                if isinstance(v, int | float)})
        return outcome

    def _improve(self, i: int, code: str | None, reply: str, outcome: Outcome, triple: Triple,
                 timings: dict) -> tuple[RoleCall | None, Diagnosis | None]:
        if self.config.no_improver or outcome.status in fc.INFRASTRUCTURE_CLASSES:
            return None, None
        best = None if self.config.no_reference else self._attempt(self.state.best())
        current = Attempt(i, code or f"(no usable code; the reply was)\n{reply[:2000]}",
                          describe(outcome))
        history = [] if self.config.no_history else [*self.state.memory.window(), triple]
        history = history[-self.config.history_size:] if self.config.history_size else []
        messages = self.prompts.improver(self.task, best, current, history)
        with self.reporter.phase(i, "improving"):
            started = time.monotonic()
            call, diagnosis = self.roles.improve(messages)
            timings["improve"] = round(time.monotonic() - started, 3)
        return call, diagnosis

    def _triple(self, outcome: Outcome) -> Triple:
        previous = self.state.diagnosis
        if previous:
            problem, suggestion = previous.reason, previous.suggestions
        else:
            problem, suggestion = NO_DIAGNOSIS if self.state.records else FIRST_TRIPLE
        return Triple(problem, suggestion, self._outcome_text(outcome))

    def _outcome_text(self, outcome: Outcome) -> str:
        best = self.state.best()
        text = describe(outcome)
        if outcome.ok and best:
            delta = (outcome.accuracy - best["accuracy"]) * 100
            text += (f", new best (+{delta:.2f} pp)" if delta > 0
                     else f", {delta:+.2f} pp against the best {best['accuracy']:.2%}")
        elif outcome.ok:
            text += ", the first successful architecture"
        return text

    def _generator_input(self) -> GeneratorInput:
        state, config = self.state, self.config
        last = state.records[-1] if state.records else None
        given = GeneratorInput(
            reference=None if config.no_reference else self._attempt(state.best()),
            current=self._attempt(last) if last and last.get("code_file") else None,
            suggestions=state.diagnosis.suggestions if state.diagnosis else None,
        )
        if config.extended_prompt:
            ranked = sorted((r for r in state.records if r["status"] == fc.OK),
                            key=lambda r: -r["accuracy"])
            given.top = [self._attempt(r) for r in ranked[: config.top_k]]
            recent = [r for r in state.records if r.get("code_file")]
            given.previous = [self._attempt(r) for r in recent[-config.history_size:]]
        return given

    def _attempt(self, record: dict | None) -> Attempt | None:
        if record is None or record["iteration"] not in self.state.codes:
            return None
        outcome = Outcome(record["status"], record.get("accuracy"), record.get("error"))
        return Attempt(record["iteration"], self.state.codes[record["iteration"]],
                       describe(outcome), record.get("accuracy"))

    def job(self) -> dict:
        spec, config = self.dataset.spec, self.config
        return {
            "input_shape": list(spec.input_shape), "num_classes": spec.num_classes,
            "mean": list(spec.mean), "std": list(spec.std), "crop_padding": 4,
            "flip": spec.flip, "epochs": config.epochs, "batch_size": config.batch_size,
            "lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay,
            "seed": config.seed, "device": config.device, "precision": config.precision,
            "validate_batch": 2,
        }

    def _record(self, i: int, generation: RoleCall, improve_call: RoleCall | None,
                diagnosis: Diagnosis | None, code: str | None, outcome: Outcome,
                triple: Triple, timings: dict) -> dict:
        reply_file = self.journal.candidates / f"iter_{i:04d}.reply.md"
        reply_file.write_text(generation.text or generation.error or "")
        best = self.state.best()
        is_best = outcome.ok and (best is None or outcome.accuracy > best["accuracy"])
        return {
            "iteration": i,
            "status": outcome.status,
            "accuracy": outcome.accuracy,
            "error": outcome.error,
            "phase": outcome.phase,
            "code_file": self.journal.write_candidate(i, code) if code is not None else None,
            "reply_file": str(reply_file.relative_to(self.journal.root)),
            "triple": triple.to_dict(),
            "suggestions": diagnosis.to_dict() if diagnosis else None,
            "improver_error": improve_call.error if improve_call else None,
            "llm": {"generator": generation.info,
                    "improver": improve_call.info if improve_call else None},
            "llm_calls": self.roles.calls,
            "timings": {"generate": 0.0, "evaluate": 0.0, "improve": 0.0, **timings},
            "best_accuracy": outcome.accuracy if is_best else (best or {}).get("accuracy"),
            "best_iteration": i if is_best else (best or {}).get("iteration"),
            "metrics": outcome.metrics,
            "sandbox": self.sandbox.describe(),
            "prompts": {"generator": generation.messages,
                        "improver": improve_call.messages if improve_call else None},
            "time": time.time(),
        }

    def _rewrite_best(self) -> None:
        """best.py follows the records (a crash may have left it ahead of them)."""
        best = self.state.best()
        if best:
            self.journal.write_best(self.state.codes[best["iteration"]])


def describe(outcome: Outcome) -> str:
    """An outcome in one line, for prompts and triples."""
    if outcome.ok:
        return f"accuracy {outcome.accuracy:.2%}"
    error = outcome.error or {}
    text = f"failed with {outcome.status}: {error.get('message', '')}".strip()
    where = key_traceback_line(error.get("traceback", ""))
    if where and where not in text:
        text += f" [{where}]"
    return text[:OUTCOME_CHARS]
