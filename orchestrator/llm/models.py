"""Model management on one Ollama server, through a client's transport: the models it lists,
pulls and holds (/api/tags, /api/pull, /api/ps, loads and unloads), what /api/show says of a
model (capabilities, context length), and the num_ctx each model gets for the run.

Also the one progress display of Ollama's streamed transfers (model pulls here, creates in
`orchestrator.finetune.publish`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

from orchestrator.llm.client import (
    CALL_ERRORS,
    GenerationOptions,
    LLMError,
    Messages,
    ModelMissing,
    OllamaClient,
    ServerUnreachable,
    full_model_name,
    is_connection_error,
    prompt_chars,
)

CHARS_PER_TOKEN_GENEROUS = 3  # sizing num_ctx: overestimate prompt tokens


@dataclass(frozen=True)
class Running:
    """A model the server holds (/api/ps): bytes in all and on the GPU, its context."""

    model: str
    size: int
    size_vram: int
    context_length: int | None


def auto_num_ctx(prompt_chars: int, num_predict: int) -> int:
    """Generous prompt-token estimate plus num_predict, rounded up to 1024, at least 4096."""
    need = math.ceil(prompt_chars / CHARS_PER_TOKEN_GENEROUS) + max(num_predict, 0)
    return max(4096, math.ceil(need / 1024) * 1024)


class Models:
    """The models of one client's server, and each one's num_ctx for the run (thread-safe:
    search chains share one client)."""

    def __init__(self, transport: OllamaClient) -> None:
        self.transport = transport
        self._num_ctx: dict[str, int] = {}  # full model name -> its num_ctx for this run
        self._ctx_lock = threading.Lock()
        self._shown: dict[str, ollama.ShowResponse] = {}  # full model name -> /api/show

    @property
    def options(self) -> GenerationOptions:
        return self.transport.options

    # -- what the server has ---------------------------------------------------------------
    def list_models(self) -> dict[str, str]:
        """Models on the server: full name -> digest."""
        return {full_model_name(m.model): m.digest or "" for m in self._listing().models
                if m.model}

    def describe_models(self) -> list[dict[str, Any]]:
        """Models on the server with size, quantization and family, for `orchestrator models`."""
        return [
            {"name": full_model_name(m.model), "digest": m.digest or "", "size": m.size or 0,
             "quantization": (m.details.quantization_level if m.details else None) or "?",
             "family": (m.details.family if m.details else None) or "?"}
            for m in self._listing().models if m.model
        ]

    def _listing(self) -> ollama.ListResponse:
        try:
            return self.transport.retrying("listing models")(self.transport.client.list)
        except CALL_ERRORS as exc:
            raise self.transport.fail(exc, "listing models") from exc

    def ensure_models(
        self, models: Sequence[str], pull: bool, progress: bool = True
    ) -> dict[str, str]:
        """Make sure every model is on the server (pulling if allowed); model -> digest."""
        present = self.list_models()
        missing = [m for m in dict.fromkeys(models) if full_model_name(m) not in present]
        if missing and not pull:
            raise ModelMissing(missing[0], self.transport.host)
        for name in missing:
            self.pull(name, progress=progress)
        if missing:
            present = self.list_models()
        for name in missing:
            if full_model_name(name) not in present:
                raise LLMError(f"pulled {name} but {self.transport.host} does not list it")
        return {m: present[full_model_name(m)] for m in models}

    def pull(self, model: str, progress: bool = True) -> None:
        """Pull one model, showing a progress bar per layer when `progress`."""
        host = self.transport.host
        try:
            show_progress(model, self.transport.client.pull(model, stream=True), progress)
        except CALL_ERRORS as exc:
            if is_connection_error(exc):
                raise ServerUnreachable(host, f"pulling {model}") from exc
            detail = exc.error if isinstance(exc, ollama.ResponseError) else repr(exc)
            raise LLMError(f"pulling {model} from {host} failed: {detail}") from exc

    # -- what the server holds -------------------------------------------------------------
    def running(self) -> list[Running]:
        """The models the server holds now (/api/ps): name, bytes in all and on the GPU, and
        the context each was loaded with."""
        try:
            listing = self.transport.retrying("listing loaded models")(self.transport.client.ps)
        except CALL_ERRORS as exc:
            raise self.transport.fail(exc, "listing loaded models") from exc
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
            self.transport.client.chat(model=model, messages=[], options=options,
                                       keep_alive=keep_alive, stream=False)

        try:
            self.transport.retrying(f"{what} {model}")(send)
        except CALL_ERRORS as exc:
            raise self.transport.fail(exc, f"{what} {model}", model) from exc

    # -- what /api/show says ---------------------------------------------------------------
    def _show(self, model: str) -> ollama.ShowResponse:
        """/api/show of the model, asked once per run (start-up asks it several things)."""
        key = full_model_name(model)
        if key not in self._shown:
            try:
                self._shown[key] = self.transport.retrying(f"showing {model}")(
                    self.transport.client.show, model)
            except CALL_ERRORS as exc:
                raise self.transport.fail(exc, f"showing {model}", model) from exc
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

    # -- context window --------------------------------------------------------------------
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
                self.transport.warn(f"{model}: num_ctx {wanted} is more than the model's "
                                    f"context length; using {limit}")
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
        reply = self.reply_tokens(model, think)
        return math.ceil(prompt_chars(messages) / CHARS_PER_TOKEN_GENEROUS) + reply <= limit

    def reply_tokens(self, model: str, think: bool | None) -> int:
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


# -- progress ------------------------------------------------------------------------------------
def transfer_bars() -> Progress:
    """Bars of bytes moved (name, bar, bytes, speed), on stderr."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=Console(stderr=True))


def show_progress(name: str, stream: Iterable[ollama.ProgressResponse], progress: bool = True
                  ) -> ollama.ProgressResponse | None:
    """Read a pull's or a create's progress stream to its end; when `progress`, one bar per
    layer digest with a total and a line per status change. Returns the last part (None for
    an empty stream)."""
    last = None
    if not progress:
        for part in stream:
            last = part
        return last
    with transfer_bars() as bar:
        layers: dict[str, TaskID] = {}
        status = ""
        for last in stream:
            if last.digest and last.total:
                if last.digest not in layers:
                    layers[last.digest] = bar.add_task(f"{name}: {last.status}",
                                                       total=last.total)
                bar.update(layers[last.digest], completed=last.completed or 0, total=last.total)
            elif last.status and last.status != status:
                status = last.status
                bar.console.print(f"{name}: {status}")
    return last
