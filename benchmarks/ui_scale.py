"""`orchestrator ui` at scale: the run page over long journals, driven in headless Chromium.

    .venv/bin/python benchmarks/ui_scale.py [--sizes 2000,10000] [--updates 3]
        [--code PATH ...] [--record-bytes 7000] [--json PATH]

For each size it writes a synthetic run of that many iterations (`tests.ui_runs.synthetic_run`,
records padded to about --record-bytes each, as real ones with their prompts are: 2,000
iterations make 14 MB), serves it with `python -m orchestrator ui` from each source tree given
by --code in turn (default: this one; give an older checkout too to compare them under the same
load), opens the run page in Chromium (/usr/bin/chromium) and appends --updates records to
the journal one at a time.

Reported per size: the JSON the page fetched per update (bytes on the wire and decoded), the
longest main-thread task while loading and per new iteration (the Long Tasks API: tasks over
50 ms; 0 when none), the time until the page showed the run (first from a server that has not
read the run yet, then reloaded), and the server's resident memory (peak and at the end). The
targets of issue 23: ready within 1 s, no task over 100 ms per new iteration, server memory
bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from tests.ui_runs import synthetic_record, synthetic_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# Long tasks and the moment the page first shows the run, recorded from the page's start.
PROBE = """
window.__tasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__tasks.push([e.startTime, e.duration]);
}).observe({type: "longtask", buffered: true});
window.__shown = {};
new MutationObserver(() => {
  const n = document.body && document.body.dataset.iterations;
  if (n && !(n in window.__shown)) window.__shown[n] = performance.now();
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-iterations"]});
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pad_for(record_bytes: int) -> int:
    """The padding that makes a synthetic record about `record_bytes` long."""
    base = len(json.dumps(synthetic_record(1, pad=0)))
    per_char = len(json.dumps(synthetic_record(1, pad=100))) - base
    return max(0, (record_bytes - base) * 100 // per_char)


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def start_server(code: Path, results: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(results), "--port",
                             str(port)], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("orchestrator ui did not start")


def measure(browser, code: Path, size: int, updates: int, pad: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = synthetic_run(Path(tmp), "long", size, planned=size + 100, pad=pad)
        journal_mb = (run / "iterations.jsonl").stat().st_size / 1e6
        proc, url = start_server(code, Path(tmp))
        try:
            return {"iterations": size, "journal_mb": round(journal_mb, 1),
                    **drive(browser, url, run, size, updates, pad),
                    **{k: v // 1024 for k, v in memory_kb(proc.pid).items()}}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def drive(browser, url: str, run: Path, size: int, updates: int, pad: int) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)
    page.add_init_script(PROBE)
    fetched: list[tuple[int, int]] = []  # (bytes on the wire, decoded) of each run fetch

    def on_response(response) -> None:
        if "/api/runs/long" in response.url:
            fetched.append((response.request.sizes()["responseBodySize"], len(response.body())))

    page.on("response", on_response)
    page.goto(url + "/runs/long")
    page.wait_for_selector(f"body[data-iterations='{size}']", state="attached")
    page.wait_for_selector("#live.on")
    time.sleep(2)  # let the load settle: its long tasks are counted as the load's
    ready = page.evaluate(f"window.__shown['{size}']")
    load_tasks = page.evaluate("window.__tasks.map((t) => t[1])")
    per_update, wire, decoded = [], [], []
    for k in range(1, updates + 1):
        before, seen = page.evaluate("performance.now()"), len(fetched)
        with (run / "iterations.jsonl").open("a") as f:
            f.write(json.dumps(synthetic_record(size + k, pad=pad)) + "\n")
        page.wait_for_selector(f"body[data-iterations='{size + k}']", state="attached")
        time.sleep(1)  # the update's own tasks end before the next one starts
        tasks = page.evaluate(f"window.__tasks.filter((t) => t[0] >= {before}).map((t) => t[1])")
        per_update.append(max(tasks, default=0))
        wire.append(sum(w for w, _ in fetched[seen:]))
        decoded.append(sum(d for _, d in fetched[seen:]))
    page.reload()  # a second tab's view: the server has the run parsed
    end = size + updates
    page.wait_for_selector(f"body[data-iterations='{end}']", state="attached")
    warm = page.evaluate(f"window.__shown['{end}']")
    page.close()
    return {"ready_ms": round(ready), "ready_warm_ms": round(warm),
            "longest_load_task_ms": round(max(load_tasks, default=0)),
            "longest_update_task_ms": round(max(per_update)),
            "update_wire_kb": round(max(wire) / 1024, 1),
            "update_json_kb": round(max(decoded) / 1024, 1)}


def table(rows: list[dict]) -> str:
    out = ["| journal | JSON per update (wire / decoded) | longest task at load | longest task "
           "per new iteration | page ready (server cold / warm) | server memory (peak / end) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['iterations']:,} iterations ({r['journal_mb']} MB) | "
                   f"{r['update_wire_kb']} / {r['update_json_kb']} KB | "
                   f"{r['longest_load_task_ms']} ms | {r['longest_update_task_ms']} ms | "
                   f"{r['ready_ms']} / {r['ready_warm_ms']} ms | "
                   f"{r.get('VmHWM', 0)} / {r.get('VmRSS', 0)} MB |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--code", type=Path, action="append",
                        help="source tree to serve from (repeatable; default: this one)")
    parser.add_argument("--record-bytes", type=int, default=7000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    pad = pad_for(args.record_bytes)
    codes = [c.resolve() for c in args.code or [REPO]]
    rows: dict[str, list[dict]] = {str(c): [] for c in codes}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox"])
        for size in map(int, args.sizes.split(",")):
            for code in codes:  # one size for each tree in turn: under the same load
                rows[str(code)].append(measure(browser, code, size, args.updates, pad))
                print(json.dumps({"code": str(code), **rows[str(code)][-1]}), flush=True)
        browser.close()
    for code, measured in rows.items():
        print(f"\ncode: {code}\n{table(measured)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
