"""The closed search loop: generate -> check -> novelty -> evaluate -> improve -> record."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator import outcomes as fc
from orchestrator.config import RunConfig
from orchestrator.data.datasets import PreparedDataset
from orchestrator.gpu.residency import Watch
from orchestrator.sandbox.base import Sandbox
from orchestrator.search.diagnosis import Diagnosis
from orchestrator.search.edits import Applied, apply_reply, edit_base, edit_info
from orchestrator.search.evaluation import Outcome, averaged, evaluate, failure, job_for
from orchestrator.search.memory import FeedbackMemory, Triple, remembered
from orchestrator.search.progress import Reporter
from orchestrator.search.prompts import (
    Attempt,
    GeneratorInput,
    PromptBook,
    describe,
    generator_parts,
    task_for,
)
from orchestrator.search.roles import RoleCall, Roles
from orchestrator.store.journal import Journal
from orchestrator.store.record import IterationRecord
from orchestrator.store.records import best_of, lost

if TYPE_CHECKING:
    from orchestrator.search.novelty import NoveltyGate  # datasketch: loaded by the assembly

FIRST_TRIPLE = ("none yet: first architecture", "write a first architecture for the task")
NO_DIAGNOSIS = ("no diagnosis available", "none: improve on the reference architecture")
TEMPERATURE_NUDGE = 0.1  # added per regeneration of a rejected near-duplicate
FAULT_STREAK = 5  # this many infrastructure faults in a row stop the run (resumable)


class InfrastructureDown(RuntimeError):
    """The sandbox or the LLM server keeps failing: stop rather than burn the iterations."""


@dataclass
class SearchState:
    """Everything one chain's next iteration depends on, rebuilt from the journal."""

    memory: FeedbackMemory
    records: list[dict] = field(default_factory=list)
    codes: dict[int, str] = field(default_factory=dict)  # iteration -> code
    diagnosis: Diagnosis | None = None  # the Improver's advice for the next iteration
    _best: dict | None = field(default=None, init=False, repr=False)  # kept by add()

    @property
    def iteration(self) -> int:
        return self.records[-1]["iteration"] if self.records else 0

    @property
    def designs(self) -> int:
        """Iterations done: evaluated designs, the lost attempts not counted."""
        return sum(not lost(r) for r in self.records)

    @property
    def next_iteration(self) -> int:
        """The iteration to run next: the same again after a lost attempt."""
        last = self.records[-1] if self.records else None
        return self.iteration if last and lost(last) else self.iteration + 1

    def attempt(self, iteration: int) -> int:
        """Which attempt at `iteration` the next one is (1 unless attempts were lost)."""
        tried = itertools.takewhile(lambda r: r["iteration"] == iteration, reversed(self.records))
        return 1 + sum(1 for _ in tried)

    @property
    def llm_calls(self) -> int:
        return self.records[-1]["llm_calls"] if self.records else 0

    def best(self) -> dict | None:
        """The chain's best record: best_record of its records, kept as they are added."""
        return self._best

    def add(self, record: dict, code: str | None, diagnosis: Diagnosis | None) -> None:
        self.records.append(record)
        self._best = best_of(self._best, record)
        if code is not None:
            self.codes[record["iteration"]] = code
        if remembered(record):
            self.memory.add(Triple(**record["triple"]))
        if diagnosis is not None or record["status"] not in fc.INFRASTRUCTURE_CLASSES:
            self.diagnosis = diagnosis

    @classmethod
    def rebuild(cls, records: list[dict], codes: dict[str, str], history_size: int
                ) -> SearchState:
        """The state after `records`, with `codes` holding each record's code by its file."""
        state = cls(memory=FeedbackMemory(history_size))
        for record in records:
            code = codes.get(record.get("code_file"))
            reply = record.get("suggestions")
            state.add(record, code, Diagnosis(**reply) if reply else None)
        return state


class Search:
    """One chain: runs iterations until it has the configured count of evaluated designs,
    committing each attempt to the journal. An attempt lost to an infrastructure fault is
    journaled, and its iteration tried again."""

    def __init__(self, config: RunConfig, journal: Journal, roles: Roles, sandbox: Sandbox,
                 dataset: PreparedDataset, prompts: PromptBook, reporter: Reporter,
                 records: list[dict], codes: dict[str, str], novelty: NoveltyGate,
                 chain: int = 0, watch: Watch | None = None) -> None:
        self.config, self.journal, self.roles, self.sandbox = config, journal, roles, sandbox
        self.dataset, self.prompts, self.reporter = dataset, prompts, reporter
        self.novelty, self.chain, self.watch = novelty, chain, watch
        self.prefix = f"c{chain}_" if config.parallel > 1 else ""
        self.labels = dataset.test_labels()
        self.task = task_for(config, dataset)
        mine = [r for r in records if r.get("chain", 0) == chain]
        self.state = SearchState.rebuild(mine, codes, config.history_size)
        roles.calls = self.state.llm_calls

    def run(self, stop: threading.Event | None = None) -> None:
        while self.state.designs < self.config.iterations:
            if stop is not None and stop.is_set():
                return
            if self.watch is not None:
                self.watch.check()  # before anything of the iteration is spent
            self.step(self.state.next_iteration)
            self._check_fault_streak()

    def _check_fault_streak(self) -> None:
        """Raise InfrastructureDown after FAULT_STREAK infrastructure faults in a row: the
        sandbox's or the LLM's, the Prompt Improver's included (without it the run would go on
        as the --no-improver ablation)."""
        last = self.state.records[-FAULT_STREAK:]
        faults = [fault_of(r) for r in last]
        if len(last) < FAULT_STREAK or not all(faults):
            return
        chain = f" in chain {self.chain}" if self.config.parallel > 1 else ""
        first, final = last[0]["iteration"], last[-1]["iteration"]
        span = f"iteration {first}" if first == final else f"iterations {first}-{final}"
        raise InfrastructureDown(f"{FAULT_STREAK} infrastructure faults in a row{chain} "
                                 f"({span}), the last: {faults[-1][:300]}")

    def step(self, i: int) -> dict:
        """One iteration, committed (fsynced) before it returns."""
        timings: dict[str, float] = {}
        generation, edit, outcome, novelty = self._generate(i, timings)
        code = edit.code if edit else None
        if outcome is None:
            outcome = self._evaluate(i, code, timings)
        if outcome.ok:  # only working code makes a later one a duplicate: repairs stay open
            self.novelty.add(self.chain, i, code)
        triple = self._triple(outcome)
        improve_call, diagnosis = self._improve(i, code, generation.text, outcome, triple, timings)
        files = self._write_files(i, generation, edit)  # before the record that points to them
        record = self._record(i, generation, improve_call, diagnosis, edit, outcome, triple,
                              timings, novelty, files)
        summary = self.journal.commit(record, code)
        self.state.add(record, code, diagnosis)
        self.reporter.iteration(record, summary)
        return record

    def _generate(self, i: int, timings: dict
                  ) -> tuple[RoleCall, Applied | None, Outcome | None, dict | None]:
        """Ask for code (or an edit of given.edit, applied); with --novelty reject, ask again
        (hotter) while the resulting code is a duplicate."""
        given = self._generator_input()
        messages, dropped = self._fitted("generator", lambda: self.prompts.generator(
            self.task, given), generator_parts(given))
        rejected: list[dict] = []
        started = time.monotonic()
        with self.reporter.phase(i, "generating"):
            for attempt in range(1 + self._regenerations()):
                temperature = (self.config.temperature + TEMPERATURE_NUDGE * attempt
                               if attempt else None)
                call = self.roles.generate(messages, temperature=temperature)
                edit, outcome, novelty = self._check(call, given.edit)
                if novelty is None or novelty["max_similarity"] < self.config.novelty_tau \
                        or self.config.novelty != "reject":
                    break
                rejected.append({**novelty, "seed": call.info["seed"]})
            else:
                outcome = failure(fc.DUPLICATE, (
                    f"near-duplicate of iteration {novelty['nearest_iteration']} (similarity "
                    f"{novelty['max_similarity']:.2f}) after {len(rejected)} attempts"))
        timings["generate"] = round(time.monotonic() - started, 3)
        if dropped:
            call.info["prompt_dropped"] = dropped
        if novelty is not None:
            novelty["rejected"] = rejected
        if edit is not None:
            edit.base = given.edit.iteration if given.edit and edit.kind == "edit" else None
        return call, edit, outcome, novelty

    def _regenerations(self) -> int:
        return self.config.novelty_retries if self.config.novelty == "reject" else 0

    def _check(self, call: RoleCall, base: Attempt | None
               ) -> tuple[Applied | None, Outcome | None, dict | None]:
        """Extraction (the edit applied to `base`'s code) and static checks, then the novelty
        measurement of the valid code that results."""
        if call.error:
            return None, failure(fc.LLM_ERROR, call.error), None
        edit = apply_reply(call.text, base.code if base else None, self.config.edit_format,
                           self.config.edit_match_threshold)
        if edit.status != fc.OK:
            return edit, failure(edit.status, edit.message), None
        return edit, None, self.novelty.check(edit.code)

    def _evaluate(self, i: int, code: str, timings: dict) -> Outcome:
        """The candidate trained with `repeats` seeds (seed, seed + 1, ...), each in a fresh
        sandbox; the first failure is the outcome."""
        outcomes: list[Outcome] = []
        with self.reporter.phase(i, "evaluating"):
            started = time.monotonic()
            for repeat in range(self.config.repeats):
                outcomes.append(self._evaluate_once(code, self.config.seed + repeat))
                if not outcomes[-1].ok:
                    break
            timings["evaluate"] = round(time.monotonic() - started, 3)
        return outcomes[-1] if len(outcomes) == 1 or not outcomes[-1].ok else averaged(outcomes)

    def _evaluate_once(self, code: str, seed: int) -> Outcome:
        """One training; a candidate crowded out of GPU memory by another tenant is evaluated
        again, once."""
        outcome = self._evaluate_within_plan(code, seed)
        if (outcome.error or {}).get("type") == fc.CROWDED_OUT:
            outcome = self._evaluate_within_plan(code, seed)
            outcome.metrics["crowded_retries"] = 1
        return outcome

    def _evaluate_within_plan(self, code: str, seed: int) -> Outcome:
        """One training within the GPU plan's budget, once the plan is checked again."""
        budget = None
        if self.watch is not None:
            self.watch.check()
            budget = self.watch.budget()
        job = job_for(self.config, self.dataset, seed=seed, gpu_budget=budget)
        return evaluate(self.sandbox, code, job, self.dataset, self.labels)

    def _improve(self, i: int, code: str | None, reply: str, outcome: Outcome, triple: Triple,
                 timings: dict) -> tuple[RoleCall | None, Diagnosis | None]:
        if self.config.no_improver or outcome.status in fc.INFRASTRUCTURE_CLASSES:
            return None, None
        best = None if self.config.no_reference else self._attempt(self.state.best())
        current = Attempt(i, code or f"(no usable code; the reply was)\n{reply[:2000]}",
                          describe(outcome))
        history = [] if self.config.no_history else [*self.state.memory.window(), triple]
        history = history[-self.config.history_size:] if self.config.history_size else []
        kept = {"best": best}
        parts = [(f"the oldest triple of the memory window ({len(history) - k} kept)",
                  lambda: history.pop(0)) for k in range(1, len(history))]
        if best is not None:
            parts.append((f"the best architecture's code (iteration {best.iteration})",
                          lambda: kept.update(best=None)))
        messages, dropped = self._fitted("improver", lambda: self.prompts.improver(
            self.task, kept["best"], current, history), parts)
        with self.reporter.phase(i, "improving"):
            started = time.monotonic()
            call, diagnosis = self.roles.improve(messages)
            timings["improve"] = round(time.monotonic() - started, 3)
        if dropped:
            call.info["prompt_dropped"] = dropped
        return call, diagnosis

    def _fitted(self, role: str, build: Callable[[], list[dict]],
                parts: list[tuple[str, Callable[[], object]]]) -> tuple[list[dict], list[str]]:
        """`build()`'s messages; while they overflow the context length of the role's model
        (which Ollama would cut silently), drop `parts`, least important first. Returns the
        messages and what was dropped."""
        messages, dropped = build(), []
        for what, drop in parts:
            if self.roles.fits(role, messages):
                break
            drop()
            dropped.append(what)
            messages = build()
        return messages, dropped

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
        if config.edit_format != "whole":
            given.edit = edit_base(given, last)
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

    def _write_files(self, i: int, generation: RoleCall, edit: Applied | None
                     ) -> tuple[str, str | None, str | None]:
        """Store the attempt's reply, code and raw edit; returns their paths (reply, code,
        edit; None for what it lacks)."""
        attempt = self.state.attempt(i)
        name = f"{self.prefix}iter_{i:04d}" + (f"_attempt{attempt}" if attempt > 1 else "")
        reply_file = self.journal.write_file(f"{name}.reply.md",
                                             generation.text or generation.error or "")
        code = edit.code if edit else None
        code_file = self.journal.write_file(f"{name}.py", code) if code is not None else None
        edit_file = (self.journal.write_file(f"{name}.edit.txt", edit.edit)
                     if edit and edit.edit else None)
        return reply_file, code_file, edit_file

    def _record(self, i: int, generation: RoleCall, improve_call: RoleCall | None,
                diagnosis: Diagnosis | None, edit: Applied | None, outcome: Outcome,
                triple: Triple, timings: dict, novelty: dict | None,
                files: tuple[str, str | None, str | None]) -> IterationRecord:
        """The iteration's record (no side effects); `files` as _write_files stored them."""
        reply_file, code_file, edit_file = files
        best = self.state.best()
        is_best = outcome.ok and (best is None or outcome.accuracy > best["accuracy"])
        return {
            "iteration": i,
            "attempt": self.state.attempt(i),
            "chain": self.chain,
            "status": outcome.status,
            "accuracy": outcome.accuracy,
            "metric": self.config.select_on,
            "test_accuracy": outcome.test_accuracy,
            "val_accuracy": outcome.val_accuracy,
            "repeats": outcome.repeats,
            "error": outcome.error,
            "phase": outcome.phase,
            "code_file": code_file,
            "reply_file": reply_file,
            "triple": triple.to_dict(),
            "suggestions": diagnosis.to_dict() if diagnosis else None,
            "improver_error": improve_call.error if improve_call else None,
            "novelty": novelty,
            "edit": edit_info(self.config.edit_format, edit, edit_file),
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


def run_chains(searches: list[Search]) -> None:
    """Run the chains side by side (one thread each); Ctrl-C stops them all between steps."""
    if len(searches) == 1:
        searches[0].run()
        return
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(search: Search) -> None:
        try:
            search.run(stop)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(s,), name=f"chain-{s.chain}", daemon=True)
               for s in searches]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except BaseException:  # Ctrl-C or SIGTERM: the chains stop between steps
        stop.set()
        raise
    if errors:
        raise errors[0]


def fault_of(record: dict) -> str | None:
    """The infrastructure fault of an iteration, if it had one: its status, or the Prompt
    Improver's failure."""
    if record["status"] in fc.INFRASTRUCTURE_CLASSES:
        return f"{record['status']}: {(record.get('error') or {}).get('message', '')}"
    if record.get("improver_error"):
        return f"the Prompt Improver failed: {record['improver_error']}"
    return None


