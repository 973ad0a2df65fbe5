"""The Ollama transport shared by the Code Generator and the Prompt Improver."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from orchestrator.llm.text import valid_unicode

DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"
CHARS_PER_TOKEN_GENEROUS = 3  # sizing num_ctx: overestimate prompt tokens
CHARS_PER_TOKEN_TYPICAL = 4  # English prose and Python code average about 3.5-4.5
CHARS_PER_TOKEN_MAX = 6  # hardly any tokenizer packs more characters into a token
CONNECT_TIMEOUT = 10.0  # an unreachable host should fail fast, not after request_timeout
MIN_CHARS_FOR_TRUNCATION_CHECK = 2000  # below this, chat-template overhead dominates the count
# A reply longer than num_predict tokens of this many characters each was not limited by the
# server: it is cut there. num_predict <= 0 (unlimited) counts as UNLIMITED_PREDICT_TOKENS.
REPLY_CHARS_PER_TOKEN = 2 * CHARS_PER_TOKEN_MAX
UNLIMITED_PREDICT_TOKENS = 32768
SCHEMA_FORMAT_SINCE = (0, 5)  # Ollama's structured outputs (a JSON schema as format)

Messages = Sequence[Mapping[str, Any]]
Warn = Callable[[str], None]


@dataclass
class GenerationOptions:
    """Sampling and transport settings for one role."""

    temperature: float = 0.7
    top_p: float = 0.9
    num_predict: int = 2048
    num_ctx: int | None = None  # None: one per model, sized for the run (set_num_ctx)
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


@dataclass(frozen=True)
class Running:
    """A model the server holds (/api/ps): bytes in all and on the GPU, its context."""

    model: str
    size: int
    size_vram: int
    context_length: int | None


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


def auto_num_ctx(prompt_chars: int, num_predict: int) -> int:
    """Generous prompt-token estimate plus num_predict, rounded up to 1024, at least 4096."""
    need = math.ceil(prompt_chars / CHARS_PER_TOKEN_GENEROUS) + max(num_predict, 0)
    return max(4096, math.ceil(need / 1024) * 1024)


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
def _is_connection_error(exc: BaseException) -> bool:
    # ollama wraps httpx.ConnectError in ConnectionError, but not when streaming.
    return isinstance(exc, (ConnectionError, httpx.ConnectError))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection failures, timeouts, 5xx, mid-stream server errors."""
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code >= 500 or exc.status_code == -1
    return _is_connection_error(exc) or isinstance(exc, httpx.TransportError)


def _response_error_text(exc: ollama.ResponseError) -> str:
    code = f"HTTP {exc.status_code}" if exc.status_code > 0 else "mid-stream"
    return f"{code}: {exc.error}"


# -- client ----------------------------------------------------------------------------------
class OllamaClient:
    """Chat, model checks and pulls against one Ollama server, with bounded retries."""

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
        self._num_ctx: dict[str, int] = {}  # full model name -> its num_ctx for this run
        self._ctx_lock = threading.Lock()  # search chains share one client
        self._shown: dict[str, ollama.ShowResponse] = {}  # full model name -> /api/show

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

    def _warn(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)

    def _retrying(self, what: str) -> Retrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._warn(f"{what}: attempt {state.attempt_number}/{self.retries} failed ({exc!r})")

        return Retrying(
            stop=stop_after_attempt(self.retries),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _fail(self, exc: BaseException, what: str, model: str | None = None) -> LLMError:
        """Translate a transport exception into an LLMError."""
        attempts = f" after {self.retries} attempt(s)" if is_transient(exc) else ""
        if _is_connection_error(exc):
            return ServerUnreachable(self.host, f"{what}: connection failed{attempts}")
        if isinstance(exc, httpx.TimeoutException):
            timeout = self.options.request_timeout
            return LLMError(f"{what}: no answer from {self.host} within {timeout}s{attempts}")
        if isinstance(exc, ollama.ResponseError):
            if exc.status_code == 404 and model and "not found" in str(exc.error):
                return ModelMissing(model, self.host)
            return LLMError(f"{what}: {_response_error_text(exc)}{attempts}")
        return LLMError(f"{what}: {type(exc).__name__}: {exc}{attempts}")

    # -- server and models -----------------------------------------------------------------
    def check_server(self) -> str:
        """The server's version string; ServerUnreachable when nothing answers."""
        def get_version() -> str:
            response = httpx.get(f"{self.host}/api/version", timeout=self._timeout())
            response.raise_for_status()
            return str(response.json().get("version", "unknown"))

        try:
            return self._retrying("ollama version check")(get_version)
        except (httpx.TransportError, ConnectionError) as exc:
            raise ServerUnreachable(self.host, f"{type(exc).__name__}") from exc
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise LLMError(f"{self.host} does not answer like an Ollama server: {exc}") from exc

    def list_models(self) -> dict[str, str]:
        """Models on the server: full name -> digest."""
        try:
            listing = self._retrying("listing models")(self.client.list)
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            raise self._fail(exc, "listing models") from exc
        return {
            full_model_name(m.model): m.digest or ""
            for m in listing.models
            if m.model
        }

    def describe_models(self) -> list[dict[str, Any]]:
        """Models on the server with size, quantization and family, for `orchestrator models`."""
        try:
            listing = self._retrying("listing models")(self.client.list)
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            raise self._fail(exc, "listing models") from exc
        return [
            {"name": full_model_name(m.model), "digest": m.digest or "", "size": m.size or 0,
             "quantization": (m.details.quantization_level if m.details else None) or "?",
             "family": (m.details.family if m.details else None) or "?"}
            for m in listing.models if m.model
        ]

    def ensure_models(
        self, models: Sequence[str], pull: bool, progress: bool = True
    ) -> dict[str, str]:
        """Make sure every model is on the server (pulling if allowed); model -> digest."""
        present = self.list_models()
        missing = [m for m in dict.fromkeys(models) if full_model_name(m) not in present]
        if missing and not pull:
            raise ModelMissing(missing[0], self.host)
        for name in missing:
            self.pull(name, progress=progress)
        if missing:
            present = self.list_models()
        for name in missing:
            if full_model_name(name) not in present:
                raise LLMError(f"pulled {name} but {self.host} does not list it")
        return {m: present[full_model_name(m)] for m in models}

    def pull(self, model: str, progress: bool = True) -> None:
        """Pull one model, showing a progress bar per layer when `progress`."""
        try:
            stream = self.client.pull(model, stream=True)
            if progress:
                _show_pull(model, stream)
            else:
                for _ in stream:
                    pass
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            if _is_connection_error(exc):
                raise ServerUnreachable(self.host, f"pulling {model}") from exc
            detail = exc.error if isinstance(exc, ollama.ResponseError) else repr(exc)
            raise LLMError(f"pulling {model} from {self.host} failed: {detail}") from exc

    # -- what the server holds ---------------------------------------------------------------
    def running(self) -> list[Running]:
        """The models the server holds now (/api/ps): name, bytes in all and on the GPU, and
        the context each was loaded with."""
        try:
            listing = self._retrying("listing loaded models")(self.client.ps)
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            raise self._fail(exc, "listing loaded models") from exc
        return [Running(full_model_name(m.model or m.name or ""), int(m.size or 0),
                        int(m.size_vram or 0), m.context_length)
                for m in listing.models if m.model or m.name]

    def load(self, model: str, num_ctx: int, keep_alive: str | None = None) -> None:
        """Load the model with the run's runner options, without generating (a chat request
        with no messages), and keep it for `keep_alive` (default: the run's); a model loaded
        so already only takes the new keep_alive."""
        self._empty_chat(model, {"num_ctx": num_ctx}, keep_alive or self.options.keep_alive,
                         "loading")

    def unload(self, model: str) -> None:
        """Unload the model now (no messages and keep_alive 0)."""
        self._empty_chat(model, {}, 0, "unloading")

    def _empty_chat(self, model: str, options: dict[str, Any], keep_alive: str | int | None,
                    what: str) -> None:
        def send() -> None:
            self.client.chat(model=model, messages=[], options=options, keep_alive=keep_alive,
                             stream=False)

        try:
            self._retrying(f"{what} {model}")(send)
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            raise self._fail(exc, f"{what} {model}", model) from exc

    # -- context window --------------------------------------------------------------------
    def _show(self, model: str) -> ollama.ShowResponse:
        """/api/show of the model, asked once per run (start-up asks it several things)."""
        key = full_model_name(model)
        if key not in self._shown:
            try:
                self._shown[key] = self._retrying(f"showing {model}")(self.client.show, model)
            except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
                raise self._fail(exc, f"showing {model}", model) from exc
        return self._shown[key]

    def model_info(self, model: str) -> dict[str, Any]:
        """The model's GGUF metadata from /api/show (`model_info`): its architecture, layers,
        attention heads and context length."""
        return dict(self._show(model).modelinfo or {})

    def thinks(self, model: str) -> bool:
        """Whether the model can think (a reasoning model: "thinking" among its capabilities)."""
        return "thinking" in (self._show(model).capabilities or [])

    def will_think(self, model: str, think: bool | None) -> bool:
        """Whether a chat with this `think` option makes the model think: asked to, or not told
        not to and able. Ollama (server/routes.go, ChatHandler) turns thinking on for a model
        that can when `think` is absent (0.12.4 on; before, its template thinks in the text)."""
        return think is True or (think is None and self.thinks(model))

    def context_length(self, model: str) -> int | None:
        """The model's context length from /api/show; None when the server does not say."""
        info = self._show(model).modelinfo or {}
        length = info.get(f"{info.get('general.architecture')}.context_length")
        return length if isinstance(length, int) and length > 0 else None

    def set_num_ctx(self, sizes: Mapping[str, int]) -> dict[str, int]:
        """Fix each model's num_ctx for the run: the configured num_ctx if given, else its size
        here; capped at the model's context length. Returns model -> num_ctx. It never changes
        afterwards: Ollama reloads a model whose num_ctx changes, into whatever GPU memory the
        candidates have left it, and the GPU plan counts on its KV cache."""
        fixed: dict[str, int] = {}
        for model, size in sizes.items():
            limit = self.context_length(model)
            wanted = size if self.options.num_ctx is None else self.options.num_ctx
            fixed[model] = min(wanted, limit) if limit else wanted
            if self.options.num_ctx is not None and fixed[model] < wanted:
                self._warn(f"{model}: num_ctx {wanted} is more than the model's context length; "
                           f"using {limit}")
            with self._ctx_lock:
                self._num_ctx[full_model_name(model)] = fixed[model]
        return fixed

    def fits(self, model: str, messages: Messages, think: bool | None = None) -> bool:
        """Whether the messages and the reply fit the model's num_ctx (generously estimated);
        True for a model whose num_ctx is not fixed yet. Ollama would cut a longer prompt
        silently."""
        with self._ctx_lock:
            limit = self._num_ctx.get(full_model_name(model))
        if limit is None:
            return True
        reply = self._reply_tokens(model, think)
        return math.ceil(prompt_chars(messages) / CHARS_PER_TOKEN_GENEROUS) + reply <= limit

    def _reply_tokens(self, model: str, think: bool | None) -> int:
        """num_predict for a chat: the configured one, and think_tokens for a trace."""
        thinking = self.options.think_tokens if self.will_think(model, think) else 0
        return self.options.num_predict + thinking

    def num_ctx_for(self, model: str, chars: int, reply_tokens: int | None = None) -> int:
        """The model's num_ctx: the one set_num_ctx fixed; for a model it did not (a client used
        on its own), the configured num_ctx or one sized for this first prompt, then kept;
        capped at the model's context length as the server caps it (else a prompt cut to that
        length would be judged against a num_ctx the runner never had)."""
        key = full_model_name(model)
        with self._ctx_lock:
            if key in self._num_ctx:
                return self._num_ctx[key]
        limit = self.context_length(model)
        with self._ctx_lock:  # the first prompt of concurrent ones fixes it
            if key not in self._num_ctx:
                wanted = self.options.num_ctx or auto_num_ctx(
                    chars, self.options.num_predict if reply_tokens is None else reply_tokens)
                self._num_ctx[key] = min(wanted, limit) if limit else wanted
            return self._num_ctx[key]

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
        the model will think (`will_think`), num_predict grows by `think_tokens` for the trace.
        """
        msgs = as_messages(messages)
        chars = prompt_chars(msgs)
        options = self._request_options(seed, temperature, self._reply_tokens(model, think))
        request = {
            "model": model,
            "messages": msgs,
            "options": options,
            "format": format or None,
            "keep_alive": self.options.keep_alive,
        }
        if think is not None:
            request["think"] = think
        options["num_ctx"] = self.num_ctx_for(model, chars, options["num_predict"])
        start = time.monotonic()
        try:
            final, text = self._retrying(f"chat with {model}")(
                self._chat_once, request, stream, on_progress)
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError, ValueError) as exc:
            raise self._fail(exc, f"chat with {model}", model) from exc
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
            self._warn(
                f"{response.model or 'the model'}: the reply was {thinking} characters of "
                f"thinking and no answer (done_reason {response.done_reason}); raise num_predict "
                f"(now {self.options.num_predict}) or choose a model that does not reason first"
            )

    def _cut(self, response: ollama.ChatResponse, limit: int) -> ollama.ChatResponse:
        """`response` as the end of a reply cut at `limit` characters (done_reason "cut")."""
        self._warn(
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
            self._warn(
                f"{result.model}: the prompt was probably truncated ({problem}); "
                f"set a larger num_ctx (now {result.num_ctx})"
            )
        if result.done_reason == "length":
            self._warn(
                f"{result.model}: the reply stopped at num_predict={self.options.num_predict} "
                "tokens; set a larger num_predict"
            )


def _show_pull(model: str, stream: Iterable[ollama.ProgressResponse]) -> None:
    """Render pull progress: one bar per layer digest, a line per status change."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        layers: dict[str, TaskID] = {}
        last_status = ""
        for part in stream:
            if part.digest and part.total:
                if part.digest not in layers:
                    label = f"{model} {part.digest.removeprefix('sha256:')[:12]}"
                    layers[part.digest] = bar.add_task(label, total=part.total)
                bar.update(layers[part.digest], completed=part.completed or 0, total=part.total)
            elif part.status and part.status != last_status:
                last_status = part.status
                bar.console.print(f"{model}: {part.status}")
