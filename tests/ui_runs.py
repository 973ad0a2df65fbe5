"""Run directories written directly, in the journal's format, for the UI tests: a hostile run
whose code, error text and LLM replies try to run script in the page, and a two-chain run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests import replies

HOSTILE_NAME = "hostile <img src=x onerror=alert(1)>"  # a directory name has no slash
HOSTILE = ('<script>alert(1)</script> <img src=x onerror=alert(1)> '
           '<a href="javascript:alert(1)">click</a> <img src="http://example.invalid/x"> '
           '"\'><svg onload=alert(1)>')


def record(iteration: int, status: str, accuracy: float | None, best: tuple[float | None, int |
           None], chain: int = 0, prefix: str = "", text: str = "", t0: float = 0.0) -> dict:
    name = f"{prefix}iter_{iteration:04d}"
    return {
        "iteration": iteration, "chain": chain, "status": status, "accuracy": accuracy,
        "test_accuracy": accuracy,
        "error": None if status == "ok" else {"type": status, "message": f"failed {text}",
                                              "traceback": f"Traceback:\n  {text}"},
        "phase": None if status == "ok" else "train",
        "code_file": f"{name}.py", "reply_file": f"{name}.reply.md",
        "triple": {"problem": f"problem {text}", "suggestion": f"idea {text}",
                   "outcome": f"outcome {text}"},
        "suggestions": {"reason": f"reason {text}", "inspiration": f"inspired {text}",
                        "suggestions": [f"widen {text}", "add batch norm"]},
        "improver_error": None, "novelty": None,
        "llm": {"generator": {"model": "coder:test", "seed": 1, "prompt_tokens": 900,
                              "completion_tokens": 300, "seconds": 2.5},
                "improver": {"model": "improver:test", "seed": 1, "prompt_tokens": 700,
                             "completion_tokens": 90, "seconds": 1.2}},
        "llm_calls": 2 * iteration,
        "timings": {"generate": 2.5, "evaluate": 20.0, "improve": 1.2},
        "best_accuracy": best[0], "best_iteration": best[1],
        "metrics": {"params": 120_000 + 1000 * iteration, "flops": 3_400_000 * iteration},
        "prompts": {"generator": [{"role": "system", "content": f"You write PyTorch. {text}"},
                                  {"role": "user", "content": f"Improve this {text}"}],
                    "improver": [{"role": "user", "content": f"Diagnose {text}"}]},
        "time": t0 + 60 * iteration,
    }


def write_run(root: Path, name: str, records: list[dict], codes: dict[str, str],
              finished: bool = True, parallel: int = 1) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "name": name, "dataset": "fashionmnist", "generator_model": "coder:test",
        "improver_model": "improver:test",
        "iterations": len(records) // parallel + (0 if finished else 5),
        "parallel": parallel}))
    for rec in records:
        (run / rec["code_file"]).write_text(codes[rec["code_file"]])
        (run / rec["reply_file"]).write_text(f"Here is the net {HOSTILE}\n```python\n"
                                             f"{codes[rec['code_file']]}```\n")
    (run / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text("{}")  # the journal rewrites it after every iteration
    return run


def hostile_run(root: Path) -> Path:
    """Three iterations whose every text field carries HOSTILE; the second fails."""
    t0 = time.time() - 3600
    recs = [record(1, "ok", 0.61, (0.61, 1), text=HOSTILE, t0=t0),
            record(2, "runtime_error", None, (0.61, 1), text=HOSTILE, t0=t0),
            record(3, "ok", 0.70, (0.70, 3), text=HOSTILE, t0=t0)]
    code = replies.VALID_NET + f"\n# {HOSTILE}\nBANNER = '{HOSTILE}'\n"
    codes = {r["code_file"]: code.replace("64", str(60 + i)) for i, r in enumerate(recs)}
    return write_run(root, HOSTILE_NAME, recs, codes)


def parallel_run(root: Path) -> Path:
    """Two chains of four iterations each."""
    t0 = time.time() - 7200
    recs = []
    for chain, accs in ((0, [0.55, None, 0.72, 0.74]), (1, [0.40, 0.66, None, 0.69])):
        best: tuple[float | None, int | None] = (None, None)
        for i, acc in enumerate(accs, start=1):
            if acc is not None and (best[0] is None or acc > best[0]):
                best = (acc, i)
            status = "ok" if acc is not None else ("shape_error" if chain == 0 else "timeout")
            recs.append(record(i, status, acc, best, chain=chain, prefix=f"c{chain}_", t0=t0))
    codes = {r["code_file"]: replies.VALID_NET for r in recs}
    return write_run(root, "parallel", recs, codes, parallel=2)


FAILURES = ("shape_error", "timeout", "runtime_error")


def synthetic_record(iteration: int, chain: int = 0, pad: int = 0, t0: float = 0.0) -> dict:
    """A design of a long run, deterministic in `iteration`: about one in three fails, by one of
    FAILURES; `pad` characters of prompt text make it as long as a real record."""
    step = (iteration * 7 + chain * 3) % 10
    status = "ok" if step > 2 else FAILURES[step]
    acc = round(0.5 + 0.4 * (iteration % 97) / 97, 4) if status == "ok" else None
    rec = record(iteration, status, acc, (acc, iteration), chain=chain, prefix=f"c{chain}_",
                 text="x" * pad, t0=t0)
    rec["reply_file"] = None  # no files: a long run's pages are what is measured
    return rec


def synthetic_run(root: Path, name: str, iterations: int, chains: int = 1, planned: int | None
                  = None, pad: int = 0) -> Path:
    """A run of `iterations` designs per chain (of `planned`, default as many) written as the
    journal writes it, without code files."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "name": name, "dataset": "fashionmnist", "generator_model": "coder:test",
        "improver_model": "improver:test", "iterations": planned or iterations,
        "parallel": chains}))
    t0 = time.time() - 60 * iterations
    with (run / "iterations.jsonl").open("w") as f:
        for i in range(1, iterations + 1):
            for chain in range(chains):
                f.write(json.dumps(synthetic_record(i, chain, pad, t0)) + "\n")
    (run / "summary.json").write_text("{}")
    return run


def table(data: dict) -> list[dict]:
    """The table rows of a run's JSON (`/api/runs/<name>`) as objects: it sends them as lists
    of its `columns`."""
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
