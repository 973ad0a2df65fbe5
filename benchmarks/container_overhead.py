"""Container overhead of the Docker sandbox, under runc and gVisor (runsc). Not a test.

    python benchmarks/container_overhead.py [--reps 5] [--import-reps 1] [--runtimes runc,runsc]

Measures, with the sandbox's own container settings (DockerSandbox._container_config):
  * import: `docker import` of the cached offline base tarball (sandbox-image/offline-base.sh);
  * trivial: create, start, run `true` to exit, remove, per container;
  * ready: container start until the runner prints READY (`--wait`: import torch, load data);
  * run(): one trivial candidate end to end, cold (no pool) and taking a pre-warmed
    container (a pool of one, whose warm-up already finished).
Prints medians (and min/max) over the repetitions.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.sandbox.base import Limits  # noqa: E402
from orchestrator.sandbox.docker import DockerSandbox  # noqa: E402
from orchestrator.sandbox.engine import connect  # noqa: E402
from orchestrator.sandbox.image import DEFAULT_CACHE, IMAGE, ensure_image  # noqa: E402
from orchestrator.sandbox.pool import PoolSize  # noqa: E402

CANDIDATE = """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    def forward(self, x):
        return self.f(x)
"""
JOB = {"input_shape": [1, 28, 28], "num_classes": 10, "mean": [0.5], "std": [0.25],
       "crop_padding": 0, "flip": False, "epochs": 1, "batch_size": 64, "lr": 0.01,
       "momentum": 0.9, "weight_decay": 0.0, "seed": 0, "device": "cpu", "precision": "fp32",
       "validate_batch": 2}


def tiny_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    d = root / "tiny" / "sandbox"
    d.mkdir(parents=True)
    np.save(d / "train_x.npy", rng.integers(0, 256, (256, 1, 28, 28), dtype=np.uint8))
    np.save(d / "train_y.npy", rng.integers(0, 10, 256).astype(np.uint8))
    np.save(d / "test_x.npy", rng.integers(0, 256, (128, 1, 28, 28), dtype=np.uint8))
    return d


def bench_import(reps: int, cache: Path) -> list[float]:
    tars = sorted(cache.glob("orchestrator-base-*.tar"))
    if not tars:
        print(f"no cached base tarball in {cache}: run sandbox-image/offline-base.sh first")
        return []
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(["docker", "import", str(tars[-1]), "orchestrator-base:bench"],
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
        subprocess.run(["docker", "rmi", "orchestrator-base:bench"], check=True,
                       stdout=subprocess.DEVNULL)
    return times


def bench_runtime(client, data: Path, runtime: str, reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in (
        "create", "start", "run `true`", "remove", "trivial total", "ready (--wait)",
        "run() cold", "run() pre-warmed")}
    limits = Limits(timeout=120, memory="2g")
    with DockerSandbox(data, limits, device="cpu", gpus="none", runtime=runtime, image=IMAGE,
                       pool=PoolSize(depth=0), client=client) as sb:
        for _ in range(reps):
            config = sb._container_config(wait=False)
            config.update(entrypoint=["true"], command=[])
            t0 = time.perf_counter()
            c = client.containers.create(**config)
            t1 = time.perf_counter()
            c.start()
            t2 = time.perf_counter()
            c.wait(timeout=60)
            t3 = time.perf_counter()
            c.remove(force=True)
            t4 = time.perf_counter()
            for key, v in (("create", t1 - t0), ("start", t2 - t1), ("run `true`", t3 - t2),
                           ("remove", t4 - t3), ("trivial total", t4 - t0)):
                out[key].append(v)
        for _ in range(reps):
            slot = sb._new_slot(wait=True)
            assert slot.error is None, slot.error
            slot.pump.wake.wait(300)
            assert slot.pump.ready.is_set(), slot.pump.tail()
            out["ready (--wait)"].append(slot.pump.ready_at - slot.started_at + slot.timings[
                "start_s"])
            sb._registry.destroy(slot)
        for _ in range(reps):
            t = time.perf_counter()
            ex = sb.run(CANDIDATE, JOB)
            assert ex.exit_code == 0 and ex.result_bytes, ex.log_tail
            out["run() cold"].append(time.perf_counter() - t)
    with DockerSandbox(data, limits, device="cpu", gpus="none", runtime=runtime, image=IMAGE,
                       pool=PoolSize(depth=1), client=client) as sb:
        for _ in range(reps + 1):
            sb._pool.peek().pump.wake.wait(300)  # fully warm, as after an LLM generation
            t = time.perf_counter()
            ex = sb.run(CANDIDATE, JOB)
            assert ex.exit_code == 0 and ex.result_bytes, ex.log_tail
            out["run() pre-warmed"].append(time.perf_counter() - t)
        out["run() pre-warmed"] = out["run() pre-warmed"][1:]
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):6.2f}s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--import-reps", type=int, default=1, help="0 skips the import benchmark")
    p.add_argument("--runtimes", default="runc,runsc")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    client = connect()
    ensure_image(client, offline=True, progress=True)
    rows: dict[str, dict[str, str]] = {}
    if args.import_reps:
        times = bench_import(args.import_reps, args.cache)
        rows["docker import (offline base)"] = {"-": fmt(times)}
    runtimes = [r for r in args.runtimes.split(",") if r]
    known = client.info().get("Runtimes") or {}
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_data(Path(tmp))
        for rt in runtimes:
            if rt not in known:
                print(f"skipping runtime {rt}: not registered")
                continue
            for key, values in bench_runtime(client, data, rt, args.reps).items():
                rows.setdefault(key, {})[rt] = fmt(values)
    cols = ["-"] + runtimes
    print(f"\nmedian (min-max) over {args.reps} reps; import over {args.import_reps}")
    print(f"| {'step':30} | " + " | ".join(f"{c:22}" for c in cols) + " |")
    print(f"|{'-' * 32}|" + "|".join("-" * 24 for _ in cols) + "|")
    for key, vals in rows.items():
        print(f"| {key:30} | " + " | ".join(f"{vals.get(c, ''):22}" for c in cols) + " |")


if __name__ == "__main__":
    main()
