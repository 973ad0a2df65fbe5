"""File-format readers: the original dataset files (IDX, CIFAR pickles, SVHN .mat, ImageNette
JPEG folders, plain or archived) read into uint8 arrays for the dataset cache.

Host code: scipy (SVHN) and Pillow (ImageNette) are imported lazily, only when needed.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.data.datasets import PIP_HINT, SPECS, Arrays, DatasetError


def _labels(values: Any, where: Path) -> np.ndarray:
    """Labels as int64 [N]."""
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{where}: labels are not integers ({e})") from e


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


READERS: dict[str, Callable[[Path, Path, bool], Arrays]] = {
    "cifar10": _read_cifar10,
    "cifar100": _read_cifar100,
    "svhn": _read_svhn,
    "mnist": _read_mnist,
    "fashionmnist": _read_fashionmnist,
    "imagenette": _read_imagenette,
}
