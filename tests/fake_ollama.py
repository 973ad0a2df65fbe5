"""A scripted Ollama-API server on loopback, speaking enough of the wire protocol for `ollama`.

Replies to /api/chat come from a script (consumed in order), then from a default. The server
records every request and shuts down promptly even while a delayed handler is waiting.

It also takes model imports as Ollama does: blobs uploaded to /api/blobs/sha256:<hex> (checked
against their digest), then /api/create naming them, which adds the model to its list.

Like Ollama's scheduler (`server/sched.go`, `needsReload`), it counts a model *load* whenever a
chat request asks for a model that is not loaded, or for a loaded model with different runner
options (`RUNNER_OPTIONS`; `num_ctx` above all): on a real server each of those reloads the
weights, seconds for a 7B model.

Each model has a `ModelSpec`: what /api/tags and /api/show (`model_info`, capabilities) say of
it, and what it holds once loaded, as Ollama's runner does (`llm/llama_server.go` starts
llama.cpp with a context of num_ctx x OLLAMA_NUM_PARALLEL tokens): its weights, an f16 KV cache
of that many tokens, and compute buffers. With a `gpu` (tests/fake_gpu.py), a load places the
model the way `server/sched.go` does: the first model takes what fits and the rest goes to the
CPU (size_vram < size); a further model that does not fit wholly unloads a loaded one first
(`findRunnerToUnload`). /api/ps lists the loaded models (`server/routes.go`, `PsHandler`).
With a `throughput`, replies take the time a real server's shared GPU would give them.

As strict as the real server (0.12.6), each rule citing its source where it is applied: `think`
and the "thinking" capability by version; options type-checked (`Options.FromMap`); a reply
stopped at num_predict with done_reason "length"; a prompt cut to num_ctx, and
prompt_eval_count the tokens kept; `format` "json" or a valid schema; models unloaded when
keep_alive runs out (on a clock `advance` moves); /api/create refusing bad file names, file
sets, quantizations and `from`s. Under a `format`, a scripted reply must be what the grammar
allows (a JSON object, conforming to the schema; `_breaks_format`): one that is not is answered
500 and fails the test as the server closes (`check_script`); num_predict then cuts it. A plain
`default` reply (one for every request) is answered there as an instance of the grammar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import jsonschema

FAKE_VERSION = "0.12.6"
# Thinking (server/routes.go, ChatHandler): the request's `think` and the "thinking" capability
# came in 0.9.0 (api/types.go ChatRequest.Think; older servers' JSON decoding drops the field);
# since 0.12.4 a model that can think thinks when `think` is absent.
THINK_SINCE = (0, 9)
THINK_BY_DEFAULT_SINCE = (0, 12, 4)
MODIFIED_AT = "2025-01-15T10:20:30.123456789Z"
POLL_SECONDS = 0.02  # how often serve_forever checks for shutdown: keeps close() quick
UNPULLABLE_ERROR = "pull model manifest: file does not exist"
# The options a loaded runner is started with (Ollama's api.Runner); a request that asks for
# other values reloads the model. Absent options take the server's defaults.
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
# What /api/show says of a model the server did not create: qwen2.5-coder's template (ChatML)
# and parameters.
SHOW_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)
SHOW_PARAMETERS = (
    'stop                           "<|im_start|>"\n'
    'stop                           "<|im_end|>"'
)
BLOB_PATH = re.compile(r"^/api/blobs/(sha256:[0-9a-f]{64})$")
MIB = 1 << 20
# convert/convert.go, ConvertAdapter: the base architectures a safetensors adapter converts for
ADAPTER_ARCHITECTURES = ("llama", "gemma2")
# fs/ggml/type.go, ParseFileType: the types /api/create quantises to, and the bits per weight
# of each (llama.cpp's figures, about); another is "unsupported quantization type"
QUANT_BITS = {"F32": 32, "F16": 16, "Q8_0": 9, "Q4_K_S": 5, "Q4_K_M": 5, "Q4_K": 5}
SUPPORTED_QUANTS = "F32, F16, Q4_K_S, Q4_K_M, Q8_0"  # as its error lists them
DEFAULT_NUM_CTX = 4096  # what Ollama's runner gets when a request sends no num_ctx
# api/types.go (0.12.6), Options and Runner: each option's JSON type as `Options.FromMap` checks
# it (an int takes any JSON number; a float32, any number; use_mmap is a *bool). An unknown key
# is logged ("invalid option provided") and ignored; a value of the wrong type fails the request.
OPTION_TYPES = {
    **dict.fromkeys(("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep",
                     "seed", "num_predict", "top_k", "repeat_last_n"), "integer"),
    **dict.fromkeys(("top_p", "min_p", "typical_p", "temperature", "repeat_penalty",
                     "presence_penalty", "frequency_penalty"), "float32"),
    "use_mmap": "boolean", "stop": "array",
}
NUM_KEEP = 4  # api/types.go, DefaultOptions: the prompt tokens a truncation keeps at the start
CHARS_PER_TOKEN = 4  # for the pace of a reply under `throughput`


@dataclass(frozen=True)
class ModelSpec:
    """One model as the server describes it (GGUF metadata) and what it holds when loaded."""

    architecture: str = "qwen2"
    parameter_size: str = "7.6B"
    file_size: int = 4_683_087_332  # /api/tags `size`: the weights
    block_count: int = 28
    head_count: int = 28
    head_count_kv: int = 4
    embedding_length: int = 3584
    context_length: int = 32768  # the longest context it was trained for
    compute_bytes: int = 400 * MIB  # llama.cpp's compute buffers once loaded
    family: str = "qwen2"
    thinking: bool = False

    def kv_bytes_per_token(self) -> int:
        """f16 K and V for every layer: 2 x layers x KV heads x head dim x 2 bytes."""
        return 2 * self.block_count * self.head_count_kv * (
            self.embedding_length // self.head_count) * 2

    def held(self, num_ctx: int, slots: int) -> int:
        """Bytes a runner holds with `slots` parallel sequences of num_ctx tokens."""
        return self.file_size + self.kv_bytes_per_token() * num_ctx * slots + self.compute_bytes


# Public models' metadata as their GGUF files state it (qwen2.5-coder:7b, qwen2.5:7b: 28
# layers, 4 KV heads of 128; deepseek-coder:6.7b: llama, 32 layers, 32 KV heads of 128, no
# GQA); the file sizes stand for the 4.7 GB and 3.8 GB Ollama's library lists.
QWEN25_CODER_7B = ModelSpec()
QWEN25_7B = ModelSpec()
DEEPSEEK_CODER_67B = ModelSpec(
    architecture="llama", parameter_size="7B", file_size=3_827_834_503, block_count=32,
    head_count=32, head_count_kv=32, embedding_length=4096, context_length=16384,
    family="llama")


class GpuMemoryHolder(Protocol):
    """Where the server's loaded models take GPU memory: a simulated GPU (tests/fake_gpu.py),
    or a process holding real GPU memory (benchmarks/gpu_tenants.py)."""

    def free(self) -> int: ...
    def hold(self, owner: str, nbytes: int) -> None: ...
    def release(self, owner: str) -> None: ...


@dataclass(frozen=True)
class Throughput:
    """A GPU shared by the server's parallel requests: each stream decodes at most `stream`
    tokens/s, all of them together at most `aggregate`; a prompt takes 1 / `prompt` s per
    token. Requests beyond the model's OLLAMA_NUM_PARALLEL slots wait for one."""

    stream: float
    aggregate: float
    prompt: float

    def rate(self, active: int) -> float:
        """Tokens/s of each of `active` streams decoding at once."""
        return min(self.stream, self.aggregate / max(1, active))


@dataclass
class _Runner:
    """A loaded model (Ollama's runnerRef): its options, its memory, its slots."""

    options: tuple
    num_ctx: int
    size: int
    size_vram: int
    loaded_at: float
    expires_at: datetime
    keep_alive: Any = None  # the last request's, counted again from when it ends
    busy: int = 0  # requests being served (Ollama's refCount)
    slots: threading.Semaphore = field(repr=False, default_factory=threading.Semaphore)


@dataclass
class Reply:
    """One scripted /api/chat answer.

    `status >= 400` answers that HTTP error with `{"error": error}`. With status 200 and `error`
    set, a streamed reply sends the content and then an `{"error": ...}` line (a mid-stream
    failure, as Ollama does when the runner dies); a non-streamed one answers 500.
    """

    content: str = ""
    status: int = 200
    delay: float = 0.0
    prompt_eval_count: int | None = None
    error: str | None = None
    thinking: str = ""  # a reasoning model's trace, sent as the server would (_as_thought)
    ignores_num_predict: bool = False  # a server that runs past num_predict (not Ollama)
    done_reason: str = "stop"  # "length" once cut at num_predict (_at_num_predict)


ScriptItem = Reply | Callable[[dict[str, Any]], Reply]
EXHAUSTED = Reply(status=500, error="FakeOllama: script exhausted")


def full_name(name: str) -> str:
    """Add the default ':latest' tag when the last path component has none."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def fake_digest(name: str) -> str:
    """A stable sha256 hex digest for a model name."""
    return hashlib.sha256(name.encode()).hexdigest()


def _as_digests(models: dict[str, str] | Iterable[str] | None) -> dict[str, str]:
    if models is None:
        return {}
    if isinstance(models, dict):
        return {full_name(k): v for k, v in models.items()}
    return {full_name(m): fake_digest(full_name(m)) for m in models}


def _tokens(text: str) -> list[str]:
    """Split text into word-ish pieces, like a tokenizer streaming one token per chunk."""
    return re.findall(r"\s*\S+|\s+", text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, fake: FakeOllama) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, shutdown) are normal here: stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.fake._track(self.connection, add=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        self.server.fake._dispatch(self, "GET", None)

    def do_HEAD(self) -> None:
        self.server.fake._dispatch(self, "HEAD", None)

    def do_DELETE(self) -> None:
        raw = self._read_body()
        self.server.fake._dispatch(self, "DELETE", json.loads(raw) if raw else {})

    def do_POST(self) -> None:
        raw = self._read_body()
        if BLOB_PATH.match(self.path):  # a blob upload: the raw bytes
            self.server.fake._dispatch(self, "POST", raw)
            return
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        self.server.fake._dispatch(self, "POST", body)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- writing ---------------------------------------------------------------------------
    def send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_ndjson(self, lines: Iterable[Any]) -> None:
        """Stream objects as NDJSON with chunked transfer encoding (as Ollama does)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for obj in lines:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class FakeOllama:
    """Scripted Ollama server on 127.0.0.1 (random port) in a daemon thread."""

    def __init__(
        self,
        models: dict[str, str] | Iterable[str] | None = None,
        script: Iterable[ScriptItem] = (),
        default: ScriptItem | None = None,
        pullable: dict[str, str] | Iterable[str] | None = None,
        version: str = FAKE_VERSION,
        context_length: int = 32768,
        thinking: bool = False,
        specs: dict[str, ModelSpec] | None = None,
        num_parallel: int = 1,
        gpu: GpuMemoryHolder | None = None,
        throughput: Throughput | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # told when a request ends
        self._closing = threading.Event()
        self._models = _as_digests(models)
        self._pullable = _as_digests(pullable)
        self._script: list[ScriptItem] = list(script)
        self._default: ScriptItem = default if default is not None else EXHAUSTED
        self._requests: list[tuple[str, Any]] = []
        self._runners: dict[str, _Runner] = {}  # loaded models
        self._loads: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-ollama-")
        self.blobs_dir = Path(self._tmp.name) / "blobs"  # OLLAMA_MODELS/blobs
        self.blobs_dir.mkdir()
        self._manifests: dict[str, list[str]] = {}  # created model -> its layers' digests
        self._uploads: list[str] = []  # digests of the accepted uploads, in order
        self._creates: list[dict[str, Any]] = []  # /api/create bodies, in order
        self._created: dict[str, dict[str, Any]] = {}  # created model -> its create body
        self.on_created: Callable[[str], None] | None = None  # told each model created
        self.on_blob_check: Callable[[str], None] | None = None  # told each HEAD of a blob
        # Scripted replies the request's `format` grammar could not have produced (_breaks_format):
        # each answered 500, and the test fails as the server closes (check_script).
        self.script_errors: list[str] = []
        self.version = version
        # Models without a spec are qwen2.5-coder:7b with this context length and thinking.
        self.default_spec = replace(QWEN25_CODER_7B, context_length=context_length,
                                    thinking=thinking)
        self.specs = {full_name(k): v for k, v in (specs or {}).items()}
        self.num_parallel = num_parallel  # OLLAMA_NUM_PARALLEL (Ollama's default: 1)
        self.gpu = gpu
        self.throughput = throughput
        self.skew = timedelta(0)  # added to the server's clock by `advance`
        self._decoding = 0  # streams decoding now, under `throughput`
        self.most_decoding = 0  # the most that decoded at once
        self._server = _Server(self)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True
        )
        self._thread.start()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeOllama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if exc[0] is None:
            self.check_script()

    def check_script(self) -> None:
        """Fail (AssertionError) when the test scripted a reply no Ollama could send."""
        assert not self.script_errors, \
            f"the test scripted replies no Ollama could send: {self.script_errors}"

    def close(self) -> None:
        """Wake delayed handlers, stop accepting, drop open connections. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._tmp.cleanup()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    # -- inspection ------------------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, Any]]:
        """Every request seen so far as (path, json_body), body None for GET."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self, loads: bool = False) -> list[dict[str, Any]]:
        """The bodies of the /api/chat requests that asked for a reply, in arrival order; with
        `loads`, those without messages too (a model loaded or unloaded)."""
        return [body for path, body in self.requests
                if path == "/api/chat" and (loads or body.get("messages"))]

    def paths(self) -> list[str]:
        """The paths requested, in arrival order."""
        return [path for path, _ in self.requests]

    @property
    def models(self) -> dict[str, str]:
        """Models currently on the server: full name -> digest."""
        with self._lock:
            return dict(self._models)

    def loads(self) -> dict[str, int]:
        """How often each model was loaded (first load included), as Ollama's scheduler would."""
        with self._lock:
            return dict(self._loads)

    def reloads(self) -> int:
        """Loads after each model's first: each a reload of its weights on a real server."""
        return sum(n - 1 for n in self.loads().values())

    def spec(self, model: str) -> ModelSpec:
        return self.specs.get(full_name(model), self.default_spec)

    def can_think(self, model: str) -> bool:
        """Whether the model can think on this server ("thinking" among its capabilities)."""
        return self.spec(model).thinking and not _older_than(self.version, THINK_SINCE)

    def running(self) -> dict[str, dict[str, int]]:
        """The loaded models: full name -> {num_ctx, size, size_vram}."""
        with self._lock:
            self._expire()
            return {m: {"num_ctx": r.num_ctx, "size": r.size, "size_vram": r.size_vram}
                    for m, r in self._runners.items()}

    def load(self, model: str, options: dict[str, Any], keep_alive: Any = None) -> None:
        """Load a model as another client's request would (for a test's story)."""
        self._load(full_name(model), options, keep_alive)

    def now(self) -> datetime:
        """The server's clock: wall time plus what `advance` added."""
        return datetime.now(UTC) + self.skew

    def advance(self, seconds: float) -> None:
        """Move the server's clock on (a test's wait for keep_alive to run out), once every
        request has ended: a client has its reply before the server counts the request as
        ended, and time that passes before that end does not count against keep_alive."""
        with self._idle:
            if not self._idle.wait_for(lambda: not any(r.busy for r in self._runners.values()),
                                       timeout=60):
                raise AssertionError("a request did not end within 60 s")
            self.skew += timedelta(seconds=seconds)

    def _expire(self) -> None:
        """server/sched.go: a runner whose keep_alive ran out since its last request ended
        (its `expireTimer`, set in `processCompleted` when its refCount drops to 0) is
        unloaded. Call with the lock held; a runner serving a request does not expire."""
        now = self.now()
        for model in [m for m, r in self._runners.items() if r.expires_at <= now and not r.busy]:
            self._unload(model)

    def unload(self, model: str) -> None:
        """Unload a model as `ollama stop` would (for a test's story)."""
        with self._lock:
            self._unload(full_name(model))

    def blobs(self) -> dict[str, int]:
        """The blobs on the server's disk: 'sha256:<hex>' -> size in bytes."""
        return {p.name.replace("-", ":", 1): p.stat().st_size
                for p in self.blobs_dir.iterdir()}

    def disk_bytes(self) -> int:
        """What the blobs take on the server's disk."""
        return sum(self.blobs().values())

    def layers(self, model: str) -> list[str]:
        """The layer digests of a model the server created."""
        with self._lock:
            return list(self._manifests.get(full_name(model), []))

    def uploads(self) -> list[str]:
        """The digests of the accepted blob uploads in arrival order (a repeat shows twice)."""
        with self._lock:
            return list(self._uploads)

    def creates(self) -> list[dict[str, Any]]:
        """The bodies of the /api/create requests, in arrival order (failed ones included)."""
        with self._lock:
            return [dict(body) for body in self._creates]

    def add_script(self, *items: ScriptItem) -> None:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(items)

    # -- routing ---------------------------------------------------------------------------
    def _dispatch(self, h: _Handler, method: str, body: Any) -> None:
        with self._lock:  # a blob upload is recorded by its size
            self._requests.append((h.path, {"bytes": len(body)} if isinstance(body, bytes)
                                   else body))
        blob = BLOB_PATH.match(h.path)
        if blob and method in ("HEAD", "POST"):
            (self._has_blob if method == "HEAD" else self._put_blob)(h, blob[1], body)
            return
        routes: dict[tuple[str, str], Callable[[_Handler, Any], None]] = {
            ("GET", "/"): lambda h, b: h.send_text(200, "Ollama is running"),
            ("HEAD", "/"): lambda h, b: h.send_text(200, "Ollama is running"),
            ("GET", "/api/version"): lambda h, b: h.send_json(200, {"version": self.version}),
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/create"): self._create,
            ("DELETE", "/api/delete"): self._delete,
        }
        route = routes.get((method, h.path))
        if route is None:
            h.send_text(404, "404 page not found")
            return
        route(h, body)

    def _load(self, model: str, options: dict[str, Any], keep_alive: Any) -> _Runner:
        """The model's runner, as `server/sched.go` schedules it: a loaded one whose runner
        options match (`needsReload`), else a fresh load (a loaded one with other options is
        unloaded first). Its context is num_ctx capped at the trained length
        (`effectiveContext`); with a GPU, a model that does not fit wholly unloads the oldest
        other model first (`findRunnerToUnload`), and the first model takes what fits, the rest
        on the CPU."""
        spec = self.spec(model)
        key = tuple(options.get(name) for name in RUNNER_OPTIONS)
        with self._lock:
            self._expire()
            runner = self._runners.get(model)
            if runner is not None and runner.options == key:
                runner.expires_at, runner.keep_alive = _expiry(keep_alive, self.now()), keep_alive
                return runner
            if runner is not None:
                self._unload(model)
            num_ctx = min(options.get("num_ctx") or DEFAULT_NUM_CTX, spec.context_length)
            size = vram = spec.held(num_ctx, self.num_parallel)
            if self.gpu is not None:
                while self._runners and size > self.gpu.free():
                    self._unload(min(self._runners, key=lambda m: self._runners[m].loaded_at))
                vram = max(0, min(size, self.gpu.free()))
                self.gpu.hold(model, vram)
            runner = _Runner(key, num_ctx, size, vram, time.monotonic(),
                             _expiry(keep_alive, self.now()), keep_alive,
                             slots=threading.Semaphore(self.num_parallel))
            self._runners[model] = runner
            self._loads[model] = self._loads.get(model, 0) + 1
            return runner

    def _unload(self, model: str) -> None:
        """Drop a runner (call with the lock held)."""
        if self._runners.pop(model, None) is not None and self.gpu is not None:
            self.gpu.release(model)

    def _ps(self, h: _Handler, body: Any) -> None:
        with self._lock:
            self._expire()
            loaded = [(m, r, self._models.get(m, "")) for m, r in self._runners.items()]
        entries = [{"name": m, "model": m, "size": r.size, "digest": digest,
                    "details": _details(self.spec(m)), "expires_at": r.expires_at.isoformat(),
                    "size_vram": r.size_vram, "context_length": r.num_ctx}
                   for m, r, digest in loaded]
        entries.sort(key=lambda e: e["expires_at"], reverse=True)  # longest remaining first
        h.send_json(200, {"models": entries})

    def _lookup(self, name: str) -> str | None:
        with self._lock:
            return self._models.get(full_name(name or ""))

    def _tags(self, h: _Handler, body: Any) -> None:
        """`ListHandler`: a created model's size is its layers' (`Manifest.Size`)."""
        blobs = self.blobs()
        entries = [_tag_entry(n, d, self.spec(n)) for n, d in self.models.items()]
        for entry in entries:
            if layers := self.layers(entry["name"]):
                entry["size"] = sum(blobs.get(d, 0) for d in layers)
        h.send_json(200, {"models": entries})

    def _show(self, h: _Handler, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name") or ""
        if self._lookup(name) is None:
            h.send_json(404, {"error": f"model '{name}' not found"})
            return
        shown = _show_body(full_name(name), self.spec(name), self.can_think(name))
        with self._lock:
            created = self._created.get(full_name(name))
        if created is not None:
            shown["template"] = created.get("template") or shown["template"]
            shown["parameters"] = _modelfile_parameters(created.get("parameters") or {})
        h.send_json(200, shown)

    # -- blobs and create ------------------------------------------------------------------
    # Blobs are files `blobs/sha256-<hex>` of a real folder, as in Ollama's models directory
    # (`manifest/paths.go`, `BlobsPath`); a created model's manifest lists the digests of its
    # layers. What a create writes and what a delete frees follow `server/create.go` and
    # `server/routes.go`, cited at each step.
    def _blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest.replace(":", "-")

    def _has_blob(self, h: _Handler, digest: str, body: Any) -> None:
        if self.on_blob_check is not None:  # before the client hears (a test's kill point)
            self.on_blob_check(digest)
        h.send_empty(200 if self._blob_path(digest).is_file() else 404)

    def _put_blob(self, h: _Handler, digest: str, data: bytes) -> None:
        """`CreateBlobHandler`: a blob stored under its digest, checked against the bytes."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            h.send_json(400, {"error": "digest mismatch, expected "
                                       f"\"{digest}\", got \"{actual}\""})
            return
        self._write_blob(data)
        with self._lock:
            self._uploads.append(digest)
        h.send_empty(201)

    def _write_blob(self, data: bytes) -> str:
        """Store bytes as a blob (`manifest.NewLayer`); returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._blob_path(digest).write_bytes(data)
        return digest

    def _layer(self, kind: str, size: int, name: str) -> str:
        """A layer the server derives (a converted or quantised GGUF): `size` bytes, new for
        each create, as a real conversion of other weights is."""
        with self._lock:
            seed = f"{kind}#{name}#{len(self._creates)}".encode()
        return self._write_blob(seed + bytes(max(0, size - len(seed))))

    def _create(self, h: _Handler, body: dict[str, Any]) -> None:
        with self._lock:
            self._creates.append(dict(body))
        name = full_name(body.get("model") or "")
        files, adapters = body.get("files") or {}, body.get("adapters") or {}
        if any(not _valid_path(f) for f in files):  # CreateHandler: fs.ValidPath, a 400
            h.send_json(400, {"error": "file path must be relative"})
            return
        if not body.get("model") or not (files or body.get("from")):
            h.send_json(400, {"error": "neither 'from' or 'files' was specified"})
            return
        missing = [d for d in (*files.values(), *adapters.values())
                   if not self._blob_path(d).is_file()]
        if missing:
            h.send_json(400, {"error": f"blob {missing[0]} not found"})
            return
        base = full_name(body.get("from") or "")
        if adapters and self.spec(base).architecture not in ADAPTER_ARCHITECTURES:
            # convert/convert.go, ConvertAdapter: the base's architecture picks the converter
            h.send_json(400, {"error": "unsupported architecture"})
            return
        if refused := self._create_refusal(body):
            status, error = refused
            if body.get("stream", True):  # the handler's goroutine sends it down the stream
                h.send_ndjson([{"error": error}])
            else:
                h.send_json(status, {"error": error})
            return
        lines = list(self._create_progress(name, body))
        if body.get("stream", True):
            h.send_ndjson(lines)
        else:
            h.send_json(200, lines[-1])

    def _create_refusal(self, body: dict[str, Any]) -> tuple[int, str] | None:
        """What server/create.go refuses after the request is read: (status, error).
        A `from` the server lacks is pulled (`parseFromModel`), and fails as a pull does; with
        `from`, `files` are not read. Files of no known type are `errUnknownType` (a 400,
        `convertModelFromFiles`); safetensors weights need their config.json (convert.go,
        `ConvertModel` reads it); `quantize` must name a type `ParseFileType` knows, and only
        an F16 or F32 model is quantised (`createModel`): a library model's layers are not."""
        files = body.get("files") or {}
        quantize = (body.get("quantize") or body.get("quantization") or "").upper()
        unknown = (500, f"unsupported quantization type {quantize} - supported types are "
                        f"{SUPPORTED_QUANTS}") if quantize and quantize not in QUANT_BITS else None
        if body.get("from"):
            base = full_name(body["from"])
            with self._lock:
                if base not in self._models and base not in self._pullable:
                    return 500, UNPULLABLE_ERROR
                self._models.setdefault(base, self._pullable.get(base, ""))  # pulled
                made = self._created.get(base) or {}
            f16 = bool(made.get("files")) and not made.get("quantize")
            return unknown or ((500, "quantization is only supported for F16 and F32 models")
                               if quantize and not f16 else None)
        if not any(f.endswith((".safetensors", ".gguf")) for f in files):
            return 400, "unknown type"
        if any(f.endswith(".safetensors") for f in files) and "config.json" not in files:
            return 500, "open config.json: no such file or directory"
        return unknown

    def _safetensors_bytes(self, files: dict[str, str]) -> int:
        return sum(self._blob_path(d).stat().st_size for f, d in files.items()
                   if f.endswith(".safetensors"))

    def _create_progress(self, name: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """`CreateHandler`: the layers of `from` (shared, nothing written) or a conversion of
        `files` (`convertFromSafetensors`: an F16 GGUF layer, as big as the bf16 weights), a
        quantisation of it into a new layer (`createModel`, `quantizeLayer`; the F16 one stays
        on disk, referenced by no manifest), an adapter converted into a layer of its own, and
        the template, parameters and config layers; then the manifest, and the layers of the
        manifest it replaces removed unless another uses them (`oldManifest.RemoveLayers`)."""
        files, adapters = body.get("files") or {}, body.get("adapters") or {}
        layers = list(self._manifests.get(full_name(body.get("from") or ""), []))
        if files:
            yield {"status": "converting model"}
            model = self._layer("F16", self._safetensors_bytes(files), name)
            if quantize := (body.get("quantize") or "").upper():
                total = self._blob_path(model).stat().st_size
                for completed in (0, total // 2, total):
                    yield {"status": f"quantizing F16 model to {quantize}",
                           "digest": "0", "total": total, "completed": completed}
                model = self._layer(quantize, total * QUANT_BITS[quantize] // 16, name)
            layers.append(model)
        if adapters:
            yield {"status": "converting adapter"}
            layers.append(self._layer("adapter", self._safetensors_bytes(adapters), name))
        for key in ("template", "parameters"):
            if body.get(key):
                layers.append(self._write_blob(json.dumps(body[key]).encode()))
        layers.append(self._write_blob(json.dumps({"model": name, "layers": layers}).encode()))
        yield {"status": "writing manifest"}
        digest = hashlib.sha256(json.dumps(layers).encode()).hexdigest()
        with self._lock:
            old = self._manifests.get(name, [])
            self._manifests[name] = layers
            self._models[name] = digest
            self._created[name] = dict(body)
            self._unload(name)  # a new model: the next chat loads it
        self._remove_layers(old)
        if self.on_created is not None:  # before the client hears of it (a test's kill point)
            self.on_created(name)
        yield {"status": "success"}

    def _remove_layers(self, layers: list[str]) -> None:
        """`Manifest.RemoveLayers`: delete the blobs of `layers` that no manifest uses."""
        with self._lock:
            in_use = {d for kept in self._manifests.values() for d in kept}
        for digest in set(layers) - in_use:
            self._blob_path(digest).unlink(missing_ok=True)

    def _delete(self, h: _Handler, body: dict[str, Any]) -> None:
        """`DeleteHandler`: the manifest goes (`Manifest.Remove`), then its layers that no
        other manifest uses (`RemoveLayers`). Blobs that were never layers (uploads, an F16
        intermediate) stay until the server restarts (`PruneLayers`, blobs unused for an
        hour; `server/images.go`)."""
        name = full_name(body.get("model") or body.get("name") or "")
        with self._lock:
            known = self._models.pop(name, None)
            layers = self._manifests.pop(name, [])
            self._created.pop(name, None)
            self._unload(name)
        if known is None:
            h.send_json(404, {"error": f"model '{body.get('model') or body.get('name')}' "
                                       "not found"})
            return
        self._remove_layers(layers)
        h.send_empty(200)

    # -- pull ------------------------------------------------------------------------------
    def _pull(self, h: _Handler, body: dict[str, Any]) -> None:
        name = full_name(body.get("model") or body.get("name") or "")
        with self._lock:
            digest = self._models.get(name) or self._pullable.get(name)
        stream = body.get("stream", True)
        if digest is None:
            if stream:
                h.send_ndjson([{"status": "pulling manifest"}, {"error": UNPULLABLE_ERROR}])
            else:
                h.send_json(500, {"error": UNPULLABLE_ERROR})
            return
        lines = list(self._pull_progress(name, digest))
        if stream:
            h.send_ndjson(lines)
        else:
            h.send_json(200, lines[-1])

    def _pull_progress(self, name: str, digest: str) -> Iterator[dict[str, Any]]:
        yield {"status": "pulling manifest"}
        for layer, total in ((digest, 4_000_000), (fake_digest(digest), 12_000)):
            layer_digest = f"sha256:{layer}"
            for completed in (0, total // 4, total // 2, total):
                yield {
                    "status": f"pulling {layer[:12]}",
                    "digest": layer_digest,
                    "total": total,
                    "completed": completed,
                }
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        with self._lock:
            self._models[name] = digest
        yield {"status": "success"}

    # -- chat ------------------------------------------------------------------------------
    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            item = self._script.pop(0) if self._script else self._default
        return item(body) if callable(item) else item

    def _chat(self, h: _Handler, body: dict[str, Any]) -> None:
        model = body.get("model") or ""
        if self._lookup(model) is None:
            h.send_json(404, {"error": f"model '{model}' not found"})
            return
        if isinstance(body.get("format"), dict) and _older_than(self.version, (0, 5)):
            # Before structured outputs, `format` was a string: Go's JSON decoding says so.
            h.send_json(400, {"error": "json: cannot unmarshal object into Go struct field "
                                       "ChatRequest.format of type string"})
            return
        name, keep_alive = full_name(model), body.get("keep_alive")
        if not body.get("messages") and _seconds(keep_alive) == 0:  # ChatHandler: unload
            with self._lock:
                self._unload(name)
            h.send_json(200, _chat_done(model, "unload"))
            return
        if body.get("think") is True and not self.can_think(model) \
                and not _older_than(self.version, THINK_SINCE):  # ChatHandler, before loading
            h.send_json(400, {"error": f"{json.dumps(model)} does not support thinking"})
            return
        options = body.get("options") or {}
        if problem := _options_problem(options):  # scheduleRunner, modelOptions: a 500
            h.send_json(500, {"error": problem})  # (routes.go, handleScheduleError's default)
            return
        runner = self._load(name, options, keep_alive)
        with self._lock:
            runner.busy += 1
        try:
            self._serve(h, body, model, runner)
        finally:
            with self._idle:  # its keep_alive counts from the end of its last request
                runner.busy -= 1
                runner.expires_at = _expiry(runner.keep_alive, self.now())
                self._idle.notify_all()

    def _serve(self, h: _Handler, body: dict[str, Any], model: str, runner: _Runner) -> None:
        """A loaded model's answer to a chat request."""
        options = body.get("options") or {}
        if not body.get("messages"):  # ChatHandler: load the model, generate nothing
            h.send_json(200, _chat_done(model, "load"))
            return
        if problem := _format_problem(body.get("format")):  # llm/server.go, Completion
            if body.get("stream", True):
                h.send_ndjson([{"error": problem}])  # ChatHandler: the error ends the stream
            else:
                h.send_json(500, {"error": problem})
            return
        scripted, fmt = self._next_reply(body), body.get("format")
        if scripted is self._default and _breaks_format(scripted, fmt):
            # A plain default stands for whatever the model writes; under a grammar, that is
            # an instance of it (a test that cares scripts the reply).
            scripted = replace(scripted, content=json.dumps(_grammar_instance(fmt)))
        if problem := _breaks_format(scripted, fmt):
            with self._lock:
                self.script_errors.append(problem)
            h.send_json(500, {"error": f"FakeOllama: {problem}"})
            return
        reply = self._as_thought(scripted, model, body.get("think"))
        if not reply.ignores_num_predict:
            reply = _at_num_predict(reply, options.get("num_predict"), runner.num_ctx)
        if reply.prompt_eval_count is None:
            reply = replace(reply, prompt_eval_count=_kept_prompt_tokens(
                body.get("messages") or [], runner.num_ctx))
        if reply.delay > 0 and self._closing.wait(reply.delay):
            h.close_connection = True
            return
        stream = body.get("stream", True)
        if reply.status >= 400 or (reply.error and not stream):
            status = reply.status if reply.status >= 400 else 500
            h.send_json(status, {"error": reply.error or f"fake server error {status}"})
            return
        with runner.slots:  # beyond OLLAMA_NUM_PARALLEL, a request waits for a slot
            chunks = self._paced(_chat_stream(model, body, reply), body)
            if stream:
                h.send_ndjson(chunks)
                return
            *_, final = chunks
            final["message"] = _chat_chunk(model, reply.content, True, reply.thinking)["message"]
            h.send_json(200, final)

    def _as_thought(self, reply: Reply, model: str, think: Any) -> Reply:
        """The scripted reply as the server sends it (server/routes.go, ChatHandler): its trace
        apart in `thinking` when the model thinks (`think` true, or absent since 0.12.4); in
        the content between <think> tags when `think` is absent before 0.12.4 (the template
        lets the model think, the server does not parse it), and so before 0.9.0 whatever
        `think` says; none when the model cannot think or `think` is false."""
        if not reply.thinking or not self.spec(model).thinking:
            return replace(reply, thinking="")
        inline = replace(reply, thinking="",
                         content=f"<think>{reply.thinking}</think>\n{reply.content}")
        if _older_than(self.version, THINK_SINCE):  # `think` unknown: the template decides
            return inline
        if think is False:
            return replace(reply, thinking="")
        if think is None and _older_than(self.version, THINK_BY_DEFAULT_SINCE):
            return inline
        return reply

    def _paced(self, chunks: Iterator[dict[str, Any]], body: dict[str, Any]
               ) -> Iterator[dict[str, Any]]:
        """The reply's chunks at the pace of `throughput`: the prompt first, then each chunk's
        tokens at the rate the streams decoding at once leave it."""
        if self.throughput is None:
            yield from chunks
            return
        if self._closing.wait(_estimate_prompt_tokens(body) / self.throughput.prompt):
            return
        with self._lock:
            self._decoding += 1
            self.most_decoding = max(self.most_decoding, self._decoding)
        try:
            for chunk in chunks:
                message = chunk.get("message") or {}
                chars = len(message.get("content") or "") + len(message.get("thinking") or "")
                with self._lock:
                    rate = self.throughput.rate(self._decoding)
                if chars and self._closing.wait(chars / CHARS_PER_TOKEN / rate):
                    return
                yield chunk
        finally:
            with self._lock:
                self._decoding -= 1


def _format_problem(fmt: Any) -> str | None:
    """llm/server.go, `Completion`: `format` is absent, "json", or a JSON schema object that
    llama.cpp turns into a grammar (`SchemaToGrammar`; jsonschema's own check of the schema
    stands for it here); anything else fails the completion."""
    if fmt in (None, "", "json"):
        return None
    if not isinstance(fmt, dict):
        raw = json.dumps(fmt)
        return f'invalid format: {json.dumps(raw)}; expected "json" or a valid JSON Schema object'
    try:
        jsonschema.validators.validator_for(fmt).check_schema(fmt)
    except jsonschema.SchemaError:
        return "invalid JSON schema in format"
    return None


def _breaks_format(reply: Reply, fmt: Any) -> str | None:
    """Why the server could not have generated the scripted reply under `format`, or None.
    llm/server.go, `Completion`: "json" sets the grammar `grammarJSON` (`root ::= object`), a
    schema the grammar `llama.SchemaToGrammar` makes of it; llama.cpp samples only tokens the
    grammar allows, so every finished reply is a JSON object, conforming to the schema. A
    reply is cut short only by num_predict (done_reason "length", _at_num_predict, applied
    after this check): script the whole reply the model would write, and num_predict cuts it.
    Error replies are not checked."""
    if fmt in (None, "") or reply.status >= 400 or reply.error:
        return None
    if reply.done_reason != "stop":
        return (f"a reply scripted with done_reason {reply.done_reason!r} under a format: "
                "script the whole reply and let num_predict cut it")
    try:
        value = json.loads(reply.content)
    except ValueError:
        return f"scripted reply is not the JSON the format's grammar allows: {reply.content!r:.80}"
    if not isinstance(value, dict):
        return f"scripted reply is JSON but not an object (grammarJSON's root): {value!r:.80}"
    if isinstance(fmt, dict):
        try:
            jsonschema.validate(value, fmt)
        except jsonschema.ValidationError as exc:
            return f"scripted reply breaks the format schema: {exc.message:.120}"
    return None


def _grammar_instance(fmt: Any) -> Any:
    """A small value the grammar of `fmt` allows: "json" an empty object; a schema its
    required properties (all when none are), each a value of its own schema, strings their
    property's name cut to maxLength."""
    if not isinstance(fmt, dict):
        return {}
    return _instance(fmt, "value")


def _instance(schema: dict[str, Any], name: str) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if kind == "object":
        properties = schema.get("properties") or {}
        keys = schema.get("required") or list(properties)
        return {key: _instance(properties.get(key) or {"type": "string"}, key) for key in keys}
    defaults = {"string": name[:schema.get("maxLength", len(name))], "integer": 0,
                "number": 0, "boolean": False, "array": [], "null": None}
    return defaults.get(kind, {})


def _valid_path(name: str) -> bool:
    """Go's fs.ValidPath: unrooted, slash-separated, no empty, "." or ".." element."""
    return name == "." or (bool(name) and all(part not in ("", ".", "..")
                                              for part in name.split("/")))


def _options_problem(options: dict[str, Any]) -> str | None:
    """api/types.go, `Options.FromMap`: the error for the first option of the wrong JSON type
    (unknown keys are ignored, null values skipped)."""
    for key, value in options.items():
        kind = OPTION_TYPES.get(key)
        if kind is None or value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {"integer": number, "float32": number, "boolean": isinstance(value, bool),
              "array": isinstance(value, list)}[kind]
        if not ok:
            return f"option {json.dumps(key)} must be of type {kind}"
        if kind == "array" and not all(isinstance(item, str) for item in value):
            return f"option {json.dumps(key)} must be of an array of strings"
    return None


def _at_num_predict(reply: Reply, num_predict: Any, num_ctx: int) -> Reply:
    """The reply as the runner ends it: after num_predict tokens, its trace's included, with
    done_reason "length" (runner/ollamarunner/runner.go, `processBatch`: numPredicted >=
    numPredict removes the sequence with DoneReasonLength). num_predict absent or negative, or
    above 10 x num_ctx, is 10 x num_ctx (llm/server.go, `Completion`)."""
    limit = num_predict if isinstance(num_predict, int | float) else -1
    limit = int(10 * num_ctx if limit < 0 or limit > 10 * num_ctx else limit)
    thoughts, tokens = _tokens(reply.thinking), _tokens(reply.content)
    if len(thoughts) + len(tokens) <= limit:
        return reply
    kept = tokens[:max(0, limit - len(thoughts))]
    return replace(reply, thinking="".join(thoughts[:limit]), content="".join(kept),
                   done_reason="length")


def _kept_prompt_tokens(messages: list[dict[str, Any]], num_ctx: int) -> int:
    """The prompt tokens the runner evaluates (prompt_eval_count) at this num_ctx.
    server/prompt.go, `chatPrompt`: from the last message back, the earlier messages are kept
    while they fit, with every system message before them and the last message always; then
    runner/ollamarunner/runner.go, `NewSequence`: a prompt still longer than num_ctx keeps its
    first NUM_KEEP tokens and its last ones, num_ctx in all. A message is its characters / 4
    tokens here."""
    sizes = [len(str(m.get("content") or "")) // CHARS_PER_TOKEN for m in messages]
    if not sizes:
        return 0
    start = len(sizes) - 1
    for i in range(len(sizes) - 2, -1, -1):
        system = sum(n for m, n in zip(messages[:i], sizes, strict=False)
                     if m.get("role") == "system")
        if system + sum(sizes[i:]) > num_ctx:
            break
        start = i
    kept = sum(n for m, n in zip(messages[:start], sizes, strict=False)
               if m.get("role") == "system") + sum(sizes[start:])
    return min(kept, num_ctx)


def _older_than(version: str, than: tuple[int, ...]) -> bool:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:len(than)]) < than


def _estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(len(str(m.get("content") or "")) for m in messages) // 4


def _seconds(keep_alive: Any) -> float | None:
    """keep_alive in seconds as Ollama reads it (a number of seconds, or a Go duration such as
    "30m"); negative: forever; None: not given (the server's default)."""
    if keep_alive is None:
        return None
    if isinstance(keep_alive, int | float):
        return float(keep_alive)
    text = str(keep_alive).strip()
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+\.?\d*)(ns|us|ms|s|m|h)",
                                                            text))
    if not seconds and text.lstrip("-").replace(".", "", 1).isdigit():
        seconds = abs(float(text))
    return -seconds if text.startswith("-") else seconds


def _expiry(keep_alive: Any, now: datetime) -> datetime:
    """When a runner given this keep_alive expires (5 minutes by default; far off: forever)."""
    seconds = _seconds(keep_alive)
    seconds = 300.0 if seconds is None else seconds
    return now + timedelta(days=36500 if seconds < 0 else 0,
                                         seconds=max(0.0, seconds))


def _chat_done(model: str, reason: str) -> dict[str, Any]:
    """The answer to a chat request with no messages: the model was loaded or unloaded."""
    done = _chat_chunk(model, "", True)
    done["done_reason"] = reason
    return done


def _chat_chunk(model: str, content: str, done: bool, thinking: str = "") -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return {"model": model, "created_at": MODIFIED_AT, "message": message, "done": done}


def _chat_final(model: str, body: dict[str, Any], reply: Reply, eval_count: int) -> dict[str, Any]:
    prompt_tokens = reply.prompt_eval_count
    if prompt_tokens is None:
        prompt_tokens = _estimate_prompt_tokens(body)
    final = _chat_chunk(model, "", True)
    final.update(
        done_reason=reply.done_reason,
        total_duration=1_500_000_000,
        load_duration=100_000_000,
        prompt_eval_count=prompt_tokens,
        prompt_eval_duration=200_000_000,
        eval_count=eval_count,
        eval_duration=1_200_000_000,
    )
    return final


def _chat_stream(model: str, body: dict[str, Any], reply: Reply) -> Iterator[dict[str, Any]]:
    thoughts = _tokens(reply.thinking)
    for token in thoughts:
        yield _chat_chunk(model, "", False, thinking=token)
    tokens = _tokens(reply.content)
    for token in tokens:
        yield _chat_chunk(model, token, False)
    if reply.error:
        yield {"error": reply.error}
        return
    yield _chat_final(model, body, reply, len(thoughts) + len(tokens))


def _tag_entry(name: str, digest: str, spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": MODIFIED_AT,
        "size": spec.file_size,
        "digest": digest,
        "details": _details(spec),
    }


def _details(spec: ModelSpec) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": "Q4_K_M",
    }


def _modelfile_parameters(params: dict[str, Any]) -> str:
    """Parameters as /api/show gives them: Modelfile lines, one per value, strings quoted."""
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            text = json.dumps(item) if isinstance(item, str) else str(item).lower() \
                if isinstance(item, bool) else str(item)
            lines.append(f"{key:<30} {text}")
    return "\n".join(lines)


def _show_body(name: str, spec: ModelSpec, thinks: bool) -> dict[str, Any]:
    arch = spec.architecture
    return {
        "license": "Apache License 2.0",
        "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {name}\n",
        "parameters": SHOW_PARAMETERS,
        "template": SHOW_TEMPLATE,
        "details": _details(spec),
        "model_info": {  # GGUF metadata, as llama.cpp's converters write it
            "general.architecture": arch,
            "general.parameter_count": 7_615_616_512,
            f"{arch}.block_count": spec.block_count,
            f"{arch}.context_length": spec.context_length,
            f"{arch}.embedding_length": spec.embedding_length,
            f"{arch}.attention.head_count": spec.head_count,
            f"{arch}.attention.head_count_kv": spec.head_count_kv,
        },
        "capabilities": ["completion", "tools", *(["thinking"] if thinks else [])],
        "modified_at": MODIFIED_AT,
    }
