"""Tests for jaxreg.data: real MNIST files, bundled datasets, local readers, batching."""

import gzip
import sys
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import data

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREG_CACHE", str(tmp_path / "cache"))


def _idx_bytes(a: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}[a.dtype.type]
    header = bytes([0, 0, code, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


# --- real files ---------------------------------------------------------------


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist not available")
def test_load_real_mnist():
    ds = data.load("mnist", data_dir=MNIST_DIR)
    (xtr, ytr), (xte, yte) = ds.train, ds.test
    assert ds.name == "mnist" and ds.num_classes == 10
    assert xtr.shape == (5000, 28, 28, 1) and xte.shape == (10000, 28, 28, 1)
    assert xtr.dtype == xte.dtype == np.uint8 and ytr.dtype == yte.dtype == np.int32
    assert ytr.shape == (5000,) and yte.shape == (10000,)
    assert set(np.unique(ytr)) == set(np.unique(yte)) == set(range(10))
    np.testing.assert_array_equal(
        np.bincount(yte), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert xtr.max() == 255 and xte.max() == 255


def test_digits_shapes_and_determinism():
    pytest.importorskip("sklearn")
    a, b = data.load("digits"), data.load("digits")
    assert a.train[0].shape == (1438, 8, 8, 1) and a.test[0].shape == (359, 8, 8, 1)
    assert a.train[0].dtype == np.uint8 and a.train[1].dtype == np.int32
    assert a.train[0].max() == 255 and a.num_classes == 10
    for u, v in zip(a.train + a.test, b.train + b.test, strict=True):
        np.testing.assert_array_equal(u, v)


def test_mnist1d_shapes_determinism_and_no_files(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.chdir(tmp_path)
    # mnist1d seeds NumPy's legacy global generator; load() must restore it.
    np.random.seed(123)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    a = data.load("mnist1d")
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    assert a.train[0].shape == (4000, 40, 1) and a.test[0].shape == (1000, 40, 1)
    assert a.train[0].dtype == np.float32 and a.train[1].dtype == np.int32
    assert set(np.unique(a.train[1])) == set(range(10))
    np.testing.assert_array_equal(a.train[0], data.load("mnist1d").train[0])
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # nothing written


# --- IDX / CSV / npz ----------------------------------------------------------


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, name):
    rng = np.random.default_rng(0)
    for a in (
        rng.integers(0, 256, (7, 5, 3), dtype=np.uint8),
        rng.integers(-9, 9, (4,)).astype(np.int32),
        rng.normal(size=(2, 3)).astype(np.float32),
    ):
        out = data.read_idx(_write(tmp_path / name, _idx_bytes(a)))
        assert out.dtype == a.dtype
        np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("name", ["t.idx", "t.idx.gz"])
def test_idx_truncated_and_bad_magic(tmp_path, name):
    raw = _idx_bytes(np.zeros((10, 4, 4), np.uint8))
    path = _write(tmp_path / name, raw[:-5])
    with pytest.raises(ValueError, match=r"t\.idx.*truncated"):
        data.read_idx(path)
    with pytest.raises(ValueError, match=r"t\.idx.*magic"):
        data.read_idx(_write(tmp_path / name, b"\x12\x34" + raw[2:]))
    if name.endswith(".gz"):  # a cut gzip stream
        whole = gzip.compress(raw)
        path.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(ValueError, match=r"t\.idx\.gz.*gzip"):
            data.read_idx(path)
    with pytest.raises(FileNotFoundError, match=r"nope.idx"):
        data.read_idx(tmp_path / "nope.idx")


def test_mnist_idx_dir_and_missing_files(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = np.arange(6, dtype=np.uint8)
    for split in ("train", "t10k"):
        _write(tmp_path / f"{split}-images-idx3-ubyte.gz", _idx_bytes(x))
        _write(tmp_path / f"{split}-labels-idx1-ubyte", _idx_bytes(y))
    ds = data.load("fashion_mnist", data_dir=tmp_path)
    assert ds.name == "fashion_mnist" and ds.train[0].shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(ds.test[0][..., 0], x)
    assert ds.test[1].dtype == np.int32
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load("kmnist", data_dir=tmp_path)


def test_csv(tmp_path):
    rows = np.array([[0, 255, 7, 3, 1], [9, 8, 7, 6, 0]])
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    x, y = data.read_csv(path, shape=(2, 2, 1))
    assert x.shape == (2, 2, 2, 1) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x.reshape(2, 4), rows[:, :4])
    np.testing.assert_array_equal(y, [1, 0])
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*row 1"):
        data.read_csv(bad, shape=(2, 2, 1))


def test_npz(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {
        "x_train": rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 1, 0], np.int64),
        "x_test": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
        "y_test": np.array([2, 2, 1], np.int64),
    }
    np.savez(tmp_path / "cifar100.npz", **arrays)
    ds = data.read_npz(tmp_path / "cifar100.npz")
    assert ds.train[0].shape == (5, 4, 4, 1) and ds.train[1].dtype == np.int32
    assert ds.num_classes == 3
    via_load = data.load("cifar100", data_dir=tmp_path)
    assert via_load.num_classes == 100 and via_load.test[0].shape == (3, 4, 4, 1)
    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"])
    with pytest.raises(ValueError, match=r"partial\.npz.*y_train"):
        data.read_npz(tmp_path / "partial.npz")


# --- image folders and cache ------------------------------------------------


def _image_tree(root: Path) -> dict:
    from PIL import Image

    rng = np.random.default_rng(3)
    made = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls, ext in (("cat", "png"), ("airplane", "jpg")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i:03d}.{ext}")
                made[(split, cls, i)] = img
    return made


def test_image_folder_dir_and_tar(tmp_path):
    pytest.importorskip("PIL")
    made = _image_tree(tmp_path / "tree")
    splits, classes = data.read_image_folder(tmp_path / "tree")
    assert classes == ("airplane", "cat")
    x, y = splits["train"]
    assert x.shape == (6, 4, 5, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(x[3], made[("train", "cat", 0)])  # PNG is lossless
    assert splits["test"][0].shape == (4, 4, 5, 3)

    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as t:
        for split in ("train", "test"):
            t.add(tmp_path / "tree" / split, arcname=split)
    from_tar, tar_classes = data.read_image_folder(tmp_path / "tree.tar.gz", cache=False)
    assert tar_classes == classes
    for s in ("train", "test"):
        for u, v in zip(from_tar[s], splits[s], strict=True):
            np.testing.assert_array_equal(u, v)
    # A directory holding one tarball per split, the layout of ../shared/data/cifar10-jpeg.
    (tmp_path / "tars").mkdir()
    for split in ("train", "test"):
        with tarfile.open(tmp_path / "tars" / f"c_{split}.tar.gz", "w:gz") as t:
            t.add(tmp_path / "tree" / split, arcname=split)
    ds = data.load("cifar10", data_dir=tmp_path / "tars")
    assert ds.num_classes == 2 and ds.train[0].shape == (6, 4, 5, 3)
    np.testing.assert_array_equal(ds.test[1], splits["test"][1])


def test_image_folder_cache(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    _image_tree(tmp_path / "tree")
    first = data.load("cifar10", data_dir=tmp_path / "tree")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def boom(_):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_image", boom)
    second = data.load("cifar10", data_dir=tmp_path / "tree")
    np.testing.assert_array_equal(first.train[0], second.train[0])
    np.testing.assert_array_equal(first.test[1], second.test[1])
    # A changed source file gets a new cache key, hence a decode.
    (tmp_path / "tree" / "test" / "cat" / "000.png").write_bytes(
        (tmp_path / "tree" / "test" / "cat" / "001.png").read_bytes()
    )
    with pytest.raises(AssertionError, match="decoded again"):
        data.load("cifar10", data_dir=tmp_path / "tree")


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no split/class"):
        data.read_image_folder(tmp_path / "empty")
    (tmp_path / "junk" / "train" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "train" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"x\.jpg.*cannot decode"):
        data.read_image_folder(tmp_path / "junk", cache=False)
    (tmp_path / "cut.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=r"cut\.tar\.gz"):
        data.read_image_folder(tmp_path / "cut.tar.gz", cache=False)
    (tmp_path / "junk" / "train" / "a" / "x.jpg").unlink()
    (tmp_path / "junk" / "train" / "a" / "x.png").write_bytes(_png_bytes())
    with pytest.raises(FileNotFoundError, match=r"no test split"):
        data.load("cifar10", data_dir=tmp_path / "junk")


# --- load errors --------------------------------------------------------------


def test_unknown_name_and_missing_dir(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'.*mnist.*cifar100.*mnist1d"):
        data.load("svhn")
    with pytest.raises(FileNotFoundError, match=r"'mnist'.*does-not-exist"):
        data.load("mnist", data_dir=tmp_path / "does-not-exist")


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar100", "kmnist", "mnist", "cifar10"])
def test_tfds_names_without_tfds_raise_at_once(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError, match=f"'{name}'.*data_dir.*download=True"):
        data.load(name)
    assert time.perf_counter() - start < 5


def test_tfds_not_prepared_never_downloads(monkeypatch):
    class Builder:
        data_dir = "/nowhere/tfds"

        def is_prepared(self):
            return False

        def download_and_prepare(self, *a, **k):
            raise AssertionError("download started with download=False")

        def as_dataset(self, *a, **k):
            raise AssertionError("read started for an unprepared dataset")

    fake = type(sys)("tensorflow_datasets")
    fake.builder = lambda name, **k: Builder()
    fake.load = lambda *a, **k: pytest.fail("tfds.load called")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    with pytest.raises(data.DatasetUnavailableError, match=r"'kmnist'.*/nowhere/tfds"):
        data.load("kmnist")
    with pytest.raises(AssertionError, match="download started"):
        data.load("kmnist", download=True)


# --- batches ------------------------------------------------------------------


def test_batches_drop_remainder():
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    y = np.arange(10, dtype=np.int32)
    key = jax.random.key(0)
    xb, yb = data.batches(key, x, y, 3)
    assert xb.shape == (3, 3, 2) and yb.shape == (3, 3) and isinstance(xb, jax.Array)
    flat = np.asarray(yb).ravel()
    assert len(set(flat.tolist())) == 9  # no repeats
    np.testing.assert_array_equal(np.asarray(xb)[..., 0], 2 * np.asarray(yb))  # pairs kept
    np.testing.assert_array_equal(yb, data.batches(key, x, y, 3)[1])
    np.testing.assert_array_equal(flat, np.asarray(jax.random.permutation(key, 10))[:9])
    assert not np.array_equal(yb, data.batches(jax.random.key(1), x, y, 3)[1])


def test_batches_pad_and_mask():
    y = np.arange(10, dtype=np.int32)
    xb, yb, mask = data.batches(jax.random.key(0), y[:, None], y, 4, drop_remainder=False)
    assert xb.shape == (3, 4, 1) and mask.shape == (3, 4) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(mask).ravel(), [True] * 10 + [False] * 2)
    real = np.asarray(yb)[np.asarray(mask)]
    np.testing.assert_array_equal(np.sort(real), y)  # every example exactly once
    assert set(np.asarray(yb)[~np.asarray(mask)].tolist()) <= set(y.tolist())
    _, _, full = data.batches(jax.random.key(0), y, y, 5, drop_remainder=False)
    assert bool(full.all())


def test_batches_errors():
    y = np.arange(3)
    with pytest.raises(ValueError, match="no full batch"):
        data.batches(jax.random.key(0), y, y, 4)
    with pytest.raises(ValueError, match="y has 2"):
        data.batches(jax.random.key(0), y, y[:2], 1)


def test_tfds_prepared_copy_is_read_without_download(tmp_path, monkeypatch):
    (tmp_path / "dataset_info.json").write_text("{}")
    images = np.zeros((4, 28, 28, 1), np.uint8)

    class Label:
        num_classes = 10

    class Builder:  # no is_prepared(): falls back to dataset_info.json in data_dir
        data_dir = str(tmp_path)
        info = type("Info", (), {"features": {"label": Label()}})()

        def download_and_prepare(self, *a, **k):
            raise AssertionError("download started with download=False")

        def as_dataset(self, split, batch_size):
            assert batch_size == -1
            n = 3 if split == "train" else 1
            return {"image": images[:n], "label": np.arange(n)}

    fake = type(sys)("tensorflow_datasets")
    fake.builder = lambda name, **k: Builder()
    fake.as_numpy = lambda d: d
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    ds = data.load("fashion_mnist")
    assert ds.train[0].shape == (3, 28, 28, 1) and ds.test[1].dtype == np.int32
    assert ds.num_classes == 10
    (tmp_path / "dataset_info.json").unlink()
    with pytest.raises(data.DatasetUnavailableError, match="'fashion_mnist'"):
        data.load("fashion_mnist")
