"""The Ollama chat transport shared by the Code Generator and the Prompt Improver: requests,
retries, errors, and the checks of what a reply says about its prompt and its length.

What the server holds and how big a model's context is are `orchestrator.llm.models`'.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import ollama
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from orchestrator.llm.text import valid_unicode

if TYPE_CHECKING:
    from orchestrator.llm.models import Models

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"
CHARS_PER_TOKEN_TYPICAL = 4  # English prose and Python code average about 3.5-4.5
CHARS_PER_TOKEN_MAX = 6  # hardly any tokenizer packs more characters into a token
CONNECT_TIMEOUT = 10.0  # an unreachable host should fail fast, not after request_timeout
MIN_CHARS_FOR_TRUNCATION_CHECK = 2000  # below this, chat-template overhead dominates the count
# A reply longer than num_predict tokens of this many characters each was not limited by the
# server: it is cut there. num_predict <= 0 (unlimited) counts as UNLIMITED_PREDICT_TOKENS.
REPLY_CHARS_PER_TOKEN = 2 * CHARS_PER_TOKEN_MAX
UNLIMITED_PREDICT_TOKENS = 32768
SCHEMA_FORMAT_SINCE = (0, 5)  # Ollama's structured outputs (a JSON schema as format)

# what a failed call to the server raises (ollama wraps httpx.ConnectError in ConnectionError)
CALL_ERRORS = (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError)

Messages = Sequence[Mapping[str, Any]]
Warn = Callable[[str], None]


@dataclass
class GenerationOptions:
    """Sampling and transport settings for one role."""

    temperature: float = 0.7
    top_p: float = 0.9
    num_predict: int = 2048
    num_ctx: int | None = None  # None: one per model, sized for the run (Models.set_num_ctx)
    request_timeout: float = 600.0
    keep_alive: str | None = "30m"  # how long the server keeps a model loaded after a call
    think_tokens: int = 4096  # added to num_predict when a reasoning model thinks: its trace
    # counts toward num_predict on the server, and must not leave the answer without tokens

    def reply_char_limit(self) -> int:
        """Characters kept of a reply: a server that ignores num_predict cannot flood the run."""
        return reply_tokens(self.num_predict) * REPLY_CHARS_PER_TOKEN


@dataclass
class ChatResult:
    """One completed chat call."""

    text: str
    model: str
    seed: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float
    num_ctx: int
    truncated: bool = False
    done_reason: str | None = None


class LLMError(Exception):
    """An LLM call failed after retries, or the server answered an error."""


class ServerUnreachable(LLMError):
    """No Ollama server answers at the configured address."""

    def __init__(self, host: str, detail: str = "") -> None:
        self.host = host
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"cannot reach the Ollama server at {host}{extra}; start it with `ollama serve` or "
            "`docker compose up -d ollama`, or pass --ollama-host / set OLLAMA_HOST"
        )


class ModelMissing(LLMError):
    """The model is not on the server (and was not pulled)."""

    def __init__(self, model: str, host: str) -> None:
        self.model = model
        self.host = host
        super().__init__(
            f"model {model} is not on the server at {host}; run `ollama pull {model}`, "
            "or drop --no-pull"
        )


# -- hosts and names -------------------------------------------------------------------------
def normalize_host(host: str | None) -> str:
    """Normalise an Ollama address the way the ollama client does ('h' -> 'http://h:11434')."""
    host = (host or "").strip()
    scheme, _, hostport = host.partition("://")
    port = DEFAULT_PORT
    if not hostport:
        scheme, hostport = "http", host
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
    hostname = split.hostname or "127.0.0.1"
    with contextlib.suppress(ValueError):  # a malformed port: keep the default
        port = split.port or port
    try:
        if isinstance(ipaddress.ip_address(hostname), ipaddress.IPv6Address):
            hostname = f"[{hostname}]"
    except ValueError:
        pass
    path = split.path.rstrip("/")
    return f"{scheme}://{hostname}:{port}{path}"


def default_host() -> str:
    """OLLAMA_HOST (normalised) if set, else the local default."""
    env = os.environ.get("OLLAMA_HOST", "").strip()
    return normalize_host(env) if env else DEFAULT_HOST


def full_model_name(name: str) -> str:
    """Add the default ':latest' tag when the name has none ('host:port/ns/m' is untagged)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def reply_tokens(num_predict: int) -> int:
    """The most tokens a reply can have: num_predict, or a large bound when unlimited (<= 0)."""
    return num_predict if num_predict > 0 else UNLIMITED_PREDICT_TOKENS


def takes_schema_format(version: str) -> bool:
    """Whether an Ollama server of `version` accepts a JSON schema as `format` (0.5.0 and
    newer; older ones take only "json"). Unparseable versions (dev builds) are assumed new."""
    match = re.match(r"v?(\d+)\.(\d+)", version.strip())
    return match is None or (int(match[1]), int(match[2])) >= SCHEMA_FORMAT_SINCE


def as_messages(messages: Messages | str) -> list[dict[str, Any]]:
    """A prompt string becomes one user message; message mappings are copied."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def prompt_chars(messages: Iterable[Mapping[str, Any]]) -> int:
    """Total characters of message contents."""
    return sum(len(str(m.get("content") or "")) for m in messages)


def truncation_problem(
    chars: int, prompt_tokens: int | None, completion_tokens: int | None, num_ctx: int
) -> str | None:
    """Why the prompt looks cut by the server's context window, or None.

    Heuristics: a typical-density estimate of the prompt exceeds num_ctx; the server evaluated
    fewer than half of the fewest tokens the prompt could possibly have (chars/6); or prompt
    plus completion filled the window (Ollama then shifts the context, dropping prompt text).
    """
    estimate = chars // CHARS_PER_TOKEN_TYPICAL
    if estimate > num_ctx:
        return f"the prompt is about {estimate} tokens but num_ctx is {num_ctx}"
    if prompt_tokens is None:
        return None
    floor = chars / CHARS_PER_TOKEN_MAX
    if chars >= MIN_CHARS_FOR_TRUNCATION_CHECK and prompt_tokens < floor / 2:
        return f"the server evaluated {prompt_tokens} prompt tokens for {chars} characters"
    if prompt_tokens + (completion_tokens or 0) >= num_ctx:
        return f"prompt and reply filled the whole context window (num_ctx {num_ctx})"
    return None


# -- errors ----------------------------------------------------------------------------------
def is_connection_error(exc: BaseException) -> bool:
    # ollama wraps httpx.ConnectError in ConnectionError, but not when streaming.
    return isinstance(exc, (ConnectionError, httpx.ConnectError))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection failures, timeouts, 5xx, mid-stream server errors."""
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code >= 500 or exc.status_code == -1
    return is_connection_error(exc) or isinstance(exc, httpx.TransportError)


def _response_error_text(exc: ollama.ResponseError) -> str:
    code = f"HTTP {exc.status_code}" if exc.status_code > 0 else "mid-stream"
    return f"{code}: {exc.error}"


# -- client ----------------------------------------------------------------------------------
class OllamaClient:
    """Chat against one Ollama server, with bounded retries; `models` manages its models
    (pulls, /api/show, the num_ctx of each for the run)."""

    def __init__(
        self,
        host: str | None = None,
        options: GenerationOptions | None = None,
        retries: int = 4,
        on_warning: Warn | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        self.host = normalize_host(host) if host else default_host()
        self.options = options or GenerationOptions()
        self.retries = max(1, retries)
        self.on_warning = on_warning
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.client = ollama.Client(host=self.host, timeout=self._timeout())
        from orchestrator.llm.models import Models  # built on this transport

        self.models: Models = Models(self)

    def _timeout(self) -> httpx.Timeout:
        """request_timeout per read/write; connecting gets at most CONNECT_TIMEOUT seconds."""
        total = self.options.request_timeout
        return httpx.Timeout(total, connect=min(total, CONNECT_TIMEOUT))

    def close(self) -> None:
        """Close the underlying HTTP connections."""
        self.client.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warn(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)

    def retrying(self, what: str) -> Retrying:
        """Bounded retries of transient failures, each warned about."""
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.warn(f"{what}: attempt {state.attempt_number}/{self.retries} failed ({exc!r})")

        return Retrying(
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    def fail(self, exc: BaseException, what: str, model: str | None = None) -> LLMError:
        """Translate a transport exception into an LLMError."""
        attempts = f" after {self.retries} attempt(s)" if is_transient(exc) else ""
        if is_connection_error(exc):
            return ServerUnreachable(self.host, f"{what}: connection failed{attempts}")
        if isinstance(exc, httpx.TimeoutException):
            timeout = self.options.request_timeout
            return LLMError(f"{what}: no answer from {self.host} within {timeout}s{attempts}")
        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404 and model and "not found" in str(exc.error):
                return ModelMissing(model, self.host)
            return LLMError(f"{what}: {_response_error_text(exc)}{attempts}")
        return LLMError(f"{what}: {type(exc).__name__}: {exc}{attempts}")

    def check_server(self) -> str:
        """The server's version string; ServerUnreachable when nothing answers."""
        def get_version() -> str:
            response = httpx.get(f"{self.host}/api/version", timeout=self._timeout())
            response.raise_for_status()
            return str(response.json().get("version", "unknown"))

        try:
            return self.retrying("ollama version check")(get_version)
        except (httpx.TransportError, ConnectionError) as exc:
            raise ServerUnreachable(self.host, f"{type(exc).__name__}") from exc
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise LLMError(f"{self.host} does not answer like an Ollama server: {exc}") from exc

    # -- chat ------------------------------------------------------------------------------
    def chat(
        self,
        model: str,
        messages: Messages | str,
        seed: int | None = None,
        format: dict[str, Any] | str | None = None,
        *,
        stream: bool = True,
        on_progress: Callable[[int], None] | None = None,
        temperature: float | None = None,
        think: bool | None = None,
    ) -> ChatResult:
        """One chat completion with retries; LLMError (or a subclass) when it cannot finish.

        `messages` may be a prompt string (one user message). `format` is "json" or a JSON
        schema. When streaming, `on_progress(chunks_so_far)` runs per chunk (it restarts
        from 1 on a retry). `temperature` overrides the configured one for this call. `think`
        is Ollama's option for reasoning models (None: not sent, the server decides); when
        the model will think (`Models.will_think`), num_predict grows by `think_tokens` for the
        trace.
        """
        msgs = as_messages(messages)
        chars = prompt_chars(msgs)
        options = self._request_options(seed, temperature,
                                        self.models.reply_tokens(model, think))
        request = {
            "model": model,
            "messages": msgs,
            "options": options,
            "format": format or None,
            "keep_alive": self.options.keep_alive,
        }
        if think is not None:
            request["think"] = think
        options["num_ctx"] = self.models.num_ctx_for(model, chars, options["num_predict"])
        start = time.monotonic()
        try:
            final, text = self.retrying(f"chat with {model}")(
                self._chat_once, request, stream, on_progress)
        except CALL_ERRORS as exc:
            raise self.fail(exc, f"chat with {model}", model) from exc
        result = ChatResult(
            text=valid_unicode(text),
            model=model,
            seed=seed,
            prompt_tokens=final.prompt_eval_count,
            completion_tokens=final.eval_count,
            seconds=time.monotonic() - start,
            num_ctx=options["num_ctx"],
            done_reason=final.done_reason,
        )
        self._check_limits(result, chars)
        return result

    def _request_options(self, seed: int | None, temperature: float | None,
                         num_predict: int) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "temperature": self.options.temperature if temperature is None else temperature,
            "top_p": self.options.top_p,
            "num_predict": num_predict,
        }
        if seed is not None:
            opts["seed"] = seed
        return opts

    def _chat_once(
        self,
        request: dict[str, Any],
        stream: bool,
        on_progress: Callable[[int], None] | None,
    ) -> tuple[ollama.ChatResponse, str]:
        limit = self.options.reply_char_limit()
        if not stream:
            response = self.client.chat(**request, stream=False)
            text = response.message.content or ""
            self._check_thinking(response, len(response.message.thinking or ""), text)
            if len(text) > limit:
                return self._cut(response, limit), text[:limit]
            return response, text
        parts: list[str] = []
        chars = thinking = 0
        final: ollama.ChatResponse | None = None
        chunks = self.client.chat(**request, stream=True)
        for chunk in chunks:
            parts.append(chunk.message.content or "")
            chars += len(parts[-1])
            thinking += len(chunk.message.thinking or "")
            final = chunk
            if chars > limit:
                chunks.close()  # stop reading: the server ignores num_predict
                return self._cut(chunk, limit), "".join(parts)[:limit]
            if on_progress is not None and not chunk.done:
                on_progress(len(parts))
        if final is None or not final.done:
            raise httpx.RemoteProtocolError("stream ended before the final chunk")
        self._check_thinking(final, thinking, "".join(parts))
        return final, "".join(parts)

    def _check_thinking(self, response: ollama.ChatResponse, thinking: int, text: str) -> None:
        """Warn when a reasoning model spent its reply on thinking (kept apart by the server,
        not part of the text) and gave no answer."""
        if thinking and not text.strip():
            self.warn(
                f"{response.model or 'the model'}: the reply was {thinking} characters of "
                f"thinking and no answer (done_reason {response.done_reason}); raise num_predict "
                f"(now {self.options.num_predict}) or choose a model that does not reason first"
            )

    def _cut(self, response: ollama.ChatResponse, limit: int) -> ollama.ChatResponse:
        """`response` as the end of a reply cut at `limit` characters (done_reason "cut")."""
        self.warn(
            f"{response.model or 'the model'}: the reply passed {limit} characters, more than "
            f"num_predict={self.options.num_predict} tokens allow; it was cut there"
        )
        return response.model_copy(update={"done": True, "done_reason": "cut"})

    def _check_limits(self, result: ChatResult, chars: int) -> None:
        problem = truncation_problem(
            chars, result.prompt_tokens, result.completion_tokens, result.num_ctx
        )
        if problem:
            result.truncated = True
            self.warn(
                f"{result.model}: the prompt was probably truncated ({problem}); "
                f"set a larger num_ctx (now {result.num_ctx})"
            )
        if result.done_reason == "length":
            self.warn(
                f"{result.model}: the reply stopped at num_predict={self.options.num_predict} "
                "tokens; set a larger num_predict"
            )

