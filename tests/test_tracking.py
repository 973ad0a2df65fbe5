"""`--track mlflow`: the journal mirrored into MLflow, read back with MLflow's own client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import outcomes as fc
from orchestrator.store.journal import Journal
from orchestrator.store.tracking import STATUS_CODES, TRACKING_FILE, Tracker, record_metrics
from tests import replies
from tests.fake_ollama import Reply
from tests.helpers import flat
from tests.test_search_e2e import DIAGNOSIS, by_role, read_records, run_args

mlflow = pytest.importorskip("mlflow", reason="NOT TESTED: the [mlflow] extra is not installed")
from mlflow import MlflowClient  # noqa: E402

# Per record, the metrics compared with the journal: name -> the record's value.
JOURNAL_VALUES = {
    "accuracy": lambda r: r["accuracy"],
    "ok": lambda r: 1.0 if r["status"] == fc.OK else 0.0,
    "status": lambda r: STATUS_CODES[r["status"]],
    "best_accuracy": lambda r: r["best_accuracy"],
    "generate_s": lambda r: r["timings"]["generate"],
    "evaluate_s": lambda r: r["timings"]["evaluate"],
    "improve_s": lambda r: r["timings"]["improve"],
    "test_accuracy": lambda r: r.get("test_accuracy"),
}


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow reads a file store only when allowed (3.x); no outside tracking settings."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def tracked_run(args: list[str], cwd: Path, env: dict | None = None) -> str:
    """`orchestrator run ARGS --track mlflow` from `cwd`; its output, after checking it
    succeeded."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", *args, "--track",
                           "mlflow"], cwd=cwd, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def mirror(run_dir: Path) -> tuple[MlflowClient, str]:
    info = json.loads((run_dir / TRACKING_FILE).read_text())
    return MlflowClient(info["tracking_uri"]), info["run_id"]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_metrics_equal_journal(client: MlflowClient, run_id: str, records: list[dict],
                                 prefix: str = "") -> None:
    for name, value in JOURNAL_VALUES.items():
        expected = sorted((r["iteration"], float(value(r))) for r in records
                          if value(r) is not None)
        assert history(client, run_id, prefix + name) == expected, name


@pytest.mark.slow
def test_a_tracked_run_mirrors_the_journal_into_a_local_mlruns(fake_ollama, fashion_data_dir,
                                                                tmp_path):
    generator = [replies.VALID_NET, replies.SHAPE_MISMATCH_NET, replies.VALID_NET_WIDER,
                 replies.SYNTAX_ERROR_REPLY]
    server = fake_ollama(default=by_role(generator, DIAGNOSIS))
    results = tmp_path / "results"
    tracked_run(run_args(server, fashion_data_dir, results, "tracked", 4), cwd=tmp_path)
    run_dir = results / "tracked"
    records = read_records(run_dir)
    assert [r["status"] for r in records] == [fc.OK, fc.SHAPE_ERROR, fc.OK, fc.SYNTAX_ERROR]

    # The default store is ./mlruns, a file store that MLflow's client reads.
    client, run_id = mirror(run_dir)
    assert client.tracking_uri == (tmp_path / "mlruns").as_uri()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert_metrics_equal_journal(client, run_id, records)
    assert [s for s, _ in history(client, run_id, "accuracy")] == [1, 3]  # failures: no value

    config = json.loads((run_dir / "config.json").read_text())
    params = run.data.params
    assert "tracking_uri" not in params
    assert set(params) == set(config) - {"tracking_uri"}
    for key, value in config.items():
        if key != "tracking_uri":
            assert (params[key] if isinstance(value, str) else json.loads(params[key])) == value

    best = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="best.py",
                                                    tracking_uri=client.tracking_uri))
    assert best.read_text() == (run_dir / "best.py").read_text()
    report = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/trajectory.png"} <= report
    assert not (run_dir / "report.md").exists()  # the run directory is left as it was


def drop_step(store: Path, run_id: str, chain: int, step: int) -> None:
    """Remove every metric a chain logged at `step`, as if the run had died between the
    journal's commit and the MLflow call."""
    (metrics,) = store.glob(f"*/{run_id}/metrics")
    for path in (metrics / f"chain{chain}").iterdir():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if int(line.split()[2]) != step]
        assert len(kept) == len(lines) - 1
        path.write_text("".join(line + "\n" for line in kept))


@pytest.mark.slow
def test_a_resumed_parallel_run_logs_into_the_same_mlflow_run_without_duplicates(
        fake_ollama, fashion_data_dir, tmp_path):
    def respond(body: dict) -> Reply:
        if body.get("format"):
            return Reply(content=DIAGNOSIS[1])
        seed = body["options"]["seed"]  # chain 0: a net that trains, chain 1: one that fails
        return Reply(content=replies.VALID_NET if seed < 1_000_000 else
                     replies.SHAPE_MISMATCH_NET)

    server = fake_ollama(default=respond)
    store = tmp_path / "store"
    args = run_args(server, fashion_data_dir, tmp_path, "par", 2)
    tracked_run([*args, "--parallel", "2", "--tracking-uri", "store"], cwd=tmp_path)  # relative
    run_dir = tmp_path / "par"
    client, run_id = mirror(run_dir)
    drop_step(store, run_id, chain=1, step=2)

    # Resumed from another folder: the store is still the one the run started with.
    args[args.index("--iterations") + 1] = "3"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tracked_run([*args, "--resume"], cwd=elsewhere)
    assert list(elsewhere.iterdir()) == []
    assert mirror(run_dir)[1] == run_id
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    records = read_records(run_dir)
    for chain in (0, 1):
        chain_records = [r for r in records if r["chain"] == chain]
        assert [r["iteration"] for r in chain_records] == [1, 2, 3]
        assert [s for s, _ in history(client, run_id, f"chain{chain}/ok")] == [1, 2, 3]
        assert_metrics_equal_journal(client, run_id, chain_records, prefix=f"chain{chain}/")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["iterations"] == "2" and run.data.tags["resumed.iterations"] == "3"
    assert not any(key.startswith(("accuracy", "ok")) for key in run.data.metrics)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_dead_tracking_server_warns_and_the_search_completes(fake_ollama, fashion_data_dir,
                                                               tmp_path):
    server = fake_ollama(default=by_role([replies.VALID_NET] * 2, DIAGNOSIS))
    uri = f"http://127.0.0.1:{closed_port()}"
    output = flat(tracked_run(
        [*run_args(server, fashion_data_dir, tmp_path, "dead", 2), "--tracking-uri", uri],
        cwd=tmp_path, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                           "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}))
    assert f"MLflow tracking at {uri} failed" in output
    assert "2 records not mirrored" in output and "--name dead --resume` syncs them" in output
    assert [r["iteration"] for r in read_records(tmp_path / "dead")] == [1, 2]
    assert "done: 2/2 successful" in output


def test_without_mlflow_the_run_fails_at_start_with_the_install_command(tmp_path):
    blocked = ("import sys; sys.modules['mlflow'] = None; sys.argv[0] = 'orchestrator'; "
               "from orchestrator.cli import app; app()")
    proc = subprocess.run(
        [sys.executable, "-c", blocked, "run", "--dataset", "fashionmnist", "--results-dir",
         str(tmp_path), "--name", "x", "--ollama-host", f"http://127.0.0.1:{closed_port()}",
         "--track", "mlflow"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert flat(proc.stdout).strip() == ("error: --track mlflow needs MLflow: pip install "
                                         "'orchestrator[mlflow]'")
    assert not (tmp_path / "x").exists()


def test_track_takes_only_mlflow(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--track", "wandb",
                           "--results-dir", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 2 and "expected mlflow, or unset" in flat(proc.stdout)


def fake_record(chain: int, iteration: int, status: str = fc.OK) -> dict:
    ok = status == fc.OK
    return {"iteration": iteration, "chain": chain, "status": status,
            "accuracy": 0.1 * iteration if ok else None, "best_accuracy": 0.5,
            "timings": {"generate": 1.0, "evaluate": 2.0, "improve": 0.5}, "code_file": None,
            "metrics": {"params": 1234}, "time": time.time()}


def test_commits_from_several_chains_are_mirrored_once_each_across_reopens(tmp_path):
    journal = Journal(tmp_path / "run")
    journal.create({"dataset": "tiny"})
    journal.load()
    warnings: list[str] = []
    settings = {"dataset": "tiny", "iterations": 20, "parallel": 4}

    def tracker() -> Tracker:
        return Tracker(journal, settings, str(tmp_path / "mlruns"), "run", 4, warnings.append)

    def commits(chain: int, iterations: range) -> None:
        for i in iterations:
            journal.commit(fake_record(chain, i, fc.OK if i % 3 else fc.NAN_LOSS), "code")

    with tracker():
        threads = [threading.Thread(target=commits, args=(c, range(1, 11))) for c in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    journal.commit(fake_record(2, 11), "code")  # committed while nothing mirrors
    with tracker():
        commits(0, range(11, 13))
    client, run_id = mirror(journal.root)
    assert warnings == []
    for chain, last in ((0, 12), (1, 10), (2, 11), (3, 10)):
        assert [s for s, _ in history(client, run_id, f"chain{chain}/ok")] == \
            list(range(1, last + 1))
        assert history(client, run_id, f"chain{chain}/status")[2] == (3, STATUS_CODES[fc.NAN_LOSS])
        assert history(client, run_id, f"chain{chain}/params")[0] == (1, 1234.0)


def test_an_iteration_tried_again_after_a_lost_attempt_is_mirrored_as_its_design(tmp_path):
    """Iteration 2's first attempt was lost to a dead server: MLflow's step 2 is the design
    that the second attempt evaluated, not the lost attempt."""
    journal = Journal(tmp_path / "run")
    journal.create({})
    journal.load()
    with Tracker(journal, {}, str(tmp_path / "mlruns"), "run", 1, print):
        journal.commit(fake_record(0, 1), "code")
        journal.commit(fake_record(0, 2, fc.LLM_ERROR), None)
        journal.commit(fake_record(0, 2), "code")
    client, run_id = mirror(journal.root)
    assert history(client, run_id, "ok") == [(1, 1.0), (2, 1.0)]


def test_a_stopped_search_ends_its_mlflow_run_killed_with_best_py_logged(tmp_path):
    journal = Journal(tmp_path / "run")
    journal.create({})
    journal.load()
    with pytest.raises(KeyboardInterrupt), Tracker(journal, {}, str(tmp_path / "mlruns"), "run",
                                                   1, print):
        journal.commit(fake_record(0, 1), "best = 1")
        raise KeyboardInterrupt
    client, run_id = mirror(journal.root)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [a.path for a in client.list_artifacts(run_id)] == ["best.py"]
    assert history(client, run_id, "accuracy") == [(1, 0.1)]


def test_observers_see_each_record_once_it_is_durable(tmp_path):
    journal = Journal(tmp_path / "run")
    journal.create({})
    seen: list[tuple[dict, list[dict]]] = []
    journal.on_commit.append(lambda record: seen.append((record, journal.records())))
    record = fake_record(0, 1)
    journal.commit(record, "code")
    assert seen[0][0] is record and seen[0][1][-1]["iteration"] == 1


def test_record_metrics_tolerate_missing_fields_and_name_every_failure_class():
    assert record_metrics({"status": "timeout"}) == {"ok": 0.0,
                                                     "status": STATUS_CODES["timeout"]}
    assert record_metrics({"status": "ok", "accuracy": 0.5, "test_accuracy": 0.4,
                           "val_accuracy": None, "metrics": None}) == {
        "ok": 1.0, "status": 0.0, "accuracy": 0.5, "test_accuracy": 0.4}
    assert set(STATUS_CODES) == fc.FAILURE_CLASSES | {fc.OK}
    assert sorted(STATUS_CODES.values()) == list(range(len(STATUS_CODES)))


# The codes users' MLflow runs hold: a class keeps its number for good.
LOGGED_CODES = {
    "ok": 0, "extract_error": 1, "syntax_error": 2, "contract_error": 3, "instantiate_error": 4,
    "shape_error": 5, "runtime_error": 6, "nan_loss": 7, "timeout": 8, "oom": 9, "cuda_oom": 10,
    "output_limit": 11, "sandbox_error": 12, "llm_error": 13, "duplicate": 14, "edit_error": 15,
}


def test_every_outcome_class_has_its_own_status_code_and_logged_codes_never_change():
    classes = set(fc.OUTCOMES) | fc.FAILURE_CLASSES | fc.RUNNER_CLASSES \
        | fc.INFRASTRUCTURE_CLASSES | {fc.OK}
    assert classes <= set(STATUS_CODES), "an outcome class without a status code for MLflow"
    assert len(set(STATUS_CODES.values())) == len(STATUS_CODES)
    assert {name: STATUS_CODES[name] for name in LOGGED_CODES} == LOGGED_CODES
