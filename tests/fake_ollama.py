"""A scripted Ollama-API server on loopback, speaking enough of the wire protocol for `ollama`.

Replies to /api/chat come from a script (consumed in order), then from a default. The server
records every request and shuts down promptly even while a delayed handler is waiting.

It also takes model imports as Ollama does: blobs uploaded to /api/blobs/sha256:<hex> (checked
against their digest), then /api/create naming them, which adds the model to its list.

Like Ollama's scheduler (`server/sched.go`, `needsReload`), it counts a model *load* whenever a
chat request asks for a model that is not loaded, or for a loaded model with different runner
options (`RUNNER_OPTIONS`; `num_ctx` above all): on a real server each of those reloads the
weights, seconds for a 7B model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAKE_VERSION = "0.6.5"
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
    thinking: str = ""  # a reasoning model's trace, sent apart from content (Ollama >= 0.9)


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
    ) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._models = _as_digests(models)
        self._pullable = _as_digests(pullable)
        self._script: list[ScriptItem] = list(script)
        self._default: ScriptItem = default if default is not None else EXHAUSTED
        self._requests: list[tuple[str, Any]] = []
        self._runners: dict[str, tuple] = {}  # model -> runner options it is loaded with
        self._loads: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._blobs: dict[str, int] = {}  # digest -> size of the uploaded blobs
        self._uploads: list[str] = []  # digests of the accepted uploads, in order
        self._creates: list[dict[str, Any]] = []  # /api/create bodies, in order
        self._created: dict[str, dict[str, Any]] = {}  # created model -> its create body
        self.version = version
        self.context_length = context_length  # what /api/show says of every model
        self.thinking = thinking  # whether /api/show lists "thinking" among the capabilities
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

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    # -- inspection ------------------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, Any]]:
        """Every request seen so far as (path, json_body), body None for GET."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the /api/chat requests, in arrival order."""
        return [body for path, body in self.requests if path == "/api/chat"]

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

    def blobs(self) -> dict[str, int]:
        """The blobs uploaded so far: 'sha256:<hex>' -> size in bytes."""
        with self._lock:
            return dict(self._blobs)

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
            ("POST", "/api/show"): self._show,
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/create"): self._create,
        }
        route = routes.get((method, h.path))
        if route is None:
            h.send_text(404, "404 page not found")
            return
        route(h, body)

    def _load(self, model: str, options: dict[str, Any]) -> None:
        runner = tuple(options.get(name) for name in RUNNER_OPTIONS)
        with self._lock:
            if self._runners.get(model) != runner:
                self._runners[model] = runner
                self._loads[model] = self._loads.get(model, 0) + 1

    def _lookup(self, name: str) -> str | None:
        with self._lock:
            return self._models.get(full_name(name or ""))

    def _tags(self, h: _Handler, body: Any) -> None:
        h.send_json(200, {"models": [_tag_entry(n, d) for n, d in self.models.items()]})

    def _show(self, h: _Handler, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name") or ""
        if self._lookup(name) is None:
            h.send_json(404, {"error": f"model '{name}' not found"})
            return
        shown = _show_body(full_name(name), self.context_length, self.thinking)
        with self._lock:
            created = self._created.get(full_name(name))
        if created is not None:
            shown["template"] = created.get("template") or shown["template"]
            shown["parameters"] = _modelfile_parameters(created.get("parameters") or {})
        h.send_json(200, shown)

    # -- blobs and create ------------------------------------------------------------------
    def _has_blob(self, h: _Handler, digest: str, body: Any) -> None:
        with self._lock:
            stored = digest in self._blobs
        h.send_empty(200 if stored else 404)

    def _put_blob(self, h: _Handler, digest: str, data: bytes) -> None:
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            h.send_json(400, {"error": "digest mismatch, expected "
                                       f"\"{digest}\", got \"{actual}\""})
            return
        with self._lock:
            self._blobs[digest] = len(data)
            self._uploads.append(digest)
        h.send_empty(201)

    def _create(self, h: _Handler, body: dict[str, Any]) -> None:
        with self._lock:
            self._creates.append(dict(body))
        name = full_name(body.get("model") or "")
        files = body.get("files") or {}
        if not body.get("model") or not (files or body.get("from")):
            h.send_json(400, {"error": "neither 'from' or 'files' was specified"})
            return
        with self._lock:
            missing = [d for d in files.values() if d not in self._blobs]
        if missing:
            h.send_json(400, {"error": f"blob {missing[0]} not found"})
            return
        with self._lock:
            digest = hashlib.sha256(f"{name}#{len(self._creates)}#{sorted(files.items())}"
                                    .encode()).hexdigest()  # fresh for every create
        lines = list(self._create_progress(name, digest, body))
        if body.get("stream", True):
            h.send_ndjson(lines)
        else:
            h.send_json(200, lines[-1])

    def _create_progress(self, name: str, digest: str,
                         body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield {"status": "converting model"}
        quantize = body.get("quantize")
        if quantize:
            total = 12_000_000
            for completed in (0, total // 2, total):
                yield {"status": f"quantizing F16 model to {quantize.upper()}",
                       "digest": "0", "total": total, "completed": completed}
        yield {"status": "using existing layer sha256:" + fake_digest(name)}
        yield {"status": "writing manifest"}
        with self._lock:
            self._models[name] = digest
            self._created[name] = dict(body)
            self._runners.pop(name, None)  # a new model: the next chat loads it
        yield {"status": "success"}

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
        self._load(full_name(model), body.get("options") or {})
        reply = self._next_reply(body)
        if reply.delay > 0 and self._closing.wait(reply.delay):
            h.close_connection = True
            return
        stream = body.get("stream", True)
        if reply.status >= 400 or (reply.error and not stream):
            status = reply.status if reply.status >= 400 else 500
            h.send_json(status, {"error": reply.error or f"fake server error {status}"})
            return
        if stream:
            h.send_ndjson(_chat_stream(model, body, reply))
        else:
            count = len(_tokens(reply.thinking)) + len(_tokens(reply.content))
            final = _chat_final(model, body, reply, count)
            final["message"] = _chat_chunk(model, reply.content, True, reply.thinking)["message"]
            h.send_json(200, final)


def _older_than(version: str, than: tuple[int, int]) -> bool:
    major, minor = (int(x) for x in version.split(".")[:2])
    return (major, minor) < than


def _estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(len(str(m.get("content") or "")) for m in messages) // 4


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
        done_reason="stop",
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


def _tag_entry(name: str, digest: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": MODIFIED_AT,
        "size": 4_683_087_332,
        "digest": digest,
        "details": _details(),
    }


def _details() -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "7.6B",
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


def _show_body(name: str, context_length: int, thinking: bool = False) -> dict[str, Any]:
    return {
        "license": "Apache License 2.0",
        "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {name}\n",
        "parameters": SHOW_PARAMETERS,
        "template": SHOW_TEMPLATE,
        "details": _details(),
        "model_info": {
            "general.architecture": "qwen2",
            "general.parameter_count": 7_615_616_512,
            "qwen2.context_length": context_length,
        },
        "capabilities": ["completion", "tools", *(["thinking"] if thinking else [])],
        "modified_at": MODIFIED_AT,
    }
