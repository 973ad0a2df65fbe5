"""`orchestrator ui`: a live read-only view of the runs, driven in a real headless Chromium.

The server is the real command (`python -m orchestrator ui`) on a free loopback port; the runs are
a scripted search on real Fashion-MNIST and journals written directly in the journal's format
(a hostile one whose code, error text and LLM replies try to run script in the page).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests import replies
from tests.fake_ollama import Reply
from tests.helpers import eventually
from tests.test_search_e2e import DIAGNOSIS, by_role, orchestrator
from tests.ui_runs import HOSTILE, HOSTILE_NAME, hostile_run, parallel_run, table

starlette = pytest.importorskip(
    "starlette", reason="NOT TESTED: the [ui] extra is not installed (pip install '.[ui]')")

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
WAIT_MS = 60_000


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve():
    """Factory: `orchestrator ui RESULTS` in a subprocess; returns its base URL."""
    procs: list[subprocess.Popen] = []

    def start(results: Path) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(results),
                                 "--port", str(port)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("orchestrator ui did not start")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------- without a browser


def client(results: Path):
    from starlette.testclient import TestClient

    from orchestrator.ui.app import create_app

    return TestClient(create_app(results, hosts=["testserver"]))


def test_every_response_carries_a_strict_content_security_policy(tmp_path):
    hostile_run(tmp_path)
    ui = client(tmp_path)
    for path in ("/", f"/runs/{quote(HOSTILE_NAME)}", "/api/runs", "/static/ui.js", "/nope"):
        headers = ui.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_journal_text_is_escaped_in_the_pages(tmp_path):
    hostile_run(tmp_path)
    page = client(tmp_path).get(f"/runs/{quote(HOSTILE_NAME)}/iterations/2").text
    assert page.count("<script") == 2  # the two script tags of the page itself, from 'self'
    assert "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert '<a href="javascript:' not in page and "<svg" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text


def test_hostile_metric_keys_values_and_config_fields_are_shown_as_text(tmp_path):
    run = hostile_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config.update(generator_model=HOSTILE, improver_model=HOSTILE, dataset=HOSTILE)
    (run / "config.json").write_text(json.dumps(config))
    records = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
    records[1]["metrics"] = {HOSTILE: HOSTILE, "params": HOSTILE, "flops": [HOSTILE]}
    (run / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ui = client(tmp_path)
    for path in (f"/runs/{quote(HOSTILE_NAME)}", f"/runs/{quote(HOSTILE_NAME)}/iterations/2"):
        page = ui.get(path).text
        assert page.count("<script") == 2, path  # the page's own two
        assert "<svg" not in page and "<img" not in page and '<a href="javascript:' not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path  # shown, as text
    page = ui.get(f"/runs/{quote(HOSTILE_NAME)}/iterations/2").text
    assert page.count("&lt;svg onload=alert(1)&gt;") >= 4  # key, two values, the list's item
    (row,) = ui.get("/api/runs").json()  # data for the scripts, which write it as text
    assert HOSTILE in row.values()


def test_an_iteration_evaluated_with_several_seeds_shows_each_and_their_spread(tmp_path):
    run = parallel_run(tmp_path)
    records = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
    records[0]["repeats"] = {"accuracies": [0.5, 0.6], "test_accuracies": [0.49, 0.58]}
    (run / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = client(tmp_path).get("/runs/parallel/iterations/1?chain=0").text
    assert "± 7.07 pp" in page  # the sample sd of 50% and 60%
    assert '<dd id="repeats">50.00%, 60.00%</dd>' in page
    assert 'id="repeats"' not in client(tmp_path).get("/runs/parallel/iterations/3").text


def test_an_attempt_lost_to_a_fault_is_not_an_iteration_of_the_run(tmp_path):
    """Chain 1 lost an attempt at its iteration 4 to a dead server, and has not tried again
    yet: the run is not finished, its lost attempt is counted apart and plotted nowhere."""
    run = parallel_run(tmp_path)
    records = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
    lost = {**records[-1], "status": "llm_error", "accuracy": None, "test_accuracy": None,
            "code_file": None, "attempt": 1}
    (run / "iterations.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*records[:-1], lost]))
    data = client(tmp_path).get("/api/runs/parallel").json()
    assert data["status"] != "finished"
    assert (data["iterations"], data["planned"], data["lost"]) == (7, 8, 1)
    assert [r["lost"] for r in table(data)] == [False] * 7 + [True]  # the page plots no lost
    assert "llm_error" not in data["failures"]["classes"]


def test_unknown_runs_and_iterations_are_404_and_names_cannot_escape(tmp_path):
    results = tmp_path / "results"
    parallel_run(results)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    ui = client(results)
    assert ui.get("/runs/parallel/iterations/3?chain=1").status_code == 200
    for path in ("/runs/nope", "/api/runs/nope", "/runs/parallel/iterations/99",
                 "/runs/parallel/iterations/1?chain=7", "/api/runs/..%2Foutside",
                 "/runs/%2E%2E%2Foutside", "/runs/parallel/iterations/..%2F..%2Fconfig.json",
                 "/static/..%2F..%2Fapp.py"):
        assert ui.get(path).status_code == 404, path


def test_a_request_for_another_host_name_is_refused(tmp_path):
    """A page elsewhere that rebinds its DNS name to 127.0.0.1 cannot read the runs; the
    loopback names, IPv6 too, are served."""
    from starlette.testclient import TestClient

    from orchestrator.ui.app import create_app

    ui = TestClient(create_app(tmp_path))  # the default: loopback only
    assert ui.get("/api/runs", headers={"host": "attacker.example"}).status_code == 400
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert ui.get("/api/runs", headers={"host": host}).status_code == 200, host


def test_a_candidate_pointing_outside_its_run_is_not_read(tmp_path):
    """Chain 0's first record points its code at a file beside the results and its reply at
    /etc/passwd: every page that would show that code or reply (its own, and the later ones
    that diff against it) is served without either file's text."""
    run = parallel_run(tmp_path / "results")
    (tmp_path / "secret.py").write_text("SECRET_7f3a = 1\n")
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    ui = client(tmp_path / "results")
    pages = ["/runs/parallel/iterations/1?chain=0", "/runs/parallel/iterations/2?chain=0",
             "/runs/parallel/iterations/3?chain=0", "/runs/parallel", "/api/runs/parallel"]
    before = ui.get(pages[0]).text
    assert "Here is the net" in before and "nn.Module" in before  # the reply and code shown
    lines = (run / "iterations.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert (rec["chain"], rec["iteration"]) == (0, 1)
    rec.update(code_file="../../secret.py", reply_file="/etc/passwd")
    (run / "iterations.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    for path in pages:
        response = ui.get(path)
        assert response.status_code == 200, path
        assert "SECRET_7f3a" not in response.text and passwd not in response.text, path
    assert "Here is the net" not in ui.get(pages[0]).text


def test_the_event_stream_names_a_run_when_its_journal_grows(tmp_path, serve):
    """The stream compares each look at the journals with its first one, taken at some moment
    after it opens: a second run is touched until the stream names it (so it is watching),
    then the journal of `parallel` grows and the stream names `parallel`, which it had not."""
    run = parallel_run(tmp_path)
    other = shutil.copytree(run, tmp_path / "other")
    url = serve(tmp_path)
    events: queue.Queue[list[str]] = queue.Queue()

    def listen() -> None:
        with httpx.stream("GET", url + "/events", timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.put(json.loads(line.removeprefix("data:")))

    threading.Thread(target=listen, daemon=True).start()
    before: list[str] = []
    for _ in range(30):  # each try waits for the stream's answer, not for a fixed time
        with (other / "iterations.jsonl").open("a") as f:
            f.write("\n")
        try:
            before += events.get(timeout=2)
            break
        except queue.Empty:
            continue
    assert before == ["other"]
    with (run / "iterations.jsonl").open("a") as f:
        f.write(json.dumps({"iteration": 5, "chain": 1, "status": "timeout"}) + "\n")
    named: list[str] = []
    while "parallel" not in named:
        named += events.get(timeout=15)
    assert set(named) <= {"parallel", "other"}  # a late look may still name the touched run


def listening(port: int) -> set[str]:
    """The addresses with a socket listening on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for listing in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(listing).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.parametrize(("args", "address", "warned"), [
    ((), "0100007F", False),  # 127.0.0.1, little-endian hex: loopback only by default
    (("--host", "0.0.0.0"), "00000000", True)])
def test_the_ui_listens_on_loopback_unless_told_and_then_warns(tmp_path, args, address,
                                                                 warned):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(tmp_path),
                             "--port", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ,
                                                                      "COLUMNS": "200"})
    try:
        eventually(lambda: listening(port) or proc.poll() is not None, 30, "the ui listening")
        assert listening(port) == {address}
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    warning = ("warning: listening on 0.0.0.0: anyone who can reach it can read every run's "
               "code, prompts and errors")
    assert (warning in output) is warned, output
    assert "http://" + ("0.0.0.0" if warned else "127.0.0.1") + f":{port}/" in output


def test_ui_without_the_extra_says_how_to_install_it(tmp_path):
    code = ("import importlib.util, sys; real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'uvicorn' else real(n, *a)\n"
            "from orchestrator.cli import app; sys.argv = ['orchestrator', 'ui', sys.argv[1]]\n"
            "app()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2
    assert "pip install 'orchestrator[ui]'" in proc.stderr


# ---------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="NOT TESTED: playwright is not installed (the [test] extra)")
    if not CHROMIUM.exists():
        pytest.skip(f"NOT TESTED: no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page whose dialogs, requests and navigations are recorded."""

    def __init__(self, browser, base: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(WAIT_MS)
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.navigations: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("framenavigated", lambda f: self.navigations.append(f.url))
        self.base = base

    def elsewhere(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.base + "/")]

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def point_position(page, iteration: int) -> dict:
    """Where the trajectory draws the evaluation of `iteration` (page coordinates)."""
    return page.evaluate("""(it) => {
        const chart = Chart.getChart("trajectory");
        const box = chart.canvas.getBoundingClientRect();
        for (const [i, ds] of chart.data.datasets.entries()) {
            const j = ds.data.findIndex((p) => p.x === it && p.url && ds.showLine === false);
            if (j >= 0) {
                const el = chart.getDatasetMeta(i).data[j];
                return {x: box.left + el.x, y: box.top + el.y};
            }
        }
        return null;
    }""", iteration)


def iterations_shown(page) -> int:
    return int(page.get_attribute("body", "data-iterations") or 0)


@pytest.mark.slow
def test_a_running_search_shows_up_live_and_its_points_open_their_iterations(
        browser, serve, fake_ollama, fashion_data_dir, tmp_path):
    release = threading.Event()

    def held(body: dict) -> Reply:  # the second design waits until the page has the first
        release.wait(120)
        return Reply(content=replies.VALID_NET_WIDER)

    server = fake_ollama(default=by_role([replies.VALID_NET, held, replies.SHAPE_MISMATCH_NET],
                                         DIAGNOSIS[:3]))
    results = tmp_path / "results"
    proc = orchestrator(
        "--dataset", "fashionmnist", "--iterations", "3", "--sandbox", "local",
        "--generator-model", "coder:test", "--improver-model", "improver:test",
        "--ollama-host", server.url, "--data-dir", str(fashion_data_dir), "--results-dir",
        str(results), "--name", "live", "--train-samples", "1000", "--test-samples", "200",
        "--device", "cpu", "--timeout", "300", "--memory", "4g", "--seed", "42",
        scratch=tmp_path)
    try:
        results.mkdir(parents=True, exist_ok=True)
        base = serve(results)
        watched = Watched(browser, base)
        page = watched.page
        page.goto(base + "/")
        page.wait_for_selector("#runs tbody tr >> text=live")
        page.goto(base + "/runs/live")
        page.wait_for_selector("body[data-iterations='1']", state="attached")
        assert "running" in page.inner_text("#facts")
        page.wait_for_selector("#live.on")  # the indicator shows the event stream is open
        navigations = len(watched.navigations)
        release.set()
        page.wait_for_selector("body[data-iterations='3']", state="attached")
        assert len(watched.navigations) == navigations  # no reload: the page followed the run
        assert page.locator("#iterations tbody tr").count() == 3
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        page.wait_for_selector("#facts >> text=finished")
        page.goto(base + "/")
        page.wait_for_selector("#runs .status.finished")
        watched.shot("runs")
        page.goto(base + "/runs/live")
        page.wait_for_selector("body[data-iterations='3']", state="attached")
        page.select_option("#filter-status", "shape_error")
        assert page.locator("#iterations tbody tr").count() == 1
        page.select_option("#filter-status", "")
        watched.shot("run")

        spot = point_position(page, 2)
        page.mouse.click(spot["x"], spot["y"])
        page.wait_for_url("**/runs/live/iterations/2?chain=0")
        added = page.locator("#diff-reference .add").all_inner_texts()
        assert "+class ConvBlock(nn.Module):" in added, added  # what the wider design added
        assert page.locator("#diff-reference .del").count() > 0
        assert "iteration 1" in page.inner_text("#diff-reference")  # reference and previous
        assert page.locator("#code .highlight .k").count() >= 10  # highlighted keywords
        assert page.locator("#live").count() == 0  # an iteration never changes: no live claim
        watched.shot("iteration")
        assert watched.dialogs == [] and watched.elsewhere() == []
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_hostile_journal_text_runs_nothing_in_the_browser(browser, serve, tmp_path):
    hostile_run(tmp_path)
    base = serve(tmp_path)
    watched = Watched(browser, base)
    page = watched.page
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    name = quote(HOSTILE_NAME, safe="")
    page.goto(base + "/")
    page.wait_for_selector("#runs tbody tr")
    assert HOSTILE_NAME in page.inner_text("#runs")
    page.goto(f"{base}/runs/{name}")
    page.wait_for_selector("body[data-iterations='3']", state="attached")
    assert "<script>alert(1)</script>" in page.inner_text("#iterations")
    for iteration in (1, 2, 3):
        page.goto(f"{base}/runs/{name}/iterations/{iteration}?chain=0")
        page.wait_for_load_state("networkidle")
        for details in page.locator("details").all():
            details.evaluate("(d) => d.open = true")
        text = page.inner_text("main")
        assert "<script>alert(1)</script>" in text  # shown as text, in code, reply and prompts
        assert page.locator("img, svg, iframe, object, embed, a[href^='javascript']").count() == 0
        assert page.locator("script").count() == 2
    page.goto(f"{base}/runs/{name}/iterations/2?chain=0")
    assert "<img src=x onerror=alert(1)>" in page.inner_text("#error")
    assert 'href="javascript:alert(1)"' in page.inner_text("#improver")
    page.wait_for_load_state("networkidle")  # every load (or failed one) of the page has ended
    assert watched.dialogs == []
    assert watched.elsewhere() == []
    assert all(u.startswith(base + "/") for u in watched.navigations), watched.navigations
    assert errors == []


def test_the_chains_of_a_parallel_run_are_lines_that_can_be_toggled(browser, serve, tmp_path):
    parallel_run(tmp_path)
    base = serve(tmp_path)
    watched = Watched(browser, base)
    page = watched.page
    page.goto(base + "/runs/parallel")
    page.wait_for_selector("body[data-iterations='8']", state="attached")
    visible = """() => Chart.getChart("trajectory").data.datasets
        .filter((d, i) => Chart.getChart("trajectory").isDatasetVisible(i) && d.showLine !== false)
        .map((d) => d.chain)"""
    assert page.evaluate(visible) == [0, 1]  # chains count from 0, as in the journal
    watched.shot("run-parallel")
    page.uncheck("#chains input[value='0']")
    assert page.evaluate(visible) == [1]
    page.select_option("#filter-chain", "1")
    assert page.locator("#iterations tbody tr").count() == 4
    page.check("#chains input[value='0']")
    assert page.evaluate(visible) == [0, 1]

