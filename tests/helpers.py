"""Small builders shared by tests."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats as sps


def write_tiny_cache(root: Path, train: int = 512, test: int = 256, seed: int = 0) -> Path:
    """A learnable 1x28x28, 10-class dataset in the cache layout; returns its sandbox/ dir."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 30, (n, 1, 28, 28)).astype(np.uint8)
        corners = rng.integers(4, 14, (n, 2))
        for i, label in enumerate(y):  # a block whose brightness encodes the class
            r, c = corners[i]
            x[i, 0, r : r + 10, c : c + 10] = 60 + 19 * label
        arrays[split] = (x, y)
    (root / "sandbox").mkdir(parents=True)
    (root / "labels").mkdir()
    np.save(root / "sandbox" / "train_x.npy", arrays["train"][0])
    np.save(root / "sandbox" / "train_y.npy", arrays["train"][1])
    np.save(root / "sandbox" / "test_x.npy", arrays["test"][0])
    np.save(root / "labels" / "test_y.npy", arrays["test"][1])
    (root / "meta.json").write_text(json.dumps({"name": "tiny", "test_count": test}))
    return root / "sandbox"


def tiny_job(**overrides: object) -> dict:
    job = {"input_shape": [1, 28, 28], "num_classes": 10, "mean": [0.2], "std": [0.35],
           "crop_padding": 4, "flip": False, "epochs": 1, "batch_size": 32, "lr": 0.05,
           "momentum": 0.9, "weight_decay": 5e-4, "seed": 0, "device": "cpu",
           "precision": "fp32", "validate_batch": 2}
    job.update(overrides)
    return job


def flat(text: str) -> str:
    """Output with the console's line wrapping undone (rich wraps at the terminal width)."""
    return re.sub(r"\s+", " ", text)


def rank_p_by_enumeration(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Two-sided exact p-values of Spearman's rho and Kendall's tau, by scoring every order
    of xs against ys: 2 * min(share >= observed, share <= observed), at most 1."""
    out = {}
    for key, corr in (("spearman_p", sps.spearmanr), ("kendall_p", sps.kendalltau)):
        seen = corr(xs, ys).statistic
        null = np.array([corr(perm, ys).statistic for perm in itertools.permutations(xs)])
        tol = 1e-9
        out[key] = min(1.0, 2 * min(np.mean(null >= seen - tol), np.mean(null <= seen + tol)))
    return out


def alive(pid: int) -> bool:
    """True when pid runs (a zombie awaiting its parent does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def parent(pid: int) -> int:
    """The parent of `pid`, from /proc."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def runners(mentioning: Path) -> list[int]:
    """Live `runner.py` processes whose command line mentions `mentioning` (a run's folder)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        script = next((a for a in argv if a.endswith(b".py")), b"")  # not a reaper's runner
        line = b" ".join(argv).decode(errors="replace")
        if entry.isdigit() and script.endswith(b"runner.py") and str(mentioning) in line \
                and alive(int(entry)):
            found.append(int(entry))
    return found


def waiting_for_its_job(pid: int) -> bool:
    """A `runner.py --wait` past READY: its main thread sleeps between looks for job.json."""
    try:
        return "nanosleep" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def eventually(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Poll `condition` until it holds; fail saying `what` was awaited past the deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds:.0f} s: {what}"
        time.sleep(0.05)
