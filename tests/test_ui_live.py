"""`orchestrator ui` under load and abuse: malformed requests, many tabs, long journals.

Browser tests drive a real headless Chromium against the real command, as tests/test_ui.py does
(whose fixtures these share).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests import test_ui
from tests.test_ui import WAIT_MS, Watched, client
from tests.ui_runs import parallel_run, synthetic_record, synthetic_run, table

starlette = pytest.importorskip(
    "starlette", reason="NOT TESTED: the [ui] extra is not installed (pip install '.[ui]')")

browser, serve = test_ui.browser, test_ui.serve  # the fixtures, shared

SECURITY = ("content-security-policy", "x-content-type-options", "x-frame-options",
            "referrer-policy")
MALFORMED = [  # each once gave a 500 (issue 23), or could
    "/api/runs/parallel?window=%C2%B2",  # "²".isdigit(), but int("²") fails
    "/api/runs/parallel?window=99999999999999999999",  # past orjson's integers
    "/api/runs/parallel?window=" + "9" * 5000,  # past int()'s 4300 digits
    "/runs/parallel/iterations/" + "9" * 5000,
    "/runs/parallel/iterations/1?chain=" + "9" * 5000,
    "/runs/parallel/iterations/%C2%B2",
    "/api/runs/parallel?since=-1",
    "/api/runs/parallel?since=1e3",
    "/static/ui.js%00",
    "/runs/%00",
]


def append(run: Path, *records: dict) -> None:
    with (run / "iterations.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


# ---------------------------------------------------------------- malformed requests


@pytest.mark.parametrize("path", MALFORMED)
def test_a_malformed_request_is_a_client_error_with_the_security_headers(tmp_path, path,
                                                                          capsys):
    parallel_run(tmp_path)
    response = client(tmp_path).get(path)  # a 500 would raise here
    assert 400 <= response.status_code < 500, response.status_code
    assert all(h in response.headers for h in SECURITY)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, not a traceback
    assert len(err) < 400


def test_a_server_error_carries_the_security_headers_too(tmp_path):
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from orchestrator.ui.app import create_app

    async def broken(request):
        raise RuntimeError("a bug in a handler")

    app = create_app(tmp_path, hosts=["testserver"])
    app.router.routes.append(Route("/broken", broken))
    response = TestClient(app, raise_server_exceptions=False).get("/broken")
    assert response.status_code == 500
    assert all(h in response.headers for h in SECURITY)


def test_the_run_api_sends_only_the_records_after_those_the_page_has(tmp_path):
    parallel_run(tmp_path)
    ui = client(tmp_path)
    full = ui.get("/api/runs/parallel").json()
    assert (full["total"], full["since"], len(full["rows"])) == (8, 0, 8)
    tail = ui.get("/api/runs/parallel?since=6")
    assert tail.headers["content-encoding"] == "gzip"
    assert [(r["chain"], r["iteration"]) for r in table(tail.json())] == [(1, 3), (1, 4)]
    assert tail.json()["windows"] == full["windows"]  # the aggregates are whole
    rewritten = ui.get("/api/runs/parallel?since=9").json()  # more than the journal holds
    assert (rewritten["since"], len(rewritten["rows"])) == (0, 8)


def test_a_growing_journal_is_read_as_a_whole_reading_would(tmp_path):
    """The cache reads only what was appended and holds records without their long texts;
    whatever happened to the file, they are what reading the whole journal gives."""
    from orchestrator.store.run import read_run
    from orchestrator.ui.data import Runs

    run = synthetic_run(tmp_path, "long", 5)
    runs = Runs(tmp_path)
    journal = run / "iterations.jsonl"

    def same() -> None:
        got, whole = runs.get("long"), read_run(run)
        assert not any("prompts" in r for r in got.records)  # held without the long texts
        assert [runs.full("long", r) for r in got.records] == whole.records  # read back whole
        assert sorted(got.warnings) == sorted(whole.warnings)

    same()
    append(run, synthetic_record(6))
    same()
    line = json.dumps(synthetic_record(7)) + "\n"
    with journal.open("a") as f:
        f.write(line[:40])  # a torn line: a record half written
    same()
    with journal.open("a") as f:
        f.write(line[40:])
    same()
    with journal.open("a") as f:
        f.write("{not json\n")
    same()
    journal.write_text("".join(json.dumps(synthetic_record(i)) + "\n" for i in (1, 2)))
    same()  # rewritten shorter: read again from the start
    assert len(runs.get("long").records) == 2


def test_the_server_keeps_at_most_a_few_runs_parsed(tmp_path):
    from orchestrator.ui.data import Runs

    for k in range(6):
        synthetic_run(tmp_path, f"run{k}", 3)
    runs = Runs(tmp_path, max_cached=3)
    for k in (0, 1, 2, 3, 1, 4, 5):
        runs.get(f"run{k}")
        assert len(runs.cached()) <= 3
    assert runs.cached() == ["run1", "run4", "run5"]  # the least recently shown went first
    assert len(runs.rows()) == 6 and len(runs.cached()) <= 3
    runs.get("run0")
    before = runs.cached()
    assert [r["name"] for r in runs.rows()] == [f"run{k}" for k in range(6)]
    assert runs.cached() == before  # the list, unchanged, read no journal again


def test_an_update_summarises_again_only_the_windows_whose_designs_changed(tmp_path):
    from orchestrator.analysis import stats
    from orchestrator.store.run import read_run

    run = synthetic_run(tmp_path, "long", 30)
    ui = client(tmp_path)
    memo = lambda: ui.app.state.runs.memo("long")  # noqa: E731
    first = ui.get("/api/runs/long?window=10").json()
    assert memo().computed == 3
    append(run, synthetic_record(31))
    grown = ui.get("/api/runs/long?window=10&since=30").json()
    assert memo().computed == 4  # the new window only: the three before are kept
    assert grown["windows"][:3] == first["windows"]
    append(run, synthetic_record(32))
    grown = ui.get("/api/runs/long?window=10&since=31").json()
    assert memo().computed == 5  # the last window again
    whole = stats.windows(read_run(run).records, 10, grown["threshold"])
    assert grown["windows"] == json.loads(json.dumps(whole))  # as a whole reading gives
    ui.get("/api/runs/long?window=16")
    assert memo().computed == 5 + 2  # another size: every window anew
    (run / "iterations.jsonl").write_text("".join(
        json.dumps({**synthetic_record(i), "status": "timeout"}) + "\n" for i in (1, 2)))
    rewritten = ui.get("/api/runs/long?window=10").json()
    fresh = client(tmp_path).get("/api/runs/long?window=10").json()
    assert memo().computed == 5 + 2 + 1  # rewritten: its one window anew
    assert (rewritten["rows"], rewritten["windows"]) == (fresh["rows"], fresh["windows"])
    assert [r["status"] for r in table(rewritten)] == ["timeout", "timeout"]


def test_a_reload_of_an_unchanged_run_works_out_no_aggregate_again(tmp_path, monkeypatch):
    from orchestrator.ui import data

    calls: list[int] = []
    counted = data.failures_over_time
    monkeypatch.setattr(data, "failures_over_time", lambda r, size: (
        calls.append(size), counted(r, size))[1])
    run = synthetic_run(tmp_path, "long", 30, planned=40)
    ui = client(tmp_path)
    first = ui.get("/api/runs/long").json()
    again = ui.get("/api/runs/long").json()
    assert calls == [10] and again == first
    ui.get("/api/runs/long?window=5")
    ui.get("/api/runs/long?window=5")
    assert calls == [10, 5]  # another window size: worked out once
    append(run, synthetic_record(31))
    grown = ui.get("/api/runs/long?window=5&since=30").json()
    assert calls == [10, 5, 5] and grown["iterations"] == 31  # the journal grew: anew


def test_the_run_page_needs_no_journal_and_has_it_read_for_its_own_request(
        tmp_path, monkeypatch):
    """The page names the run from its config; the records it asks for next are read and
    worked out as soon as it is sent (while the browser loads it), so its request finds them."""
    from orchestrator.ui import data

    read: list[str] = []
    reader = data.Runs._read

    def counted(path, *rest):
        read.append(path.name)
        if path.name == "unreadable":
            raise PermissionError(path)
        return reader(path, *rest)

    monkeypatch.setattr(data.Runs, "_read", staticmethod(counted))
    synthetic_run(tmp_path, "long", 30)
    synthetic_run(tmp_path, "unreadable", 3)
    ui = client(tmp_path)
    page = ui.get("/runs/unreadable")
    assert page.status_code == 200 and "unreadable" in page.text  # sent without its journal
    assert read == ["unreadable"]  # which was tried once the page was sent
    page = ui.get("/runs/long?window=10")
    assert page.status_code == 200 and read == ["unreadable", "long"]
    assert ui.app.state.runs.memo("long").computed == 3  # its three windows are summarised
    data_ = ui.get("/api/runs/long?window=10").json()  # the page's request: nothing anew
    assert data_["iterations"] == 30 and read == ["unreadable", "long"]
    assert ui.app.state.runs.memo("long").computed == 3
    details: list[str] = []
    detail = data.run_detail
    monkeypatch.setattr(data, "run_detail", lambda run, name, *rest: (
        details.append(name), detail(run, name, *rest))[1])
    assert ui.get("/runs/long?window=10").status_code == 200
    assert details == []  # held as it is: nothing worked out ahead of the page's request
    assert ui.get("/runs/nothing").status_code == 404


def test_the_cycle_collector_is_back_on_after_a_run_is_read_even_when_reading_fails(
        tmp_path, monkeypatch):
    """Reading a journal pauses Python's cycle collector (for speed); it must never stay off."""
    import gc

    from orchestrator.ui import data

    synthetic_run(tmp_path, "long", 30)
    runs = data.Runs(tmp_path)
    assert gc.isenabled()
    runs.detail("long")
    assert gc.isenabled()

    def broken(*args, **kwargs):
        assert not gc.isenabled()  # paused while the journal is parsed
        raise OSError("disk gone")

    monkeypatch.setattr(data, "read_records_from", broken)
    synthetic_run(tmp_path, "other", 3)
    with pytest.raises(OSError):
        runs.detail("other")
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        runs.detail("long")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_server_keeps_a_bounded_number_of_records_parsed(tmp_path):
    from orchestrator.ui.data import Runs

    for k in range(3):
        synthetic_run(tmp_path, f"run{k}", 40)
    runs = Runs(tmp_path, max_records=100)
    runs.get("run0")
    runs.get("run1")
    assert runs.cached() == ["run0", "run1"]  # 80 records
    runs.get("run2")
    assert runs.cached() == ["run1", "run2"]  # 120 would be too many: the oldest went
    small = Runs(tmp_path, max_records=10)
    small.get("run0")
    small.get("run1")
    assert small.cached() == ["run1"]  # the run just shown is kept, however long


# ---------------------------------------------------------------- in a browser


def test_ten_tabs_share_one_live_stream_and_an_eleventh_page_still_loads(browser, serve,
                                                                          tmp_path):
    """Chromium opens six connections to a host over HTTP/1.1: with one stream per tab, a
    seventh page waited for ever."""
    run = parallel_run(tmp_path)
    base = serve(tmp_path)
    context = browser.new_context()  # one profile: its tabs share the connections
    context.set_default_timeout(WAIT_MS)
    try:
        tabs = [context.new_page() for _ in range(10)]
        for tab in tabs:
            tab.goto(base + "/runs/parallel")
            tab.wait_for_selector("body[data-iterations='8']", state="attached")
            tab.wait_for_selector("#live.on")
        eleventh = context.new_page()
        eleventh.goto(base + "/runs/parallel/iterations/2?chain=1")
        assert "Iteration 2" in eleventh.inner_text("h1")
        append(run, synthetic_record(5, chain=1))
        for tab in tabs:  # each tab hears of the change and shows it
            tab.wait_for_selector("body[data-iterations='9']", state="attached")
    finally:
        context.close()


def test_a_long_run_pages_its_table_and_asks_only_for_new_records(browser, serve, tmp_path):
    run = synthetic_run(tmp_path, "long", 250, planned=400)
    base = serve(tmp_path)
    watched = Watched(browser, base)
    page = watched.page
    page.goto(base + "/runs/long")
    page.wait_for_selector("body[data-iterations='250']", state="attached")
    page.wait_for_selector("#live.on")
    assert page.locator("#iterations tbody tr").count() == 100
    assert page.inner_text("#shown") == "1-100 of 250 shown"
    page.click("#page-next")
    page.click("#page-next")
    assert page.locator("#iterations tbody tr").count() == 50
    assert page.url.endswith("/runs/long?page=3")
    append(run, synthetic_record(251))
    page.wait_for_selector("body[data-iterations='251']", state="attached")
    assert page.locator("#iterations tbody tr").count() == 51
    asked = [u.split("?")[1] for u in watched.requests if "/api/runs/long" in u]
    assert asked[0] == "since=0" and "since=0" not in asked[1:] and "since=250" in asked, asked


def test_filters_and_window_are_kept_in_the_url_so_back_keeps_them(browser, serve, tmp_path):
    from playwright.sync_api import expect

    synthetic_run(tmp_path, "long", 60)
    base = serve(tmp_path)
    page = Watched(browser, base).page
    page.goto(base + "/runs/long")
    page.wait_for_selector("body[data-iterations='60']", state="attached")
    assert page.input_value("#window") == "10"  # the default for a short run
    page.fill("#window", "20")
    page.dispatch_event("#window", "change")
    expect(page.locator("#windows tbody tr")).to_have_count(3)  # 60 iterations in 20s
    page.select_option("#filter-status", "timeout")
    timeouts = page.locator("#iterations tbody tr").count()
    assert 0 < timeouts < 60
    page.locator("#iterations tbody a").first.click()
    page.wait_for_url("**/iterations/**")
    page.go_back()
    page.wait_for_selector("body[data-iterations='60']", state="attached")
    assert page.input_value("#filter-status") == "timeout"
    assert page.locator("#iterations tbody tr").count() == timeouts
    assert page.input_value("#window") == "20"
    assert page.locator("#windows tbody tr").count() == 3


def trajectory(page, script: str):
    return page.evaluate(f"() => {{ const chart = Chart.getChart('trajectory'); {script} }}")


def test_the_trajectory_reads_at_scale(browser, serve, tmp_path):
    """Failure classes in lanes of their own, named on the axis; the x axis ends at the planned
    iterations; tooltips name the chain; thousands of points are decimated."""
    synthetic_run(tmp_path, "long", 1500, chains=2, planned=3000)
    base = serve(tmp_path)
    page = Watched(browser, base).page
    page.set_viewport_size({"width": 700, "height": 900})
    page.goto(base + "/runs/long")
    page.wait_for_selector("body[data-iterations='3000']", state="attached")
    lanes = trajectory(page, """
        const lanes = {};
        for (const d of chart.data.datasets.filter((d) => d.failure)) {
            (lanes[d.failure] ??= new Set()).add(d.data[0].y);
        }
        return Object.fromEntries(Object.entries(lanes).map(([k, v]) => [k, [...v]]));""")
    assert sorted(lanes) == ["runtime_error", "shape_error", "timeout"]
    ys = [y for values in lanes.values() for y in values]
    assert all(len(v) == 1 for v in lanes.values()) and len(set(ys)) == 3 and max(ys) < 0
    labels = trajectory(page, "return chart.scales.y.ticks.map((t) => t.label);")
    assert {"runtime_error", "shape_error", "timeout"} <= set(labels)
    assert trajectory(page, "return chart.scales.x.max;") == 3000
    tips = trajectory(page, """
        const label = chart.options.plugins.tooltip.callbacks.label;
        return chart.data.datasets.map((d) => label({raw: d.data[0], dataset: d}));""")
    assert all(tip.startswith(("chain 0,", "chain 1,")) for tip in tips), tips
    assert trajectory(page, "return chart.data.datasets.some((d) => d._decimated);")
    best = trajectory(page, """return chart.data.datasets
        .filter((d) => d.label.endsWith("best so far"))
        .map((d) => [d.chain, d.stepped, d.data.map((p) => [p.x, p.y])]);""")
    assert [(chain, stepped) for chain, stepped, _ in best] == [(0, "after"), (1, "after")]
    for chain, _, points in best:  # where the best rose, held to the last iteration
        rose, top = [], None
        for i in range(1, 1501):
            acc = synthetic_record(i, chain)["accuracy"]
            if acc is not None and (top is None or acc > top):
                rose.append([i, top := acc])
        assert points == [*rose, [1500, top]]



def test_one_iteration_is_singular_an_odd_iteration_links_nowhere_and_the_icon_is_served(
        browser, serve, tmp_path):
    synthetic_run(tmp_path, "one", 1)
    run = synthetic_run(tmp_path, "odd", 1, planned=3)
    append(run, {**synthetic_record(2), "iteration": "2"},
           {**synthetic_record(3), "iteration": 2.5})
    base = serve(tmp_path)
    page = Watched(browser, base).page
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(base + "/runs/one")
    page.wait_for_selector("body[data-iterations='1']", state="attached")
    assert " 1 iteration of 1 " in page.inner_text("#facts")
    page.goto(base + "/runs/odd")
    page.wait_for_selector("body[data-iterations='3']", state="attached")
    hrefs = page.eval_on_selector_all("#iterations tbody a", "(as) => as.map((a) => a.href)")
    assert hrefs == [base + "/runs/odd/iterations/1?chain=0"]  # the two odd ones: no link
    icon = page.get_attribute("link[rel=icon]", "href")
    assert page.request.get(base + icon).status == 200  # no 404 for /favicon.ico
    assert failed == []


# ---------------------------------------------------------------- the command


def ui_command(*args: str):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    return CliRunner().invoke(app, ["ui", *args], env={"COLUMNS": "200"})


def test_a_taken_port_is_one_clear_error_and_no_listening_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = ui_command(str(tmp_path), "--port", str(port))
    assert proc.exit_code != 0
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "http://" not in proc.output


def test_a_run_folder_given_for_the_results_folder_is_named_as_such(tmp_path):
    run = parallel_run(tmp_path)
    proc = ui_command(str(run))
    assert proc.exit_code != 0
    assert "is a run folder" in proc.stderr and f"orchestrator ui {tmp_path}" in proc.stderr
