"""Reports (markdown, PNG, self-contained HTML, show) and exports (best module, corpus)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import stats as sps

from orchestrator.analysis import export, report, show
from orchestrator.finetune import corpus
from orchestrator.store.run import read_run
from tests.helpers import rank_p_by_enumeration

HOSTILE = "<script>alert(1)</script>"

NET_CNN = """import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))
"""

NET_MLP = """import torch.nn as nn


class Net(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.GELU(),
                                  nn.Dropout(0.1), nn.Linear(hidden, hidden), nn.GELU(),
                                  nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)
"""

# iteration -> (status, accuracy, code)
MIXED = {
    1: ("ok", 0.30, NET_MLP),
    2: ("syntax_error", None, "def broken(:"),
    3: ("ok", 0.35, NET_MLP.replace("0.1", "0.2")),
    4: ("runtime_error", None, NET_CNN.replace("32, 10", "31, 10")),
    5: ("ok", 0.52, NET_CNN),
    6: ("timeout", None, NET_CNN),
    7: ("ok", 0.45, '"""Same net."""\n' + NET_CNN.replace("\n\n\nclass", "\n# v2\nclass")),
}


def record(it: int, status: str, acc: float | None, **extra) -> dict:
    err = None if status == "ok" else {"type": "RuntimeError", "message": f"{HOSTILE} at {it}",
                                       "traceback": "Traceback ...\nRuntimeError"}
    base = {
        "iteration": it, "status": status, "accuracy": acc, "error": err,
        "code_file": f"candidates/iter_{it:04d}.py",
        "triple": {"problem": "too shallow", "suggestion": "add a block", "outcome": str(acc)},
        "suggestions": {"reason": "r", "inspiration": "biology",
                        "suggestions": ["widen", "add BN"]},
        "llm": {role: {"model": f"{role}-7b", "seed": 42 + 2 * it, "prompt_tokens": 900,
                       "completion_tokens": 300, "seconds": 3.0} for role in ("generator",
                                                                              "improver")},
        "timings": {"generate": 3.0, "evaluate": 20.0 if status != "timeout" else 60.0,
                    "improve": 3.0},
        "best_accuracy": None, "best_iteration": None,
        "metrics": {"params": 5000 + it, "train_seconds": 15.0} if status == "ok" else {},
        "prompts": {"generator": [{"role": "system", "content": "You are an architect."},
                                  {"role": "user", "content": f"Design a CIFAR-10 net ({it})"}],
                    "improver": [{"role": "user", "content": "Improve it"}]},
        "time": 1_790_000_000.0 + 60 * it,
    }
    base.update(extra)
    return base


def write_run(root: Path, name: str, spec: dict, dataset: str = "cifar10") -> Path:
    """A finished-looking run directory built from {iteration: (status, accuracy, code)}."""
    run = root / name
    (run / "candidates").mkdir(parents=True)
    config = {"name": name, "dataset": dataset, "generator_model": "gen-7b",
              "improver_model": "imp-7b", "seed": 42, "iterations": len(spec)}
    (run / "config.json").write_text(json.dumps(config))
    lines = []
    for it, (status, acc, code) in spec.items():
        (run / f"candidates/iter_{it:04d}.py").write_text(code)
        lines.append(json.dumps(record(it, status, acc)) + "\n")
    (run / "iterations.jsonl").write_text("".join(lines))
    return run


@pytest.fixture()
def mixed(tmp_path: Path):
    return read_run(write_run(tmp_path, "mixed", MIXED))


def test_report_markdown_has_table2_values(mixed, tmp_path: Path) -> None:
    rep = report.build_report([mixed], window=4)
    md = (mixed.path / "report.md").read_text()
    assert md == rep.markdown
    xs, ys = [1, 3, 5, 7], [0.30, 0.35, 0.52, 0.45]
    rho, tau = sps.spearmanr(xs, ys), sps.kendalltau(xs, ys)
    exact = rank_p_by_enumeration(xs, ys)  # four successes: the p of every order
    for row in ["| Iterations (evaluated designs) | 7 |", "| Successful evaluations | 4 |",
                "| Success rate | 57.1% |", "| First accuracy | 30.0% |",
                "| Best accuracy | 52.0% (it. 5) |", "| Improvement | +22.0 pp |",
                f"| Spearman ρ | {rho.statistic:.3f} |", f"| Kendall τ | {tau.statistic:.3f} |",
                f"| Spearman p | {exact['spearman_p']:.3f} |", "| 1–4 | 4 | 2 | 50.0% [",
                "| 5–7 | 3 | 2 |", "| syntax_error | 1 (14.3%) |"]:
        assert row in md, row
    assert HOSTILE not in md
    assert "Where the time went" in md and "evaluate took most of the time" in md


def test_attempts_lost_to_faults_are_listed_apart_and_counted_nowhere(tmp_path: Path) -> None:
    """The server died during iteration 3 twice and a sandbox broke at iteration 6: those
    attempts were tried again. Table 2, the windows and the failure shares are those of the
    seven designs alone; the lost attempts stand apart, with their last error."""
    run_dir = write_run(tmp_path, "outage", MIXED)
    designs = (run_dir / "iterations.jsonl").read_text().splitlines(keepends=True)
    lost = [json.dumps(record(it, cls, None, attempt=k, code_file=None)) + "\n"
            for it, cls, k in ((3, "llm_error", 1), (3, "llm_error", 2), (6, "sandbox_error", 1))]
    ordered_lines = designs[:2] + lost[:2] + designs[2:5] + lost[2:] + designs[5:]
    (run_dir / "iterations.jsonl").write_text("".join(ordered_lines))
    run = read_run(run_dir)

    metrics = report.run_metrics(run, window=4)
    assert metrics["table2"] == report.run_metrics(read_run(write_run(
        tmp_path, "same", MIXED)), window=4)["table2"] | {"lost": {"llm_error": 2,
                                                                  "sandbox_error": 1}}
    assert [w["n"] for w in metrics["windows"]] == [4, 3]
    assert "llm_error" not in metrics["failures"]
    md = report.build_report([run], window=4).markdown
    for row in ["| Iterations (evaluated designs) | 7 |", "| Success rate | 57.1% |",
                "| Attempts lost to faults (not counted) | 2 llm_error, 1 sandbox_error |",
                "| syntax_error | 1 (14.3%) |",
                "| llm_error: lost, tried again (not counted) | 2 |",
                "| sandbox_error: lost, tried again (not counted) | 1 |"]:
        assert row in md, row
    assert run.record(3)["status"] == "ok"  # `show RUN 3` is the design, not a lost attempt


def test_the_prompts_measured_length_stands_beside_the_reserved_num_ctx(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "ctx", {1: ("ok", 0.3, NET_MLP), 2: ("ok", 0.4, NET_CNN)})
    config = json.loads((run_dir / "config.json").read_text())
    config["num_ctx_per_model"] = {"generator-7b:latest": 6144, "improver-7b:latest": 10240}
    (run_dir / "config.json").write_text(json.dumps(config))
    lines = [json.loads(line) for line in (run_dir / "iterations.jsonl").read_text().splitlines()]
    for rec, tokens in zip(lines, (1200, 5000), strict=True):
        rec["llm"]["improver"]["prompt_tokens"] = tokens
    (run_dir / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rep = report.build_report([read_run(run_dir)])
    assert rep.metrics["runs"][0]["prompts"]["improver-7b"] == {
        "num_ctx": 10240, "calls": 2, "median": 3100.0, "p95": 4810.0, "max": 5000,
        "max_with_reply": 5300}
    assert "| ctx | improver-7b | 10,240 | 2 | 3,100 | 4,810 | 5,000 | 5,300 |" in rep.markdown
    assert "| ctx | generator-7b | 6,144 | 2 | 900 | 900 | 900 | 1,200 |" in rep.markdown


def test_trajectory_png_is_real(mixed) -> None:
    rep = report.build_report([mixed])
    img = mpimg.imread(rep.files["png"])
    assert img.shape[:2] == (550, 1000)
    rgb = img[..., :3]
    assert float(np.var(rgb)) > 0 and float(rgb.min()) < 0.5


def test_html_is_self_contained_and_escaped(mixed, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rep = report.build_report([mixed], out_dir=out)
    page = (out / "report.html").read_text()
    assert page == rep.html and (out / "report.md").exists()
    assert '<img alt="accuracy trajectory" src="data:image/png;base64,' in page
    assert "<table>" in page and "<td>Success rate</td><td>57.1%</td>" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")


def test_metrics_are_json_serialisable(mixed) -> None:
    rep = report.build_report([mixed], window=4, write=False)
    data = json.loads(json.dumps(rep.metrics, allow_nan=False))
    run = data["runs"][0]
    assert run["table2"]["successful"] == 4 and run["threshold"] == 0.40
    assert run["failures"] == {"runtime_error": 1, "syntax_error": 1, "timeout": 1}
    assert [w["n"] for w in run["windows"]] == [4, 3]
    assert rep.files == {}


def test_two_runs_overlaid(mixed, tmp_path: Path) -> None:
    other = read_run(write_run(tmp_path, "no-memory", {1: ("ok", 0.2, NET_MLP),
                                                       2: ("oom", None, NET_CNN)}))
    rep = report.build_report([mixed, other, mixed], out_dir=tmp_path / "ablation")
    assert "| Metric | mixed | no-memory | mixed' |" in rep.markdown
    assert "| Iterations (evaluated designs) | 7 | 2 | 7 |" in rep.markdown
    assert "| Spearman ρ | " in rep.markdown and "n/a |" in rep.markdown
    assert mpimg.imread(rep.files["png"]).shape[:2] == (550, 1000)
    assert len(rep.metrics["runs"]) == 3


def test_all_failures_and_empty_run(tmp_path: Path) -> None:
    spec = {1: ("syntax_error", None, "x"), 2: ("llm_error", None, "")}
    bad = read_run(write_run(tmp_path, "bad $x^$ | run", spec))  # mathtext and a pipe
    rep = report.build_report([bad])
    assert "| Metric | bad $x^$ \\| run |" in rep.markdown
    assert "| Success rate | 0.0% |" in rep.markdown and "| First accuracy | n/a |" in rep.markdown
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"name": "empty"}))
    rep = report.build_report([read_run(tmp_path / "empty")])
    assert "| Iterations (evaluated designs) | 0 |" in rep.markdown and rep.files["png"].exists()


def test_render_show(mixed) -> None:
    text = show.render_show(mixed, 4)
    for part in ("iteration 4", "status: runtime_error", HOSTILE, "Traceback", "too shallow",
                 "add a block", "biology", "- widen", "nn.Conv2d(3, 16", "--- generator prompt",
                 "[system]\nYou are an architect.", "[user]\nDesign a CIFAR-10 net (4)",
                 "Improve it"):
        assert part in text, part
    assert "accuracy: 52.00%" in show.render_show(mixed, 5, prompts=False)
    with pytest.raises(KeyError):
        show.render_show(mixed, 99)


def test_render_show_sparse_record(tmp_path: Path) -> None:
    run_dir = tmp_path / "sparse"
    run_dir.mkdir()
    (run_dir / "iterations.jsonl").write_text(json.dumps(
        {"iteration": 1, "status": "llm_error", "accuracy": None, "code_file": None,
         "error": "connection refused", "suggestions": None, "phase": "generate",
         "llm": {"generator": None, "improver": None}}) + "\n")
    text = show.render_show(read_run(run_dir), 1)
    assert "status: llm_error (phase generate)" in text and "connection refused" in text
    assert "(no candidate file)" in text


def test_export_best_imports_and_runs(mixed, tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the venv has it; the host package never imports it
    out = export.export_best(mixed, tmp_path / "exported" / "best_net.py")
    text = out.read_text()
    for part in ("52.00%", "iteration 5", "cifar10", "5,005", "'mixed'", "gen-7b", "imp-7b",
                 "Run started: 2026-", "found: 2026-"):
        assert part in text, part
    probe = (
        "import importlib.util, sys, torch\n"
        f"spec = importlib.util.spec_from_file_location('best_net', {str(out)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "net = mod.Net().eval()\n"
        "print(tuple(net(torch.zeros(2, 3, 32, 32)).shape), mod.EXPORT_INFO['iteration'],"
        " mod.__doc__.splitlines()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("(2, 10) 5 Best architecture of run 'mixed'")


def test_export_best_without_success_fails_clearly(tmp_path: Path) -> None:
    bad = read_run(write_run(tmp_path, "bad", {1: ("syntax_error", None, "x")}))
    with pytest.raises(ValueError, match="no successful candidate"):
        export.export_best(bad, tmp_path / "x.py")


def test_export_corpus_dedups_and_thresholds(mixed, tmp_path: Path) -> None:
    twin = read_run(write_run(tmp_path, "twin", {1: ("ok", 0.60, NET_CNN),
                                                 2: ("ok", 0.70, NET_MLP)}))
    out = tmp_path / "corpus.jsonl"
    count = corpus.export_corpus([mixed, twin], out, threshold=0.40)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(rows) == 2
    # mixed: 5 (NET_CNN, 0.52) accepted; 7 (0.45) is 5 with a docstring and a comment added;
    # 1 and 3 are below threshold; twin: 1 is identical to mixed/5, 2 (NET_MLP, 0.70) is new.
    assert [(r["run"], r["iteration"]) for r in rows] == [("mixed", 5), ("twin", 2)]
    first = rows[0]
    assert first["messages"] == [{"role": "system", "content": "You are an architect."},
                                 {"role": "user", "content": "Design a CIFAR-10 net (5)"},
                                 {"role": "assistant", "content": NET_CNN}]
    assert first["accuracy"] == 0.52 and first["dataset"] == "cifar10"
    assert first["source"] == {"run": "mixed", "dataset": "cifar10", "iteration": 5, "chain": 0,
                               "accuracy": 0.52, "cycle": None}
    assert corpus.export_corpus([mixed], out, threshold=0.9) == 0 and out.read_text() == ""
    # With no threshold: 1, 3 and 5. Iteration 3 differs from 1 in one literal, but in a net this
    # short that changes ~10 of ~100 shingles (Jaccard ~0.8 < tau), so it counts as novel.
    assert corpus.export_corpus([mixed], out, threshold=0.0) == 3


def test_export_corpus_plain_text_prompt(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "txt", {1: ("ok", 0.5, NET_CNN)})
    rec = json.loads((run_dir / "iterations.jsonl").read_text())
    rec["prompts"] = {"generator": "Write a net.", "improver": None}
    (run_dir / "iterations.jsonl").write_text(json.dumps(rec) + "\n")
    out = tmp_path / "c.jsonl"
    assert corpus.export_corpus([read_run(run_dir)], out) == 1
    system, user, _ = json.loads(out.read_text())["messages"]
    assert system == {"role": "system", "content": corpus.default_system()}
    assert user == {"role": "user", "content": "Write a net."}


def test_export_corpus_reconstructs_missing_prompt(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "np", {1: ("ok", 0.9, NET_CNN)}, dataset="svhn")
    rec = json.loads((run_dir / "iterations.jsonl").read_text())
    rec.pop("prompts")
    (run_dir / "iterations.jsonl").write_text(json.dumps(rec) + "\n")
    out = tmp_path / "c.jsonl"
    assert corpus.export_corpus([read_run(run_dir)], out) == 1  # svhn default threshold 0.70
    prompt = json.loads(out.read_text())["messages"][1]["content"]
    assert "svhn" in prompt and "class Net(nn.Module)" in prompt


def test_export_best_header_cannot_inject_code(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "evil", {1: ("ok", 0.5, NET_MLP)})
    config = json.loads((run_dir / "config.json").read_text())
    config["name"] = 'evil"""\nraise SystemExit\n# \\'
    config["generator_model"] = "m\nimport os"
    (run_dir / "config.json").write_text(json.dumps(config))
    out = export.export_best(read_run(run_dir), tmp_path / "evil.py")
    tree = ast.parse(out.read_text())
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds == ["Expr", "Import", "ClassDef", "Assign"]
    assert "raise SystemExit" in ast.get_docstring(tree)


def test_summary_report_show_and_export_name_the_same_best_across_chains(
        tmp_path: Path) -> None:
    """Ties across chains: the best is the tied record committed first (the one best.py holds),
    in summary.json, the report, `show RUN best` and `export --best` alike. The earlier
    definitions chose by (iteration, chain) in the report and export, and disagreed."""
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.store.journal import Journal

    journal = Journal(tmp_path / "ties")
    journal.create({"name": "ties", "dataset": "cifar10", "parallel": 2})
    commits = [(0, 1, 0.50, NET_MLP), (1, 3, 0.80, NET_CNN),  # chain 1 reaches 0.80 first ...
               (0, 2, 0.80, NET_MLP.replace("0.1", "0.3")), (1, 4, 0.70, NET_MLP)]  # ... then 0
    for chain, iteration, acc, code in commits:
        code_file = journal.write_file(f"c{chain}_iter_{iteration:04d}.py", code)
        journal.commit({"iteration": iteration, "chain": chain, "status": "ok", "accuracy": acc,
                        "code_file": code_file}, code)

    summary = json.loads((journal.root / "summary.json").read_text())
    assert (summary["best_iteration"], summary["best_chain"], summary["best_accuracy"]) == (
        3, 1, 0.80)
    assert (journal.root / "best.py").read_text() == NET_CNN

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    table2 = json.loads(cli("report", str(journal.root), "--json"))["runs"][0]["table2"]
    assert (table2["best_iteration"], table2["best_chain"]) == (3, 1)
    assert "80.0% (it. 3, chain 1)" in cli("report", str(journal.root))
    assert "iteration 3 (chain 1)" in cli("show", str(journal.root), "best").splitlines()[0]
    out = tmp_path / "best_net.py"
    cli("export", str(journal.root), "--best", str(out))
    assert NET_CNN.strip() in out.read_text()
    assert "iteration 3, chain 1" in out.read_text()
    assert "iteration 2 (chain 0)" in cli("show", str(journal.root), "2", "--chain", "0")
    wrong = CliRunner().invoke(app, ["show", str(journal.root), "first"])
    assert wrong.exit_code == 2 and "a number or `best`" in wrong.output
