"""Sandbox runner: import a candidate `Net`, validate it, train it, predict the test set.

    python runner.py --job JOB_DIR --data DATA_DIR --out OUT_DIR [--wait] [--lifeline]
        [--device auto|cpu|cuda]

See docs/contracts.md ("Runner"). Standard library, numpy and torch only. The data stay on the
device as uint8; augmentation (random crop with zero padding, horizontal flip) and normalisation
run there per batch. Writes `predictions.npy` then `result.json` to OUT_DIR, in place, and
exits 0 when the candidate's outcome, whatever it was, is in `result.json`. The runner's own faults
(no job, unreadable data, a device it cannot set up, a crash outside the candidate's calls) are not
the candidate's doing: `result.json` says `sandbox_error` with the runner's phase, and the exit code
is 2.
"""

# ruff: noqa: E402  (the clock starts before `import torch`: warm-up time includes it)
from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import os
import random
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")
PREDICT_CHUNK_CUDA = 1024  # test images per forward on CUDA; on CPU the job's batch size, since
# large chunks are 1.5-1.8x slower there (activations fall out of cache)
POLL_SECONDS = 0.005
NAN_CHECK_EVERY_CUDA = 32  # steps between host syncs for the non-finite-loss check on CUDA
JOB_KEYS = (
    "input_shape", "num_classes", "mean", "std", "crop_padding", "flip", "batch_size", "lr",
    "momentum", "weight_decay", "seed",
)
LIFELINE_EXIT = 3  # exit code when the host closed stdin, i.e. it is gone
CROWDED_OUT = "CrowdedOut"  # error type of a CUDA OOM within the budget (docs/contracts.md)
OOM_MARGIN = 64 << 20  # allocator rounding: an OOM this close to the budget is the candidate's
# torch's CUDA OOM message (c10 format_size): "Tried to allocate 20.00 MiB", "... 512 bytes"
REQUEST = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) (bytes|KiB|MiB|GiB)")
UNIT_BYTES = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
MESSAGE_CHARS = 2000
TRACEBACK_CHARS = 4000
# Exceptions a validation forward raises on mismatched shapes ("mat1 and mat2 shapes cannot be
# multiplied", "Given groups=1, weight of size ...", "Dimension out of range", ...).
SHAPE_EXCEPTIONS = (RuntimeError, ValueError, IndexError)


class Failure(Exception):
    """A candidate failure the runner detected itself; `status` is its failure class."""

    status = "runtime_error"


class ContractError(Failure):
    """The module breaks the `Net()` contract."""

    status = "contract_error"


class ShapeError(Failure):
    """The output is not a floating tensor of shape [B, num_classes]."""

    status = "shape_error"


class NonFiniteLoss(Failure):
    """The training loss became NaN or infinite."""

    status = "nan_loss"


class InfrastructureError(Exception):
    """A fault of the job or data, not of the candidate."""


@dataclass
class Step:
    """Where the runner's own work is: the phase a runner fault is reported with."""

    phase: str = "start"


@dataclass
class Data:
    """The sandbox data, resident on `device` as uint8 (labels as int64)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    device: torch.device

    def to(self, device: torch.device) -> Data:
        """The same data on another device."""
        return Data(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x)), device)


@dataclass
class Run:
    """State of one job: the phase reached and the metrics gathered so far."""

    job: dict[str, Any]
    data: Data
    phase: str = "import"
    metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- data path


def augment_batch(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample random crop (zero padding `padding`) and horizontal flip of a uint8 batch.

    One pad and one gather on x's device; random numbers come from `generator` (same device).
    """
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=dev, generator=generator)
    rows = dy + torch.arange(h, device=dev)
    cols = dx + torch.arange(w, device=dev)
    if flip:
        flipped = torch.randint(0, 2, (b, 1), device=dev, generator=generator).bool()
        cols = torch.where(flipped, cols.flip(1), cols)
    batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
    chans = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[batch, chans, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B,C,H,W] -> float32 on the 0..1 scale, standardised per channel."""
    return x.float().div_(255.0).sub_(mean).div_(std)


def channel_stats(job: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The job's per-channel mean and std as [1,C,1,1] tensors on `device`."""
    mean = torch.tensor(job["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(job["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean, std


# ---------------------------------------------------------------- warm-up and job


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu. A CUDA device carries its index: some calls
    (set_per_process_memory_fraction) refuse a bare 'cuda'."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise InfrastructureError(f"unknown device {name!r}")
    return with_index(torch.device(name))


def with_index(device: torch.device,
               current: Callable[[], int] = torch.cuda.current_device) -> torch.device:
    """A CUDA device without an index -> the `current()` CUDA device; others unchanged."""
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", current())


def footprint(device: torch.device) -> dict[str, int]:
    """What this warm runner holds: resident host memory; on CUDA, the allocator's reserve and
    the device's total memory (the pool of warm runners is sized from these)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1]) if sys.platform == "linux" else 0
    held = {"rss_bytes": pages * os.sysconf("SC_PAGE_SIZE") if pages else 0}
    if device.type == "cuda":
        held["gpu_bytes"] = torch.cuda.memory_reserved(device)
        held["gpu_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return held


def configure_torch() -> None:
    """Determinism flags that do not raise on common layers; TF32 for fp32 matmuls/convs."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # torch.use_deterministic_algorithms(True, warn_only=True) minus its import of
    # torch._inductor (about 1.5 s of CPU) to set a torch.compile option the runner never uses.
    set_deterministic = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_deterministic is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        set_deterministic(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # would fill every new tensor
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def warm_libraries(device: torch.device, optimizer: bool) -> None:
    """Load lazily loaded machinery now rather than in the first training step: on CUDA the
    context, cuBLAS and cuDNN; with `optimizer`, torch.optim's import of torch._dynamo (about
    1 s of CPU, worth moving off the critical path only when the job has not arrived yet),
    and the FLOP counter's first use (about 1 s)."""
    if optimizer:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False):
            torch.zeros(2, 2) @ torch.zeros(2, 2)
    if device.type != "cuda":
        return
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    (F.conv2d(x, w).flatten(1) @ torch.randn(144, 2, device=device)).sum().backward()
    torch.cuda.synchronize(device)


def load_data(data_dir: Path, device: torch.device) -> Data:
    """Load the three uint8 arrays straight onto `device`."""
    try:
        arrays = [np.load(data_dir / f"{n}.npy") for n in ("train_x", "train_y", "test_x")]
    except (OSError, ValueError) as e:
        raise InfrastructureError(f"cannot load data from {data_dir}: {e}") from e
    train_x, train_y, test_x = (torch.from_numpy(a).to(device) for a in arrays)
    if train_x.dim() != 4 or test_x.dim() != 4 or train_y.shape != train_x.shape[:1]:
        raise InfrastructureError("data must be train_x [N,C,H,W], train_y [N], test_x [M,C,H,W]")
    return Data(train_x, train_y.long(), test_x, device)


def rehearse(data: Data) -> None:
    """Train and predict a small conv net for two steps through the runner's own train() and
    predict(), so the kernels most candidates share (conv, batch norm, pooling, linear, loss,
    optimizer, augmentation) are loaded before the job rather than in its first steps: on CUDA
    they load lazily, 0.1-0.85 s per candidate on an H100 (benchmarks/README.md)."""
    channels, height, width = data.train_x.shape[1:]
    classes = int(data.train_y.max()) + 1
    pool = [nn.MaxPool2d(2)] if min(height, width) >= 2 else []
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), *pool,
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    ).to(data.device)
    job = {"num_classes": classes, "mean": [0.5] * channels, "std": [0.25] * channels,
           "crop_padding": 4, "flip": True, "batch_size": 128, "lr": 0.01, "momentum": 0.9,
           "weight_decay": 5e-4, "seed": 0}
    n = 2 * job["batch_size"]
    sample = Data(data.train_x[:n], data.train_y[:n], data.test_x[:n], data.device)
    run = Run(job, sample)
    train(model, run)
    predict(model, run)
    sync(data.device)
    del model, run, sample
    if data.device.type == "cuda":
        torch.cuda.empty_cache()


def read_job(job_dir: Path) -> dict[str, Any]:
    """Parse JOB_DIR/job.json."""
    try:
        job = json.loads((job_dir / "job.json").read_text())
    except (OSError, ValueError) as e:
        raise InfrastructureError(f"cannot read job.json: {e}") from e
    if not isinstance(job, dict):
        raise InfrastructureError("job.json is not an object")
    return job


def wait_for_job(job_dir: Path) -> dict[str, Any]:
    """Block until the host has (atomically) written JOB_DIR/job.json, then read it."""
    path = job_dir / "job.json"
    while not path.exists():
        time.sleep(POLL_SECONDS)
    return read_job(job_dir)


def check_job(job: dict[str, Any], data: Data) -> None:
    """The job must have every field and describe the data it is run on."""
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:
        raise InfrastructureError(f"job.json lacks {missing}")
    shape = list(data.train_x.shape[1:])
    if list(job.get("input_shape", [])) != shape or list(data.test_x.shape[1:]) != shape:
        raise InfrastructureError(f"job input_shape {job.get('input_shape')} != data {shape}")
    if len(job.get("mean", [])) != shape[0] or len(job.get("std", [])) != shape[0]:
        raise InfrastructureError("job mean/std need one value per channel")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(job: dict[str, Any], device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when the job asks for it, else a no-op context."""
    enabled = job.get("precision", "fp32") == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- candidate phases


def import_candidate(path: Path) -> ModuleType:
    """Import JOB_DIR/candidate.py as module `candidate` (no bytecode written)."""
    spec = importlib.util.spec_from_file_location("candidate", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["candidate"] = module
    spec.loader.exec_module(module)
    return module


def net_class(module: ModuleType) -> type[nn.Module]:
    """The module's `Net`: an nn.Module subclass with forward, constructible with no arguments."""
    cls = getattr(module, "Net", None)
    if cls is None:
        raise ContractError("the module defines no `Net`")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ContractError(f"`Net` must be a subclass of torch.nn.Module, got {cls!r}")
    if cls.forward is nn.Module.forward:
        raise ContractError("`Net` does not define forward()")
    with contextlib.suppress(TypeError, ValueError):  # signature unknown: just call it
        required = [
            p.name
            for p in inspect.signature(cls).parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise ContractError(f"`Net()` must take no arguments; it requires {required}")
    return cls


def instantiate(cls: type[nn.Module], device: torch.device) -> nn.Module:
    """`Net()`, moved to `device`."""
    model = cls()
    if not isinstance(model, nn.Module):
        raise ContractError(f"`Net()` returned {type(model).__name__}, not an nn.Module")
    return model.to(device)


def check_output(out: object, batch: int, classes: int) -> None:
    """Raise ShapeError unless `out` is a floating tensor of shape [batch, classes]."""
    want = f"a floating-point Tensor of shape [{batch}, {classes}]"
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"expected {want}, got {type(out).__name__}")
    if tuple(out.shape) != (batch, classes) or not out.is_floating_point():
        raise ShapeError(f"expected {want}, got shape {list(out.shape)} dtype {out.dtype}")


def validate(model: nn.Module, run: Run) -> None:
    """Dummy forward of `validate_batch` standard-normal inputs in eval mode."""
    job, device = run.job, run.data.device
    batch = int(job.get("validate_batch", 2))
    x = torch.randn(batch, *job["input_shape"], device=device)
    model.eval()
    with torch.no_grad(), autocast(job, device):
        try:
            out = model(x)
        except SHAPE_EXCEPTIONS as e:
            if is_oom(e):
                raise
            raise ShapeError(f"forward failed on input {list(x.shape)}: {e}") from e
    check_output(out, batch, int(job["num_classes"]))


def count_flops(model: nn.Module, run: Run) -> int | None:
    """FLOPs of one forward of one input in eval mode (None where the counter cannot follow
    the model)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.randn(1, *run.job["input_shape"], device=run.data.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    except Exception:
        return None


def train(model: nn.Module, run: Run) -> None:
    """SGD with momentum and weight decay, cosine per step over all epochs, augmentation."""
    job, data, device = run.job, run.data, run.data.device
    n, bs, epochs = len(data.train_x), int(job["batch_size"]), int(job.get("epochs", 1))
    opt = torch.optim.SGD(
        model.parameters(), lr=job["lr"], momentum=job["momentum"],
        weight_decay=job["weight_decay"],
    )
    batches = n // bs + (n % bs > 1)  # a last batch of one is dropped: BatchNorm cannot train
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=batches * epochs)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(job["seed"]))
    mean, std = channel_stats(job, device)
    classes, padding, flip = int(job["num_classes"]), int(job["crop_padding"]), bool(job["flip"])
    check_every = 1 if device.type == "cpu" else NAN_CHECK_EVERY_CUDA
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # 1-based step, 0: none yet
    model.train()
    step, loss = 0, torch.zeros(())
    run.metrics["steps"] = 0
    for _ in range(epochs):
        perm = torch.randperm(n, device=device, generator=gen)
        for idx in perm.split(bs)[:batches]:
            x = normalise(augment_batch(data.train_x[idx], padding, flip, gen), mean, std)
            with autocast(job, device):
                out = model(x)
                check_output(out, len(idx), classes)
                loss = F.cross_entropy(out, data.train_y[idx])
            step += 1
            bad = ~torch.isfinite(loss.detach()) & (first_bad == 0)
            first_bad = torch.where(bad, step, first_bad)
            if step % check_every == 0:
                raise_if_bad(first_bad, run)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run.metrics["steps"] = step
    raise_if_bad(first_bad, run)
    run.metrics["final_loss"] = float(loss.detach())


def raise_if_bad(first_bad: torch.Tensor, run: Run) -> None:
    """Raise NonFiniteLoss if a non-finite loss has been seen (syncs with the device)."""
    bad_step = int(first_bad)
    if bad_step:
        run.metrics["steps"] = bad_step
        raise NonFiniteLoss(f"non-finite loss at step {bad_step}")


def predict(model: nn.Module, run: Run) -> np.ndarray:
    """Eval-mode argmax over the test set in chunks -> int64 [M]."""
    job, data = run.job, run.data
    mean, std = channel_stats(job, data.device)
    classes = int(job["num_classes"])
    model.eval()
    preds = []
    size = PREDICT_CHUNK_CUDA if data.device.type == "cuda" else int(job["batch_size"])
    with torch.inference_mode(), autocast(job, data.device):
        for chunk in data.test_x.split(size):
            out = model(normalise(chunk, mean, std))
            check_output(out, len(chunk), classes)
            preds.append(out.argmax(1))
    return torch.cat(preds).to("cpu", torch.int64).numpy()


# ---------------------------------------------------------------- orchestration of one job


def timed(run: Run, key: str, fn: Callable[..., T], *args: Any) -> T:
    """Call fn(*args), store its wall time (device work included) as metrics[key]."""
    start = time.perf_counter()
    try:
        out = fn(*args)
        sync(run.data.device)
        return out
    finally:
        run.metrics[key] = time.perf_counter() - start


def execute(run: Run, job_dir: Path) -> np.ndarray:
    """The candidate phases in order; `run.phase` tracks where a failure happened."""
    seed_everything(int(run.job["seed"]))
    module = timed(run, "import_seconds", import_candidate, job_dir / "candidate.py")
    run.phase = "instantiate"
    model = instantiate(net_class(module), run.data.device)
    run.phase = "validate"
    validate(model, run)  # also gives lazy modules (nn.LazyLinear, ...) their parameters
    run.metrics["params"] = params = sum(p.numel() for p in model.parameters())
    budget = run.job.get("max_params")
    if budget and params > budget:
        raise ContractError(f"`Net` has {params:,} parameters; the budget is {budget:,}")
    run.phase = "train"
    timed(run, "train_seconds", train, model, run)
    run.phase = "predict"
    predictions = timed(run, "predict_seconds", predict, model, run)
    run.metrics["flops"] = count_flops(model, run)  # last: the model's state no longer matters
    return predictions


def is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, also when surfaced as a plain RuntimeError."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)
    )


def classify(phase: str, exc: BaseException) -> str:
    """Failure class for an exception raised in `phase` (docs/contracts.md mapping)."""
    if isinstance(exc, Failure):
        return exc.status
    if is_oom(exc):
        return "cuda_oom"
    if isinstance(exc, MemoryError):
        return "oom"
    if isinstance(exc, Exception) and phase in ("import", "instantiate"):
        return "instantiate_error"
    return "runtime_error"  # includes SystemExit / KeyboardInterrupt raised by the candidate


def describe(exc: BaseException) -> dict[str, str]:
    """{type, message, traceback}, trimmed; survives exceptions whose __str__ raises."""
    try:
        message = str(exc)
    except BaseException:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:
        tb = ""
    return {
        "type": type(exc).__name__,
        "message": message[:MESSAGE_CHARS],
        "traceback": tb[-TRACEBACK_CHARS:],
    }


def run_job(run: Run, job_dir: Path) -> tuple[dict[str, Any], np.ndarray | None]:
    """Run the candidate; never raises for candidate faults. Returns (result, predictions).
    A CUDA OOM within the candidate's GPU budget is not its fault: `sandbox_error`."""
    preds, status, error = None, "ok", None
    try:
        preds = execute(run, job_dir)
    except BaseException as e:  # candidate code may raise anything, SystemExit included
        status, error = classify(run.phase, e), describe(e)
        crowding = crowded_out(e, run) if status == "cuda_oom" else None
        if crowding:
            status, error = "sandbox_error", {**error, "type": CROWDED_OUT, "message": crowding}
    run.metrics.update(gpu_memory(run))
    metrics = {k: clean_number(v) for k, v in run.metrics.items()}
    return {"status": status, "phase": run.phase, "error": error, "metrics": metrics}, preds


def gpu_memory(run: Run) -> dict[str, int]:
    """The candidate's GPU memory: the most its allocator reserved (its data included), and its
    budget where the job gave one."""
    held = {}
    if run.data.device.type == "cuda":
        held["gpu_peak_bytes"] = torch.cuda.max_memory_reserved(run.data.device)
    if run.job.get("gpu_memory_budget"):
        held["gpu_budget_bytes"] = int(run.job["gpu_memory_budget"])
    return held


def gpu_reserved(device: torch.device) -> int:
    """What the allocator holds on `device` now (0 off CUDA)."""
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0


def requested_bytes(message: str) -> int | None:
    """The allocation a CUDA OOM message says failed, in bytes."""
    match = REQUEST.search(message)
    return int(float(match[1]) * UNIT_BYTES[match[2]]) if match else None


def crowded_out(exc: BaseException, run: Run) -> str | None:
    """Why a CUDA OOM is not the candidate's doing, or None when it is: with a budget, a
    candidate that held `held` and asked for `wanted`, together within its budget, found the
    GPU full of another tenant's memory (the LLM server's, another process's). Past its
    budget, or without one, the OOM is the candidate's."""
    budget = run.job.get("gpu_memory_budget")
    wanted = requested_bytes(str(exc))
    if not budget or wanted is None:
        return None
    held = gpu_reserved(run.data.device)
    if held + wanted + OOM_MARGIN > budget:
        return None
    mib = 1 << 20
    return (f"crowded out: the GPU ran out of memory while the candidate held {held / mib:.0f} "
            f"MiB and asked for {wanted / mib:.0f} MiB more, within its budget of "
            f"{budget / mib:.0f} MiB: another tenant holds the rest ({str(exc)[:600]})")


def clean_number(value: Any) -> Any:
    """Non-finite floats become None, so result.json stays strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_file(path: Path, write: Callable[[Any], object]) -> None:
    """Write `path` in place (truncating it) and fsync it. The host reads the outputs only after
    the runner has exited, so a temporary file and a rename would buy nothing; and in the Docker
    sandbox the two output files are bind mounts in a read-only /out, which cannot be replaced."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_outputs(out_dir: Path, result: dict[str, Any], preds: np.ndarray | None) -> None:
    """predictions.npy (if any) first, then result.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if preds is not None:
        write_file(out_dir / "predictions.npy", lambda f: np.save(f, preds, allow_pickle=False))
    text = json.dumps(result, allow_nan=False, default=str).encode()
    write_file(out_dir / "result.json", lambda f: f.write(text))


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", required=True, type=Path, help="job dir: candidate.py, job.json")
    p.add_argument("--data", required=True, type=Path, help="a dataset cache's sandbox/ folder")
    p.add_argument("--out", required=True, type=Path, help="output dir")
    p.add_argument("--wait", action="store_true", help="warm up, print READY, await job.json")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides job.json")
    p.add_argument("--lifeline", action="store_true",
                   help=f"exit {LIFELINE_EXIT} as soon as stdin is closed (the host has gone)")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace, step: Step) -> Run:
    """Warm up (device, data), then obtain the job: at once, or after READY with --wait.
    `step.phase` follows the work, for a fault's report."""
    job_dir = args.job.resolve()
    step.phase = "job"
    job = None if args.wait else read_job(job_dir)
    step.phase = "device"
    device = resolve_device(args.device or (job or {}).get("device", "auto"))
    configure_torch()
    step.phase = "warmup"
    warm_libraries(device, optimizer=args.wait)
    step.phase = "data"
    data = load_data(args.data.resolve(), device)
    if args.wait:  # before READY, so off the critical path; a cold runner would only pay twice
        step.phase = "warmup"
        rehearse(data)
    warmup = time.perf_counter() - _T0
    if args.wait:
        print("READY", json.dumps(footprint(device)), flush=True)
        step.phase = "job"
        job = wait_for_job(job_dir)
        step.phase = "device"
        wanted = resolve_device(args.device or job.get("device", "auto"))
        if wanted != device:
            warm_libraries(wanted, optimizer=False)
            data = data.to(wanted)
    step.phase = "job"
    check_job(job, data)
    step.phase = "memory_share"
    if data.device.type == "cuda":  # the LLM server and the neighbours keep their part
        limit_memory(job, data.device)
    return Run(job, data, metrics={"device": str(data.device), "warmup_seconds": warmup})


def limit_memory(job: dict[str, Any], device: torch.device) -> None:
    """Cap the allocator at the job's GPU budget in bytes (the host's GPU plan), else at its
    share of the device; then count the peak from here."""
    budget, share = job.get("gpu_memory_budget"), job.get("gpu_memory_fraction")
    if budget:
        total = torch.cuda.get_device_properties(device).total_memory
        share = min(1.0, float(budget) / total)
    if share:
        torch.cuda.set_per_process_memory_fraction(float(share), device)
    torch.cuda.reset_peak_memory_stats(device)


def watch_lifeline() -> None:
    """Exit at once when stdin reaches end of file. The Docker sandbox holds the container's
    stdin open until it removes the container, and the engine closes it if the host process
    dies, even by SIGKILL: a runner whose host is gone frees its GPU instead of training (or
    waiting for a job) for nobody."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        print("runner: stdin closed, the host is gone; exiting", file=sys.stderr, flush=True)
        os._exit(LIFELINE_EXIT)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def hear_sigterm() -> None:
    """Let SIGTERM end the runner, whatever its launcher left: an ignored or blocked signal
    survives exec, and a warm runner that cannot be stopped holds its memory and GPU."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def runner_fault(out_dir: Path, phase: str, exc: BaseException) -> int:
    """Report a fault of the runner itself (not of the candidate) in `phase`: on stderr, and as
    a `sandbox_error` result where it can still be written. Returns the exit code, 2."""
    error = describe(exc)
    print(f"runner: {phase}: {error['type']}: {error['message']}", file=sys.stderr, flush=True)
    result = {"status": "sandbox_error", "phase": phase, "error": error, "metrics": {}}
    with contextlib.suppress(BaseException):
        write_outputs(out_dir, result, None)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when result.json holds the candidate's outcome, 2 on the runner's faults."""
    sys.dont_write_bytecode = True
    args = parse_args(argv)
    hear_sigterm()
    if args.lifeline:
        watch_lifeline()
    out_dir = args.out.resolve()
    step = Step()
    try:
        run = prepare(args, step)
        step.phase = "result"  # run_job catches whatever the candidate raises
        result, preds = run_job(run, args.job.resolve())
        step.phase = "write"
        write_outputs(out_dir, result, preds)
    except BaseException as e:  # the runner's own fault, wherever it happened
        return runner_fault(out_dir, step.phase, e)
    return 0


def hard_exit(code: int) -> None:
    """Flush and leave now: candidate threads or atexit hooks cannot hang or alter the exit."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    hard_exit(main())
