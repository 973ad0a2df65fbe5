"""`orchestrator ui` for research: comparing runs (the paper's Figure 2 and its ablations), the
runs list's start time and sorting, a run's settings and best, and the iteration page's
diagnosis, diffs and metrics. Pages are driven in headless Chromium as in tests/test_ui.py."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from orchestrator.analysis import report
from orchestrator.store.run import read_run
from tests import replies
from tests.test_ui import Watched, browser, client, free_port, serve  # noqa: F401 (fixtures)
from tests.ui_runs import HOSTILE_NAME, hostile_run, parallel_run, record, write_run

starlette = pytest.importorskip(
    "starlette", reason="NOT TESTED: the [ui] extra is not installed (pip install '.[ui]')")

BEST_CODE = replies.VALID_NET_WIDER
VISIBLE_LINES = """() => { const chart = Chart.getChart("compare-chart");
    return chart.data.datasets.filter((d, i) => chart.isDatasetVisible(i))
        .map((d) => [d.run, d.chain]); }"""


def configure(run: Path, **settings: object) -> None:
    """Set `settings` in the run's config.json, as `orchestrator run` would have written them."""
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **settings}))


def ablation_run(root: Path, name: str, accs: list[float | None], hours_ago: float) -> Path:
    """One chain; `None` in `accs` is a failure."""
    t0 = time.time() - 3600 * hours_ago
    recs, best = [], (None, None)
    for i, acc in enumerate(accs, start=1):
        if acc is not None and (best[0] is None or acc > best[0]):
            best = (acc, i)
        recs.append(record(i, "ok" if acc is not None else "runtime_error", acc, best,
                           prefix=f"{name}_", t0=t0))
    codes = {r["code_file"]: f"{replies.VALID_NET}\nWIDTH = {r['iteration']}\n" for r in recs}
    return write_run(root, name, recs, codes)


PROTOCOL = {"seed": 42, "epochs": 1, "history_size": 5, "select_on": "test",
            "train_samples": 1000, "test_samples": 200}


def make_ablations(results: Path) -> Path:
    """The paper's setting with two chains (started 2 hours ago, its best.py written), the
    same without feedback memory (K = 0, 1.5 hours ago), and a run with a hostile name (1 hour
    ago). The ablation's first iteration has its suggestions numbered in one text and both
    warm-up times; its second got a reply without code."""
    full = parallel_run(results)
    configure(full, **PROTOCOL)
    (full / "best.py").write_text(BEST_CODE)
    ablation = ablation_run(results, "no-memory", [0.30, None, 0.52, 0.58, 0.57, 0.60], 1.5)
    configure(ablation, **{**PROTOCOL, "history_size": 0, "no_history": True})

    def change(records: list[dict]) -> None:
        records[0]["suggestions"]["suggestions"] = [
            "1. Widen the first conv to 64. 2) Add batch norm. 3. Use 2.5x more dropout"]
        records[0]["metrics"].update(warmup_seconds=1.25, warmup_s=2.5, final_loss=0.4321)
        records[1].update(status="extract_error", code_file=None)

    rewrite(ablation, change)
    hostile_run(results)
    configure(results / HOSTILE_NAME, **PROTOCOL)
    return results


def rewrite(run: Path, change: Callable[[list[dict]], None]) -> None:
    """Apply `change(records)` to the run's journal."""
    records = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
    change(records)
    (run / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def ablations(tmp_path) -> Path:
    return make_ablations(tmp_path / "results")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """The ablations served by `orchestrator ui` (as tests/test_ui.py's `serve` does), once for
    the browser tests that only read them: (results folder, base URL)."""
    results = make_ablations(tmp_path_factory.mktemp("site") / "results")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(results),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not up(base):
            assert proc.poll() is None and time.monotonic() < deadline, "ui did not start"
            time.sleep(0.1)
        yield results, base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def up(base: str) -> bool:
    try:
        return httpx.get(base + "/", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# ---------------------------------------------------------------- comparing runs


def test_a_comparison_names_known_runs_two_to_eight_and_runs_no_inline_script(ablations):
    ui = client(ablations)
    hostile = quote(HOSTILE_NAME)
    page = ui.get(f"/compare?run=parallel&run={hostile}")
    assert page.status_code == 200
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts and all(' src="/static/' in s for s in scripts), scripts  # none inline
    assert "<img" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    for path in ("/compare?run=parallel&run=nope", "/api/compare?run=nope&run=parallel",
                 "/compare?run=parallel&run=..%2Fresults%2Fparallel"):
        assert ui.get(path).status_code == 404, path
    nine = "&".join(f"run=r{i}" for i in range(9))
    for path in ("/compare", "/compare?run=parallel", "/compare?run=parallel&run=parallel",
                 f"/compare?{nine}", f"/api/compare?{nine}"):
        response = ui.get(path)
        assert response.status_code == 400, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self';" in response.headers["content-security-policy"]


def test_two_runs_picked_from_the_list_are_compared_line_table_and_settings(
        site, browser):  # noqa: F811
    ablations, base = site
    watched = Watched(browser, base)
    page = watched.page
    page.goto(base + "/")
    page.wait_for_selector("#runs tbody tr >> text=no-memory")
    assert page.is_hidden("#compare")  # nothing ticked yet
    page.check("input.pick[value='parallel']")
    assert page.is_hidden("#compare")  # one run is not a comparison
    page.check("input.pick[value='no-memory']")
    page.click("#compare")
    page.wait_for_url("**/compare?run=parallel&run=no-memory")
    page.wait_for_selector("body[data-ready='1']", state="attached")

    # Figure 2: each run's line is the chain that holds its best; the others on request
    assert page.evaluate(VISIBLE_LINES) == [["parallel", 0], ["no-memory", 0]]
    page.check("#compare-chains input[value='0:1']")
    assert page.evaluate(VISIBLE_LINES) == [["parallel", 0], ["parallel", 1], ["no-memory", 0]]
    page.uncheck("#compare-chains input[value='0:0']")
    assert page.evaluate(VISIBLE_LINES) == [["parallel", 1], ["no-memory", 0]]

    # Table 2 side by side: the cells `orchestrator report` prints for the same runs
    runs = [read_run(ablations / n) for n in ("parallel", "no-memory")]
    expected = report.summary_table([report.run_metrics(r) for r in runs],
                                    ["parallel", "no-memory"])
    header = page.locator("#table2 thead th").all_inner_texts()
    assert header == ["Metric", "parallel", "no-memory"]
    shown = [page.locator(f"#table2 tbody tr:nth-child({i + 1}) td").all_inner_texts()
             for i in range(len(expected.rows))]
    assert shown == expected.rows
    assert ["Best accuracy", "74.0% (it. 4)", "60.0% (it. 6)"] in shown

    # the settings that differ, and only those
    keys = page.locator("#settings-diff tbody tr").evaluate_all(
        "(rows) => rows.map((r) => r.dataset.key)")
    assert {"history_size", "no_history", "parallel"} <= set(keys)
    assert not {"dataset", "seed", "epochs", "select_on", "name"} & set(keys)
    assert page.locator("#settings-diff tr[data-key='history_size'] td").all_inner_texts() \
        == ["history_size", "5", "0"]
    page.goto(f"{base}/compare?run={quote(HOSTILE_NAME, safe='')}&run=parallel")
    page.wait_for_selector("body[data-ready='1']", state="attached")
    assert page.evaluate(VISIBLE_LINES) == [[HOSTILE_NAME, 0], ["parallel", 0]]
    assert HOSTILE_NAME in page.inner_text("h1")  # as text
    assert page.locator("img, svg, iframe, object, embed").count() == 0
    assert watched.dialogs == [] and watched.elsewhere() == []


def search_run(root: Path, name: str, chains: int, iterations: int, memory: bool) -> Path:
    """A plausible search: accuracy rising with the iterations (faster with feedback memory),
    one design in five failing."""
    rng = random.Random(name)
    t0 = time.time() - 3600 * 3
    recs = []
    for chain in range(chains):
        best: tuple[float | None, int | None] = (None, None)
        for i in range(1, iterations + 1):
            fails = rng.random() < 0.2
            acc = None if fails else min(0.93, 0.55 + (0.35 if memory else 0.22) * (
                1 - 0.97 ** i) + rng.gauss(0, 0.04))
            if acc is not None and (best[0] is None or acc > best[0]):
                best = (acc, i)
            status = rng.choice(["shape_error", "runtime_error", "timeout"]) if fails else "ok"
            recs.append(record(i, status, acc, best, chain=chain, prefix=f"c{chain}_", t0=t0))
    run = write_run(root, name, recs, {r["code_file"]: replies.VALID_NET for r in recs},
                    parallel=chains)
    configure(run, **{**PROTOCOL, "history_size": 5 if memory else 0, "no_history": not memory})
    return run


def test_each_runs_line_ends_at_the_best_its_table_2_names(tmp_path, browser, serve):  # noqa: F811
    """The full method (feedback memory, K = 5, two chains) against its ablation (K = 0), 60
    iterations each: the page of the README's screenshot."""
    search_run(tmp_path, "memory-k5", chains=2, iterations=60, memory=True)
    search_run(tmp_path, "ablation-k0", chains=1, iterations=60, memory=False)
    base = serve(tmp_path)
    watched = Watched(browser, base)
    page = watched.page
    page.goto(base + "/compare?run=memory-k5&run=ablation-k0")
    page.wait_for_selector("body[data-ready='1']", state="attached")
    for chain in (0, 1):  # one of them is the run's line, shown already
        page.check(f"#compare-chains input[value='0:{chain}']")
    ends = page.evaluate("""() => { const chart = Chart.getChart("compare-chart");
        return chart.data.datasets.filter((d, i) => chart.isDatasetVisible(i))
            .map((d) => [d.label, d.data.at(-1).x, d.data.at(-1).y]); }""")
    best = page.locator("#table2 tr:has(td:text-is('Best accuracy')) td").all_inner_texts()[1:]
    tops = {label: y for label, _, y in ends}
    memory = max(tops["memory-k5 · chain 0"], tops["memory-k5 · chain 1"])
    assert [f"{100 * memory:.1f}%", f"{100 * tops['ablation-k0']:.1f}%"] \
        == [cell.split()[0] for cell in best]
    assert {x for _, x, _ in ends} == {60}  # every line runs to the last iteration
    watched.shot("compare")  # the README's screenshot (docs/ui.png)


# ---------------------------------------------------------------- the runs list and a run


def test_the_runs_list_shows_when_each_run_started_and_sorts_by_a_clicked_column(
        site, browser):  # noqa: F811
    _, base = site
    page = Watched(browser, base).page
    page.goto(base + "/")
    page.wait_for_selector("#runs tbody tr:nth-child(3)")

    def names() -> list[str]:
        return page.locator("#runs tbody tr td:nth-child(2)").all_inner_texts()

    assert names() == sorted(names())  # the server's order: by name
    started = dict(zip(names(), page.locator("#runs tbody tr td:nth-child(3)").all_inner_texts(),
                       strict=True))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", started["parallel"])
    page.click("#runs th[data-sort='started']")
    assert names() == ["parallel", "no-memory", HOSTILE_NAME]  # 2, 1.5 and 1 hours ago
    page.click("#runs th[data-sort='started']")
    assert names() == [HOSTILE_NAME, "no-memory", "parallel"]
    assert page.get_attribute("#runs th[data-sort='started']", "aria-sort") == "descending"
    page.click("#runs th[data-sort='best_accuracy']")
    assert names() == ["no-memory", HOSTILE_NAME, "parallel"]  # 60%, 70%, 74%


def test_a_run_page_shows_its_settings_its_best_and_the_threshold(site, browser):  # noqa: F811
    _, base = site
    page = Watched(browser, base).page
    page.goto(base + "/runs/parallel")
    page.wait_for_selector("body[data-iterations='8']", state="attached")
    labels = page.locator("#settings dt").all_inner_texts()
    values = page.locator("#settings dd").all_inner_texts()
    assert dict(zip(labels, values, strict=True)) == {
        "dataset": "fashionmnist", "subset": "1000 train / 200 test images", "epochs": "1",
        "seed": "42", "K (feedback memory)": "5", "generator": "coder:test",
        "improver": "improver:test", "selected on": "test"}
    assert "(accuracy ≥ 80%, the fashionmnist default)" in page.inner_text("#windows thead")
    with page.expect_download() as download:
        page.click("#best-code")
    assert download.value.suggested_filename == "parallel-best.py"
    assert Path(download.value.path()).read_text() == BEST_CODE
    page.click("#best-link")
    page.wait_for_url("**/runs/parallel/iterations/4?chain=0")  # 74%, the run's best

    page.goto(base + "/runs/no-memory")  # a run whose best.py is not there: no download
    page.wait_for_selector("#best-link[href]", state="attached")
    assert page.is_hidden("#best-code")


def test_best_py_is_served_as_python_and_only_from_inside_the_run(ablations, tmp_path):
    ui = client(ablations)
    response = ui.get("/runs/parallel/best.py")
    assert response.status_code == 200 and response.text == BEST_CODE
    assert response.headers["content-type"].startswith("text/x-python")
    assert response.headers["content-disposition"].startswith("attachment")
    (tmp_path / "secret.py").write_text("SECRET = 1\n")
    (ablations / "no-memory" / "best.py").symlink_to(tmp_path / "secret.py")
    assert ui.get("/runs/no-memory/best.py").status_code == 404
    assert "best_code_url" in ui.get("/api/runs/no-memory").json()
    assert ui.get("/api/runs/no-memory").json()["best_code_url"] is None
    assert ui.get(f"/runs/{quote(HOSTILE_NAME)}/best.py").status_code == 404  # none written


# ---------------------------------------------------------------- the iteration page


def test_the_iteration_page_reads_as_a_researcher_wants(site, browser):  # noqa: F811
    _, base = site
    page = Watched(browser, base).page
    page.goto(base + "/runs/no-memory/iterations/1?chain=0")
    assert page.locator("#improver li").all_inner_texts() == [
        "Widen the first conv to 64.", "Add batch norm.", "Use 2.5x more dropout"]
    facts = dict(zip(page.locator("dl.facts dt").all_inner_texts(),
                     page.locator("dl.facts dd").all_inner_texts(), strict=True))
    assert facts["sandbox warm-up (s)"] == "2.5 from start to ready, 1.25 of it the runner's set-up"
    assert facts["final training loss"] == "0.4321" and facts["parameters"] == "121,000"
    assert not {"warmup_s", "warmup_seconds", "final_loss", "params"} & set(facts)
    assert [k for k in facts if "warm" in k or "set-up" in k] == ["sandbox warm-up (s)"]  # once

    page.goto(base + "/runs/no-memory/iterations/2?chain=0")  # extract_error: the reply matters
    assert "see the reply below" in page.inner_text("#code")
    assert page.is_visible("#reply pre")
    assert "Here is the net" in page.inner_text("#reply pre")

    page.goto(base + "/runs/no-memory/iterations/4?chain=0")  # reference 3 is also previous
    assert page.locator("pre.diff").count() == 1 and page.locator("#diff-previous").count() == 0
    assert "also the previous iteration: iteration 3" in page.inner_text("#diff-reference")
    page.goto(base + "/runs/no-memory/iterations/6?chain=0")  # reference 4, previous 5
    assert page.locator("pre.diff").count() == 2
    assert "Generator was given: iteration 4" in page.inner_text("#diff-reference")
    assert "previous iteration: iteration 5" in page.inner_text("#diff-previous")


def test_a_udiff_run_shows_its_edit_figures_and_each_edit(tmp_path, browser, serve):  # noqa: F811
    """Under --edit-format udiff: the run page gives tokens per reply, the edit-apply rate and
    the valid rate of what was applied (`edit_figures`, as the report), and an iteration page
    says what its reply was."""
    t0 = time.time() - 3600
    edits = [("whole", None, None, True, 30, "ok", 0.6), ("edit", 1, 2, True, 12, "ok", 0.7),
             ("edit", 2, 1, False, 5, "edit_error", None), ("edit", 2, 3, True, 9, "shape_error",
                                                            None)]
    recs, best = [], (None, None)
    for i, (kind, base, blocks, applied, lines, status, acc) in enumerate(edits, start=1):
        if acc is not None and (best[0] is None or acc > best[0]):
            best = (acc, i)
        rec = record(i, status, acc, best, t0=t0)
        rec["llm"]["generator"]["completion_tokens"] = 100 * i
        rec["edit"] = {"format": "udiff", "kind": kind, "base_iteration": base,
                       "blocks": blocks, "applied": applied, "lines": lines, "file": None}
        recs.append(rec)
    write_run(tmp_path, "udiff", recs, {r["code_file"]: replies.VALID_NET for r in recs})
    base = serve(tmp_path)
    page = Watched(browser, base).page
    page.goto(base + "/runs/udiff")
    page.wait_for_selector("#edit-formats tbody tr")
    assert page.locator("#edit-formats tbody tr td").all_inner_texts() == [
        "udiff", "4", "250", "2 of 3 (67%)", "1", "2 of 3 (67%)"]
    page.goto(base + "/runs/udiff/iterations/3?chain=0")
    assert page.inner_text("#edit") == "udiff: 1 block (5 lines) on iteration 2, " \
                                       "not applied (edit_error)"
    page.goto(base + "/runs/udiff/iterations/1?chain=0")
    assert page.inner_text("#edit") == "udiff: the reply was a whole file (30 lines), " \
                                       "taken as it is"
