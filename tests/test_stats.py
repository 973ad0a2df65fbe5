"""Journal reading and run statistics, checked against independently computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from orchestrator.analysis import stats
from orchestrator.store.records import EXACT_MAX_N, correlations, summarize
from orchestrator.store.run import read_run
from tests.helpers import rank_p_by_enumeration

NET = "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    pass\n"


def rec(it: int, status: str = "ok", acc: float | None = None, **extra) -> dict:
    """One journal record with the contract's fields."""
    base = {
        "iteration": it, "status": status, "accuracy": acc if status == "ok" else None,
        "error": None if status == "ok" else {"type": "RuntimeError", "message": f"boom {it}"},
        "code_file": f"candidates/iter_{it:04d}.py",
        "triple": {"problem": "p", "suggestion": "s", "outcome": "o"},
        "suggestions": {"reason": "r", "inspiration": "i", "suggestions": "s"},
        "llm": {role: {"model": f"{role}-m", "seed": 42 + it, "prompt_tokens": 100,
                       "completion_tokens": 10, "seconds": 1.5} for role in ("generator",
                                                                               "improver")},
        "timings": {"generate": 2.0, "evaluate": 10.0, "improve": 1.0},
        "best_accuracy": None, "best_iteration": None,
        "metrics": {"params": 1000, "train_seconds": 8.0} if status == "ok" else {},
        "prompts": {"generator": f"gen prompt {it}", "improver": f"imp prompt {it}"},
    }
    base.update(extra)
    return base


def write_run(root: Path, name: str, records: list[dict], dataset: str = "cifar10",
              tail: str = "") -> Path:
    """A run directory with config.json, iterations.jsonl (+ raw `tail`) and candidates."""
    run = root / name
    (run / "candidates").mkdir(parents=True)
    config = {"name": name, "dataset": dataset, "generator_model": "gen-7b",
              "improver_model": "imp-7b", "seed": 42, "iterations": len(records)}
    (run / "config.json").write_text(json.dumps(config))
    for r in records:
        if r["code_file"].startswith("candidates/"):
            (run / r["code_file"]).write_text(NET)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (run / "iterations.jsonl").write_text(lines + tail)
    return run


ACCS = {1: 0.30, 2: None, 3: 0.35, 4: 0.33, 5: None, 6: 0.50, 7: 0.45, 8: 0.61, 9: None}


def mixed_records() -> list[dict]:
    return [rec(it, "ok", acc) if acc is not None else rec(it, "timeout")
            for it, acc in ACCS.items()]


def test_read_run_by_path_and_name(tmp_path: Path) -> None:
    path = write_run(tmp_path, "r1", mixed_records())
    by_path, by_name = read_run(path), read_run("r1", results_dir=tmp_path)
    assert by_path.path == by_name.path == path
    assert by_path.name == "r1" and by_path.dataset == "cifar10"
    assert len(by_path.records) == 9 and by_path.summary is None and by_path.warnings == []
    assert by_path.code(by_path.records[0]) == NET


def test_read_run_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run found for 'nope'"):
        read_run("nope", results_dir=tmp_path)


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = write_run(tmp_path, "torn", mixed_records(), tail='{"iteration": 10, "stat')
    run = read_run(path)
    assert [r["iteration"] for r in run.records] == list(range(1, 10))
    assert any("torn last line" in w for w in run.warnings)


def test_code_file_outside_run_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "outside.py").write_text(NET)
    path = write_run(tmp_path, "esc", [rec(1, "ok", 0.5, code_file="../outside.py")])
    run = read_run(path)
    assert (run.path / "../outside.py").is_file()
    assert run.code(run.records[0]) is None


def test_summary_against_scipy() -> None:
    t = summarize(mixed_records())
    pairs = [(it, a) for it, a in ACCS.items() if a is not None]
    xs, ys = zip(*pairs, strict=True)
    rho, tau = sps.spearmanr(xs, ys), sps.kendalltau(xs, ys)
    assert t["iterations"] == 9 and t["successful"] == 6
    assert t["success_rate"] == pytest.approx(6 / 9)
    assert t["first_accuracy"] == 0.30 and t["best_accuracy"] == 0.61
    assert t["best_iteration"] == 8
    assert t["improvement"] == pytest.approx(0.31)
    assert t["spearman_rho"] == pytest.approx(rho.statistic)
    assert t["kendall_tau"] == pytest.approx(tau.statistic)
    exact = rank_p_by_enumeration(list(xs), list(ys))  # six successes: exact p-values
    assert t["spearman_p"] == pytest.approx(exact["spearman_p"])
    assert t["kendall_p"] == pytest.approx(exact["kendall_p"])


def test_three_perfectly_ranked_designs_are_not_significant() -> None:
    # Each side has 3! = 6 orders; one of them ranks perfectly: one-sided p = 1/6, two-sided
    # 1/3 (the t approximation said 0).
    for ys in ([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]):
        c = correlations([1, 2, 3], ys)
        assert abs(c["spearman_rho"]) == abs(c["kendall_tau"]) == pytest.approx(1.0)
        assert c["spearman_p"] == pytest.approx(1 / 3)
        assert c["kendall_p"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("xs, ys", [
    ([1, 2, 3, 4], [0.30, 0.35, 0.52, 0.45]),
    ([1, 2, 3, 4, 5], [0.4, 0.6, 0.4, 0.6, 0.5]),  # ties
    ([0.42, 0.42, 0.17, 0.69, 0.34, 0.11], [0.71, 0.67, 0.35, 0.80, 0.61, 0.20]),  # ties
    ([0.11, 0.12, 0.09, 0.69, 0.34, 0.42, 0.17], [0.64, 0.35, 0.34, 0.80, 0.61, 0.67, 0.20]),
])
def test_small_samples_get_exact_permutation_p_values(xs, ys) -> None:
    c = correlations(xs, ys)
    exact = rank_p_by_enumeration(xs, ys)
    assert c["spearman_p"] == pytest.approx(exact["spearman_p"])
    assert c["kendall_p"] == pytest.approx(exact["kendall_p"])


def test_p_values_are_exact_up_to_exact_max_n_and_scipys_above() -> None:
    # Eight perfectly ranked pairs: 2 of the 8! orders are as extreme (both directions).
    c = correlations(list(range(8)), [0.1 * i for i in range(8)])
    assert EXACT_MAX_N == 8 and c["spearman_p"] == c["kendall_p"] == pytest.approx(2 / 40320)
    xs, ys = list(range(9)), [0.3, 0.1, 0.35, 0.5, 0.45, 0.5, 0.7, 0.62, 0.8]
    c = correlations(xs, ys)
    assert c["spearman_p"] == pytest.approx(sps.spearmanr(xs, ys).pvalue)
    assert c["kendall_p"] == pytest.approx(sps.kendalltau(xs, ys).pvalue)


def test_summary_all_failures() -> None:
    t = summarize([rec(i, "syntax_error") for i in range(1, 6)])
    assert t["iterations"] == 5 and t["successful"] == 0 and t["success_rate"] == 0.0
    for key in ("first_accuracy", "best_accuracy", "improvement", "spearman_rho",
                "spearman_p", "kendall_tau", "kendall_p"):
        assert t[key] is None
    empty = summarize([])
    assert empty["iterations"] == 0 and empty["success_rate"] is None


def test_summary_single_success() -> None:
    t = summarize([rec(1, "timeout"), rec(2, "ok", 0.42), rec(3, "nan_loss")])
    assert t["successful"] == 1 and t["first_accuracy"] == t["best_accuracy"] == 0.42
    assert t["improvement"] == 0.0 and t["first_iteration"] == 2
    assert t["spearman_rho"] is None and t["kendall_tau"] is None


def test_summary_ties() -> None:
    records = [rec(1, "ok", 0.4), rec(2, "ok", 0.6), rec(3, "ok", 0.4), rec(4, "ok", 0.6),
               rec(5, "ok", 0.5)]
    t = summarize(records)
    xs, ys = [1, 2, 3, 4, 5], [0.4, 0.6, 0.4, 0.6, 0.5]
    assert t["best_iteration"] == 2  # earliest of the tied best
    assert t["spearman_rho"] == pytest.approx(sps.spearmanr(xs, ys).statistic)
    assert t["kendall_tau"] == pytest.approx(sps.kendalltau(xs, ys).statistic)
    constant = summarize([rec(i, "ok", 0.5) for i in range(1, 5)])
    assert constant["spearman_rho"] is None and constant["kendall_p"] is None
    assert constant["improvement"] == 0.0


def test_ok_without_accuracy_is_not_a_success() -> None:
    t = summarize([rec(1, "ok", None), rec(2, "ok", float("nan")), rec(3, "ok", 0.2)])
    assert t["successful"] == 1 and t["first_accuracy"] == 0.2


def test_wilson_interval_is_scipys_to_the_last_bit() -> None:
    for n in range(1, 41):
        for k in range(n + 1):
            for conf in (0.95, 0.8):
                ci = sps.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
                assert stats.wilson_interval(k, n, conf) == (ci.low, ci.high), (k, n, conf)


def test_wilson_interval_by_hand() -> None:
    k, n, z = 7, 10, sps.norm.ppf(0.975)
    p = k / n
    centre = (k + z**2 / 2) / (n + z**2)
    half = z * math.sqrt(n) / (n + z**2) * math.sqrt(p * (1 - p) + z**2 / (4 * n))
    lo, hi = stats.wilson_interval(k, n)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)


def test_accuracy_interval_is_the_t_interval_inside_0_1() -> None:
    values = [0.31, 0.45, 0.52, 0.38, 0.61, 0.47]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    expected = sps.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n))
    assert stats.accuracy_interval(values) == pytest.approx(expected)
    assert stats.accuracy_interval(values, 0.9) == pytest.approx(
        sps.t.interval(0.9, n - 1, loc=mean, scale=sd / math.sqrt(n)))
    assert stats.accuracy_interval([0.5]) is None and stats.accuracy_interval([]) is None
    assert stats.accuracy_interval([0.5, 0.5]) == (0.5, 0.5)


@pytest.mark.parametrize("seed", range(20))
def test_accuracy_interval_is_scipys_one_sample_t_interval(seed) -> None:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.2, 0.9, size=int(rng.integers(2, 60)))
    for conf in (0.8, 0.95, 0.99):
        ci = sps.ttest_1samp(values, 0.0).confidence_interval(confidence_level=conf)
        assert stats.accuracy_interval(values, conf) == pytest.approx(
            (max(0.0, ci.low), min(1.0, ci.high)), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("values", [[0.177, 0.227], [0.0, 0.02, 0.01], [0.98, 1.0, 0.99],
                                    [0.1, 0.1, 0.1, 0.51], [0.0, 1.0]])
def test_small_sample_accuracy_intervals_stay_inside_0_1(values) -> None:
    n, mean = len(values), sum(values) / len(values)
    t_lo, t_hi = sps.t.interval(0.95, n - 1, loc=mean, scale=sps.sem(values))
    assert t_lo < 0 or t_hi > 1  # the t interval leaves [0, 1] ...
    lo, hi = stats.accuracy_interval(values)
    assert (lo, hi) == pytest.approx((max(0.0, t_lo), min(1.0, t_hi)))  # ... and is cut to it
    assert 0.0 <= lo <= mean <= hi <= 1.0


def test_windows() -> None:
    records = mixed_records()
    records[0]["novelty"] = {"max_similarity": 0.95, "nearest_iteration": None}
    records[2]["novelty"] = {"max_similarity": 0.40, "nearest_iteration": 1}
    ws = stats.windows(records, size=4, threshold=0.40)
    assert [(w["start"], w["end"], w["n"], w["valid"]) for w in ws] == [
        (1, 4, 4, 3), (5, 8, 4, 3), (9, 9, 1, 0)]
    first = ws[0]
    assert first["valid_rate"] == 0.75 and first["valid_ci"] == stats.wilson_interval(3, 4)
    assert first["mean_acc"] == pytest.approx((0.30 + 0.35 + 0.33) / 3)
    assert first["acc_ci"] == pytest.approx(stats.accuracy_interval([0.30, 0.35, 0.33]))
    assert first["above_threshold_fraction"] == 0.0 and first["novel"] == 1
    second = ws[1]
    assert second["above_threshold_fraction"] == 1.0 and second["novel"] is None
    last = ws[2]
    assert last["mean_acc"] is None and last["std_acc"] is None
    assert last["above_threshold_fraction"] is None and last["valid_rate"] == 0.0
    assert stats.windows(records, size=50)[0]["above_threshold_fraction"] is None
    assert stats.windows([], size=50) == []


def test_failure_and_time_breakdown() -> None:
    records = mixed_records() + [rec(10, "syntax_error", timings={"generate": 4.0})]
    assert stats.failure_breakdown(records) == {"timeout": 3, "syntax_error": 1}
    t = stats.time_breakdown(records)
    assert t["seconds"]["generate"] == pytest.approx(9 * 2.0 + 4.0)
    assert t["seconds"]["evaluate"] == pytest.approx(90.0)
    assert t["seconds"]["total"] == pytest.approx(22.0 + 90.0 + 9.0)
    assert t["evaluate_by_status"] == {"ok": 60.0, "timeout": 30.0, "syntax_error": 0.0}
    assert t["train_seconds"] == pytest.approx(48.0)
    assert t["llm"]["generator"] == {"calls": 10, "prompt_tokens": 1000,
                                     "completion_tokens": 100, "seconds": 15.0}


def test_default_thresholds() -> None:
    assert stats.default_threshold("CIFAR-10") == 0.40
    assert stats.default_threshold("fashion_mnist") == 0.80
    assert stats.default_threshold("other") is None
