"""`--track mlflow`: a mirror of the journal in MLflow (README, "Results").

The journal is the truth; MLflow is a copy of it. The run's settings are logged once as
parameters, each record as metrics at its step (the chain's iteration number), and at the end
best.py and the report as artifacts. Everything that talks to MLflow runs on one worker thread:
a commit only queues its record, so a slow or dead tracking server never holds up the search,
and records from several chains are logged one at a time. When MLflow cannot be reached, the
tracker warns, keeps the records it could not log and retries them later; at start (and on
`--resume`) it syncs every record of the journal that the MLflow run lacks, metric by metric
and step by step, so a crash between a commit and its MLflow call, or a resume, loses nothing
and logs nothing twice.

Metric names: `accuracy`, `ok`, ... for a single-chain run; with `--parallel N`, each chain's
are prefixed `chain<c>/` (`chain0/accuracy`, `chain1/accuracy`, ...).
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import orjson

from orchestrator.outcomes import OK, OUTCOMES
from orchestrator.store.files import write_atomic
from orchestrator.store.journal import Journal
from orchestrator.store.records import designs

TRACKING_FILE = "mlflow.json"  # {tracking_uri, experiment_id, run_id} of the mirror
DEFAULT_EXPERIMENT = "orchestrator"
INSTALL_HINT = "pip install 'orchestrator[mlflow]'"
# The outcome classes as numbers (metric `status`), by their stable position in OUTCOMES.
STATUS_CODES = {name: code for code, name in enumerate(OUTCOMES)}
# MLflow retries an unreachable server for minutes by default; the journal keeps every record
# and the tracker retries later, so it fails fast instead (a user's own settings win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
RETRY_AFTER_S = 60.0  # after a failure, records are queued and retried no sooner than this
CLOSE_WAIT_S = 300.0  # how long the end of a run waits for the last records and artifacts
STOP = object()


class TrackingUnavailable(RuntimeError):
    """MLflow is not installed."""


def require_mlflow() -> None:
    """Raise TrackingUnavailable, with the install command, unless MLflow can be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingUnavailable(f"--track mlflow needs MLflow: {INSTALL_HINT}") from None


def resolve_uri(given: str | None) -> str:
    """The tracking URI: --tracking-uri, else MLFLOW_TRACKING_URI, else ./mlruns (a local file
    store). A local path becomes an absolute file: URI, which the run's config records, so a
    resume from another folder finds the same mirror."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if not urlparse(uri).scheme or len(urlparse(uri).scheme) == 1:  # a path (C:\ too)
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme == "file"


def metric_names(chains: int) -> Callable[[int, str], str]:
    """The metric name of a chain's value: `name`, or `chain<c>/name` with several chains."""
    if chains <= 1:
        return lambda chain, name: name
    return lambda chain, name: f"chain{chain}/{name}"


def record_metrics(record: dict) -> dict[str, float]:
    """A record's metrics: accuracy (and test/val accuracy) when it has them, ok (1 or 0),
    status (STATUS_CODES), the chain's best accuracy, the role timings in seconds, and the
    candidate's parameters and FLOPs."""
    values: dict[str, object] = {
        "ok": 1.0 if record.get("status") == OK else 0.0,
        "status": STATUS_CODES.get(record.get("status"), -1),
        "accuracy": record.get("accuracy"),
        "test_accuracy": record.get("test_accuracy"),
        "val_accuracy": record.get("val_accuracy"),
        "best_accuracy": record.get("best_accuracy"),
    }
    for role, seconds in (record.get("timings") or {}).items():
        values[f"{role}_s"] = seconds
    measured = record.get("metrics") or {}
    for key in ("params", "flops"):
        values[key] = measured.get(key) if isinstance(measured, dict) else None
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def params_of(settings: dict) -> dict[str, str]:
    """The settings as MLflow parameters: strings as they are, anything else as JSON, cut at
    MLflow's 6000 characters. The tracking URI is left out (it may hold credentials)."""
    return {key: (value if isinstance(value, str) else orjson.dumps(value).decode())[:6000]
            for key, value in settings.items() if key != "tracking_uri"}


class Tracker:
    """Mirrors one run's journal into an MLflow run; a context manager around the search.

    `report(dir)` writes the report files into dir (logged as artifacts under `report/`);
    `warn` reports a problem (from the worker thread too)."""

    def __init__(self, journal: Journal, settings: dict, uri: str | None, name: str, chains: int,
                 warn: Callable[[str], None], report: Callable[[Path], None] | None = None,
                 ) -> None:
        self.journal = journal
        self.settings = settings
        self.stored = self._stored()
        self.uri = resolve_uri(uri)
        self.name = name
        self.metric = metric_names(chains)
        self.warn = warn
        self.report = report
        self.run_id: str | None = None
        self.logged: set[tuple[str, int]] = set()  # (metric, step) already in MLflow
        self.pending: list[dict] = []  # records not yet logged (MLflow unreachable)
        self.retry_at = 0.0
        self.failing = False
        self.queue: queue.Queue = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self.status = "FINISHED"

    # The search side: never blocks on MLflow.

    def __enter__(self) -> Tracker:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if is_file_store(self.uri):  # MLflow 3.x refuses a file store unless allowed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        for record in self.journal.records():  # what MLflow lacks is synced by the worker
            self.queue.put(record)
        self.journal.on_commit.append(self.queue.put)
        self.worker.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        with contextlib.suppress(ValueError):
            self.journal.on_commit.remove(self.queue.put)
        if exc_type is not None:
            self.status = "KILLED" if issubclass(exc_type, KeyboardInterrupt | SystemExit) \
                else "FAILED"
        self.queue.put(STOP)
        self.worker.join(CLOSE_WAIT_S)
        if self.worker.is_alive():
            self.warn(f"MLflow did not answer within {CLOSE_WAIT_S:.0f} s; the MLflow run may "
                      "lack the last records (the journal has them; a --resume syncs them)")

    # The worker: every MLflow call.

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is STOP:
                break
            self.pending.append(item)
            if self.queue.empty():  # a backlog (the sync at start) is logged in one go
                self._flush()
        self._flush(force=True)
        if self.pending:
            count = len(self.pending)
            self.warn(f"MLflow: {count} record{'s' * (count != 1)} not mirrored to {self.uri}; "
                      "the journal has them, and `orchestrator run --name "
                      f"{self.name} --resume` syncs them")
            return
        self._guarded(self._finish)

    def _flush(self, force: bool = False) -> None:
        if not self.pending or (not force and time.monotonic() < self.retry_at):
            return
        if self.run_id is None and not self._guarded(self._open):
            return
        if self._guarded(self._log, self.pending):
            self.pending = []

    def _guarded(self, call: Callable, *args: object) -> bool:
        """Run an MLflow call; on failure warn (once per outage) and back off."""
        try:
            call(*args)
        except Exception as exc:  # MLflow raises many kinds (HTTP, store, protobuf)
            if not self.failing:
                self.warn(f"MLflow tracking at {self.uri} failed ({_one_line(exc)}); the "
                          "search goes on, the journal keeps every record and the tracker "
                          f"retries in {RETRY_AFTER_S:.0f} s")
            self.failing = True
            self.retry_at = time.monotonic() + RETRY_AFTER_S
            return False
        if self.failing:
            self.warn(f"MLflow tracking at {self.uri} works again")
        self.failing = False
        return True

    def _open(self) -> None:
        """Reopen the run's MLflow run (kept in mlflow.json), else create it; log the
        parameters it lacks and note the (metric, step) pairs it holds."""
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunTag

        self.client = client = MlflowClient(self.uri)
        run = self._existing_run(client)
        if run is None:
            experiment_id = self._experiment(client)
            run = client.create_run(experiment_id, run_name=self.name, tags={
                "orchestrator.run_dir": str(self.journal.root.resolve())})
            write_atomic(self.journal.root / TRACKING_FILE, orjson.dumps({
                "tracking_uri": self.uri, "experiment_id": experiment_id,
                "run_id": run.info.run_id}, option=orjson.OPT_INDENT_2))
        elif run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        run_id = run.info.run_id
        have = run.data.params
        params = params_of(self.settings)
        new = [Param(k, v) for k, v in params.items() if k not in have]
        changed = [RunTag(f"resumed.{k}", v) for k, v in params.items()
                   if k in have and have[k] != v]  # a setting a --resume changed
        for i in range(0, max(len(new), len(changed)), 100):
            client.log_batch(run_id, params=new[i:i + 100], tags=changed[i:i + 100])
        for key in run.data.metrics:
            self.logged |= {(key, m.step) for m in client.get_metric_history(run_id, key)}
        self.run_id = run_id

    def _existing_run(self, client):
        run_id = self.stored.get("run_id")
        if not run_id or self.stored.get("tracking_uri") != self.uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException:  # the store was moved or cleared: start a new MLflow run
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _experiment(self, client) -> str:
        from mlflow.exceptions import MlflowException

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException:  # created meanwhile by another run
            return client.get_experiment_by_name(name).experiment_id

    def _log(self, records: list[dict]) -> None:
        from mlflow.entities import Metric

        batch: list[Metric] = []
        for record in designs(records):  # a lost attempt's iteration is tried again
            step = int(record["iteration"])
            stamp = int(float(record.get("time") or time.time()) * 1000)
            for key, value in record_metrics(record).items():
                name = self.metric(int(record.get("chain") or 0), key)
                if (name, step) not in self.logged:
                    batch.append(Metric(name, value, stamp, step))
        for i in range(0, len(batch), 1000):  # MLflow's limit per batch
            chunk = batch[i:i + 1000]
            self.client.log_batch(self.run_id, metrics=chunk)
            self.logged |= {(m.key, m.step) for m in chunk}

    def _finish(self) -> None:
        """best.py and the report as artifacts; the run's end status."""
        best = self.journal.root / "best.py"
        if best.exists():
            self.client.log_artifact(self.run_id, str(best))
        if self.report is not None and self.journal.records():
            with tempfile.TemporaryDirectory(prefix="orchestrator-report-") as out:
                try:
                    self.report(Path(out))
                except Exception as exc:  # a report bug must not cost the other artifacts
                    self.warn(f"MLflow: the report could not be built: {_one_line(exc)}")
                else:
                    self.client.log_artifacts(self.run_id, out, artifact_path="report")
        self.client.set_terminated(self.run_id, self.status)

    def _stored(self) -> dict:
        path = self.journal.root / TRACKING_FILE
        try:
            return orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
