"""The two LLM roles: Code Generator and Prompt Improver, over one Ollama client."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.llm.client import ChatResult, LLMError, OllamaClient
from orchestrator.search.diagnosis import (
    DIAGNOSIS_SCHEMA,
    Diagnosis,
    DiagnosisError,
    parse_diagnosis,
)


@dataclass
class RoleCall:
    """What one role call produced, and what the journal keeps of it."""

    messages: list[dict]
    text: str = ""
    error: str | None = None  # set when the call failed after retries
    info: dict = field(default_factory=dict)  # model, seed, tokens, seconds


class Roles:
    """Calls both roles with seed = run seed + call counter (the paper's scheme)."""

    def __init__(self, client: OllamaClient, generator_model: str, improver_model: str,
                 seed: int, digests: dict[str, str] | None = None,
                 diagnosis_format: dict | str = DIAGNOSIS_SCHEMA,
                 think: dict[str, bool | None] | None = None) -> None:
        self.client = client
        self.models = {"generator": generator_model, "improver": improver_model}
        self.digests = digests or {}
        self.seed = seed
        self.diagnosis_format = diagnosis_format  # "json" for servers older than Ollama 0.5
        self.think = think or {}  # role -> Ollama's think option (None or absent: not sent)
        self.calls = 0  # restored from the journal on resume

    def fits(self, role: str, messages: list[dict]) -> bool:
        """Whether the role's prompt and reply fit its model's context length."""
        return self.client.fits(self.models[role], messages, self.think.get(role))

    def generate(self, messages: list[dict], temperature: float | None = None) -> RoleCall:
        return self._call("generator", messages, temperature=temperature)

    def improve(self, messages: list[dict]) -> tuple[RoleCall, Diagnosis | None]:
        """Ask for a diagnosis; an unusable reply becomes an error, never an exception."""
        call = self._call("improver", messages, format=self.diagnosis_format)
        if call.error:
            return call, None
        try:
            return call, parse_diagnosis(call.text)
        except DiagnosisError as exc:
            call.error = f"unusable diagnosis: {exc}"
            return call, None

    def _call(self, role: str, messages: list[dict], format: dict | str | None = None,
              temperature: float | None = None) -> RoleCall:
        model, seed = self.models[role], self.seed + self.calls
        self.calls += 1
        call = RoleCall(messages=messages, info={"model": model, "seed": seed,
                                                 "digest": self.digests.get(model)})
        if temperature is not None:
            call.info["temperature"] = temperature
        try:
            result: ChatResult = self.client.chat(model, messages, seed=seed, format=format,
                                                  temperature=temperature,
                                                  think=self.think.get(role))
        except LLMError as exc:
            call.error = str(exc)
            return call
        call.text = result.text
        call.info.update(prompt_tokens=result.prompt_tokens,
                         completion_tokens=result.completion_tokens,
                         seconds=round(result.seconds, 3), num_ctx=result.num_ctx,
                         truncated=result.truncated)
        return call
