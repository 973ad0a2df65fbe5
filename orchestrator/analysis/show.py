"""`orchestrator show`: one iteration of a run as plain text (outcome, error, triple,
suggestions, code and prompts)."""

from __future__ import annotations

import json

from orchestrator.analysis import stats
from orchestrator.analysis.format import pct
from orchestrator.store.records import accuracy_of, record_chain
from orchestrator.store.run import Run


def _block(title: str, body: object) -> list[str]:
    if body is None or body == "" or body == {} or body == []:
        return []
    if isinstance(body, str):
        text = body
    elif isinstance(body, list):
        text = "\n".join(f"- {item}" for item in body)
    else:
        text = json.dumps(body, indent=2, ensure_ascii=False, default=str)
    return [f"--- {title} ---", text.rstrip(), ""]


def _fields(d: object, keys: tuple[str, ...]) -> list[str]:
    if not isinstance(d, dict):
        return [] if d is None else [str(d)]
    return [f"{k}: {_block_text(d.get(k))}" for k in keys if d.get(k) not in (None, "", [])]


def _block_text(v: object) -> str:
    if isinstance(v, list):
        return "\n" + "\n".join(f"  - {item}" for item in v)
    return str(v)


def _prompt_text(prompt: object) -> object:
    """Chat messages as `[role]` blocks; anything else unchanged."""
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return "\n\n".join(f"[{m.get('role')}]\n{m.get('content')}" for m in prompt)
    return prompt


def render_show(run: Run, iteration: int, chain: int | None = None, prompts: bool = True) -> str:
    """One iteration as plain text: outcome, error, triple, suggestions, code and prompts."""
    rec = run.record(iteration, chain)
    acc = accuracy_of(rec)
    head = [
        f"=== {run.name} · iteration {iteration} (chain {record_chain(rec)}) · {run.dataset} ===",
        f"status: {rec.get('status')}"
        + (f" (phase {rec['phase']})" if rec.get("phase") else "")
        + f"   accuracy: {pct(acc, 2)}",
    ]
    if isinstance(rec.get("best_accuracy"), (int, float)):
        head[-1] += (f"   best so far: {pct(rec['best_accuracy'], 2)} "
                     f"(iteration {rec.get('best_iteration')})")
    if isinstance(rec.get("novelty"), dict):
        nov = rec["novelty"]
        head.append(f"novelty: max similarity {nov.get('max_similarity')} "
                    f"(nearest iteration {nov.get('nearest_iteration')})")
    for name in ("metrics", "timings"):
        if isinstance(rec.get(name), dict) and rec[name]:
            head.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in rec[name].items()))
    llm = rec.get("llm") if isinstance(rec.get("llm"), dict) else {}
    for role, call in llm.items():
        if isinstance(call, dict):
            head.append(f"{role}: {call.get('model')} seed={call.get('seed')} "
                        f"tokens={call.get('prompt_tokens')}+{call.get('completion_tokens')} "
                        f"{call.get('seconds')} s")
    lines = [*head, ""]
    err = rec.get("error")
    if isinstance(err, dict):
        lines += _block("error", "\n".join(
            [f"{err.get('type')}: {err.get('message')}", str(err.get("traceback") or "")]))
    else:
        lines += _block("error", err)
    lines += _block("improver error", rec.get("improver_error"))
    lines += _block("triple", "\n".join(_fields(rec.get("triple"),
                                                ("problem", "suggestion", "outcome"))))
    lines += _block("suggestions", "\n".join(
        _fields(rec.get("suggestions"), ("reason", "inspiration", "suggestions"))))
    code = run.code(rec)
    lines += _block(f"code ({rec.get('code_file')})",
                    code if code is not None else "(no candidate file)")
    if rec.get("reply_file"):
        lines += [f"raw LLM reply: {run.path / str(rec['reply_file'])}", ""]
    ps = rec.get("prompts") if isinstance(rec.get("prompts"), dict) else {}
    if prompts:
        for role in stats.ROLES:
            lines += _block(f"{role} prompt", _prompt_text(ps.get(role)))
    return "\n".join(lines).rstrip() + "\n"
