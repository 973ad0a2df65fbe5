"""Evaluator speed: the paper's per-candidate subprocess against orchestrator's pre-warmed sandbox.

    .venv/bin/python benchmarks/evaluator_speed.py [--quick] [--fashion] [--device auto|cpu|cuda]
                                                   [--train N --test M] [--json PATH]

Evaluates the same reference nets (benchmarks/reference_nets.py) on the same data with
 (a) paper: benchmarks/paper_evaluator.py in a fresh `python` process per candidate
     (torch + torchvision, PIL transforms, DataLoader with 2 workers), run by an interpreter that
     has torchvision (--paper-python; found automatically, see README.md);
 (b) orchestrator: LocalSandbox (pre-warming) + orchestrator.search.evaluation.score, with the
     job dict built by orchestrator.search.evaluation.job_for(), exactly as the search loop does;
     with
     `--sandbox docker`, DockerSandbox (the product's default) instead.
Prints, per candidate, the critical-path seconds by phase, both accuracies and the (a)/(b) time
ratio, then candidates/hour of N concurrent LocalSandboxes for the tiny net. See README.md.

The host never imports torch (like the orchestrator's own host process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks import reference_nets  # noqa: E402
from orchestrator.config import RunConfig  # noqa: E402
from orchestrator.data import datasets  # noqa: E402
from orchestrator.sandbox import local as local_sandbox  # noqa: E402
from orchestrator.sandbox.base import Limits  # noqa: E402
from orchestrator.sandbox.local import LocalSandbox  # noqa: E402
from orchestrator.search.evaluation import job_for, score  # noqa: E402

PAPER_SCRIPT = Path(__file__).resolve().with_name("paper_evaluator.py")
PAPER_PYTHONS = (REPO / ".cache" / "venv-bench" / "bin" / "python",
                 REPO / ".venv-bench" / "bin" / "python")
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = REPO / ".cache" / "benchmarks" / "datasets"
PHASES = ("start", "import", "cuda", "data", "setup", "train", "predict", "exit", "host")
PROBE = ("import json, torch; out = {'python': __import__('sys').version.split()[0], "
         "'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
         "'torch_threads': torch.get_num_threads()}\n"
         "try:\n import torchvision; out['torchvision'] = torchvision.__version__\n"
         "except ImportError:\n out['torchvision'] = None\n"
         "print(json.dumps(out))")


# ---------------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2000/500 samples, nets tiny+vgg, throughput for N=1,2,4 "
                   "on 4 candidates")
    p.add_argument("--fashion", action="store_true",
                   help="real Fashion-MNIST (1x28x28): accuracy agreement of (a) and (b)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--train", type=int, help="training samples (default: 4000 on CPU, "
                   "2000 with --quick, the full split on CUDA)")
    p.add_argument("--test", type=int, help="test samples (default 1000 / 500 / full)")
    p.add_argument("--nets", help=f"comma list of {','.join(reference_nets.NAMES)} "
                   "(default: all; tiny,vgg with --quick or --fashion)")
    p.add_argument("--repeat", type=int, default=1,
                   help="repetitions of every (net, evaluator) pair; tables show medians")
    p.add_argument("--seeds", type=int, help="training seeds per pair (default 1; 2 with "
                   "--fashion, for a noise estimate)")
    p.add_argument("--seed", type=int, default=42, help="first seed (RunConfig.seed)")
    p.add_argument("--parallel", help="comma list of concurrent sandboxes for the throughput "
                   "table (default 1,2,4,8; 1,2,4 with --quick; none with --fashion); 0 skips it")
    p.add_argument("--parallel-candidates", type=int,
                   help="candidates per throughput row (default 8 on CPU, 16 on CUDA, 4 with "
                   "--quick)")
    p.add_argument("--workers", type=int, default=2, help="paper DataLoader num_workers")
    p.add_argument("--paper-python", help="interpreter with torch+torchvision for (a) "
                   "(default: this one if it has torchvision, else .cache/venv-bench, "
                   ".venv-bench; env BENCH_PAPER_PYTHON)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="dataset cache directory for the benchmark data")
    p.add_argument("--fashion-source", type=Path, default=FASHION_SOURCE,
                   help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--sandbox", choices=("local", "docker"), default="local",
                   help="(b)'s sandbox: pre-started processes (default; what a GPU machine "
                   "without Docker can run) or pre-warmed Docker containers")
    p.add_argument("--json", type=Path, help="write machine-readable results here")
    return p.parse_args(argv)


def probe(python: str) -> dict | None:
    """Versions and CUDA availability of an interpreter's torch (None: no torch there)."""
    try:
        out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_paper_python(explicit: str | None) -> tuple[str, dict]:
    """An interpreter with torch and torchvision for the paper baseline."""
    explicit = explicit or os.environ.get("BENCH_PAPER_PYTHON")
    options = [explicit] if explicit else [sys.executable, *map(str, PAPER_PYTHONS)]
    for python in options:
        if python and Path(python).exists():
            info = probe(python)
            if info and info.get("torchvision"):
                return os.path.abspath(python), info  # (a) runs in a temp cwd
    raise SystemExit(
        "no interpreter with torch+torchvision for the paper baseline; tried "
        f"{', '.join(map(str, options))}. Create one (benchmarks/README.md) or pass "
        "--paper-python")


def resolve_settings(args: argparse.Namespace, cuda: bool) -> SimpleNamespace:
    device = args.device if args.device != "auto" else ("cuda" if cuda else "cpu")
    full = device == "cuda"
    par_n = "1,2,4,8"
    if args.quick:
        train, test, nets, par_k, par_n = 2000, 500, "tiny,vgg", 4, "1,2,4"
    elif full:
        train, test, nets, par_k = None, None, ",".join(reference_nets.NAMES), 16
    else:
        train, test, nets, par_k = 4000, 1000, ",".join(reference_nets.NAMES), 8
    if args.fashion and not args.quick and not full:
        nets = "tiny,vgg"
    parallel = args.parallel if args.parallel is not None else ("0" if args.fashion else par_n)
    return SimpleNamespace(
        device=device,
        train=args.train if args.train is not None else train,
        test=args.test if args.test is not None else test,
        nets=[n.strip() for n in (args.nets or nets).split(",") if n.strip()],
        seeds=[args.seed + i for i in range(args.seeds or (2 if args.fashion else 1))],
        parallel=[int(n) for n in parallel.split(",") if int(n) > 0],
        parallel_candidates=args.parallel_candidates or par_k,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else (os.cpu_count() or 1),
    )


# ---------------------------------------------------------------------------------- data


def synthetic_cifar(data_dir: Path, train: int, test: int, seed: int = 0
                    ) -> datasets.PreparedDataset:
    """CIFAR-10-shaped (3x32x32, 10 classes) learnable uint8 data in the dataset cache layout.

    Each class is a smooth, left-right symmetric colour template (so flips keep the label);
    images are template + per-image smooth noise + pixel noise, with a random brightness.
    """
    name = f"synthetic-cifar10-{train}-{test}-{seed}"
    root = data_dir / name
    if (root / "meta.json").exists():
        meta = json.loads((root / "meta.json").read_text())
        return datasets.PreparedDataset(name, root, _spec(name, meta), meta)
    rng = np.random.default_rng(seed)
    templates = rng.normal(0.0, 1.0, (10, 3, 8, 8))
    templates = (templates + templates[..., ::-1]) / 2
    templates = templates.repeat(4, axis=2).repeat(4, axis=3)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = np.empty((n, 3, 32, 32), np.uint8)
        for lo in range(0, n, 5000):
            k = min(5000, n - lo)
            smooth = rng.normal(0.0, 1.0, (k, 3, 8, 8)).repeat(4, axis=2).repeat(4, axis=3)
            pixel = rng.normal(0.0, 1.0, (k, 3, 32, 32))
            gain = rng.uniform(0.7, 1.3, (k, 1, 1, 1))
            img = 120 + gain * (30 * templates[y[lo:lo + k]] + 30 * smooth + 20 * pixel)
            x[lo:lo + k] = np.clip(img, 0, 255).astype(np.uint8)
        return x, y

    (tr_x, tr_y), (te_x, te_y) = make(train), make(test)
    scaled = tr_x.astype(np.float32) / 255.0
    mean = [round(float(v), 4) for v in scaled.mean(axis=(0, 2, 3))]
    std = [round(float(v), 4) for v in scaled.std(axis=(0, 2, 3))]
    meta = {"name": name, "input_shape": [3, 32, 32], "num_classes": 10, "mean": mean,
            "std": std, "flip": True, "train_count": train, "test_count": test,
            "fingerprint": datasets.fingerprint([tr_x, tr_y, te_x, te_y])}
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=f".{name}."))
    (tmp / "sandbox").mkdir()
    (tmp / "labels").mkdir()
    for rel, arr in (("sandbox/train_x", tr_x), ("sandbox/train_y", tr_y),
                     ("sandbox/test_x", te_x), ("labels/test_y", te_y)):
        np.save(tmp / f"{rel}.npy", arr)
    (tmp / "meta.json").write_text(json.dumps(meta))
    tmp.rename(root)
    return datasets.PreparedDataset(name, root, _spec(name, meta), meta)


def _spec(name: str, meta: dict) -> datasets.DatasetSpec:
    return datasets.DatasetSpec(name, tuple(meta["input_shape"]), meta["num_classes"],
                                tuple(meta["mean"]), tuple(meta["std"]), meta["flip"], 0.4)


def fashion(data_dir: Path, source: Path, train: int | None, test: int | None, seed: int
            ) -> datasets.PreparedDataset:
    """Real Fashion-MNIST via orchestrator.data.datasets, subset to train/test samples."""
    prepared = datasets.prepare("fashionmnist", data_dir, source, progress=False)
    train = None if train is None or train >= prepared.train_count else train
    test = None if test is None or test >= prepared.test_count else test
    return datasets.subset(prepared, train, test, seed)


def loop_job(prepared: datasets.PreparedDataset, seed: int, device: str) -> dict:
    """The job dict exactly as the search loop builds it (job_for with a RunConfig)."""
    config = RunConfig(seed=seed, device=device)
    return job_for(config, prepared)


# ---------------------------------------------------------------------------------- (a) paper


def run_paper(python: str, prepared: datasets.PreparedDataset, job: dict, code: str,
              device: str, workers: int) -> dict:
    """One candidate through a fresh paper-style process; phase times in seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-paper-") as tmp:
        candidate, job_file = Path(tmp) / "candidate.py", Path(tmp) / "job.json"
        candidate.write_text(code)
        job_file.write_text(json.dumps(job))
        spawn_wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(
            [python, str(PAPER_SCRIPT), "--candidate", str(candidate), "--job", str(job_file),
             "--data", str(prepared.root), "--device", device, "--workers", str(workers),
             "--spawn-time", repr(spawn_wall)],
            capture_output=True, text=True, cwd=tmp)
        exit_wall = time.time()
        critical = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PAPER_RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"evaluator": "paper", "status": f"error (exit {proc.returncode})",
                "accuracy": None, "critical": critical, "phases": {},
                "error": (proc.stderr or proc.stdout)[-2000:]}
    res = json.loads(lines[-1].removeprefix("PAPER_RESULT "))
    t = res["times"]
    phases = {"start": t["start"], "import": t["import"], "cuda": t["cuda_init"],
              "data": t["data"], "setup": t["setup"], "train": t["train"],
              "predict": t["predict"], "exit": exit_wall - res["end_time"], "host": 0.0}
    return {"evaluator": "paper", "status": "ok", "accuracy": res["accuracy"],
            "critical": critical, "phases": phases, "off_path": {},
            "detail": {k: res[k] for k in ("steps", "final_loss", "first_batch_seconds",
                                           "torch_threads", "workers", "device", "torch",
                                           "torchvision", "params")}}


# --------------------------------------------------------------------------- (b) orchestrator


class SlotProbe:
    """Times LocalSandbox's private slot steps by wrapping them; their behaviour is unchanged.

    Records per slot: spawn seconds (`_Slot.__init__`, i.e. Popen of reaper+runner), when READY
    was seen, when `wait` returned and the mtimes of predictions.npy, result.json and the
    reaper's status file at that moment, and how long `destroy` took.
    """

    def __enter__(self) -> SlotProbe:
        slot_cls = local_sandbox._Slot
        self.saved = (slot_cls.__init__, slot_cls.wait, slot_cls.destroy)
        init, wait, destroy = self.saved

        def timed_init(slot: Any, *args: Any, **kwargs: Any) -> None:
            t = time.perf_counter()
            slot.bench_started = time.monotonic()
            init(slot, *args, **kwargs)
            slot.bench_spawn_seconds = time.perf_counter() - t
            slot.bench_ready_at = None

            def watch() -> None:
                slot.ready.wait()
                slot.bench_ready_at = time.monotonic()

            threading.Thread(target=watch, daemon=True).start()

        def timed_wait(slot: Any, timeout: float) -> str | None:
            killed = wait(slot, timeout)
            slot.bench_waited_wall = time.time()
            slot.bench_mtimes = {}
            for name, path in (("predictions.npy", slot.out_dir / "predictions.npy"),
                               ("result.json", slot.out_dir / "result.json"),
                               ("reaper.json", slot.status_file)):
                try:
                    slot.bench_mtimes[name] = path.stat().st_mtime_ns / 1e9
                except OSError:
                    slot.bench_mtimes[name] = None
            return killed

        def timed_destroy(slot: Any) -> None:
            t = time.perf_counter()
            destroy(slot)
            slot.bench_destroy_seconds = time.perf_counter() - t

        slot_cls.__init__, slot_cls.wait, slot_cls.destroy = timed_init, timed_wait, timed_destroy
        return self

    def __exit__(self, *exc: object) -> None:
        slot_cls = local_sandbox._Slot
        slot_cls.__init__, slot_cls.wait, slot_cls.destroy = self.saved


def wait_warm(box: LocalSandbox) -> Any:
    """Block until the box's pre-started runner printed READY (LLM generation outlasted the
    warm-up); returns that slot."""
    slot = box._pool.peek()
    slot.ready.wait()
    while getattr(slot, "bench_ready_at", 0) is None:
        time.sleep(0.001)
    return slot


def evaluate_orch(box: LocalSandbox, code: str, job: dict, labels: np.ndarray,
                  num_classes: int) -> dict:
    """One candidate through the box as the loop does it: box.run(code, job), then score()."""
    slot = box._pool.peek()
    submit_wall = time.time()
    t0 = time.perf_counter()
    execution = box.run(code, job)
    t_run = time.perf_counter()
    outcome = score(execution, labels, num_classes)
    critical = time.perf_counter() - t0
    m = outcome.metrics
    row: dict[str, Any] = {"evaluator": "orch", "status": outcome.status,
                           "accuracy": outcome.accuracy, "critical": critical, "phases": {},
                           "off_path": {}, "detail": {}}
    if slot is None or not outcome.ok:
        row["error"] = (outcome.error or {}).get("message")
        return row
    warm = float(m.get("warmup_seconds", 0.0))
    ready_at = slot.bench_ready_at
    row["off_path"] = {
        "start": (ready_at - slot.bench_started - warm) if ready_at else None,
        "warmup": warm,  # runner: import torch + optimizer machinery + CUDA + data load
    }
    preds_at = slot.bench_mtimes.get("predictions.npy") or slot.bench_waited_wall
    inside = m.get("import_seconds", 0.0) + m["train_seconds"] + m["predict_seconds"]
    nxt = box._pool.peek()
    row["phases"] = {
        "start": 0.0, "import": 0.0, "cuda": 0.0, "data": 0.0,
        # job hand-off (runner polls job.json), candidate import, Net(), validation forward,
        # np.save of the predictions
        "setup": (preds_at - submit_wall) - m["train_seconds"] - m["predict_seconds"],
        "train": m["train_seconds"], "predict": m["predict_seconds"],
        # fsyncs, result.json, os._exit, the reaper noticing (50 ms poll) and reaping
        "exit": slot.bench_waited_wall - preds_at,
        # collect + destroy + spawning the next pre-warmed slot + score()
        "host": critical - (slot.bench_waited_wall - submit_wall),
    }
    mt = slot.bench_mtimes
    row["detail"] = {
        "candidate_import": m.get("import_seconds"), "inside_runner": inside,
        # exit split: predictions -> result.json (fsyncs), result.json -> reaper status file
        # (runner exit, reaper's 50 ms poll, kill_all's /proc scans), status -> wait() returned
        "exit_writes": _gap(mt.get("predictions.npy"), mt.get("result.json")),
        "exit_runner_to_reaper": _gap(mt.get("result.json"), mt.get("reaper.json")),
        "exit_reaper_to_host": _gap(mt.get("reaper.json"), slot.bench_waited_wall),
        "destroy": getattr(slot, "bench_destroy_seconds", None),
        "spawn_next": getattr(nxt, "bench_spawn_seconds", None) if nxt else None,
        "score": critical - (t_run - t0), "steps": m.get("steps"), "params": m.get("params"),
        "final_loss": m.get("final_loss"), "device": m.get("device"),
        "sandbox_seconds": m.get("sandbox_seconds"),
    }
    return row


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def evaluate_docker(box: Any, code: str, job: dict, labels: np.ndarray,
                    num_classes: int) -> dict:
    """One candidate through a DockerSandbox whose pre-warmed container printed READY.

    The container's timings come from run()'s Execution.info; the hand-off, candidate import,
    validation, writes and container exit are not separable from outside, so "setup" holds
    them all and "exit" is empty."""
    t0 = time.perf_counter()
    execution = box.run(code, job)
    outcome = score(execution, labels, num_classes)
    critical = time.perf_counter() - t0
    m, info = outcome.metrics, execution.info
    row: dict[str, Any] = {"evaluator": "orch", "status": outcome.status,
                           "accuracy": outcome.accuracy, "critical": critical, "phases": {},
                           "off_path": {}, "detail": {}}
    if not outcome.ok:
        row["error"] = (outcome.error or {}).get("message") or execution.sandbox_error
        return row
    row["off_path"] = {"start": info.get("create_s", 0.0) + info.get("start_s", 0.0),
                       "warmup": float(m.get("warmup_seconds", 0.0))}
    row["phases"] = {
        "start": 0.0, "import": 0.0, "cuda": 0.0, "data": 0.0,
        "setup": execution.seconds - m["train_seconds"] - m["predict_seconds"],
        "train": m["train_seconds"], "predict": m["predict_seconds"], "exit": None,
        # reading the outputs, removing the container and its folders, score()
        "host": critical - execution.seconds,
    }
    row["detail"] = {"candidate_import": m.get("import_seconds"),
                     "ready_wait": info.get("ready_wait_s"), "destroy": info.get("teardown_s"),
                     "steps": m.get("steps"), "params": m.get("params"),
                     "final_loss": m.get("final_loss"), "device": m.get("device"),
                     "runtime": info.get("runtime")}
    return row


def make_box(kind: str, data_dir: Path, limits: Limits, device: str) -> Any:
    """A pre-warming sandbox of `kind` ("local" or "docker")."""
    if kind == "docker":
        # Imported here: a GPU machine without Docker (or docker-py) runs the local path only.
        from orchestrator.sandbox.docker import DockerSandbox

        return DockerSandbox(data_dir, limits, device)
    return LocalSandbox(data_dir, limits, device)


def run_orch(prepared: datasets.PreparedDataset, job: dict, code: str, device: str,
             labels: np.ndarray, sandbox: str = "local") -> dict:
    """A fresh pre-warming sandbox per measurement, waited until READY, then one candidate;
    closed afterwards so no idle runner disturbs the other evaluator."""
    num_classes = prepared.spec.num_classes
    with make_box(sandbox, prepared.sandbox_dir, Limits(), device) as box:
        if sandbox == "docker":
            box._pool.peek().pump.wake.wait()  # READY (or an early exit, which run() reports)
            return evaluate_docker(box, code, job, labels, num_classes)
        wait_warm(box)
        return evaluate_orch(box, code, job, labels, num_classes)


def throughput(prepared: datasets.PreparedDataset, job: dict, code: str, device: str,
               labels: np.ndarray, n: int, total: int, cores: int, sandbox: str = "local"
               ) -> dict:
    """`n` threads, each with its own sandbox, evaluate `total` candidates back to back.

    The clock starts before the sandboxes are created, so every candidate pays its runner's
    warm-up (back to back there is no LLM generation to hide it behind), whatever `n` is.
    """
    limits = Limits(cpus=cores / n)
    omp = max(1, int(limits.cpus))  # what both sandboxes put in OMP_NUM_THREADS
    rows: list[dict] = []
    lock = threading.Lock()
    share = [total // n + (1 if i < total % n else 0) for i in range(n)]

    def worker(box: Any, count: int) -> None:
        # Slots this thread pre-starts get the reaper's death signal when the thread ends
        # (PR_SET_PDEATHSIG follows the creating thread): its last, unused one dies early.
        for _ in range(count):
            t = time.perf_counter()
            execution = box.run(code, job)
            outcome = score(execution, labels, prepared.spec.num_classes)
            with lock:
                rows.append({"status": outcome.status, "seconds": time.perf_counter() - t,
                             "accuracy": outcome.accuracy,
                             "warmup_seconds": outcome.metrics.get("warmup_seconds"),
                             "train_seconds": outcome.metrics.get("train_seconds")})

    t0 = time.perf_counter()
    boxes = [make_box(sandbox, prepared.sandbox_dir, limits, device) for _ in range(n)]
    try:
        threads = [threading.Thread(target=worker, args=(b, k))
                   for b, k in zip(boxes, share, strict=True)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    finally:
        for box in boxes:
            box.close()
    ok = sum(r["status"] == "ok" for r in rows)

    def mean(key: str) -> float:
        return statistics.mean(r[key] or 0.0 for r in rows) if rows else 0.0

    return {"n": n, "limits_cpus": limits.cpus, "omp_threads": omp, "candidates": len(rows),
            "ok": ok, "wall": wall, "per_hour": len(rows) / wall * 3600 if rows else 0.0,
            "mean_candidate_seconds": mean("seconds"),
            "mean_warmup_seconds": mean("warmup_seconds"),
            "mean_train_seconds": mean("train_seconds")}


# ---------------------------------------------------------------------------------- output


def fmt(v: float | None, width: int = 7, brackets: bool = False) -> str:
    if v is None:
        return "-".rjust(width)
    text = f"[{v:.2f}]" if brackets else f"{v:.2f}"
    return text.rjust(width)


def print_candidates(rows: list[dict]) -> None:
    head = f"{'net':9} {'eval':6} {'seed':>4} " + " ".join(f"{p:>7}" for p in PHASES)
    print(head + f" | {'critical':>8} {'acc':>7}  status")
    print("-" * (len(head) + 28))
    for r in rows:
        ph, off = r["phases"], r.get("off_path", {})
        if r["evaluator"] == "orch" and off:
            cells = [fmt(off.get("start"), brackets=True), fmt(off.get("warmup"), brackets=True),
                     "  [in]".rjust(7), "  [in]".rjust(7)]
            cells += [fmt(ph.get(p)) for p in PHASES[4:]]
        else:
            cells = [fmt(ph.get(p)) for p in PHASES]
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        print(f"{r['net']:9} {r['evaluator']:6} {r['seed']:>4} " + " ".join(cells)
              + f" | {r['critical']:8.2f} {acc:>7}  {r['status']}")
    print("  [x]: off the critical path (orch: process start, and warm-up = import torch + "
          "CUDA init + data load, all in the runner's warmup_seconds, done before READY).")
    print("  setup: paper = exec candidate + Net().to(device); orch = job hand-off + candidate "
          "import + Net() + validation forward + saving predictions.")
    print("  exit: paper = interpreter teardown; orch = fsync'd writes + runner exit + reaper. "
          "host: orch = collect + destroy + spawn next warm slot + score().")


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows: list[dict], nets: list[str]) -> dict:
    """Per net: median critical path and mean accuracy of each evaluator, ratio (a)/(b)."""
    summary: dict[str, Any] = {"nets": {}}
    tot_a = tot_b = 0.0
    for net in nets:
        a = [r for r in rows if r["net"] == net and r["evaluator"] == "paper"]
        b = [r for r in rows if r["net"] == net and r["evaluator"] == "orch"]
        ca, cb = median([r["critical"] for r in a]), median([r["critical"] for r in b])
        acc_a = [r["accuracy"] for r in a if r["accuracy"] is not None]
        acc_b = [r["accuracy"] for r in b if r["accuracy"] is not None]
        entry = {
            "paper_critical": ca, "orch_critical": cb,
            "ratio": ca / cb if ca and cb else None,
            "paper_accuracy": statistics.mean(acc_a) if acc_a else None,
            "orch_accuracy": statistics.mean(acc_b) if acc_b else None,
            "paper_phases": {p: median([r["phases"].get(p) for r in a]) for p in PHASES},
            "orch_phases": {p: median([r["phases"].get(p) for r in b]) for p in PHASES},
            "orch_off_path": {k: median([r["off_path"].get(k) for r in b if r["off_path"]])
                              for k in ("start", "warmup")},
        }
        entry["noise"] = agreement(a, b)
        summary["nets"][net] = entry
        tot_a += ca or 0.0
        tot_b += cb or 0.0
    summary["paper_total"], summary["orch_total"] = tot_a, tot_b
    summary["ratio_total"] = tot_a / tot_b if tot_b else None
    return summary


def agreement(a: list[dict], b: list[dict]) -> dict:
    """Accuracy difference (a)-(b) and a tolerance from the seed spread and the test size."""
    by_seed = {}
    for r in a + b:
        by_seed.setdefault((r["evaluator"], r["seed"]), []).append(r["accuracy"])
    acc_a = [statistics.mean(v) for (e, _), v in by_seed.items() if e == "paper" and None not in v]
    acc_b = [statistics.mean(v) for (e, _), v in by_seed.items() if e == "orch" and None not in v]
    if not acc_a or not acc_b:
        return {}
    diff = statistics.mean(acc_a) - statistics.mean(acc_b)
    sds = [statistics.stdev(x) for x in (acc_a, acc_b) if len(x) > 1]
    seed_sd = math.sqrt(statistics.mean([s * s for s in sds])) if sds else None
    k = min(len(acc_a), len(acc_b))
    if seed_sd is None:  # one seed: no noise estimate, no verdict
        return {"diff": diff, "seed_sd": None, "seeds": k, "tolerance": None, "agree": None}
    tol = max(0.03, 3 * seed_sd * math.sqrt(2 / k))
    return {"diff": diff, "seed_sd": seed_sd, "seeds": k, "tolerance": tol,
            "agree": abs(diff) <= tol}


def pct(v: float | None, spec: str = ".4f", scale: float = 1.0) -> str:
    return "-" if v is None else format(scale * v, spec)


def print_summary(summary: dict) -> None:
    print(f"{'net':9} {'paper s':>8} {'orch s':>8} {'a/b':>6} | {'acc paper':>9} "
          f"{'acc orch':>9} {'diff pp':>8} {'seed sd pp':>10} {'tol pp':>7} agree")
    for net, e in summary["nets"].items():
        n = e["noise"]
        agree = "n/a" if not n or n["agree"] is None else ("yes" if n["agree"] else "NO")
        print(f"{net:9} {fmt(e['paper_critical'], 8)} {fmt(e['orch_critical'], 8)} "
              f"{fmt(e['ratio'], 6)} | {pct(e['paper_accuracy']):>9} "
              f"{pct(e['orch_accuracy']):>9} {pct(n.get('diff'), '+.2f', 100):>8} "
              f"{pct(n.get('seed_sd'), '.2f', 100):>10} {pct(n.get('tolerance'), '.1f', 100):>7} "
              f"{agree}")
    print(f"{'all nets':9} {fmt(summary['paper_total'], 8)} {fmt(summary['orch_total'], 8)} "
          f"{fmt(summary['ratio_total'], 6)}   (sum of per-net median critical paths)")


def print_parallel(results: list[dict], cores: int, sandbox: str) -> None:
    print(f"{'N':>2} {'cpus/box':>8} {'OMP':>4} {'cands':>5} {'ok':>3} {'wall s':>7} "
          f"{'cand/h':>7} {'run s':>7} {'warm s':>7} {'train s':>7}")
    for r in results:
        print(f"{r['n']:>2} {r['limits_cpus']:>8.2f} {r['omp_threads']:>4} {r['candidates']:>5} "
              f"{r['ok']:>3} {r['wall']:>7.1f} {r['per_hour']:>7.0f} "
              f"{r['mean_candidate_seconds']:>7.2f} {r['mean_warmup_seconds']:>7.2f} "
              f"{r['mean_train_seconds']:>7.2f}")
    box = "DockerSandbox" if sandbox == "docker" else "LocalSandbox"
    print(f"  N threads, each with its own {box}(prewarm=True, Limits(cpus={cores}/N)) "
          "-> OMP_NUM_THREADS=max(1,int(cpus)). Candidates back to back; the clock includes "
          "creating the sandboxes, so every candidate pays one runner warm-up (no LLM "
          "generation hides it here).")
    print("  run s: box.run+score as one thread sees it (includes waiting for a runner still "
          "warming up); warm s: the runner's warmup_seconds; train s: its train_seconds "
          "(means).")
    if cores <= 2:
        print(f"  This machine has {cores} cores: expect no gain beyond N={cores}; more "
              "sandboxes only share the same cores (and add warm-up processes).")


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    paper_python, paper_info = find_paper_python(args.paper_python)
    runner_info = probe(sys.executable)
    if runner_info is None:
        raise SystemExit(f"{sys.executable} has no torch: the LocalSandbox runner needs it")
    cfg = resolve_settings(args, bool(runner_info["cuda"]))
    for python, info in ((paper_python, paper_info), (sys.executable, runner_info)):
        if cfg.device == "cuda" and not info["cuda"]:
            raise SystemExit(f"{python}'s torch cannot see CUDA")
    for net in cfg.nets:
        reference_nets.source(net)  # unknown names fail now, not after minutes
    args.data_dir = args.data_dir.expanduser().resolve()  # the runner's cwd is its slot folder
    if args.fashion:
        prepared = fashion(args.data_dir, args.fashion_source, cfg.train, cfg.test, args.seed)
    else:
        prepared = synthetic_cifar(args.data_dir, cfg.train or 50000, cfg.test or 10000)
    spec = prepared.spec
    labels = prepared.test_labels()
    settings = {
        "device": cfg.device, "dataset": prepared.name, "root": str(prepared.root),
        "train": prepared.train_count, "test": prepared.test_count,
        "input_shape": list(spec.input_shape), "nets": cfg.nets, "seeds": cfg.seeds,
        "repeat": args.repeat, "cores": cfg.cores, "paper_python": paper_python,
        "paper": paper_info, "runner_python": sys.executable, "runner": runner_info,
        "paper_workers": args.workers, "parallel": cfg.parallel,
        "parallel_candidates": cfg.parallel_candidates, "quick": args.quick,
        "fashion": args.fashion, "sandbox": args.sandbox,
    }
    print(f"evaluator_speed: device={cfg.device} data={prepared.name} "
          f"{prepared.train_count}/{prepared.test_count} {list(spec.input_shape)} "
          f"nets={','.join(cfg.nets)} seeds={cfg.seeds} repeat={args.repeat} cores={cfg.cores}")
    print(f"  (a) paper: {paper_python}  torch {paper_info['torch']} torchvision "
          f"{paper_info['torchvision']}, torch threads {paper_info['torch_threads']} "
          f"(default), DataLoader num_workers={args.workers}, PIL transforms")
    if args.sandbox == "docker":
        print("  (b) orch : DockerSandbox (pre-warming) Limits() as the loop's defaults, the "
              "sandbox image's torch (runc unless the daemon's default differs), job from "
              "job_for()")
    else:
        print(f"  (b) orch : {sys.executable}  torch {runner_info['torch']}, LocalSandbox("
              f"prewarm=True) Limits() as the loop's defaults (no OMP_NUM_THREADS: torch "
              f"default {runner_info['torch_threads']} threads), job from job_for()")
    print()

    rows: list[dict] = []
    with SlotProbe():
        for rep in range(args.repeat):
            for net in cfg.nets:
                code = reference_nets.source(net, spec.input_shape[0], spec.num_classes)
                for seed in cfg.seeds:
                    job = loop_job(prepared, seed, cfg.device)
                    order = ("paper", "orch") if (rep + cfg.seeds.index(seed)) % 2 == 0 \
                        else ("orch", "paper")
                    for which in order:
                        if which == "paper":
                            row = run_paper(paper_python, prepared, job, code, cfg.device,
                                            args.workers)
                        else:
                            row = run_orch(prepared, job, code, cfg.device, labels,
                                           args.sandbox)
                        row.update(net=net, seed=seed, rep=rep)
                        rows.append(row)
                        print(f"  . {net} {which} seed {seed}: {row['critical']:.1f} s, "
                              f"{row['status']}", file=sys.stderr, flush=True)
        print("Per candidate: critical-path seconds by phase")
        print_candidates(rows)
        if args.sandbox == "docker":
            print("  docker: start = container create + start; setup also holds the runner's "
                  "writes and the container's exit; host = reading outputs + removing the "
                  "container + score().")
        summary = summarize(rows, cfg.nets)
        print()
        print("Summary: median critical path per candidate, accuracy (mean over seeds), "
              "ratio (a) paper / (b) orch")
        print_summary(summary)
        print("  diff = paper - orch. tol = max(3 pp, 3 x seed sd x sqrt(2/seeds)), seed sd "
              "pooled over both evaluators; needs --seeds >= 2 (the --fashion default), else "
              "n/a. Data order and augmentation streams differ, so 1-epoch accuracies on small "
              "subsets differ by a few points.")

        parallel: list[dict] = []
        if cfg.parallel:
            code = reference_nets.source("tiny", spec.input_shape[0], spec.num_classes)
            job = loop_job(prepared, cfg.seeds[0], cfg.device)
            for n in cfg.parallel:
                parallel.append(throughput(prepared, job, code, cfg.device, labels, n,
                                           cfg.parallel_candidates, cfg.cores, args.sandbox))
                print(f"  . parallel {n}: {parallel[-1]['per_hour']:.0f} candidates/h",
                      file=sys.stderr, flush=True)
            print()
            print(f"Throughput: tiny net, {cfg.parallel_candidates} candidates per row, "
                  f"{cfg.device}")
            print_parallel(parallel, cfg.cores, args.sandbox)

    total = time.perf_counter() - started
    print(f"\nbenchmark wall time {total:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": settings, "candidates": rows,
                                         "summary": summary, "parallel": parallel,
                                         "wall_seconds": total}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
