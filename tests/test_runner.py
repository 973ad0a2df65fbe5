"""Tests of sandbox-image/runner.py: real subprocesses on CPU, tiny models, synthetic data."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")

RUNNER = Path(__file__).resolve().parents[1] / "sandbox-image" / "runner.py"
CLASSES = 4
SHAPE = (1, 28, 28)
BAND = SHAPE[1] // CLASSES  # class k: a bright horizontal band in rows [k*BAND, (k+1)*BAND)

JOB = {
    "input_shape": list(SHAPE), "num_classes": CLASSES, "mean": [0.3], "std": [0.3],
    "crop_padding": 4, "flip": True, "epochs": 1, "batch_size": 32, "lr": 0.05,
    "momentum": 0.9, "weight_decay": 0.0005, "seed": 7, "device": "cpu",
    "precision": "fp32", "validate_batch": 2,
}

GOOD = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        print("chatty candidate " * 20000)  # a lot of output must not disturb the runner
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 1)),
        )
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
"""

TINY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""

BATCHNORM_1D = TINY.replace(
    "nn.Linear(28 * 28, 4)",
    "nn.Sequential(nn.Linear(28 * 28, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))")
LAZY = TINY.replace("nn.Linear(28 * 28, 4)", "nn.LazyLinear(4)")  # in_features from the input
NO_NET = "import torch\nX = 1\n"
NET_ARGS = TINY.replace("def __init__(self):", "def __init__(self, width):")
NOT_MODULE = "class Net:\n    pass\n"
NO_FORWARD = "from torch import nn\nclass Net(nn.Module):\n    pass\n"
INIT_RAISES = TINY.replace("super().__init__()", "raise ValueError('init boom')")
WRONG_SHAPE = TINY.replace("return self.fc(x.flatten(1))", "return self.fc(x.flatten(1))[:, :3]")
NOT_TENSOR = TINY.replace("return self.fc(x.flatten(1))", "return [self.fc(x.flatten(1))]")
MATMUL = TINY.replace("nn.Linear(28 * 28, 4)", "nn.Linear(10, 4)")
NAN = TINY.replace("return self.fc(x.flatten(1))", "return self.fc(x.flatten(1)) * float('nan')")
IMPORT_RAISES = "import torch\nraise RuntimeError('import boom')\n"
SYSEXIT_INIT = "import sys\n" + TINY.replace("super().__init__()", "sys.exit(3)")
INTERRUPT_FORWARD = TINY.replace(
    "return self.fc(x.flatten(1))", "raise KeyboardInterrupt('forward interrupt')"
)
TRAIN_RAISES = TINY.replace(
    "def forward(self, x):",
    "calls = 0\n\n    def forward(self, x):\n"
    "        Net.calls += 1\n"
    "        if Net.calls == 3:\n"
    "            raise ValueError('boom on call 3')",
)

GIB = 1 << 30


def oom_forward(asked: str) -> str:
    """A net whose training forward raises torch's CUDA OOM, asking for `asked` (there is no
    GPU here: the message is the one stand-in for the GPU's figures)."""
    return TINY.replace(
        "def forward(self, x):",
        "def forward(self, x):\n"
        "        if self.training:\n"
        "            raise torch.cuda.OutOfMemoryError(\n"
        f"                'CUDA out of memory. Tried to allocate {asked}. GPU 0 has a total '\n"
        "                'capacity of 23.99 GiB of which 6.00 MiB is free.')",
    )


OOM_SMALL, OOM_HUGE = oom_forward("20.00 MiB"), oom_forward("6.00 GiB")

# name -> (candidate code, expected status, expected phase, text the error message contains)
CASES = {
    "no-net": (NO_NET, "contract_error", "instantiate", "no `Net`"),
    "net-args": (NET_ARGS, "contract_error", "instantiate", "width"),
    "not-module": (NOT_MODULE, "contract_error", "instantiate", "nn.Module"),
    "no-forward": (NO_FORWARD, "contract_error", "instantiate", "forward"),
    "init": (INIT_RAISES, "instantiate_error", "instantiate", "init boom"),
    "import": (IMPORT_RAISES, "instantiate_error", "import", "import boom"),
    "wrong-shape": (WRONG_SHAPE, "shape_error", "validate", "[2, 4]"),
    "not-tensor": (NOT_TENSOR, "shape_error", "validate", "got list"),
    "matmul": (MATMUL, "shape_error", "validate", "mat1 and mat2"),
    "train": (TRAIN_RAISES, "runtime_error", "train", "boom on call 3"),
    "nan": (NAN, "nan_loss", "train", "step 1"),
    "sys-exit": (SYSEXIT_INIT, "runtime_error", "instantiate", "3"),
    "interrupt": (INTERRUPT_FORWARD, "runtime_error", "validate", "interrupt"),
}


# ---------------------------------------------------------------- fixtures and helpers


def make_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 1x28x28 uint8 images whose class is the row band holding a bright stripe."""
    y = rng.integers(0, CLASSES, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, *SHAPE)).astype(np.uint8)
    for k in range(CLASSES):
        rows = slice(k * BAND, (k + 1) * BAND)
        x[y == k, :, rows, :] = rng.integers(180, 256, (int((y == k).sum()), 1, BAND, SHAPE[2]))
    return x, y


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A sandbox/ folder (512 train, 256 test) and the test labels the runner never sees."""
    root = tmp_path_factory.mktemp("sandbox")
    rng = np.random.default_rng(0)
    train_x, train_y = make_images(rng, 512)
    test_x, test_y = make_images(rng, 256)
    np.save(root / "train_x.npy", train_x)
    np.save(root / "train_y.npy", train_y)
    np.save(root / "test_x.npy", test_x)
    return root, test_y


def write_job(job_dir: Path, job: dict) -> None:
    """Write job.json the way the host does: temporary file, then rename."""
    tmp = job_dir / ".job.json.tmp"
    tmp.write_text(json.dumps(job))
    os.replace(tmp, job_dir / "job.json")


def make_job(root: Path, code: str, **overrides: object) -> tuple[Path, Path]:
    """A job directory with candidate.py and job.json, and an empty output directory."""
    job_dir, out_dir = root / "job", root / "out"
    job_dir.mkdir()
    out_dir.mkdir()
    (job_dir / "candidate.py").write_text(code)
    write_job(job_dir, {**JOB, **overrides})
    return job_dir, out_dir


def command(job_dir: Path, data_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    """The runner's command line."""
    return [sys.executable, str(RUNNER), "--job", str(job_dir), "--data", str(data_dir),
            "--out", str(out_dir), *extra]


def run_runner(job_dir: Path, data_dir: Path, out_dir: Path, *extra: str) -> dict:
    """Run the runner to completion; it must exit 0 and leave result.json."""
    proc = subprocess.run(
        command(job_dir, data_dir, out_dir, *extra), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / "result.json").read_text())


@functools.cache
def load_runner() -> ModuleType:
    """Import runner.py in-process (once), for its pure functions."""
    spec = importlib.util.spec_from_file_location("runner_under_test", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def good_run(
    tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, np.ndarray]
) -> tuple[Path, dict, np.ndarray]:
    """The valid CNN run once: (job dir, result, predictions)."""
    job_dir, out_dir = make_job(tmp_path_factory.mktemp("good"), GOOD)
    result = run_runner(job_dir, dataset[0], out_dir)
    return job_dir, result, np.load(out_dir / "predictions.npy")


# ---------------------------------------------------------------- end to end


def test_valid_cnn_learns(
    good_run: tuple[Path, dict, np.ndarray], dataset: tuple[Path, np.ndarray]
) -> None:
    job_dir, result, preds = good_run
    assert result["status"] == "ok" and result["phase"] == "predict" and result["error"] is None
    assert preds.dtype == np.int64 and preds.shape == (256,)
    assert preds.min() >= 0 and preds.max() < CLASSES
    accuracy = float((preds == dataset[1]).mean())
    print(f"synthetic test accuracy {accuracy:.3f}")
    assert accuracy > 0.6, accuracy  # chance is 0.25
    metrics = result["metrics"]
    assert metrics["steps"] == 16 and metrics["device"] == "cpu"
    assert metrics["params"] == sum(
        n for n in (8 * 9 + 8, 16, 16 * 8 * 9 + 16, 32, 64 * 4 + 4)
    )
    assert metrics["flops"] > 0
    for key in ("final_loss", "warmup_seconds", "train_seconds", "predict_seconds",
                "import_seconds"):
        assert isinstance(metrics[key], float) and metrics[key] >= 0, key
    assert not (job_dir / "__pycache__").exists()


@pytest.mark.parametrize("extra", [(), ("--wait", "--device", "cpu")], ids=["cold", "prewarmed"])
def test_same_job_gives_same_predictions(
    tmp_path: Path, good_run: tuple[Path, dict, np.ndarray], dataset: tuple[Path, np.ndarray],
    extra: tuple[str, ...],
) -> None:
    """Again the same result, also from a pre-warmed runner (--wait), which rehearses a small
    training run before READY: the candidate must not notice."""
    job_dir, first, preds = good_run
    out_dir = tmp_path / "again"
    out_dir.mkdir()
    second = run_runner(job_dir, dataset[0], out_dir, *extra)
    np.testing.assert_array_equal(np.load(out_dir / "predictions.npy"), preds)
    assert second["metrics"]["final_loss"] == first["metrics"]["final_loss"]
    assert second["metrics"]["steps"] == first["metrics"]["steps"]


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, dataset: tuple[Path, np.ndarray]
) -> dict[str, tuple[Path, dict]]:
    """Every case of CASES plus a bf16 job, run once, a few runner processes at a time:
    name -> (output dir, result)."""
    jobs = [(name, case[0], {"epochs": 1, "batch_size": 128}) for name, case in CASES.items()]
    jobs.append(("bf16", TINY, {"epochs": 1, "precision": "bf16"}))
    jobs.append(("budget", TINY, {"max_params": 3000}))
    jobs.append(("lazy", LAZY, {"max_params": 3140}))
    jobs.append(("last-batch-of-one", BATCHNORM_1D, {"batch_size": 73}))  # 512 = 7 x 73 + 1
    jobs.append(("crowded", OOM_SMALL, {"gpu_memory_budget": 4 * GIB}))
    jobs.append(("past-budget", OOM_HUGE, {"gpu_memory_budget": 4 * GIB}))
    jobs.append(("no-budget", OOM_SMALL, {}))

    def one(name: str, code: str, overrides: dict) -> tuple[str, tuple[Path, dict]]:
        job_dir, out_dir = make_job(tmp_path_factory.mktemp(name), code, **overrides)
        return name, (out_dir, run_runner(job_dir, dataset[0], out_dir))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(lambda job: one(*job), jobs))


@pytest.mark.parametrize("name", list(CASES))
def test_candidate_failures_are_classified(
    outcomes: dict[str, tuple[Path, dict]], name: str
) -> None:
    _, status, phase, needle = CASES[name]
    out_dir, result = outcomes[name]
    assert (result["status"], result["phase"]) == (status, phase), result["error"]
    error = result["error"]
    assert set(error) == {"type", "message", "traceback"}
    assert needle in error["message"]
    assert len(error["message"]) <= 2000 and len(error["traceback"]) <= 4000
    assert sorted(p.name for p in out_dir.iterdir()) == ["result.json"]  # no temporaries left


def test_a_cuda_oom_within_the_budget_is_another_tenants_doing(
    outcomes: dict[str, tuple[Path, dict]]
) -> None:
    _, result = outcomes["crowded"]
    assert (result["status"], result["phase"]) == ("sandbox_error", "train")
    assert result["error"]["type"] == "CrowdedOut"
    assert result["error"]["message"].startswith(
        "crowded out: the GPU ran out of memory while the candidate held 0 MiB and asked for "
        "20 MiB more, within its budget of 4096 MiB")
    assert "OutOfMemoryError" in result["error"]["traceback"]
    assert result["metrics"]["gpu_budget_bytes"] == 4 * GIB


@pytest.mark.parametrize("name", ["past-budget", "no-budget"])
def test_a_cuda_oom_past_the_budget_or_without_one_is_the_designs(
    outcomes: dict[str, tuple[Path, dict]], name: str
) -> None:
    _, result = outcomes[name]
    assert (result["status"], result["phase"]) == ("cuda_oom", "train")
    assert result["error"]["type"] == "OutOfMemoryError"


def test_the_oom_request_is_read_from_torchs_message() -> None:
    runner = load_runner()
    assert runner.requested_bytes("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0") \
        == 2 * GIB
    assert runner.requested_bytes("Tried to allocate 20.00 MiB (GPU 0; ...)") == 20 << 20
    assert runner.requested_bytes("Tried to allocate 512 bytes") == 512
    assert runner.requested_bytes("CUBLAS_STATUS_ALLOC_FAILED") is None


def test_train_failure_records_progress(outcomes: dict[str, tuple[Path, dict]]) -> None:
    result = outcomes["train"][1]
    assert result["metrics"]["steps"] == 1  # call 1 validates, call 2 is step 1, call 3 raises
    assert result["metrics"]["params"] == 28 * 28 * 4 + 4
    assert result["error"]["type"] == "ValueError"
    assert "boom on call 3" in result["error"]["traceback"]


def test_parameter_budget_fails_before_training(outcomes: dict[str, tuple[Path, dict]]) -> None:
    result = outcomes["budget"][1]
    assert (result["status"], result["phase"]) == ("contract_error", "validate")
    assert "3,140 parameters; the budget is 3,000" in result["error"]["message"]
    assert "train_seconds" not in result["metrics"]


def test_lazy_modules_are_counted_after_the_validation_forward(
    outcomes: dict[str, tuple[Path, dict]]
) -> None:
    """nn.LazyLinear has no parameters until its first forward: counted before it, every such
    net failed. Within its budget of 3,140 (28 x 28 x 4 + 4) it trains."""
    result = outcomes["lazy"][1]
    assert result["status"] == "ok", result["error"]
    assert result["metrics"]["params"] == 28 * 28 * 4 + 4


def test_a_last_batch_of_one_is_dropped(outcomes: dict[str, tuple[Path, dict]]) -> None:
    """BatchNorm1d cannot train on one sample ("Expected more than 1 value per channel"); a
    subset leaving one over must not fail the net."""
    result = outcomes["last-batch-of-one"][1]
    assert result["status"] == "ok", result["error"]
    assert result["metrics"]["steps"] == 7


def test_bf16_precision_runs(outcomes: dict[str, tuple[Path, dict]]) -> None:
    out_dir, result = outcomes["bf16"]
    assert result["status"] == "ok", result["error"]
    assert np.load(out_dir / "predictions.npy").dtype == np.int64


def test_wait_mode_prints_ready_before_the_job(
    tmp_path: Path, dataset: tuple[Path, np.ndarray]
) -> None:
    job_dir, out_dir = tmp_path / "job", tmp_path / "out"
    job_dir.mkdir()
    out_dir.mkdir()
    cmd = command(job_dir, dataset[0], out_dir, "--wait", "--device", "cpu")
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            word, held = proc.stdout.readline().split(" ", 1)
            assert word == "READY" and json.loads(held)["rss_bytes"] > 100 << 20  # torch is in
            assert not (job_dir / "job.json").exists() and not any(out_dir.iterdir())
            (job_dir / "candidate.py").write_text(TINY)
            write_job(job_dir, {**JOB, "epochs": 1, "device": "auto"})
            proc.stdout.read()
            assert proc.wait(timeout=120) == 0
        finally:
            proc.kill()
    result = json.loads((out_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["metrics"]["device"] == "cpu"
    assert result["metrics"]["steps"] == 16
    assert np.load(out_dir / "predictions.npy").shape == (256,)


def test_lifeline_exits_when_stdin_closes(tmp_path: Path, dataset: tuple[Path, np.ndarray]) -> None:
    """--lifeline: a runner whose host closed its stdin (died) exits at once, writing nothing."""
    job_dir, out_dir = tmp_path / "job", tmp_path / "out"
    job_dir.mkdir()
    out_dir.mkdir()
    cmd = command(job_dir, dataset[0], out_dir, "--wait", "--lifeline", "--device", "cpu")
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().startswith("READY ")
            proc.stdin.close()
            assert proc.wait(timeout=60) == load_runner().LIFELINE_EXIT
            assert "the host is gone" in proc.stderr.read()
        finally:
            proc.kill()
    assert not any(out_dir.iterdir())


def test_a_waiting_runner_ends_on_sigterm_that_its_launcher_ignored_and_blocked(
        tmp_path: Path, dataset: tuple[Path, np.ndarray]) -> None:
    """A warm runner left behind can be stopped with a plain `kill`, even when the process that
    started it ignored and blocked SIGTERM (both survive exec)."""
    job_dir, out_dir = tmp_path / "job", tmp_path / "out"
    job_dir.mkdir()
    out_dir.mkdir()

    def deaf() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    cmd = command(job_dir, dataset[0], out_dir, "--wait", "--device", "cpu")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          preexec_fn=deaf) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("READY ")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == -signal.SIGTERM
        finally:
            proc.kill()
    assert not any(out_dir.iterdir())


def runner_fault(job_dir: Path, data_dir: Path, out_dir: Path, *extra: str) -> dict:
    """Run the runner where it must fail by its own fault: exit 2, a sandbox_error result."""
    proc = subprocess.run(command(job_dir, data_dir, out_dir, *extra), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    result = json.loads((out_dir / "result.json").read_text())
    assert result["status"] == "sandbox_error" and result["metrics"] == {}
    assert f"runner: {result['phase']}: " in proc.stderr
    assert not (out_dir / "predictions.npy").exists()
    return result


def test_missing_job_is_not_blamed_on_the_candidate(
    tmp_path: Path, dataset: tuple[Path, np.ndarray]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = runner_fault(tmp_path / "nojob", dataset[0], out_dir)
    assert result["phase"] == "job" and "job.json" in result["error"]["message"]


@pytest.mark.parametrize("extra", [(), ("--wait",)], ids=["cold", "prewarmed"])
def test_corrupted_data_is_a_runner_fault_in_phase_data(
    tmp_path: Path, dataset: tuple[Path, np.ndarray], extra: tuple[str, ...]
) -> None:
    """A torn dataset cache file fails before any candidate code runs, in both modes."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train_x.npy", "train_y.npy", "test_x.npy"):
        (data_dir / name).write_bytes((dataset[0] / name).read_bytes())
    torn = data_dir / "train_x.npy"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    job_dir, out_dir = make_job(tmp_path, TINY)
    result = runner_fault(job_dir, data_dir, out_dir, *extra)
    assert result["phase"] == "data" and "cannot load data" in result["error"]["message"]


# A job the runner cannot apply: (job overrides, phase, text in the message).
UNAPPLICABLE_JOBS = {
    "shape": ({"input_shape": [3, 32, 32]}, "job", "input_shape"),
    "channels": ({"mean": [0.1, 0.2]}, "job", "one value per channel"),
}
if not torch.cuda.is_available():
    UNAPPLICABLE_JOBS["no-cuda"] = ({"device": "cuda"}, "device", "")


@pytest.mark.parametrize("name", list(UNAPPLICABLE_JOBS))
@pytest.mark.parametrize("extra", [(), ("--wait",)], ids=["cold", "prewarmed"])
def test_a_job_the_runner_cannot_apply_is_a_runner_fault(
    tmp_path: Path, dataset: tuple[Path, np.ndarray], name: str, extra: tuple[str, ...]
) -> None:
    overrides, phase, needle = UNAPPLICABLE_JOBS[name]
    job_dir, out_dir = make_job(tmp_path, TINY, **overrides)
    result = runner_fault(job_dir, dataset[0], out_dir, *extra)
    assert result["phase"] == phase and needle in result["error"]["message"], result


def test_a_failed_write_is_a_runner_fault(tmp_path: Path, dataset: tuple[Path, np.ndarray]) -> None:
    """The outputs cannot be written (here result.json is a folder): exit 2, said on stderr."""
    job_dir, out_dir = make_job(tmp_path, TINY)
    (out_dir / "result.json").mkdir()
    proc = subprocess.run(command(job_dir, dataset[0], out_dir), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "runner: write: IsADirectoryError" in proc.stderr


def test_a_cuda_device_gets_an_index_for_the_memory_share() -> None:
    """torch refuses a bare 'cuda' in set_per_process_memory_fraction (it crashed every
    --parallel candidate on GPUs); the runner's CUDA devices carry an index. Checked with
    torch's own validation, which is plain code."""
    from torch.cuda._utils import _get_device_index

    runner = load_runner()
    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"), optional=False)
    device = runner.with_index(torch.device("cuda"), current=lambda: 3)
    assert device == torch.device("cuda", 3) and _get_device_index(device, optional=False) == 3
    assert runner.with_index(torch.device("cuda", 1), current=lambda: 3).index == 1
    assert runner.with_index(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NO GPU HERE: the CUDA memory share "
                    "is only run on a GPU (and by benchmarks/search_throughput.py there)")
def test_memory_share_on_cuda(tmp_path: Path, dataset: tuple[Path, np.ndarray]) -> None:
    job_dir, out_dir = make_job(tmp_path, TINY, device="cuda", gpu_memory_fraction=0.2)
    result = run_runner(job_dir, dataset[0], out_dir, "--wait")
    assert result["status"] == "ok" and result["metrics"]["device"].startswith("cuda:")


# ---------------------------------------------------------------- augmentation


def reference_matches(x: np.ndarray, out: np.ndarray, padding: int) -> np.ndarray:
    """[N, 2, 2p+1, 2p+1] bool: does out[i] equal the crop of padded x[i] at (dy, dx),
    unflipped (index 0) or flipped (index 1)? Plain numpy slicing."""
    _, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    side = 2 * padding + 1
    matches = np.zeros((len(x), 2, side, side), dtype=bool)
    for dy in range(side):
        for dx in range(side):
            crop = padded[:, :, dy:dy + h, dx:dx + w]
            matches[:, 0, dy, dx] = (out == crop).all(axis=(1, 2, 3))
            matches[:, 1, dy, dx] = (out == crop[:, :, :, ::-1]).all(axis=(1, 2, 3))
    return matches


def augmented(n: int, padding: int, flip: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random non-zero 2x5x7 images (non-square, so rows and columns cannot be confused)
    and their augmentation by the runner's augment_batch on CPU."""
    runner = load_runner()
    x = np.random.default_rng(seed).integers(1, 256, (n, 2, 5, 7)).astype(np.uint8)
    gen = torch.Generator().manual_seed(seed)
    out = runner.augment_batch(torch.from_numpy(x), padding, flip, gen)
    assert out.dtype == torch.uint8 and tuple(out.shape) == x.shape
    return x, out.numpy()


def test_augment_is_exact_crop_with_uniform_offsets_and_fair_flips() -> None:
    side, n = 9, 8100
    x, out = augmented(n, padding=4, flip=True)
    matches = reference_matches(x, out, padding=4)
    assert (matches.sum(axis=(1, 2, 3)) == 1).all()  # each output is exactly one crop
    counts = matches.sum(axis=0)  # [flip, dy, dx]
    offsets = counts.sum(axis=0).ravel()
    expected = n / side**2
    chi2 = float(((offsets - expected) ** 2 / expected).sum())
    assert chi2 < 125, chi2  # 80 degrees of freedom: p < 0.001 above 124.8
    assert offsets.min() > 0.5 * expected
    assert 0.47 < counts[1].sum() / n < 0.53
    assert 0.40 < counts[1, 4, 4] / counts[:, 4, 4].sum() < 0.60 or counts[:, 4, 4].sum() < 50


def test_augment_without_flip_never_flips_and_pads_with_zeros() -> None:
    x, out = augmented(2000, padding=4, flip=False, seed=1)
    matches = reference_matches(x, out, padding=4)
    assert (matches[:, 0].sum(axis=(1, 2)) == 1).all()
    assert not matches[:, 1].any()
    shifted = ~matches[:, 0, 4, 4]  # any offset but the centre brings in zero padding
    assert shifted.any() and (out[shifted] == 0).any(axis=(1, 2, 3)).all()
    assert (out[~shifted] != 0).all()  # the inputs have no zeros of their own


def test_augment_without_padding_or_flip_is_identity() -> None:
    x, out = augmented(64, padding=0, flip=False)
    np.testing.assert_array_equal(out, x)


def test_configure_torch_sets_determinism_and_tf32() -> None:
    runner = load_runner()
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32,
    )
    try:
        runner.configure_torch()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert cudnn.deterministic and not cudnn.benchmark
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        torch._C._set_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = before[3:6]
        matmul.allow_tf32 = before[6]
