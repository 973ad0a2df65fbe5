"""A fine-tuned model into Ollama: as its LoRA adapter over the base model on the server, or as
merged weights.

The adapter route (`publish_adapter`: `adapters` and `from` in /api/create) uploads only the
adapter (MBs) and shares the base's layers; Ollama converts a safetensors adapter only when the
base's architecture is llama or gemma2 (`convert.ConvertAdapter`), not qwen2, the architecture
of the Qwen2.5-Coder generators. The merged route works for every architecture Ollama converts:
`merge` writes the merged weights as bf16 safetensors, the config, and the tokenizer with its
chat template (in tokenizer_config.json, where Ollama's converter reads it); `publish` uploads
each file as a blob (`/api/blobs/sha256:<hex>`, skipped when the server has it) and creates the
model from them, converted to F16 and quantised. Both carry the base model's prompt template
and parameters (from /api/show of `base_tag`).

What a publish leaves on the server (`Published`): the uploaded files, which Ollama keeps until
it restarts (it then prunes blobs no model uses that are over an hour old); for the merged
route also the F16 intermediate of the quantisation, kept likewise, about as big as the bf16
weights; and the model's own layers, which deleting the model frees (`delete_model`). For a 7B
model that is about 30 GB a publish on the merged route until the server restarts, and the
adapter's size (tens to hundreds of MB) on the adapter route.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama

from orchestrator.finetune.train import FinetuneError, base_reference, require_extra
from orchestrator.llm.client import (
    CONNECT_TIMEOUT,
    LLMError,
    ServerUnreachable,
    default_host,
    full_model_name,
    normalize_host,
)
from orchestrator.llm.models import show_progress, transfer_bars
from orchestrator.store.files import sha256_file

MERGED_MARKER = ".merged.json"  # written last into a finished merge; never uploaded
UPLOAD_CHUNK = 1 << 20
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # peft's, as Ollama reads
# convert/convert.go, ConvertAdapter: the base architectures Ollama converts an adapter for
ADAPTER_ARCHITECTURES = ("llama", "gemma2")
# fs/ggml/type.go, ParseFileType: the types /api/create quantises a converted model to (any
# case); the server refuses another only after the upload and the conversion
QUANTIZE_TYPES = ("q4_K_M", "q4_K_S", "q4_K", "q8_0", "f16", "f32")
TRANSFER_TIMEOUT = 3600.0  # one read or write: converting and quantising a 7B model is slow


class PublishError(LLMError):
    """Uploading or creating the model in Ollama failed; the message says why."""


# -- merge -----------------------------------------------------------------------------------
def merge(base: str | Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Merge the LoRA adapter into `base` (a hub id or a folder) and save it into `out_dir`:
    bf16 safetensors, config, generation config, tokenizer with its chat template. Returns
    `out_dir`; does nothing when `out_dir` already holds a finished merge."""
    out_dir = Path(out_dir)
    adapter_dir = Path(adapter_dir)
    if (out_dir / MERGED_MARKER).is_file():
        return out_dir
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FinetuneError(f"{adapter_dir} holds no LoRA adapter (no adapter_config.json)")
    base_ref = base_reference(base)
    require_extra()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(base_ref, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(base_ref)
    except OSError as exc:
        raise FinetuneError(f"cannot load base model {base_ref}: {exc}") from exc
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged = merged.to(torch.bfloat16)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging, save_jinja_files=False)
    (staging / MERGED_MARKER).write_text(
        json.dumps({"base": base_ref, "adapter": str(adapter_dir.resolve())}), encoding="utf-8"
    )
    shutil.rmtree(out_dir, ignore_errors=True)  # a merge from before, cut short
    os.replace(staging, out_dir)
    return out_dir


def model_files(merged_dir: Path) -> list[Path]:
    """The files Ollama imports from a merged folder: every regular file but hidden ones."""
    merged_dir = Path(merged_dir)
    if not (merged_dir / "config.json").is_file():
        raise PublishError(f"{merged_dir} is not a merged model folder (no config.json)")
    files = sorted(p for p in merged_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.suffix == ".safetensors" for p in files):
        raise PublishError(f"{merged_dir} has no .safetensors weights")
    return files


def file_digest(path: Path) -> str:
    """'sha256:<hex>' of a file, the name Ollama gives its blob."""
    return f"sha256:{sha256_file(path)}"


def parse_parameters(text: str | None) -> dict[str, Any]:
    """/api/show's `parameters` (Modelfile lines `name value`) as /api/create's mapping: a
    repeated name (stop) becomes a list, numbers and booleans their values."""
    params: dict[str, Any] = {}
    for line in (text or "").splitlines():
        name, _, raw = line.strip().partition(" ")
        if not name or not raw.strip():
            continue
        value = _parameter_value(raw.strip())
        if name == "stop":
            params.setdefault(name, []).append(str(value))
        else:
            params[name] = value
    return params


def _parameter_value(raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            return json.loads(raw)
        except ValueError:
            return raw[1:-1]
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"[-+]?\d+", raw):
        return int(raw)
    try:
        return float(raw)
    except ValueError:
        return raw


# -- publish ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    """A model created on the server, and what creating it left on the server's disk."""

    digest: str
    route: str  # "adapter" (the LoRA over the base on the server) or "merged" (the weights)
    uploaded: int  # bytes of the files uploaded; Ollama keeps them until it restarts
    layers: int  # bytes of the layers it wrote: the model's own (and an F16 intermediate)

    @property
    def left(self) -> int:
        return self.uploaded + self.layers


def publish(
    host: str | None,
    merged_dir: Path,
    tag: str,
    base_tag: str | None = None,
    quantize: str | None = "q4_K_M",
    progress: bool = True,
) -> Published:
    """Create Ollama model `tag` from the merged folder on the server at `host` (None: the
    default, $OLLAMA_HOST). PublishError when the server cannot be reached, does not know
    `base_tag`, or fails to take a blob or to create the model.

    Left on the server: the uploads, the F16 GGUF it converts them into (kept, like the
    uploads, when it quantises that into the model's layer: `server/create.go`) and the
    model's layers (its /api/tags size)."""
    check_quantize(quantize)
    files = model_files(merged_dir)
    with _Session(host) as session:
        uploaded, digests = session.upload(files, progress)
        request: dict[str, Any] = {"model": tag, "files": digests, "quantize": quantize,
                                   **session.base_settings(base_tag)}
        digest, size = session.create(request, progress)
    f16 = sum(p.stat().st_size for p in files if p.suffix == ".safetensors") if quantize else 0
    return Published(digest, "merged", uploaded, size + f16)


def check_quantize(quantize: str | None) -> None:
    """PublishError unless Ollama quantises to `quantize` (None: no quantisation)."""
    if quantize is not None and quantize.upper() not in {q.upper() for q in QUANTIZE_TYPES}:
        raise PublishError(f"Ollama cannot quantize to {quantize!r}: use one of "
                           f"{', '.join(QUANTIZE_TYPES)} or none")


def publish_adapter(host: str | None, adapter_dir: Path, tag: str, base_tag: str,
                    progress: bool = True) -> Published:
    """Create Ollama model `tag` as the LoRA adapter in `adapter_dir` over `base_tag` (shared
    with it, not copied); `adapter_supported` says whether the server converts it."""
    files = [Path(adapter_dir) / name for name in ADAPTER_FILES]
    with _Session(host) as session:
        uploaded, digests = session.upload(files, progress)
        request = {"model": tag, "from_": base_tag, "adapters": digests,
                   **session.base_settings(base_tag)}
        digest, _ = session.create(request, progress)
    return Published(digest, "adapter", uploaded, files[0].stat().st_size)


def adapter_supported(host: str | None, base_tag: str) -> bool:
    """Whether Ollama converts a safetensors LoRA adapter for `base_tag`'s architecture
    (`convert.ConvertAdapter`: llama and gemma2 only; not qwen2)."""
    with _Session(host) as session:
        shown = session.show(base_tag)
    return (shown.modelinfo or {}).get("general.architecture") in ADAPTER_ARCHITECTURES


def delete_model(host: str | None, tag: str) -> bool:
    """Delete model `tag` from the server (its layers no other model uses go with it); False
    when the server has no such model."""
    with _Session(host) as session:
        try:
            session.client.delete(tag)
        except ollama.ResponseError as exc:
            if exc.status_code == 404:
                return False
            raise PublishError(f"deleting {tag} on {session.host}: {exc.error}") from exc
        except (ConnectionError, httpx.HTTPError) as exc:
            raise _unreachable(session.host, f"deleting {tag}", exc) from exc
    return True


class _Session:
    """The Ollama client and a raw HTTP client (for blob uploads) of one host."""

    def __init__(self, host: str | None) -> None:
        self.host = normalize_host(host) if host else default_host()
        timeout = httpx.Timeout(TRANSFER_TIMEOUT, connect=CONNECT_TIMEOUT)
        self.client = ollama.Client(host=self.host, timeout=timeout)
        self.http = httpx.Client(base_url=self.host, timeout=timeout)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.client.close()

    def show(self, model: str) -> ollama.ShowResponse:
        try:
            return self.client.show(model)
        except ollama.ResponseError as exc:
            raise PublishError(f"the base model {model} is not usable on {self.host} "
                               f"(HTTP {exc.status_code}: {exc.error}); its template and "
                               "parameters are needed") from exc
        except (ConnectionError, httpx.HTTPError) as exc:
            raise _unreachable(self.host, f"showing {model}", exc) from exc

    def base_settings(self, base_tag: str | None) -> dict[str, Any]:
        """The base model's template and parameters, as /api/create takes them."""
        if not base_tag:
            return {}
        shown = self.show(base_tag)
        settings = {"template": shown.template,
                    "parameters": parse_parameters(shown.parameters)}
        return {k: v for k, v in settings.items() if v}

    def upload(self, files: list[Path], progress: bool) -> tuple[int, dict[str, str]]:
        """Upload each file the server lacks; (bytes uploaded, file name -> digest)."""
        sent = {path.name: _upload(self.http, self.host, path, progress) for path in files}
        return sum(n for _, n in sent.values()), {k: d for k, (d, _) in sent.items()}

    def create(self, request: dict[str, Any], progress: bool) -> tuple[str, int]:
        """Create the model; (its digest, its size as /api/tags lists it)."""
        _create(self.client, self.host, request, progress)
        return _listed(self.client, self.host, request["model"])


def _unreachable(host: str, what: str, exc: BaseException) -> PublishError:
    return PublishError(str(ServerUnreachable(host, f"{what}: {type(exc).__name__}")))


def _upload(http: httpx.Client, host: str, path: Path, progress: bool) -> tuple[str, int]:
    """Upload one file as a blob unless the server has it; (its digest, bytes sent)."""
    digest = file_digest(path)
    url = f"/api/blobs/{digest}"
    size = path.stat().st_size
    try:
        if http.head(url).status_code == 200:
            return digest, 0
        with _Bar(progress, path.name, size) as bar:
            response = http.post(url, content=bar.read(path),
                                 headers={"Content-Length": str(size)})
    except httpx.TransportError as exc:
        raise _unreachable(host, f"uploading {path.name}", exc) from exc
    if response.status_code not in (200, 201):
        raise PublishError(f"{host} did not take {path.name} as blob {digest}: "
                           f"HTTP {response.status_code}: {_error_text(response)}")
    return digest, size


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text.strip()


def _create(client: ollama.Client, host: str, request: dict[str, Any], progress: bool) -> None:
    tag = request["model"]
    try:
        last = show_progress(tag, client.create(**request, stream=True), progress)
        if last is None or last.status != "success":
            raise PublishError(f"creating {tag} on {host} ended without success")
    except ollama.ResponseError as exc:
        code = f"HTTP {exc.status_code}" if exc.status_code > 0 else "mid-stream"
        raise PublishError(f"creating {tag} on {host} failed ({code}): {exc.error}") from exc
    except (ConnectionError, httpx.HTTPError) as exc:
        raise _unreachable(host, f"creating {tag}", exc) from exc


def listed_digest(host: str | None, tag: str) -> str | None:
    """The digest of model `tag` on the server at `host`; None when it has no such model."""
    with _Session(host) as session:
        found = _find(session.client, session.host, tag)
    return found[0] if found else None


def _find(client: ollama.Client, host: str, tag: str) -> tuple[str, int] | None:
    try:
        listing = client.list()
    except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
        raise PublishError(f"listing the models on {host}: {exc}") from exc
    return next(((m.digest, m.size or 0) for m in listing.models if m.model and m.digest
                 and full_model_name(m.model) == full_model_name(tag)), None)


def _listed(client: ollama.Client, host: str, tag: str) -> tuple[str, int]:
    found = _find(client, host, tag)
    if found is None:
        raise PublishError(f"{host} reported creating {tag}, but does not list it")
    return found


class _Bar:
    """An upload's progress bar (nothing when not `progress`), fed by `read`."""

    def __init__(self, progress: bool, name: str, size: int) -> None:
        self.bar = transfer_bars() if progress else None
        self.name = name
        self.size = size

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(f"uploading {self.name}", total=self.size)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def read(self, path: Path) -> Iterator[bytes]:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(UPLOAD_CHUNK), b""):
                yield block
                if self.bar is not None:
                    self.bar.advance(self.task, len(block))

