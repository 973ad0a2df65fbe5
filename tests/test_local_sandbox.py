"""Hostile candidates in the local sandbox: each is classified, and nothing survives it."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from orchestrator import outcomes as fc
from orchestrator.sandbox.base import Limits
from orchestrator.sandbox.local import LocalSandbox
from orchestrator.sandbox.pool import PoolSize
from orchestrator.search.evaluation import score
from tests import replies
from tests.fake_ollama import Reply
from tests.helpers import alive, eventually, parent, runners, tiny_job, waiting_for_its_job
from tests.test_search_e2e import by_role, orchestrator, run_args

CANARY = "orchestrator-canary-7f3a9c"


@pytest.fixture
def evaluate(tiny_cache: Path):
    """Run code in a fresh LocalSandbox and score it; checks no temp dir is left behind."""
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    scratch = tiny_cache.parent.parent / "scratch"
    scratch.mkdir()

    def run(code: str, **limits: object):
        with LocalSandbox(tiny_cache, Limits(**{"timeout": 60, "memory": "2g", **limits}),
                          device="cpu", scratch=scratch) as box:
            execution = box.run(code, tiny_job())
        return execution, score(execution, labels, 10)

    yield run
    assert list(scratch.iterdir()) == []  # every sandbox folder was removed


def test_valid_candidate_is_scored_on_the_host(evaluate, tiny_cache):
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    execution, outcome = evaluate(replies.VALID_NET)
    assert outcome.status == fc.OK, outcome.error
    predictions = np.load(io.BytesIO(execution.predictions_bytes))
    assert outcome.accuracy == pytest.approx(float(np.mean(predictions == labels)))
    assert outcome.accuracy > 0.18  # learned: chance is 0.1 (4 standard errors above)
    assert outcome.metrics["params"] > 0


def test_infinite_loop_is_killed_at_the_timeout(evaluate):
    code = ("import torch.nn as nn\n"
            "class Net(nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.fc = nn.Linear(28 * 28, 10)\n"
            "    def forward(self, x):\n"
            "        while True:\n"
            "            pass\n")
    execution, outcome = evaluate(code, timeout=8)
    assert execution.killed == "timeout"
    assert outcome.status == fc.TIMEOUT


def test_memory_bomb_is_classified_oom(evaluate):
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n"
    _, outcome = evaluate(code, memory="1g")
    assert outcome.status == fc.OOM


def test_output_flood_is_killed(evaluate):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    execution, outcome = evaluate(code, output_bytes=1 << 20)
    assert execution.killed == "output_limit"
    assert outcome.status == fc.OUTPUT_LIMIT
    assert len(execution.log_tail) <= 4000


def test_detached_children_do_not_survive(evaluate):
    code = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'],\n"
        "                     start_new_session=True)\n"
        "print('CHILD', p.pid, flush=True)\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"  # a classic double-fork daemon; it reports its pid by pipe
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.write(w, str(os.getpid()).encode())\n"
        "        import time; time.sleep(1000)\n"
        "    os._exit(0)\n"
        "print('DAEMON', os.read(r, 32).decode(), flush=True)\n"
        "raise RuntimeError('done spawning')\n"
    )
    execution, outcome = evaluate(code)
    pids = [int(p) for p in re.findall(r"(?:CHILD|DAEMON) (\d+)", execution.log_tail)]
    assert len(pids) == 2, execution.log_tail
    assert outcome.status == fc.INSTANTIATE_ERROR
    assert not any(alive(pid) for pid in pids)


def test_environment_secrets_and_labels_are_not_given(evaluate, monkeypatch):
    """Nothing the candidate is handed leads to the test labels: not its argv, cwd or
    environment (nor a folder an environment variable names), nor a file it has open. (The
    local sandbox runs as the user: it does not hide the rest of the filesystem.)"""
    monkeypatch.setenv("ORCHESTRATOR_TEST_SECRET", CANARY)
    code = (
        "import os, sys\n"
        "print(sorted(os.environ.items()))\n"
        "fds = [os.readlink(f'/proc/self/fd/{n}') for n in os.listdir('/proc/self/fd')\n"
        "       if os.path.exists(f'/proc/self/fd/{n}')]\n"
        "print('FDS', fds)\n"
        "roots = [p for p in sys.argv if os.path.isdir(p)] + [os.getcwd()]\n"
        "roots += [v for k, v in os.environ.items() if k != 'PATH' and os.path.isdir(v)]\n"
        "roots += [os.path.dirname(f) for f in fds if os.path.isfile(f)]\n"
        "for root in roots:\n"
        "    for d, _, files in os.walk(root):\n"
        "        print('FILES', d, files)\n"
        "        assert not any('test_y' in f for f in files), 'found test labels'\n"
        "assert not any('test_y' in f or 'labels' in f for f in fds + sys.argv)\n"
        + replies.VALID_NET
    )
    execution, outcome = evaluate(code)
    assert outcome.status == fc.OK, outcome.error
    assert CANARY not in execution.log_tail
    assert "FILES" in execution.log_tail and "train_x.npy" in execution.log_tail
    assert "FDS ['/dev/null', 'pipe:" in execution.log_tail  # stdin; stdout and stderr


def test_forged_result_cannot_raise_its_score(evaluate):
    code = (
        "import atexit, json, os, sys\n"
        "out = sys.argv[sys.argv.index('--out') + 1]\n"
        "def forge():\n"
        "    json.dump({'status': 'ok', 'accuracy': 0.99, 'phase': 'predict', 'metrics': {}},\n"
        "              open(os.path.join(out, 'result.json'), 'w'))\n"
        "atexit.register(forge)\n"
        "raise SystemExit(0)\n"
    )
    _, outcome = evaluate(code)
    assert outcome.status == fc.RUNTIME_ERROR  # 'ok' without predictions is not trusted
    assert outcome.accuracy is None


def test_interpreter_crash_is_a_runtime_error(evaluate):
    execution, outcome = evaluate("import os\nos.abort()\n")
    assert outcome.status == fc.RUNTIME_ERROR
    assert execution.result_bytes is None


def test_relative_data_dir_is_resolved(tiny_cache, monkeypatch):
    monkeypatch.chdir(tiny_cache.parent.parent)
    relative = Path(tiny_cache.parent.name) / "sandbox"
    with LocalSandbox(relative, Limits(timeout=60), device="cpu", pool=PoolSize(depth=0)) as box:
        execution = box.run(replies.VALID_NET, tiny_job())
    assert execution.exit_code == 0, execution.log_tail
    assert execution.predictions_bytes


PID_NET = "import os\nprint('PID', os.getpid(), flush=True)\n" + replies.VALID_NET


def test_each_candidate_gets_its_own_warm_runner_from_the_pool(tiny_cache, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with LocalSandbox(tiny_cache, Limits(timeout=60), device="cpu", scratch=scratch,
                      pool=PoolSize(depth=2)) as box:
        runs = [box.run(PID_NET, tiny_job()) for _ in range(3)]
    pids = {re.search(r"PID (\d+)", ex.log_tail)[1] for ex in runs}
    assert len(pids) == 3  # one runner per candidate, never reused
    for ex in runs:
        assert ex.exit_code == 0 and ex.result_bytes, ex.log_tail
        assert ex.info["pool_depth"] == 2 and ex.info["warmup_s"] > 0
        assert ex.info["ready_wait_s"] >= 0
    assert list(scratch.iterdir()) == []  # the pool's unused runners are gone too


@pytest.mark.parametrize("depth", [None, 0], ids=["pool", "cold"])
def test_corrupted_data_is_a_sandbox_error_in_phase_data(tiny_cache, tmp_path, depth):
    """A torn cache file fails the runner before any candidate code: never the design's."""
    torn = tmp_path / "torn"
    torn.mkdir()
    for path in tiny_cache.iterdir():
        torn.joinpath(path.name).write_bytes(path.read_bytes())
    data = torn / "train_x.npy"
    data.write_bytes(data.read_bytes()[:1000])
    labels = np.load(tiny_cache.parent / "labels" / "test_y.npy")
    with LocalSandbox(torn, Limits(timeout=60), device="cpu", pool=PoolSize(depth=depth)) as box:
        outcome = score(box.run(replies.VALID_NET, tiny_job()), labels, 10)
    assert (outcome.status, outcome.phase) == (fc.SANDBOX_ERROR, "data"), outcome.error
    assert "cannot load data" in outcome.error["message"]


@pytest.mark.slow
def test_a_warm_runner_goes_when_its_run_and_supervisor_are_killed_together(
        fake_ollama, fashion_data_dir, tmp_path):
    """A node dies: the run and its warm sandbox's supervisor (the reaper) are SIGKILLed. The
    runner waiting for its job goes with them, rather than poll for ever with parent 1."""
    told = threading.Event()  # the LLM answers only when the story is over

    def hold(body: dict) -> Reply:
        told.wait(600)
        return Reply(content=replies.VALID_NET)

    server = fake_ollama(default=by_role([hold], []))
    run = orchestrator(*run_args(server, fashion_data_dir, tmp_path, "node", 1), scratch=tmp_path)
    try:
        eventually(lambda: any(map(waiting_for_its_job, runners(tmp_path))), 300,
                   "the run's warm runner waits for its job")
        (runner,) = runners(tmp_path)
        os.kill(parent(runner), signal.SIGKILL)  # the reaper first: it cannot clean up
        run.kill()
        eventually(lambda: not alive(runner), 30, "the runner ends with its supervisor")
    finally:
        told.set()
        run.kill()
        run.communicate()
    # Its folder stayed: the reaper that would have removed it was killed first. The next
    # local sandbox started here finds its host gone and removes it; a live one's stays.
    (left,) = tmp_path.glob("orchestrator-local-*")
    with LocalSandbox(fashion_data_dir, Limits(timeout=60), device="cpu",
                      pool=PoolSize(depth=0), scratch=tmp_path) as box:
        assert not left.exists()
        mine = box._slot()
        LocalSandbox(fashion_data_dir, Limits(timeout=60), device="cpu",
                     pool=PoolSize(depth=0), scratch=tmp_path).close()
        assert mine.root.exists()
        mine.destroy()


def test_a_folder_whose_host_is_being_written_is_kept(fashion_data_dir, tmp_path):
    """Two chains start sandboxes at once: one's folder, its host file not yet written, is not
    taken for a dead host's by the other's sweep."""
    being_made = tmp_path / "orchestrator-local-new"
    being_made.mkdir()
    (being_made / "host").write_text("")  # opened, not yet written
    LocalSandbox(fashion_data_dir, Limits(timeout=60), device="cpu", pool=PoolSize(depth=0),
                 scratch=tmp_path).close()
    assert being_made.exists()
