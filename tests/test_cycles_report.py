"""NNGPT's per-cycle table and plot, checked against scipy on a hand-built three-cycle input."""

from __future__ import annotations

import io
import math

import matplotlib.image as mpimg
import pytest
from scipy import stats as sps

from orchestrator.analysis.cycles import (
    cycle_metrics,
    cycles_markdown,
    cycles_plot,
    write_cycles_report,
)


def rec(status: str, acc: float | None = None, similarity: float | None = None) -> dict:
    out = {"status": status, "accuracy": acc}
    if similarity is not None:
        out["novelty"] = {"max_similarity": similarity}
    return out


HOSTILE_TAG = "coder|nas:c2\x1b[31m\nred"
CYCLES = [  # given out of order: rows come in cycle order
    {"cycle": 2, "records": [rec("ok", 0.42), rec("ok", 0.48), rec("ok", 0.61),
                             rec("runtime_error"), rec("ok", 0.44)],
     "admitted": 3, "duplicates": 1, "corpus_size": 14, "tag": HOSTILE_TAG, "train_loss": 0.5},
    {"cycle": 1, "records": [rec("ok", 0.30, 0.95), rec("ok", 0.45, 0.50),
                             rec("syntax_error"), rec("ok", 0.50, 0.20)],
     "admitted": 1, "duplicates": 0, "corpus_size": 11, "tag": "coder-nas:c1",
     "train_loss": 0.9},
    {"cycle": 3, "records": [rec("syntax_error"), rec("timeout")],
     "admitted": 0, "duplicates": 0, "corpus_size": 14, "tag": "coder-nas:c3",
     "train_loss": None},
]
ACCS = {1: [0.30, 0.45, 0.50], 2: [0.42, 0.48, 0.61, 0.44], 3: []}
N = {1: 4, 2: 5, 3: 2}


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def t_ci(xs: list[float]) -> tuple[float, float]:
    return sps.t.interval(0.95, len(xs) - 1, loc=sum(xs) / len(xs), scale=sps.sem(xs))


def test_metrics_match_scipy() -> None:
    rows = cycle_metrics(CYCLES, threshold=0.40)
    assert [r["cycle"] for r in rows] == [1, 2, 3]
    for row in rows:
        c, accs = row["cycle"], ACCS[row["cycle"]]
        assert (row["n"], row["valid"]) == (N[c], len(accs))
        assert row["valid_rate"] == pytest.approx(len(accs) / N[c])
        # scipy's z is 1.959964; the table's is 1.96.
        assert row["valid_ci"] == pytest.approx(wilson(len(accs), N[c]), abs=2e-4)
        if accs:
            assert row["best_acc"] == max(accs)
            assert row["mean_acc"] == pytest.approx(sum(accs) / len(accs))
            assert row["acc_ci"] == pytest.approx(t_ci(accs))
            assert row["above_threshold_fraction"] == pytest.approx(
                sum(a >= 0.40 for a in accs) / len(accs))
        else:
            assert row["best_acc"] is row["mean_acc"] is row["acc_ci"] is None
            assert row["above_threshold_fraction"] is None
        given = next(x for x in CYCLES if x["cycle"] == c)
        for key in ("admitted", "duplicates", "corpus_size", "tag", "train_loss"):
            assert row[key] == given[key]
        assert row["threshold"] == 0.40
    assert rows[0]["above_threshold_fraction"] == pytest.approx(2 / 3)
    assert rows[1]["above_threshold_fraction"] == 1.0
    # Novelty of the search's own records (max_similarity < tau), where recorded.
    assert rows[0]["novel"] == 2 and rows[1]["novel"] is None
    assert cycle_metrics(CYCLES, 0.40, tau=0.99)[0]["novel"] == 3
    # No threshold: no share above it.
    assert cycle_metrics(CYCLES, None)[0]["above_threshold_fraction"] is None


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_markdown_has_one_row_per_cycle_with_the_values() -> None:
    md = cycles_markdown(cycle_metrics(CYCLES, threshold=0.40))
    table = md.strip().splitlines()
    assert len(table) == 2 + 3
    assert table[0].startswith("| Cycle | n | Valid |") and "≥ 40%" in table[0]
    lo, hi = wilson(3, 4)
    mlo, mhi = t_ci(ACCS[1])
    assert table[2] == (f"| 1 | 4 | 3 | 75.0% [{pct(lo)}, {pct(hi)}] | 50.0% | "
                        f"{pct(sum(ACCS[1]) / 3)} [{pct(mlo)}, {pct(mhi)}] | 66.7% | 1 | 11 | "
                        "0.9000 | coder-nas:c1 |")
    lo, hi = wilson(4, 5)
    mlo, mhi = t_ci(ACCS[2])
    assert table[3].startswith(f"| 2 | 5 | 4 | 80.0% [{pct(lo)}, {pct(hi)}] | 61.0% | "
                               f"{pct(sum(ACCS[2]) / 4)} [{pct(mlo)}, {pct(mhi)}] | 100.0% | "
                               "3 | 14 | 0.5000 | ")
    lo, hi = wilson(0, 2)
    assert table[4] == (f"| 3 | 2 | 0 | 0.0% [{pct(lo)}, {pct(hi)}] | n/a | n/a n/a | n/a | 0 | "
                        "14 | n/a | coder-nas:c3 |")
    # The user's tag stays in its cell: printable, on one line, its pipe escaped.
    assert table[3].endswith("| coder\\|nas:c2\ufffd[31m red |")
    assert "\x1b" not in md
    for line in table:
        assert line.replace("\\|", "").count("|") == len(table[0].split(" | ")) + 1


def test_a_small_cycles_mean_interval_stays_inside_0_100() -> None:
    # Two valid candidates at 17.7% and 22.7%: the t interval was [-11.6%, 52.0%].
    accs = [0.177, 0.227]
    cycle = {"cycle": 1, "records": [rec("ok", a) for a in accs] + [rec("timeout")]}
    row = cycle_metrics([cycle], threshold=None)[0]
    lo, hi = t_ci(accs)
    assert lo < 0 and row["acc_ci"] == pytest.approx((0.0, hi))
    assert f"| 20.2% [0.0%, {pct(hi)}] |" in cycles_markdown([row])


def test_plot_is_a_png_of_sane_size() -> None:
    png = cycles_plot(cycle_metrics(CYCLES, threshold=0.40))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = mpimg.imread(io.BytesIO(png), format="png")
    assert image.shape == (550, 1000, 4)
    assert not math.isclose(float(image[..., :3].std()), 0.0)  # something was drawn
    # Every series is drawn: changing one of its values changes the picture.
    for key in ("valid_rate", "mean_acc", "best_acc", "above_threshold_fraction"):
        rows = cycle_metrics(CYCLES, threshold=0.40)
        rows[1][key] = 0.9
        assert cycles_plot(rows) != png, key
    # One cycle, no threshold, a cycle without valid candidates: still a plot.
    for rows in (cycle_metrics(CYCLES[:1], None), cycle_metrics(CYCLES[2:], 0.4), []):
        assert mpimg.imread(io.BytesIO(cycles_plot(rows)), format="png").shape[:2] == (550,
                                                                                       1000)


def test_the_report_writes_the_table_and_the_plot(tmp_path) -> None:
    rows = cycle_metrics(CYCLES, threshold=0.40)
    markdown, files = write_cycles_report(rows, tmp_path / "out")
    assert markdown == cycles_markdown(rows) == files["markdown"].read_text()
    assert files["plot"].read_bytes() == cycles_plot(rows)
    assert list(files) == ["markdown", "plot"]
