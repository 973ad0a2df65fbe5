"""Dataset cache: prepare, load, subset and hold out image-classification datasets.

Layout (docs/contracts.md, "Dataset cache"): ``<data_dir>/<name>/`` holds
``sandbox/train_x.npy``, ``sandbox/train_y.npy``, ``sandbox/test_x.npy`` (uint8, NCHW),
``labels/test_y.npy`` (never mounted into a sandbox) and ``meta.json``. Caches are built in a
temporary folder beside the target and renamed into place, so a crash never leaves a half cache.

The original files are read by ``orchestrator.data.formats``. Host code: this module never imports
torch; torchvision (downloads) and the readers are imported lazily, only when a cache is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.store.files import fsync_dir

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train_x, train_y, test_x, test_y

PIP_HINT = "pip install 'orchestrator[data]'"
META_KEYS = (
    "name", "input_shape", "num_classes", "mean", "std", "flip",
    "train_count", "test_count", "fingerprint",
)


class DatasetError(Exception):
    """A dataset cannot be prepared or loaded; the message says what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, 0..1 scale
    std: tuple[float, ...]
    flip: bool  # horizontal flip is a valid augmentation
    threshold: float  # a "good" test accuracy for a short run


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465),
                    (0.2470, 0.2435, 0.2616), True, 0.40),
        DatasetSpec("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), True, 0.20),
        DatasetSpec("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728),
                    (0.1980, 0.2010, 0.1970), False, 0.70),
        DatasetSpec("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), False, 0.90),
        DatasetSpec("fashionmnist", (1, 28, 28), 10, (0.2860,), (0.3530,), True, 0.80),
        DatasetSpec("imagenette", (3, 160, 160), 10, (0.485, 0.456, 0.406),
                    (0.229, 0.224, 0.225), True, 0.40),
    )
}


@dataclass(frozen=True)
class PreparedDataset:
    """A complete dataset cache (full dataset or a subset) on disk."""

    name: str
    root: Path
    spec: DatasetSpec
    meta: dict[str, Any]

    @property
    def sandbox_dir(self) -> Path:
        """The only folder given to candidate code (no test labels)."""
        return self.root / "sandbox"

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def train_count(self) -> int:
        return int(self.meta["train_count"])

    @property
    def test_count(self) -> int:
        return int(self.meta["test_count"])

    @property
    def val_count(self) -> int:
        """How many of the evaluation images (test_x) are the validation split, which comes
        first; 0 without one."""
        return int(self.meta.get("holdout", {}).get("val_count", 0))

    def test_labels(self) -> np.ndarray:
        """The labels of the evaluation images, uint8 [M] (validation first, then test); for
        scoring on the host only."""
        return np.load(self.root / "labels" / "test_y.npy")


# ---------------------------------------------------------------------------------------------
# Public API


def get_spec(name: str) -> DatasetSpec:
    """The spec for ``name`` (case, '-' and '_' ignored), or a DatasetError listing valid names."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in SPECS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(SPECS)}")
    return SPECS[key]


def default_data_dir() -> Path:
    """Per-user cache: ``$ORCHESTRATOR_DATA``, else ``$XDG_CACHE_HOME/orchestrator/datasets``,
    else ``~/.cache/orchestrator/datasets``."""
    if os.environ.get("ORCHESTRATOR_DATA"):
        return Path(os.environ["ORCHESTRATOR_DATA"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "orchestrator" / "datasets"


def prepare(
    name: str,
    data_dir: str | Path | None = None,
    source: str | Path | None = None,
    progress: bool = True,
    *,
    force: bool = False,
) -> PreparedDataset:
    """Build the cache for ``name`` from local files (``source``) or a torchvision download.

    A complete cache is reused as is unless ``force``.
    """
    from orchestrator.data.formats import READERS  # the readers import this module

    spec = get_spec(name)
    data_dir = _data_dir(data_dir)
    root = data_dir / spec.name
    if not force and _is_complete(root):
        return load(spec.name, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".{spec.name}.work-") as tmp:
        work = Path(tmp)
        if source is None:
            src = _download(spec, work / "download", progress)
        else:
            src = Path(source).expanduser()
            if not src.exists():
                raise DatasetError(f"source {src} does not exist")
        arrays = READERS[spec.name](src, work, progress)
        _check_arrays(spec, arrays, src)
        _write_cache(work / "cache", spec, arrays)
        _install(work / "cache", root, work / "old", replace=force)
    return load(spec.name, data_dir)


def load(name: str, data_dir: str | Path | None = None) -> PreparedDataset:
    """The prepared cache for ``name``; DatasetError if it is missing or incomplete."""
    spec = get_spec(name)
    root = _data_dir(data_dir) / spec.name
    if not _is_complete(root):
        state = "incomplete or damaged" if root.exists() else "not prepared"
        raise DatasetError(
            f"dataset {spec.name} is {state} in {root.parent}: "
            f"run `orchestrator data prepare {spec.name}`"
        )
    return PreparedDataset(spec.name, root, spec, _read_meta(root))


def subset(
    prepared: PreparedDataset,
    train_samples: int | None,
    test_samples: int | None,
    seed: int,
) -> PreparedDataset:
    """A fixed, seeded subset materialised once under ``<root>/subsets/<train>-<test>-<seed>/``.

    Indices: ``rng = np.random.default_rng(seed)``; train then test, each
    ``np.sort(rng.choice(n, k, replace=False))``. ``None`` keeps the whole split.
    """
    if train_samples is None and test_samples is None:
        return prepared
    k_train = _subset_count(train_samples, prepared.train_count, "train")
    k_test = _subset_count(test_samples, prepared.test_count, "test")
    key = f"{_label(train_samples)}-{_label(test_samples)}-{seed}"

    def build() -> tuple[Arrays, dict[str, Any]]:
        rng = np.random.default_rng(seed)
        train_idx = _choose(rng, prepared.train_count, k_train)
        test_idx = _choose(rng, prepared.test_count, k_test)
        return _take(prepared.root, train_idx, test_idx), {"subset": {
            "train_samples": train_samples, "test_samples": test_samples, "seed": seed,
            "parent_fingerprint": prepared.fingerprint}}

    return _derived(prepared, prepared.root / "subsets" / key, build)


def holdout(prepared: PreparedDataset, fraction: float, seed: int) -> PreparedDataset:
    """A stratified validation split of the training set, materialised once under
    ``<root>/holdout/<fraction>-<seed>/``: the rest trains; the evaluation images (test_x) are
    the validation images followed by the test images, whose labels stay on the host like the
    test labels (``labels/test_y.npy``). The sandbox cannot tell the two apart, and needs not.

    Indices: ``rng = np.random.default_rng(seed)``; the training set in a random order, sorted
    stably by class, and every (1 / fraction)-th image of that order held out, so each class
    gives its share (``floor(n * fraction)`` images in all).
    """
    def build() -> tuple[Arrays, dict[str, Any]]:
        labels = np.load(prepared.root / "sandbox" / "train_y.npy")
        val_idx, train_idx = _stratified(labels, fraction, np.random.default_rng(seed))
        if not len(val_idx) or not len(train_idx):
            raise DatasetError(f"{prepared.train_count} training images cannot give a "
                               f"validation split of {fraction:g}: use more --train-samples "
                               "or --select-on test")
        train_x, train_y, test_x, test_y = _take(prepared.root, train_idx,
                                                 np.arange(prepared.test_count))
        val_x = np.load(prepared.root / "sandbox" / "train_x.npy", mmap_mode="r")[val_idx]
        arrays = (train_x, train_y, np.concatenate([val_x, test_x]),
                  np.concatenate([labels[val_idx], test_y]))
        return arrays, {"holdout": {"fraction": fraction, "seed": seed,
                                    "val_count": len(val_idx),
                                    "parent_fingerprint": prepared.fingerprint}}

    return _derived(prepared, prepared.root / "holdout" / f"{fraction:g}-{seed}", build)


def _derived(prepared: PreparedDataset, root: Path,
             build: Callable[[], tuple[Arrays, dict[str, Any]]]) -> PreparedDataset:
    """The cache at ``root`` derived from ``prepared``: ``build`` gives its arrays and extra
    meta.json entries the first time, and the finished cache is installed once."""
    if not _is_complete(root):
        arrays, extra = build()
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.work-") as tmp:
            _write_cache(Path(tmp) / "cache", prepared.spec, arrays, extra)
            _install(Path(tmp) / "cache", root, Path(tmp) / "old", replace=False)
    return PreparedDataset(prepared.name, root, prepared.spec, _read_meta(root))


def _stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, kept) indices, both sorted: systematic sampling of a class-sorted random
    order."""
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    positions = np.arange(len(labels) + 1) * fraction
    held = np.floor(positions[1:]) > np.floor(positions[:-1])
    return np.sort(order[held]), np.sort(order[~held])


def for_run(name: str, data_dir: str | Path | None, train_samples: int | None,
            test_samples: int | None, seed: int, select_on: str, val_fraction: float,
            on_prepare: Callable[[str], None] = print) -> PreparedDataset:
    """The dataset a run evaluates on: the cache (prepared now if missing), its seeded subset,
    and the validation split when the run selects on one."""
    try:
        prepared = load(name, data_dir)
    except DatasetError:
        on_prepare(f"dataset {name} is not prepared yet: preparing it now")
        prepared = prepare(name, data_dir)
    if train_samples or test_samples:
        prepared = subset(prepared, train_samples, test_samples, seed)
    return holdout(prepared, val_fraction, seed) if select_on == "val" else prepared


def fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """sha256 over the bytes of train_x, train_y, test_x, test_y (in that order), 16 hex chars."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Cache writing and checking


def _data_dir(data_dir: str | Path | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def _read_meta(root: Path) -> dict[str, Any]:
    return json.loads((root / "meta.json").read_text())


def _is_complete(root: Path) -> bool:
    """True if ``root`` holds meta.json and the four arrays with the shapes meta.json states."""
    try:
        meta = _read_meta(root)
        shape = tuple(meta["input_shape"])
        n, m = int(meta["train_count"]), int(meta["test_count"])
        expected = {
            "sandbox/train_x.npy": (n, *shape), "sandbox/train_y.npy": (n,),
            "sandbox/test_x.npy": (m, *shape), "labels/test_y.npy": (m,),
        }
        for rel, want in expected.items():
            a = np.load(root / rel, mmap_mode="r")
            if a.shape != want or a.dtype != np.uint8:
                return False
        return all(k in meta for k in META_KEYS)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_cache(
    stage: Path, spec: DatasetSpec, arrays: Arrays, extra: dict[str, Any] | None = None
) -> None:
    """Write the cache layout into ``stage`` (a fresh folder), meta.json last."""
    train_x, train_y, test_x, test_y = arrays
    for rel, a in (("sandbox/train_x.npy", train_x), ("sandbox/train_y.npy", train_y),
                   ("sandbox/test_x.npy", test_x), ("labels/test_y.npy", test_y)):
        _save_npy(stage / rel, a)
    meta = {
        "name": spec.name, "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes, "mean": list(spec.mean), "std": list(spec.std),
        "flip": spec.flip, "train_count": len(train_x), "test_count": len(test_x),
        "fingerprint": fingerprint(arrays), **(extra or {}),
    }
    _write_synced(stage / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))


def _save_npy(path: Path, a: np.ndarray) -> None:
    _write_synced(path, lambda f: np.save(f, np.ascontiguousarray(a, dtype=np.uint8)))


def _write_synced(path: Path, write: Callable[[Any], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _install(stage: Path, root: Path, trash: Path, replace: bool) -> None:
    """Rename the finished ``stage`` to ``root``; an incomplete old ``root`` goes to ``trash``.

    ``trash`` must lie in a temporary folder that the caller deletes.
    """
    if root.exists():
        if _is_complete(root) and not replace:
            return  # a concurrent prepare finished first; keep its cache
        os.rename(root, trash)
    try:
        os.rename(stage, root)
    except OSError:
        if not _is_complete(root):
            raise
    fsync_dir(root.parent)


def _check_arrays(spec: DatasetSpec, arrays: Arrays, src: Path) -> None:
    """Raise DatasetError unless the arrays fit ``spec``."""
    for split, x, y in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != spec.input_shape:
            raise DatasetError(f"{src}: {split} images have shape {x.shape} {x.dtype}, "
                               f"expected uint8 [N, {', '.join(map(str, spec.input_shape))}]")
        if len(x) == 0 or y.shape != (len(x),):
            raise DatasetError(f"{src}: {split} has {len(x)} images but labels {y.shape}")
        if y.min() < 0 or y.max() >= spec.num_classes:
            raise DatasetError(f"{src}: {split} labels outside 0..{spec.num_classes - 1}")


# ---------------------------------------------------------------------------------------------
# Subsets


def _label(count: int | None) -> str:
    return "all" if count is None else str(count)


def _subset_count(count: int | None, size: int, split: str) -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise DatasetError(f"{split} samples must be a positive integer, got {count!r}")
    if count > size:
        raise DatasetError(f"{split} samples {count} exceeds the {split} split size {size}")
    return int(count)


def _choose(rng: np.random.Generator, n: int, k: int | None) -> np.ndarray:
    return np.arange(n) if k is None else np.sort(rng.choice(n, size=k, replace=False))


def _take(root: Path, train_idx: np.ndarray, test_idx: np.ndarray) -> Arrays:
    def part(rel: str, idx: np.ndarray) -> np.ndarray:
        return np.asarray(np.load(root / rel, mmap_mode="r")[idx])

    return (part("sandbox/train_x.npy", train_idx), part("sandbox/train_y.npy", train_idx),
            part("sandbox/test_x.npy", test_idx), part("labels/test_y.npy", test_idx))


# ---------------------------------------------------------------------------------------------
# Downloads (torchvision, lazily)


def _download(spec: DatasetSpec, dest: Path, progress: bool) -> Path:
    """Download the original files with torchvision into ``dest``; return the folder to read."""
    try:
        from torchvision import datasets as tv
    except ImportError as e:
        raise DatasetError(
            f"downloading {spec.name} needs torchvision: {PIP_HINT}, "
            f"or pass a folder of the original files with --from DIR"
        ) from e
    if spec.name == "imagenette" and not hasattr(tv, "Imagenette"):
        raise DatasetError(f"downloading imagenette needs torchvision >= 0.17: {PIP_HINT} -U, "
                           "or pass an extracted imagenette2-160 folder with --from DIR")
    dest.mkdir(parents=True, exist_ok=True)
    root = str(dest)
    try:
        if spec.name in ("cifar10", "cifar100"):
            cls = tv.CIFAR10 if spec.name == "cifar10" else tv.CIFAR100
            for train in (True, False):
                cls(root, train=train, download=True)
        elif spec.name in ("mnist", "fashionmnist"):
            cls = tv.MNIST if spec.name == "mnist" else tv.FashionMNIST
            for train in (True, False):
                cls(root, train=train, download=True)
        elif spec.name == "svhn":
            for split in ("train", "test"):
                tv.SVHN(root, split=split, download=True)
        else:  # imagenette: one archive holds both splits; a second download=True would fail
            tv.Imagenette(root, split="train", size="160px", download=True)
    except Exception as e:  # network, checksum or disk errors from torchvision
        raise DatasetError(f"download of {spec.name} failed ({type(e).__name__}: {e}); "
                           "retry, or pass a folder of the original files with --from DIR") from e
    return dest
