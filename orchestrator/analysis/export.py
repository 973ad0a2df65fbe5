"""Exports: the best architecture as a standalone module, and an NNGPT-style corpus.

`export_best` writes the best `Net` with a provenance header. `export_corpus` writes one
chat-format example per accepted architecture (successful, at or above the accuracy threshold,
not a near-duplicate of an earlier accepted one by MinHash-Jaccard), across runs.
"""

from __future__ import annotations

import ast
import json
import math
import os
import pprint
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from orchestrator.analysis import stats
from orchestrator.search.novelty import TAU, NoveltyIndex
from orchestrator.store.records import accuracy_of, best_record, ordered, record_chain
from orchestrator.store.run import BEST_FILE, Run


def _best_code(run: Run, rec: dict | None) -> str:
    code = run.code(rec) if rec else None
    if code is None and (run.path / BEST_FILE).is_file():
        code = (run.path / BEST_FILE).read_text(encoding="utf-8", errors="replace")
    if code is None:
        raise ValueError(f"run {run.name!r} has no successful candidate and no {BEST_FILE}")
    return code


def _provenance(run: Run, rec: dict | None) -> dict:
    summary = run.summary or {}
    rec = rec or {}
    metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    llm = rec.get("llm") if isinstance(rec.get("llm"), dict) else {}

    def model(role: str) -> object:
        call = llm.get(role) if isinstance(llm.get(role), dict) else {}
        return run.config.get(f"{role}_model") or call.get("model")

    return {
        "run": run.name,
        "dataset": run.dataset,
        "iteration": rec.get("iteration", summary.get("best_iteration")),
        "chain": record_chain(rec) if rec else summary.get("best_chain"),
        "accuracy": accuracy_of(rec) if rec else summary.get("best_accuracy"),
        "params": metrics.get("params"),
        "generator_model": model("generator"),
        "improver_model": model("improver"),
        "run_started": run.config.get("started_at") or _iso(_first_time(run.records)),
        "found": _iso(rec.get("time")),
        "exported": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _iso(epoch: object) -> str | None:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
        return None
    try:
        return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _first_time(records: list[dict]) -> object:
    times = [r.get("time") for r in records if isinstance(r.get("time"), (int, float))]
    return min(times, default=None)


def _literal(info: dict) -> dict:
    """Provenance values reduced to what `repr` writes as a valid Python literal."""
    def clean(v: object) -> object:
        if v is None or isinstance(v, (str, int)):
            return v
        return v if isinstance(v, float) and math.isfinite(v) else str(v)

    return {k: clean(v) for k, v in info.items()}


def _header(info: dict, has_docstring: bool) -> str:
    acc = info["accuracy"]
    acc_text = f"{100 * acc:.2f}%" if isinstance(acc, (int, float)) else "unknown"
    params = info["params"]
    lines = [
        f"Best architecture of run {info['run']!r} ({info['dataset']}).",
        f"Accuracy: {acc_text} (one-epoch proxy), iteration {info['iteration']}"
        + (f", chain {info['chain']}" if info["chain"] else "") + ", "
        f"parameters: {f'{params:,}' if isinstance(params, int) else 'unknown'}.",
        f"Models: generator {info['generator_model']}, improver {info['improver_model']}.",
        f"Run started: {info['run_started'] or 'unknown'}; found: {info['found'] or 'unknown'}; "
        f"exported: {info['exported']}.",
    ]
    lines = [" ".join(line.split()) for line in lines]  # journal text cannot break out
    if has_docstring:  # keep the candidate's own docstring first; state provenance in comments
        return "".join(f"# {line}\n" for line in lines)
    body = "\n".join(line.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for line in lines)
    return f'"""{body}\n"""\n'


def export_best(run: Run, out_path: str | Path) -> Path:
    """Write the best `Net` of `run` to `out_path` as an importable module with provenance."""
    rec = best_record(run.records)
    code = _best_code(run, rec)
    info = _provenance(run, rec)
    try:
        has_doc = ast.get_docstring(ast.parse(code)) is not None
    except SyntaxError as exc:
        raise ValueError(f"best code of run {run.name!r} does not parse: {exc}") from exc
    text = _header(info, has_doc) + "\n" + code.rstrip() + "\n\n"
    text += f"EXPORT_INFO = {pprint.pformat(_literal(info), sort_dicts=False)}\n"
    compile(text, str(out_path), "exec")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, text)
    return out


def task_prompt(run: Run) -> str:
    """A task description for a record without a stored generator prompt."""
    cfg = run.config
    shape = cfg.get("input_shape")
    classes = cfg.get("num_classes")
    detail = ""
    if shape:
        detail += f" Inputs are tensors of shape [B, {', '.join(map(str, shape))}]."
    if classes:
        detail += f" The output must be logits of shape [B, {classes}]."
    return (
        f"Write a PyTorch image classifier for the {run.dataset} dataset, trained from scratch "
        f"without pre-trained weights.{detail} Define `class Net(nn.Module)` whose constructor "
        "takes no arguments, with `__init__` and `forward`. Return only the Python code."
    )


def prompt_messages(run: Run, rec: dict) -> list[dict]:
    """The generator's prompt as chat messages: stored text, stored messages, or a task."""
    prompts = rec.get("prompts") if isinstance(rec.get("prompts"), dict) else {}
    prompt = prompts.get("generator")
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):  # the loop stores the chat messages it sent
        msgs = [{"role": m["role"], "content": m["content"]} for m in prompt
                if isinstance(m, dict) and m.get("role") in ("system", "user")
                and isinstance(m.get("content"), str)]
        if any(m["role"] == "user" for m in msgs):
            return msgs
    return [{"role": "user", "content": task_prompt(run)}]


def _example(run: Run, rec: dict, code: str, acc: float) -> dict:
    return {
        "messages": [*prompt_messages(run, rec), {"role": "assistant", "content": code}],
        "accuracy": acc,
        "run": run.name,
        "dataset": run.dataset,
        "iteration": rec.get("iteration"),
    }


def corpus_examples(runs: Iterable[Run], threshold: float | None = None, tau: float = TAU,
                    reference: Iterable[str | Path] = ()) -> list[dict]:
    """Accepted architectures in run then iteration order (see module docstring)."""
    index = NoveltyIndex(tau=tau)
    index.add_corpus(reference)
    examples = []
    for run in runs:
        thr = threshold if threshold is not None else stats.default_threshold(run.dataset)
        for rec in ordered(run.records):
            acc = accuracy_of(rec)
            code = run.code(rec) if acc is not None else None
            if code is None or (thr is not None and acc < thr):
                continue
            sig = index.signature(code)
            if index.is_duplicate(sig):
                continue
            index.add((run.name, str(run.path), rec.get("iteration"), len(examples)), sig)
            examples.append(_example(run, rec, code, acc))
    return examples


def export_corpus(runs: Iterable[Run], out_path: str | Path, threshold: float | None = None,
                  tau: float = TAU, reference: Iterable[str | Path] = ()) -> int:
    """Write the fine-tuning corpus as JSONL; returns the number of examples written.

    `threshold` None uses each run's dataset default (stats.DEFAULT_THRESHOLDS); a dataset
    without a default then accepts every success. `reference` code counts as already accepted.
    """
    examples = corpus_examples(runs, threshold, tau, reference)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))
    return len(examples)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
