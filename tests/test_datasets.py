"""Dataset cache: real Fashion-MNIST, synthetic files in the original formats, hostile inputs."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data import datasets as ds
from orchestrator.data import formats
from orchestrator.data.datasets import DatasetError

FASHION = Path("/usr/share/datasets/fashion-mnist")
CACHE_FILES = ("sandbox/train_x.npy", "sandbox/train_y.npy", "sandbox/test_x.npy",
               "labels/test_y.npy", "meta.json")


def _arrays(root: Path) -> tuple[np.ndarray, ...]:
    return tuple(np.load(root / f) for f in CACHE_FILES[:4])


def _mtimes(root: Path) -> dict[str, int]:
    return {f: (root / f).stat().st_mtime_ns for f in CACHE_FILES}


# ---------------------------------------------------------------------------------------------
# Real Fashion-MNIST (Debian's package)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> ds.PreparedDataset:
    if not FASHION.is_dir():
        pytest.skip(f"{FASHION} is absent (Debian's fashion-mnist package not installed)")
    return ds.prepare("fashion-mnist", tmp_path_factory.mktemp("data"), FASHION, progress=False)


def test_fashion_layout_and_meta(fashion: ds.PreparedDataset) -> None:
    tr_x, tr_y, te_x, te_y = _arrays(fashion.root)
    assert tr_x.shape == (60000, 1, 28, 28) and te_x.shape == (10000, 1, 28, 28)
    assert {a.dtype for a in (tr_x, tr_y, te_x, te_y)} == {np.dtype(np.uint8)}
    assert np.bincount(tr_y).tolist() == [6000] * 10
    assert np.bincount(te_y).tolist() == [1000] * 10
    assert sorted(p.name for p in fashion.sandbox_dir.iterdir()) == [
        "test_x.npy", "train_x.npy", "train_y.npy"]
    assert np.array_equal(fashion.test_labels(), te_y)
    meta = json.loads((fashion.root / "meta.json").read_text())
    assert meta["input_shape"] == [1, 28, 28] and meta["num_classes"] == 10
    assert meta["mean"] == [0.2860] and meta["std"] == [0.3530] and meta["flip"] is True
    assert (meta["train_count"], meta["test_count"]) == (60000, 10000)
    assert meta["fingerprint"] == ds.fingerprint((tr_x, tr_y, te_x, te_y))
    assert len(fashion.fingerprint) == 16 and fashion.train_count == 60000
    assert ds.load("fashionmnist", fashion.root.parent).meta == meta


def test_fashion_prepare_is_idempotent(fashion: ds.PreparedDataset) -> None:
    before = _mtimes(fashion.root)
    again = ds.prepare("fashionmnist", fashion.root.parent, FASHION, progress=False)
    assert again.fingerprint == fashion.fingerprint
    assert _mtimes(fashion.root) == before


def test_fashion_subset(fashion: ds.PreparedDataset) -> None:
    a = ds.subset(fashion, 1000, 500, seed=3)
    b = ds.subset(fashion, 1000, 500, seed=3)
    c = ds.subset(fashion, 1000, 500, seed=4)
    assert a.root == fashion.root / "subsets" / "1000-500-3" and a.root == b.root
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert (a.train_count, a.test_count) == (1000, 500)
    tr_x, tr_y, te_x, te_y = _arrays(a.root)
    full = _arrays(fashion.root)
    rng = np.random.default_rng(3)
    train_idx = np.sort(rng.choice(60000, 1000, replace=False))
    test_idx = np.sort(rng.choice(10000, 500, replace=False))
    assert np.array_equal(tr_x, full[0][train_idx]) and np.array_equal(tr_y, full[1][train_idx])
    assert np.array_equal(te_x, full[2][test_idx]) and np.array_equal(te_y, full[3][test_idx])
    assert a.meta["fingerprint"] == ds.fingerprint((tr_x, tr_y, te_x, te_y))
    assert a.meta["subset"]["parent_fingerprint"] == fashion.fingerprint
    assert not (a.sandbox_dir / "test_y.npy").exists()


def test_subset_counts(fashion: ds.PreparedDataset) -> None:
    assert ds.subset(fashion, None, None, seed=0) is fashion
    part = ds.subset(fashion, 200, None, seed=0)
    assert part.root.name == "200-all-0" and (part.train_count, part.test_count) == (200, 10000)
    assert np.array_equal(part.test_labels(), fashion.test_labels())
    with pytest.raises(DatasetError, match="60000"):
        ds.subset(fashion, 60001, 10, seed=0)
    with pytest.raises(DatasetError, match="positive"):
        ds.subset(fashion, 0, 10, seed=0)


# ---------------------------------------------------------------------------------------------
# Synthetic files in the original formats


def _write_idx(path: Path, a: np.ndarray, gz: bool = False) -> None:
    raw = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    raw += a.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _mnist_dir(folder: Path, n: int = 12, m: int = 6, gz: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (m, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(m) % 10,
    }
    for stem, a in parts.items():
        _write_idx(folder / (stem + (".gz" if gz else "")), a, gz)
    return parts


def test_idx_uncompressed_one_level_down(tmp_path: Path) -> None:
    parts = _mnist_dir(tmp_path / "src" / "raw")
    p = ds.prepare("mnist", tmp_path / "data", tmp_path / "src", progress=False)
    tr_x, tr_y, te_x, te_y = _arrays(p.root)
    assert tr_x.shape == (12, 1, 28, 28) and te_x.shape == (6, 1, 28, 28)
    assert tr_x[5, 0, 3, 17] == parts["train-images-idx3-ubyte"][5, 3, 17]
    assert np.array_equal(te_x[:, 0], parts["t10k-images-idx3-ubyte"])
    assert np.array_equal(tr_y, parts["train-labels-idx1-ubyte"])
    assert p.meta["flip"] is False and p.spec.threshold == 0.90


def test_idx_torchvision_layout(tmp_path: Path) -> None:
    _mnist_dir(tmp_path / "tv" / "MNIST" / "raw", gz=True)
    _mnist_dir(tmp_path / "tv" / "FashionMNIST" / "raw", n=20, gz=True)
    p = ds.prepare("mnist", tmp_path / "data", tmp_path / "tv", progress=False)
    f = ds.prepare("fashionmnist", tmp_path / "data", tmp_path / "tv", progress=False)
    assert (p.train_count, f.train_count) == (12, 20)


def _cifar_batch(data: np.ndarray, labels: list[int], key: bytes = b"labels") -> bytes:
    # A dict with bytes keys, pickled with protocol 2 by Python 3 (bytes via _codecs.encode).
    batch = {b"batch_label": b"synthetic", key: labels, b"data": data,
             b"filenames": [b"x.png"] * len(labels)}
    if key == b"fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return pickle.dumps(batch, protocol=2)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the CIFAR-10 batches: str opcodes for bytes and
    strings, numpy globals under their old module names."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        op = pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(obj))
        self.write(op + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj: object, name: str | None = None) -> None:
        name = name or obj.__name__  # type: ignore[attr-defined]
        module = "numpy.core.multiarray" if name == "_reconstruct" else "numpy"
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[bytes], dispatch[str] = save_bytes, save_str
    dispatch[type] = dispatch[types.BuiltinFunctionType] = dispatch[types.FunctionType] = \
        save_global


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(
        {b"batch_label": b"synthetic", b"labels": labels, b"data": data,
         b"filenames": [b"x.png"] * len(labels)})
    raw = buf.getvalue()
    assert b"_codecs" not in raw and b"numpy.core.multiarray\n_reconstruct" in raw
    return raw


def _cifar10_files(folder: Path, n: int = 4, m: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (5 * n, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (m, 3072), dtype=np.uint8)
    folder.mkdir(parents=True)
    for i in range(5):
        rows = train[i * n:(i + 1) * n]
        (folder / f"data_batch_{i + 1}").write_bytes(
            _py2_batch(rows, [(i * n + j) % 10 for j in range(n)]))
    (folder / "test_batch").write_bytes(_py2_batch(test, [j % 10 for j in range(m)]))
    return train, test


def _tar(archive: Path, folder: Path, arcname: str) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)


def test_cifar10_folder_and_archive(tmp_path: Path) -> None:
    train, test = _cifar10_files(tmp_path / "src" / "cifar-10-batches-py")
    p = ds.prepare("cifar10", tmp_path / "d1", tmp_path / "src", progress=False)
    tr_x, tr_y, te_x, te_y = _arrays(p.root)
    assert tr_x.shape == (20, 3, 32, 32) and te_x.shape == (3, 3, 32, 32)
    # Row layout: 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major 32x32.
    c, h, w = 2, 7, 30
    assert tr_x[13, c, h, w] == train[13, c * 1024 + h * 32 + w]
    assert te_x[1, 1, 0, 5] == test[1, 1024 + 5]
    assert tr_y.tolist() == [i % 10 for i in range(20)] and te_y.tolist() == [0, 1, 2]

    _tar(tmp_path / "arc" / "cifar-10-python.tar.gz", tmp_path / "src" / "cifar-10-batches-py",
         "cifar-10-batches-py")
    from_dir = ds.prepare("cifar10", tmp_path / "d2", tmp_path / "arc", progress=False)
    from_file = ds.prepare("cifar10", tmp_path / "d3", tmp_path / "arc" / "cifar-10-python.tar.gz",
                           progress=False)
    assert p.fingerprint == from_dir.fingerprint == from_file.fingerprint
    assert [x.name for x in (tmp_path / "d2").iterdir()] == ["cifar10"]  # temp dirs cleaned


def test_cifar100(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    train = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    (folder / "train").write_bytes(_cifar_batch(train, [99, 0, 5, 42, 7, 1, 2], b"fine_labels"))
    (folder / "test").write_bytes(
        _cifar_batch(rng.integers(0, 256, (2, 3072), dtype=np.uint8), [98, 3], b"fine_labels"))
    p = ds.prepare("cifar100", tmp_path / "data", tmp_path / "src", progress=False)
    tr_x, tr_y, _, te_y = _arrays(p.root)
    assert tr_y.tolist() == [99, 0, 5, 42, 7, 1, 2] and te_y.tolist() == [98, 3]
    assert tr_x[6, 1, 31, 31] == train[6, 2047] and p.meta["num_classes"] == 100


def test_svhn_mat(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    src.mkdir()
    x_train = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(src / "train_32x32.mat", {"X": x_train, "y": np.array([[10], [1], [9], [10], [4]])})
    savemat(src / "test_32x32.mat", {"X": x_train[..., :2], "y": np.array([[3], [10]])})
    p = ds.prepare("svhn", tmp_path / "data", src, progress=False)
    tr_x, tr_y, te_x, te_y = _arrays(p.root)
    assert tr_y.tolist() == [0, 1, 9, 0, 4] and te_y.tolist() == [3, 0]
    assert tr_x.shape == (5, 3, 32, 32)
    assert tr_x[3, 2, 10, 20] == x_train[10, 20, 2, 3]  # X is [H, W, C, N]
    assert np.array_equal(tr_x, x_train.transpose(3, 2, 0, 1)) and p.meta["flip"] is False


def test_imagenette_folder(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    wnids = [f"n0{9 - i}000000" for i in range(10)]  # created in reverse of sorted order
    for split, per in (("train", 2), ("val", 1)):
        for wnid in wnids:
            folder = tmp_path / "src" / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for j in range(per):
                color = (int(wnid[2]) * 20, 100, 200)
                image.new("RGB", (213 + j, 160), color).save(folder / f"img{j}.JPEG")
    # A lossless wide image with column stripes: the centre crop keeps columns 40..199.
    stripes = np.zeros((160, 240, 3), dtype=np.uint8)
    stripes[:, :, 0] = np.arange(240)[None, :]
    stripes[:, :, 1] = 7
    stripes[:, :, 2] = np.arange(160)[:, None]
    stripe_dir = tmp_path / "src" / "imagenette2-160" / "train" / wnids[-1]  # class 0
    image.fromarray(stripes).save(stripe_dir / "a_stripes.png")
    image.new("L", (90, 120), 50).save(stripe_dir / "b_small_gray.png")  # upscaled, gray -> RGB

    p = ds.prepare("imagenette", tmp_path / "data", tmp_path / "src", progress=False)
    tr_x, tr_y, te_x, te_y = _arrays(p.root)
    assert tr_x.shape == (22, 3, 160, 160) and te_x.shape == (10, 3, 160, 160)
    assert np.bincount(tr_y).tolist() == [4] + [2] * 9 and te_y.tolist() == list(range(10))
    assert np.array_equal(tr_x[0, 0], np.tile(np.arange(40, 200, dtype=np.uint8), (160, 1)))
    assert (tr_x[0, 1] == 7).all() and np.array_equal(tr_x[0, 2, :, 0], np.arange(160))
    assert (tr_x[1] == 50).all()
    # Class k is wnid n0k000000 (sorted), coloured red = 20 * k (JPEG: approximately).
    reds = tr_x[2:, 0].reshape(20, -1).mean(axis=1)
    assert np.allclose(reds, [20 * k for k in [0, 0, *np.repeat(np.arange(1, 10), 2)]], atol=3)


# ---------------------------------------------------------------------------------------------
# Hostile and broken inputs


def test_missing_file_is_named(tmp_path: Path) -> None:
    _mnist_dir(tmp_path / "src")
    (tmp_path / "src" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        ds.prepare("mnist", tmp_path / "data", tmp_path / "src", progress=False)
    assert not (tmp_path / "data" / "mnist").exists()
    with pytest.raises(DatasetError, match="data_batch_1.*cifar-10-python.tar.gz"):
        ds.prepare("cifar10", tmp_path / "data", tmp_path / "src", progress=False)
    _cifar10_files(tmp_path / "src" / "cifar-10-batches-py")
    (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing file data_batch_3 in"):
        ds.prepare("cifar10", tmp_path / "data", tmp_path / "src", progress=False)
    with pytest.raises(DatasetError, match="does not exist"):
        ds.prepare("svhn", tmp_path / "data", tmp_path / "nowhere", progress=False)
    with pytest.raises(DatasetError, match=r"train_32x32\.mat, test_32x32\.mat"):
        ds.prepare("svhn", tmp_path / "data", tmp_path / "src", progress=False)


def test_truncated_idx(tmp_path: Path) -> None:
    _mnist_dir(tmp_path / "src")
    path = tmp_path / "src" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        ds.prepare("mnist", tmp_path / "data", tmp_path / "src", progress=False)
    _write_idx(path, np.zeros((11, 28, 28)))  # 11 images, 12 labels
    with pytest.raises(DatasetError, match="11 images but .* 12 labels"):
        ds.prepare("mnist", tmp_path / "data", tmp_path / "src", progress=False)
    path.write_bytes(b"\x08\x03\x00\x00garbage")
    with pytest.raises(DatasetError, match="magic"):
        formats.read_idx(path)


def _hostile_tar(archive: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_hostile_tar_is_rejected(tmp_path: Path, kind: str) -> None:
    if kind == "symlink":
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        member = tarfile.TarInfo("../evil" if kind == "dotdot" else str(tmp_path / "abs_evil"))
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    _hostile_tar(archive, member)
    with pytest.raises(DatasetError, match="unsafe|link"):
        ds.prepare("cifar10", tmp_path / "data", tmp_path / "src", progress=False)
    assert not (tmp_path / "data" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (tmp_path / "abs_evil").exists()
    assert list((tmp_path / "data").iterdir()) == []


def test_pickle_with_foreign_globals_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(pickle.dumps({b"data": Path("x")}, protocol=2))
    (folder / "test").write_bytes(b"")
    with pytest.raises(DatasetError, match="unexpected object"):
        ds.prepare("cifar100", tmp_path / "data", tmp_path / "src", progress=False)


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar11.*cifar10, cifar100, svhn, mnist"):
        ds.prepare("cifar11", tmp_path)
    with pytest.raises(DatasetError, match="imagenette"):
        ds.load("nope", tmp_path)


def test_load_requires_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not prepared.*orchestrator data prepare svhn"):
        ds.load("svhn", tmp_path)


def test_interrupted_prepare_is_not_a_cache(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stray = data / ".mnist.work-abc123" / "cache" / "sandbox"
    stray.mkdir(parents=True)
    (stray / "train_x.npy").write_bytes(b"half")
    broken = data / "mnist" / "sandbox"  # a cache folder without meta.json
    broken.mkdir(parents=True)
    np.save(broken / "train_x.npy", np.zeros((1, 1, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="incomplete"):
        ds.load("mnist", data)
    _mnist_dir(tmp_path / "src")
    p = ds.prepare("mnist", data, tmp_path / "src", progress=False)
    assert p.train_count == 12 and ds.load("mnist", data).fingerprint == p.fingerprint
    assert sorted(x.name for x in data.iterdir()) == [".mnist.work-abc123", "mnist"]
    # A cache whose arrays disagree with meta.json is rebuilt, not trusted.
    np.save(p.sandbox_dir / "train_y.npy", np.zeros(5, np.uint8))
    with pytest.raises(DatasetError, match="incomplete"):
        ds.load("mnist", data)
    assert ds.prepare("mnist", data, tmp_path / "src", progress=False).fingerprint == p.fingerprint


def test_download_without_torchvision(tmp_path: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchvision is installed; this checks the hint shown without it")
    with pytest.raises(DatasetError, match=r"orchestrator\[data\].*--from DIR"):
        ds.prepare("mnist", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATA", str(tmp_path / "o"))
    assert ds.default_data_dir() == tmp_path / "o"
    monkeypatch.delenv("ORCHESTRATOR_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.default_data_dir() == tmp_path / "xdg" / "orchestrator" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.default_data_dir() == tmp_path / "home" / ".cache" / "orchestrator" / "datasets"


def test_specs() -> None:
    assert set(ds.SPECS) == {"cifar10", "cifar100", "svhn", "mnist", "fashionmnist", "imagenette"}
    for spec in ds.SPECS.values():
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
        assert 0 < spec.threshold < 1
    assert ds.SPECS["imagenette"].input_shape == (3, 160, 160)
    assert [n for n, s in ds.SPECS.items() if not s.flip] == ["svhn", "mnist"]


def test_import_does_not_load_torch() -> None:
    code = ("import sys, orchestrator.data.datasets, orchestrator.data.formats; "
            "print(sorted(m for m in ('torch', 'torchvision', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
