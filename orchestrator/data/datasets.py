"""Dataset cache: prepare, load and subset image-classification datasets.

Layout (docs/contracts.md, "Dataset cache"): ``<data_dir>/<name>/`` holds
``sandbox/train_x.npy``, ``sandbox/train_y.npy``, ``sandbox/test_x.npy`` (uint8, NCHW),
``labels/test_y.npy`` (never mounted into a sandbox) and ``meta.json``. Caches are built in a
temporary folder beside the target and renamed into place, so a crash never leaves a half cache.

Host code: this module never imports torch; torchvision (downloads) and Pillow (ImageNette) are
imported lazily, only when needed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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
        arrays = _READERS[spec.name](src, work, progress)
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
    root = prepared.root / "subsets" / key
    if not _is_complete(root):
        rng = np.random.default_rng(seed)
        train_idx = _choose(rng, prepared.train_count, k_train)
        test_idx = _choose(rng, prepared.test_count, k_test)
        arrays = _take(prepared.root, train_idx, test_idx)
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{key}.work-") as tmp:
            extra = {"subset": {"train_samples": train_samples, "test_samples": test_samples,
                                "seed": seed, "parent_fingerprint": prepared.fingerprint}}
            _write_cache(Path(tmp) / "cache", prepared.spec, arrays, extra)
            _install(Path(tmp) / "cache", root, Path(tmp) / "old", replace=False)
    return PreparedDataset(prepared.name, root, prepared.spec, _read_meta(root))


def holdout(prepared: PreparedDataset, fraction: float, seed: int) -> PreparedDataset:
    """A stratified validation split of the training set, materialised once under
    ``<root>/holdout/<fraction>-<seed>/``: the rest trains; the evaluation images (test_x) are
    the validation images followed by the test images, whose labels stay on the host like the
    test labels (``labels/test_y.npy``). The sandbox cannot tell the two apart, and needs not.

    Indices: ``rng = np.random.default_rng(seed)``; the training set in a random order, sorted
    stably by class, and every (1 / fraction)-th image of that order held out, so each class
    gives its share (``floor(n * fraction)`` images in all).
    """
    key = f"{fraction:g}-{seed}"
    root = prepared.root / "holdout" / key
    if not _is_complete(root):
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
        extra = {"holdout": {"fraction": fraction, "seed": seed, "val_count": len(val_idx),
                             "parent_fingerprint": prepared.fingerprint}}
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{key}.work-") as tmp:
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


def _labels(values: Any, where: Path) -> np.ndarray:
    """Labels as int64 [N]."""
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: labels are not integers ({e})") from e


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
# Progress


@contextmanager
def _status(message: str, progress: bool) -> Iterator[None]:
    """A spinner on stderr while a slow step runs."""
    if not progress:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


# ---------------------------------------------------------------------------------------------
# Finding files


def _candidate_dirs(source: Path, extra: Sequence[str] = ()) -> list[Path]:
    """``source``, named subfolders, then every folder one level down (sorted)."""
    dirs = [source, *(source / e for e in extra)]
    if source.is_dir():
        dirs += sorted(p for p in source.iterdir() if p.is_dir())
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _find_in(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    return next((folder / (stem + s) for s in suffixes if (folder / (stem + s)).is_file()), None)


def _locate(
    source: Path, stems: Sequence[str], suffixes: Sequence[str], extra: Sequence[str], what: str
) -> list[Path]:
    """Paths of all ``stems`` in the first candidate folder that holds any of them."""
    ends = "".join(suffixes) if len(suffixes) == 1 else f"[{'|'.join(s for s in suffixes if s)}]"
    for folder in _candidate_dirs(source, extra):
        found = [_find_in(folder, s, suffixes) for s in stems]
        if any(found):
            missing = [s + ends for s, p in zip(stems, found, strict=True) if p is None]
            if missing:
                raise DatasetError(f"missing file {', '.join(missing)} in {folder} ({what})")
            return [p for p in found if p is not None]
    raise DatasetError(f"no {what} files in {source} or one folder below; expected "
                       f"{', '.join(s + ends for s in stems)}")


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)

_IDX_STEMS = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (plain or .gz) of unsigned bytes as a uint8 array of the header's dims."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise DatasetError(f"{path}: IDX element type 0x{data[2]:02x}, expected 0x08 (ubyte)")
    ndim, header = data[3], 4 + 4 * data[3]
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DatasetError(f"{path}: header promises {dims} = {size} bytes, file holds "
                           f"{len(data) - header}; the file is truncated or corrupt")
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(dims)


def _read_idx_dataset(source: Path, tv_class: str) -> Arrays:
    paths = _locate(source, _IDX_STEMS, ("", ".gz"), ("raw", f"{tv_class}/raw"), "IDX")
    tr_x, tr_y, te_x, te_y = (read_idx(p) for p in paths)
    for x, y, px, py in ((tr_x, tr_y, paths[0], paths[1]), (te_x, te_y, paths[2], paths[3])):
        if x.ndim != 3 or y.ndim != 1:
            raise DatasetError(f"{px}, {py}: expected images [N, H, W] and labels [N]")
        if len(x) != len(y):
            raise DatasetError(f"{px} has {len(x)} images but {py} has {len(y)} labels")
    return tr_x[:, None], tr_y, te_x[:, None], te_y


def _read_mnist(source: Path, work: Path, progress: bool) -> Arrays:
    return _read_idx_dataset(source, "MNIST")


def _read_fashionmnist(source: Path, work: Path, progress: bool) -> Arrays:
    return _read_idx_dataset(source, "FashionMNIST")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (Python pickles)


def _np_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs (numpy arrays)."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return _np_reconstruct()
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")):
            return super().find_class(module, name)
        raise DatasetError(f"unexpected object {module}.{name} in a CIFAR pickle")


def _unpickle(path: Path) -> dict[bytes, Any]:
    """Load one CIFAR batch.

    The CIFAR "python version" format is pickle, which can run code on load. We read only the
    user's own local files (or torchvision's checksum-verified download), never candidate
    output, and further restrict the globals the pickle may reference to numpy's array types.
    """
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR batch ({e})") from e
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DatasetError(f"{path}: not a CIFAR batch (no b'data' entry)")
    return batch


def _cifar_batches(paths: Sequence[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batches; rows are 3072 bytes: the R, G, B planes of a 32x32 image."""
    xs, ys = [], []
    for p in paths:
        batch = _unpickle(p)
        x = np.asarray(batch[b"data"])
        if label_key not in batch:
            raise DatasetError(f"{p}: no {label_key!r} entry")
        y = _labels(batch[label_key], p)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise DatasetError(f"{p}: data {x.shape} {x.dtype} / {len(y)} labels, "
                               "expected uint8 [N, 3072] and N labels")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, rejecting absolute paths, '..', links and special files."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts:
                    raise DatasetError(f"{archive}: unsafe member path {m.name!r}; not extracting")
                if not (m.isfile() or m.isdir()):
                    raise DatasetError(f"{archive}: member {m.name!r} is a link or special file")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                tar.extractall(dest, members=members, filter="data")
            else:  # members were checked above
                tar.extractall(dest, members=members)
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DatasetError(f"{archive}: cannot extract ({e})") from e


def _cifar_dir(
    source: Path, work: Path, folder: str, archive: str, files: Sequence[str]
) -> Path:
    """The folder holding the CIFAR pickles: ``folder``, ``source`` itself, or the archive."""
    if source.is_dir():
        for d in (source / folder, source):
            if any((d / f).is_file() for f in files):
                missing = [f for f in files if not (d / f).is_file()]
                if missing:
                    raise DatasetError(f"missing file {', '.join(missing)} in {d}")
                return d
    tgz = source if source.is_file() else source / archive
    if not tgz.is_file():
        raise DatasetError(f"no CIFAR files in {source}: expected {folder}/ holding "
                           f"{', '.join(files)}, or {archive}")
    dest = Path(tempfile.mkdtemp(dir=work, prefix="extract-"))
    _safe_extract(tgz, dest)
    d = dest / folder
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise DatasetError(f"{tgz}: archive lacks {folder}/{', '.join(missing)}")
    return d


def _read_cifar10(source: Path, work: Path, progress: bool) -> Arrays:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    d = _cifar_dir(source, work, "cifar-10-batches-py", "cifar-10-python.tar.gz",
                   [*train, "test_batch"])
    with _status("Reading CIFAR-10", progress):
        tr = _cifar_batches([d / f for f in train], b"labels")
        te = _cifar_batches([d / "test_batch"], b"labels")
    return tr[0], tr[1], te[0], te[1]


def _read_cifar100(source: Path, work: Path, progress: bool) -> Arrays:
    d = _cifar_dir(source, work, "cifar-100-python", "cifar-100-python.tar.gz", ["train", "test"])
    with _status("Reading CIFAR-100", progress):
        tr = _cifar_batches([d / "train"], b"fine_labels")
        te = _cifar_batches([d / "test"], b"fine_labels")
    return tr[0], tr[1], te[0], te[1]


# ---------------------------------------------------------------------------------------------
# SVHN (MATLAB .mat)


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError, NotImplementedError) as e:
        raise DatasetError(f"{path}: not a readable MATLAB file ({e})") from e
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path}: expected variables X and y")
    x, y = np.asarray(mat["X"]), _labels(mat["y"], path)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DatasetError(f"{path}: X {x.shape} / {len(y)} labels, expected [32, 32, 3, N]")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False), y


def _read_svhn(source: Path, work: Path, progress: bool) -> Arrays:
    paths = _locate(source, ("train_32x32", "test_32x32"), (".mat",), ("svhn",), "SVHN .mat")
    with _status("Reading SVHN", progress):
        (tr_x, tr_y), (te_x, te_y) = (_read_svhn_mat(p) for p in paths)
    return tr_x, tr_y, te_x, te_y


# ---------------------------------------------------------------------------------------------
# ImageNette (folders of JPEGs)

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _pil_image() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise DatasetError(f"ImageNette needs Pillow to decode images: {PIP_HINT}") from e
    return Image


def _imagenette_root(source: Path) -> Path:
    for d in (source, source / "imagenette2-160"):
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    raise DatasetError(f"no ImageNette layout in {source}: expected train/<wnid>/*.JPEG "
                       "and val/<wnid>/*.JPEG (here or in imagenette2-160/)")


def _image_list(split_dir: Path, classes: Sequence[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(classes):
        folder = split_dir / wnid
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"no images in {split_dir}")
    return files, np.asarray(labels, dtype=np.int64)


def _decode(path: Path, size: int) -> np.ndarray:
    """RGB, shorter side resized to ``size``, centre crop ``size`` x ``size``, as [3, H, W]."""
    image_mod = _pil_image()
    try:
        with image_mod.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), image_mod.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DatasetError(f"{path}: cannot decode image ({e})") from e


def _decode_all(files: Sequence[Path], size: int, progress: bool, what: str) -> np.ndarray:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        Progress(*columns, console=Console(stderr=True), disable=not progress,
                 transient=True) as bar,
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
    ):
        task = bar.add_task(what, total=len(files))
        for i, img in enumerate(pool.map(lambda p: _decode(p, size), files)):
            out[i] = img
            bar.advance(task)
    return out


def _read_imagenette(source: Path, work: Path, progress: bool) -> Arrays:
    _pil_image()  # fail early with the install hint
    root = _imagenette_root(source)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) != SPECS["imagenette"].num_classes:
        raise DatasetError(f"{root / 'train'}: {len(classes)} class folders, expected 10")
    extra = sorted({p.name for p in (root / "val").iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise DatasetError(f"{root / 'val'}: class folders {extra} not in train/")
    size = SPECS["imagenette"].input_shape[1]
    tr_files, tr_y = _image_list(root / "train", classes)
    te_files, te_y = _image_list(root / "val", classes)
    tr_x = _decode_all(tr_files, size, progress, "ImageNette train")
    te_x = _decode_all(te_files, size, progress, "ImageNette val")
    return tr_x, tr_y, te_x, te_y


_READERS: dict[str, Callable[[Path, Path, bool], Arrays]] = {
    "cifar10": _read_cifar10,
    "cifar100": _read_cifar100,
    "svhn": _read_svhn,
    "mnist": _read_mnist,
    "fashionmnist": _read_fashionmnist,
    "imagenette": _read_imagenette,
}


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
