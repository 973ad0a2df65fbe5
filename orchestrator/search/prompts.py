"""Prompt templates from prompts/ (plain text a user can edit), rendered for each role."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from orchestrator.config import RunConfig
from orchestrator.data.datasets import PreparedDataset
from orchestrator.llm.client import full_model_name, prompt_chars, reply_tokens
from orchestrator.llm.models import CHARS_PER_TOKEN_GENEROUS, auto_num_ctx
from orchestrator.resources import PROMPTS_DIR
from orchestrator.search.diagnosis import field_chars
from orchestrator.search.evaluation import Outcome, key_traceback_line
from orchestrator.search.memory import Triple

TEMPLATES = ("generator_system", "generator", "improver_system", "improver")
# The Generator's template per edit format, used once there is code to edit (before, the
# whole-file template asks for a first architecture).
EDIT_TEMPLATES = {"search-replace": "generator_search_replace", "udiff": "generator_udiff"}
OUTCOME_CHARS = 600  # the most one outcome line (`describe`) holds


@dataclass
class Attempt:
    """One evaluated architecture, as the prompts show it."""

    iteration: int
    code: str
    outcome: str  # e.g. "accuracy 81.20%" or "shape_error: ..."
    accuracy: float | None = None


@dataclass
class Task:
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    protocol: dict  # epochs, lr, momentum, weight_decay, batch_size
    max_params: int | None = None

    def fields(self) -> dict:
        channels, height, width = self.input_shape
        budget = (f"- Parameter budget: at most {self.max_params:,} parameters.\n"
                  if self.max_params else "")
        return {"dataset": self.dataset, "channels": channels, "height": height, "width": width,
                "num_classes": self.num_classes, "budget": budget, **self.protocol}


@dataclass
class GeneratorInput:
    reference: Attempt | None = None  # the best architecture so far
    current: Attempt | None = None  # this iteration's predecessor
    suggestions: str | None = None  # the Prompt Improver's advice
    top: list[Attempt] = field(default_factory=list)  # extended prompt: top-k
    previous: list[Attempt] = field(default_factory=list)  # extended prompt: recent attempts
    edit: Attempt | None = None  # edit formats: the code to edit (the reference or current)

    def target(self) -> str:
        """What the edit template tells the model to edit."""
        assert self.edit is not None
        if self.edit is self.reference:
            return f"the best architecture so far (iteration {self.edit.iteration})"
        failed = ", which failed" if self.edit.accuracy is None else ""
        return f"the architecture of the last iteration (iteration {self.edit.iteration}){failed}"


@dataclass
class PromptBounds:
    """The most each variable part of the prompts can hold."""

    code: int  # characters of one code slot
    diagnosis: int  # characters of one diagnosis: the suggestions, or a problem and suggestion
    outcome: int  # characters of one outcome line
    history: int  # triples in the Improver's window
    top: int  # extended prompt: top architectures
    recent: int  # extended prompt: recent attempts


class PromptBook:
    """Loads the templates once; renders chat messages for both roles."""

    def __init__(self, directory: Path | None = None, edit_format: str = "whole") -> None:
        self.directory = Path(directory or PROMPTS_DIR)
        self.edit_template = EDIT_TEMPLATES.get(edit_format)
        names = (*TEMPLATES, *([self.edit_template] if self.edit_template else []))
        missing = [n for n in names if not (self.directory / f"{n}.txt").is_file()]
        if missing:
            raise FileNotFoundError(f"prompt templates missing in {self.directory}: {missing}")
        self.templates = {n: (self.directory / f"{n}.txt").read_text() for n in names}

    def generator(self, task: Task, given: GeneratorInput) -> list[dict]:
        sections = {
            "reference": _code_section(
                "Best architecture so far (the reference to improve on)", given.reference),
            "current": _code_section("Architecture of the last iteration", given.current),
            "suggestions": (f"\nSuggested improvements for this iteration:\n"
                            f"{given.suggestions.strip()}\n" if given.suggestions else ""),
            "extended": _extended(given.top, given.previous),
        }
        template = "generator"
        if self.edit_template and given.edit is not None:
            template, sections["target"] = self.edit_template, given.target()
        user = self._render(template, task.fields(), sections)
        return _messages(self.templates["generator_system"], user)

    def improver(self, task: Task, best: Attempt | None, current: Attempt,
                 history: list[Triple]) -> list[dict]:
        sections = {
            "best": _code_section("Best architecture so far", best),
            "current": _code_section("Current architecture", current),
            "history": _history(history),
        }
        user = self._render("improver", task.fields(), sections)
        return _messages(self.templates["improver_system"], user)

    def longest(self, task: Task, bounds: PromptBounds, least: bool = False
                ) -> dict[str, list[dict]]:
        """Both roles' messages with every variable part at its bound; with `least`, after the
        drop rules took all they can (the Generator keeps the reference and the suggestions,
        and under an edit format the failed code it edits; the Improver the current
        architecture and its triple)."""
        attempt = Attempt(10**6, "x" * bounds.code, "o" * bounds.outcome)
        half = "x" * (bounds.diagnosis // 2)
        triple = Triple(half, half, "o" * bounds.outcome)
        if least:
            kept = attempt if self.edit_template else None  # an edited failed code stays
            given = GeneratorInput(attempt, kept, "x" * bounds.diagnosis, edit=attempt)
            return {"generator": self.generator(task, given),
                    "improver": self.improver(task, None, attempt, [triple])}
        given = GeneratorInput(attempt, attempt, "x" * bounds.diagnosis,
                               [attempt] * bounds.top, [attempt] * bounds.recent, edit=attempt)
        return {"generator": self.generator(task, given),
                "improver": self.improver(task, attempt, attempt, [triple] * bounds.history)}

    def _render(self, name: str, fields: dict, sections: dict) -> str:
        return Template(self.templates[name]).safe_substitute({**fields, **sections})


def _messages(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user}]


def _code_section(title: str, attempt: Attempt | None) -> str:
    if attempt is None:
        return ""
    return (f"\n{title} (iteration {attempt.iteration}, result: {attempt.outcome}):\n"
            f"```python\n{attempt.code.strip()}\n```\n")


def _extended(top: list[Attempt], previous: list[Attempt]) -> str:
    parts = [_code_section(f"Top architecture #{i}", a) for i, a in enumerate(top, 1)]
    parts += [_code_section("Earlier attempt", a) for a in previous]
    return "".join(parts)


def _history(triples: list[Triple]) -> str:
    if not triples:
        return ""
    lines = ["\nRecent improvement attempts, oldest first (problem -> suggestion -> outcome):"]
    for i, t in enumerate(triples, 1):
        lines.append(f"{i}. Problem: {t.problem.strip()}\n   Suggestion: {t.suggestion.strip()}"
                     f"\n   Outcome: {t.outcome.strip()}")
    return "\n".join(lines) + "\n"


def context_needs(book: PromptBook, task: Task, config: RunConfig, outcome_chars: int,
                  diagnosis_chars: int, thinking: Mapping[str, bool] | None = None
                  ) -> dict[str, tuple[int, int]]:
    """What each model's num_ctx must hold, as (least, most) tokens by `auto_num_ctx`: most,
    the longest prompt its roles can get (every code slot at num_predict tokens, every
    diagnosis at `diagnosis_chars`, K triples, the extended prompt's attempts) plus the reply
    (and think_tokens for a role whose model thinks: `thinking`, role -> bool; by default
    where the config turns thinking on); least, the prompt the drop rules cut down to. Roles
    on one model share the larger values; models are keyed by their full names."""
    chars = reply_tokens(config.num_predict) * CHARS_PER_TOKEN_GENEROUS  # = num_predict tokens
    extended = config.extended_prompt
    bounds = PromptBounds(chars, diagnosis_chars, outcome_chars, config.history_size,
                          config.top_k if extended else 0, config.history_size if extended else 0)
    longest, least = book.longest(task, bounds), book.longest(task, bounds, least=True)
    needs: dict[str, tuple[int, int]] = {}
    for role, model in (("generator", config.generator_model),
                        ("improver", config.improver_model)):
        thinks = (thinking or {}).get(role, getattr(config, f"{role}_think") is True)
        reply = config.num_predict + (config.think_tokens if thinks else 0)
        need = (auto_num_ctx(prompt_chars(least[role]), reply),
                auto_num_ctx(prompt_chars(longest[role]), reply))
        model = full_model_name(model)
        before = needs.get(model, (0, 0))
        needs[model] = (max(before[0], need[0]), max(before[1], need[1]))
    return needs


def diagnosis_chars(num_predict: int, bounded: bool) -> int:
    """The most characters a diagnosis brings into a prompt (a triple's problem and suggestion,
    or the suggestions): two fields at the schema's bound; without one (JSON mode, or an
    unlimited num_predict), as long as a reply can be."""
    bound = field_chars(num_predict) if bounded else None
    return 2 * bound if bound else reply_tokens(num_predict) * CHARS_PER_TOKEN_GENEROUS


def task_for(config: RunConfig, dataset: PreparedDataset) -> Task:
    """What the prompts tell both roles about the task."""
    spec = dataset.spec
    protocol = {k: getattr(config, k) for k in ("epochs", "lr", "momentum", "weight_decay",
                                                "batch_size")}
    return Task(dataset.name, tuple(spec.input_shape), spec.num_classes, protocol,
                config.max_params)



def generator_parts(given: GeneratorInput) -> list[tuple[str, Callable[[], object]]]:
    """What a Generator prompt can do without, least important first: the extended prompt's
    top architectures (lowest-ranked first) and recent attempts (oldest first), then the last
    attempt's code (unless an edit changes it). The reference and the suggestions always
    stay."""
    parts: list[tuple[str, Callable[[], object]]] = [
        (f"top architecture (iteration {a.iteration})", lambda a=a: given.top.remove(a))
        for a in reversed(given.top)]
    parts += [(f"recent attempt (iteration {a.iteration})",
               lambda a=a: given.previous.remove(a)) for a in given.previous]
    if given.current is not None and given.current is not given.edit:
        parts.append((f"the last attempt's code (iteration {given.current.iteration})",
                      lambda: setattr(given, "current", None)))
    return parts



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
