"""`orchestrator retrain` end to end: a real run on Fashion-MNIST, its top designs trained for
longer in the local sandbox, resumed after SIGKILL, and its errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator import outcomes as fc
from orchestrator.search.retrain import code_key, markdown
from tests import replies
from tests.conftest import MODELS
from tests.fake_ollama import FakeOllama
from tests.helpers import rank_p_by_enumeration
from tests.test_search_e2e import DIAGNOSIS, by_role

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "orchestrator"]
NARROW_NET = replies.VALID_NET.replace("16", "8")  # a third distinct, valid design
# Three distinct designs, a failure, and a copy of the first (the same code: one design).
GENERATED = [replies.VALID_NET, replies.SHAPE_MISMATCH_NET, replies.VALID_NET_WIDER,
             NARROW_NET, replies.VALID_NET]


@pytest.fixture(scope="module")
def base_run(fashion_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished five-iteration run (selecting on validation accuracy) with three distinct
    successful designs; tests retrain copies of it."""
    results = tmp_path_factory.mktemp("runs")
    server = FakeOllama(models=MODELS, default=by_role(GENERATED, DIAGNOSIS[:5]))
    try:
        proc = subprocess.run([
            *CLI, "run", "--dataset", "fashionmnist", "--iterations", str(len(GENERATED)),
            "--sandbox", "local", "--generator-model", "coder:test", "--improver-model",
            "improver:test", "--ollama-host", server.url, "--data-dir", str(fashion_data_dir),
            "--results-dir", str(results), "--name", "base", "--train-samples", "1000",
            "--test-samples", "200", "--device", "cpu", "--timeout", "120", "--memory", "4g",
            "--seed", "42"], capture_output=True, text=True, timeout=600)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    yield results / "base"


def copy_run(base: Path, tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(base, results / "base")
    return results


def retrain(results: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "retrain", "base", "--results-dir", str(results), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_correlations(xs: list[float], ys: list[float]) -> dict:
    """scipy's statistics and, for these few designs, the p-values of every order; None where
    undefined (fewer than two points, a constant)."""
    keys = ("spearman_rho", "spearman_p", "kendall_tau", "kendall_p")
    if len(xs) < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return dict.fromkeys(keys)
    rho, tau = sps.spearmanr(xs, ys), sps.kendalltau(xs, ys)
    return {"spearman_rho": float(rho.statistic), "kendall_tau": float(tau.statistic),
            **rank_p_by_enumeration(xs, ys)}


def test_retrain_trains_the_top_distinct_designs_and_summarizes(base_run, tmp_path):
    results = copy_run(base_run, tmp_path)
    run_dir = results / "base"
    records = jsonl(run_dir / "iterations.jsonl")
    assert [r["status"] for r in records] == [fc.OK, fc.SHAPE_ERROR, fc.OK, fc.OK, fc.OK]
    assert records[0]["metric"] == "val"

    # As on a terminal (rich's TTY_COMPATIBLE): each training shows a spinner while it runs.
    proc = retrain(results, "--top", "3", "--epochs", "2", "--seeds", "2",
                   env={**os.environ, "TTY_COMPATIBLE": "1"})
    assert proc.returncode == 0, proc.stderr
    out = run_dir / "retrain"
    lines = jsonl(out / "retrain.jsonl")
    assert len(lines) == 6 and all(ln["status"] == fc.OK for ln in lines), lines
    assert all(ln["epochs"] == 2 for ln in lines)

    # The designs: successes by the selection metric, one per code (the best-ranked copy).
    ranked = sorted((r for r in records if r["status"] == fc.OK), key=lambda r: -r["accuracy"])
    best_of: dict[str, dict] = {}
    for rec in ranked:
        best_of.setdefault(code_key((run_dir / rec["code_file"]).read_text()), rec)
    assert len(best_of) == 3
    assert [(ln["key"], ln["seed"]) for ln in lines] == [
        (key, seed) for key in best_of for seed in (42, 43)]
    for ln in lines:
        rec = best_of[ln["key"]]
        assert (ln["iteration"], ln["proxy_accuracy"], ln["proxy_test_accuracy"]) == (
            rec["iteration"], rec["accuracy"], rec["test_accuracy"])
        assert 0.1 < ln["test_accuracy"] <= 1 and ln["val_accuracy"] is not None
        assert ln["params"] > 0 and ln["train_seconds"] > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["seeds"] == [42, 43]
    designs = summary["designs"]
    assert [d["key"] for d in designs] == list(best_of) and [d["rank"] for d in designs] == [
        1, 2, 3]
    for d in designs:
        tests = [ln["test_accuracy"] for ln in lines if ln["key"] == d["key"]]
        assert d["test_mean"] == pytest.approx(np.mean(tests))
        assert d["test_sd"] == pytest.approx(np.std(tests, ddof=1))
        assert d["params"] == best_of[d["key"]]["metrics"]["params"]
    means = [float(np.mean([ln["test_accuracy"] for ln in lines if ln["key"] == k]))
             for k in best_of]
    for name, field in (("selection", "accuracy"), ("test", "test_accuracy")):
        got = summary["correlations"][name]
        assert got["n"] == 3
        want = expected_correlations([best_of[k][field] for k in best_of], means)
        for key, value in want.items():
            assert got[key] == (None if value is None else pytest.approx(value)), (name, key)

    markdown = (out / "retrain.md").read_text()
    assert proc.stdout == markdown
    assert "Spearman" in markdown and markdown.count("\n| ") >= 3 + 2 + 2
    assert "design 3/3 seed 2/2: it." in proc.stderr and "test after 2 epochs" in proc.stderr
    assert re.search(r"design 3/3 seed 2/2: it\. \d, training 2 epochs \(limit 240 s\)",
                     proc.stderr)

    # Run again: everything is done, nothing is trained, the same summary comes out.
    again = retrain(results, "--top", "3", "--epochs", "2", "--seeds", "2")
    assert again.returncode == 0, again.stderr
    assert jsonl(out / "retrain.jsonl") == lines and again.stdout == markdown
    assert "design" not in again.stderr.replace("designs", "")


def test_a_killed_retrain_continues_without_training_anything_twice(base_run, tmp_path):
    results = copy_run(base_run, tmp_path)
    journal = results / "base" / "retrain" / "retrain.jsonl"
    args = [*CLI, "retrain", "base", "--results-dir", str(results), "--top", "2", "--epochs",
            "2", "--seeds", "2"]
    first = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in first.stderr:  # a progress line follows each fsynced journal line
            if line.startswith("design 1/2 seed 1/2"):
                os.kill(first.pid, signal.SIGKILL)
                break
    finally:
        first.kill()
        first.wait(60)
    assert first.returncode == -signal.SIGKILL
    before = jsonl(journal)
    assert 1 <= len(before) < 4
    with open(journal, "ab") as f:  # as if killed halfway through writing a line
        f.write(b'{"key": "torn", "epo')

    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    lines = jsonl(journal)
    assert lines[:len(before)] == before
    assert len(lines) == 4 and all(ln["status"] == fc.OK for ln in lines)
    trained = [(ln["key"], ln["epochs"], ln["seed"]) for ln in lines]
    assert len(set(trained)) == 4 and {s for *_, s in trained} == {42, 43}
    assert second.stderr.count("design ") == 4 - len(before)


def test_a_run_without_successes_and_a_missing_run_are_one_line_errors(base_run, tmp_path):
    results = copy_run(base_run, tmp_path)
    run_dir = results / "base"
    failed = [r for r in jsonl(run_dir / "iterations.jsonl") if r["status"] != fc.OK]
    (run_dir / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in failed))
    proc = retrain(results, "--top", "2", "--epochs", "2")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "no successful design" in proc.stderr
    assert not (run_dir / "retrain" / "retrain.jsonl").exists()

    missing = subprocess.run([*CLI, "retrain", "nope", "--results-dir", str(results)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no run found for 'nope'" in missing.stderr


def test_proxy_fidelity_benchmark_runs_the_cli_end_to_end(fashion_data_dir, tmp_path, capsys):
    """benchmarks/proxy_fidelity.py: search and retrain through the CLI, three designs."""
    from benchmarks import proxy_fidelity

    code = proxy_fidelity.main([
        "--designs", "3", "--epochs", "2", "--train-samples", "600", "--test-samples", "200",
        "--device", "cpu", "--data-dir", str(fashion_data_dir),
        "--results-dir", str(tmp_path), "--json", str(tmp_path / "fidelity.json")])
    assert code == 0, capsys.readouterr().out
    summary = json.loads((tmp_path / "fidelity.json").read_text())["summary"]
    assert len({d["key"] for d in summary["designs"]}) == 3  # three distinct designs
    assert summary["correlations"]["selection"]["n"] == 3


def test_the_markdown_prints_p_values_that_round_to_zero_in_scientific_notation():
    summary = {"run": "r", "metric": "val", "proxy_epochs": 1, "epochs": 30, "seeds": [42],
               "designs": [], "correlations": {
                   name: {"n": 10, "spearman_rho": 0.952, "spearman_p": 2.2e-05,
                          "kendall_tau": 0.867, "kendall_p": 1.5e-04}
                   for name in ("selection", "test")}}
    assert "| test accuracy | 10 | 0.952 | 2.20e-05 | 0.867 | 1.50e-04 |" in markdown(summary)
