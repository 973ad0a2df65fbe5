"""The two LLM roles: Code Generator and Prompt Improver, over one or more Ollama servers."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.llm.client import ChatResult, LLMError, OllamaClient, ServerUnreachable
from orchestrator.llm.servers import Servers
from orchestrator.search.diagnosis import (
    DIAGNOSIS_SCHEMA,
    Diagnosis,
    DiagnosisError,
    parse_diagnosis,
)

CHAIN_SEED_STRIDE = 1_000_000  # chain c draws LLM seeds from run seed + c * stride + counter


@dataclass
class RoleCall:
    """What one role call produced, and what the journal keeps of it."""

    messages: list[dict]
    text: str = ""
    error: str | None = None  # set when the call failed after retries
    info: dict = field(default_factory=dict)  # model, seed, host, tokens, seconds


class Roles:
    """Calls both roles with seed = run seed + call counter (the paper's scheme).

    `client` is one server, or the run's `Servers`: the chain starts on server `chain` mod S,
    and a call its server cannot be reached for is made again on the next live one (the chain
    stays there); only when no server answers is it an error. Every call's info names the
    `host` that answered (or, failed, the last one tried).
    """

    def __init__(self, client: OllamaClient | Servers, generator_model: str, improver_model: str,
                 seed: int, digests: dict[str, str] | None = None,
                 diagnosis_format: dict | str = DIAGNOSIS_SCHEMA,
                 think: dict[str, bool | None] | None = None, chain: int = 0) -> None:
        self.servers = client if isinstance(client, Servers) else Servers([client])
        self.client = self.servers.for_chain(chain)  # the server this chain calls now
        self.models = {"generator": generator_model, "improver": improver_model}
        self.digests = digests or {}
        self.seed = seed
        self.diagnosis_format = diagnosis_format  # "json" for servers older than Ollama 0.5
        self.think = think or {}  # role -> Ollama's think option (None or absent: not sent)
        self.calls = 0  # restored from the journal on resume

    def fits(self, role: str, messages: list[dict]) -> bool:
        """Whether the role's prompt and reply fit its model's context length."""
        return self._current().models.fits(self.models[role], messages, self.think.get(role))

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
        client, tried = self._current(), set()
        while True:
            call.info["host"] = client.host
            try:
                result: ChatResult = client.chat(model, messages, seed=seed, format=format,
                                                 temperature=temperature,
                                                 think=self.think.get(role))
                break
            except ServerUnreachable as exc:
                tried.add(client.host)
                self.servers.mark_dead(client)
                other = self.servers.instead(client)
                if other is None or other.host in tried:
                    call.error = str(exc)
                    return call
                self.client = client = other
            except LLMError as exc:
                call.error = str(exc)
                return call
        self.servers.mark_live(client)
        call.info["digest"] = self.servers.digests.get(client.host, self.digests).get(model)
        call.text = result.text
        call.info.update(prompt_tokens=result.prompt_tokens,
                         completion_tokens=result.completion_tokens,
                         seconds=round(result.seconds, 3), num_ctx=result.num_ctx,
                         truncated=result.truncated)
        return call

    def _current(self) -> OllamaClient:
        """This chain's server: its own while live, else the next live one (moved there)."""
        if not self.servers.is_live(self.client):
            self.client = self.servers.instead(self.client) or self.client
        return self.client
