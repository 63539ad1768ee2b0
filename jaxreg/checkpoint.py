"""Checkpoint and resume for training-state pytrees (msgpack, no extra dependency).

* :func:`save_checkpoint`: writes ``directory/checkpoint_<step>.msgpack``
  atomically and keeps the newest ``keep`` checkpoints.
* :func:`restore_checkpoint`: reads one back into the structure, dtypes, shapes
  and shardings of a ``target`` pytree (e.g. the freshly initialised state or
  its ``jax.eval_shape``).
* :func:`latest_step` / :func:`all_steps`: what is in a directory.

Any pytree works: dicts, lists, tuples, ``NamedTuple`` optimizer states (optax),
``flax.struct.PyTreeNode`` dataclasses such as ``flax.training.train_state.TrainState``
(only the pytree data is saved; static fields such as ``apply_fn`` and ``tx`` come
from the target), typed PRNG keys (their ``jax.random.key_data`` is saved and
re-wrapped with the target key's implementation), ``None`` leaves, bfloat16 and
integer arrays and Python scalars.

File format (version 1): one msgpack map written with ``flax.serialization``::

    {"format": "jaxreg.checkpoint", "version": 1, "step": int,
     "paths": [keystr, ...],                 # leaf order of the saved tree
     "leaves": {keystr: numpy array},        # e.g. ".opt_state[0].mu['Dense_0']['kernel']"
     "key_impls": {keystr: impl name}}       # only for typed PRNG key leaves

Leaf paths are ``jax.tree_util.keystr`` strings of the flattened tree. On restore
the saved paths must equal the target's leaf paths exactly (same set); otherwise
a ``ValueError`` names the first missing and the first unexpected path.

Every leaf is gathered to host memory before writing, which is what a single
host (one or several local devices) needs. Under multi-process JAX
(``jax.process_count() > 1``) arrays that are not fully addressable are gathered
with ``multihost_utils.process_allgather`` on every process, only process 0
writes (the others return the path without writing) and all processes wait for
the write at a barrier, so every process must call :func:`save_checkpoint`. For
large models on multi-host pods, ``orbax-checkpoint`` saves the same pytrees
shard by shard without gathering; it is not a dependency here because it pulls in
``tensorstore``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxreg._util import put

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "all_steps",
    "latest_step",
    "restore_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT_VERSION = 1
_FORMAT = "jaxreg.checkpoint"
_NAME = re.compile(r"^checkpoint_(\d+)\.msgpack$")

PathLike = str | os.PathLike


def _file(directory: PathLike, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step}.msgpack"


def _as_step(step: Any) -> int:
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step must be an integer, got {step!r}")
    try:
        value = int(step)
    except (TypeError, ValueError) as e:
        raise TypeError(f"step must be an integer or a 0-d integer array, got {step!r}") from e
    if np.ndim(step) != 0 or value != step:
        raise TypeError(f"step must be an integer or a 0-d integer array, got {step!r}")
    if value < 0:
        raise ValueError(f"step must be >= 0, got {value}")
    return value


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl(leaf: Any) -> str:
    """Implementation name of a typed key array or a ``ShapeDtypeStruct`` of one."""
    if isinstance(leaf, jax.Array):
        return str(jax.random.key_impl(leaf))
    found: list[str] = []
    jax.eval_shape(lambda k: found.append(str(jax.random.key_impl(k))), leaf)
    return found[0]


def _to_host(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.asarray(jax.device_get(leaf))


def all_steps(directory: PathLike) -> list[int]:
    """Steps of the checkpoints in ``directory``, ascending.

    Args:
        directory: checkpoint directory; a missing directory has no steps.

    Returns:
        A sorted list of ints (empty if there are none).

    Example:
        >>> import tempfile
        >>> from jaxreg.checkpoint import all_steps, save_checkpoint
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for s in (1, 10, 2):
        ...         _ = save_checkpoint(d, {"w": 0.0}, s)
        ...     all_steps(d)
        [1, 2, 10]
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def latest_step(directory: PathLike) -> int | None:
    """Largest checkpointed step in ``directory``, or ``None`` if there is none.

    Args:
        directory: checkpoint directory (may be missing).

    Returns:
        An int or ``None``.

    Example:
        >>> import tempfile
        >>> from jaxreg.checkpoint import latest_step, save_checkpoint
        >>> with tempfile.TemporaryDirectory() as d:
        ...     print(latest_step(d))
        ...     _ = save_checkpoint(d, {"w": 0.0}, 5)
        ...     latest_step(d)
        None
        5
    """
    steps = all_steps(directory)
    return steps[-1] if steps else None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (POSIX); not supported everywhere
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(
    directory: PathLike,
    state: Any,
    step: int | jax.Array,
    *,
    keep: int | None = 3,
    overwrite: bool = False,
) -> Path:
    """Write ``state`` to ``directory/checkpoint_<step>.msgpack`` atomically.

    The file is written to a temporary file in the same directory, fsynced and
    renamed over the final name (``os.replace``), so a crash never leaves a
    partial ``checkpoint_<step>.msgpack``. Afterwards only the ``keep``
    checkpoints with the largest steps are kept; the one just written is never
    deleted, even if its step is lower than ``keep`` newer ones.

    Host code: call it outside ``jit``. Under multi-process JAX every process
    must call it; only process 0 writes and the others return the path.

    Args:
        directory: where to write; created if missing.
        state: any pytree of arrays, typed PRNG keys, numpy arrays, Python
            scalars and ``None`` (see the module docstring).
        step: training step, a non-negative int or 0-d integer array.
        keep: how many checkpoints to keep (``>= 1``), or ``None`` to keep all.
        overwrite: replace an existing checkpoint of the same step instead of
            raising ``FileExistsError``.

    Returns:
        The ``pathlib.Path`` of the checkpoint file.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> from jaxreg.checkpoint import all_steps, save_checkpoint
        >>> state = {"w": jnp.ones(3), "key": jax.random.key(0)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for s in range(0, 50, 10):
        ...         path = save_checkpoint(d, state, s, keep=2)
        ...     path.name, all_steps(d)
        ('checkpoint_40.msgpack', [30, 40])
    """
    step = _as_step(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
    path = _file(directory, step)

    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    paths, leaves, key_impls = [], {}, {}
    for p, leaf in flat:
        name = jax.tree_util.keystr(p)
        if name in leaves:
            raise ValueError(f"two leaves flatten to the same path {name!r}")
        if _is_key(leaf):
            key_impls[name] = _key_impl(leaf)
            leaf = jax.random.key_data(leaf)
        elif isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(f"cannot save the abstract leaf at {name}: {leaf}")
        value = _to_host(leaf)
        if value.dtype == object:
            raise TypeError(f"cannot save the leaf at {name} of type {type(leaf).__name__}")
        paths.append(name)
        leaves[name] = value

    if jax.process_count() > 1 and jax.process_index() != 0:
        _barrier(step)
        return path

    if path.exists() and not overwrite:
        raise FileExistsError(
            f"a checkpoint for step={step} already exists at {path}; "
            "pass overwrite=True to replace it"
        )
    payload = {
        "format": _FORMAT,
        "version": CHECKPOINT_FORMAT_VERSION,
        "step": step,
        "paths": paths,
        "leaves": leaves,
        "key_impls": key_impls,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, serialization.msgpack_serialize(payload))

    if keep is not None:
        for old in all_steps(directory)[:-keep]:
            if old != step:
                _file(directory, old).unlink(missing_ok=True)
    _barrier(step)
    return path


def _barrier(step: int) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxreg.checkpoint.save_{step}")


def _read(path: Path) -> dict:
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:
        raise ValueError(f"checkpoint file {path} is truncated or corrupt: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a jaxreg checkpoint (missing format header)")
    version = payload.get("version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version!r}; this jaxreg reads "
            f"version {CHECKPOINT_FORMAT_VERSION}"
        )
    try:
        paths, leaves = list(payload["paths"]), dict(payload["leaves"])
        key_impls = dict(payload["key_impls"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {path} is corrupt: {e!r}") from e
    if set(paths) != set(leaves):
        raise ValueError(f"checkpoint file {path} is corrupt: leaf table and path list differ")
    return {"paths": paths, "leaves": leaves, "key_impls": key_impls}


def _check_paths(saved: list[str], wanted: list[str], path: Path) -> None:
    saved_set, wanted_set = set(saved), set(wanted)
    if saved_set == wanted_set:
        return
    missing = [p for p in wanted if p not in saved_set]
    extra = [p for p in saved if p not in wanted_set]
    parts = []
    if missing:
        parts.append(f"the target has {missing[0]} but the checkpoint does not")
    if extra:
        parts.append(f"the checkpoint has {extra[0]} but the target does not")
    raise ValueError(
        f"structure mismatch between {path} and the target: {'; '.join(parts)} "
        f"({len(missing)} missing, {len(extra)} unexpected leaves)"
    )


def _restore_leaf(name: str, value: np.ndarray, target: Any, key_impl: str | None) -> Any:
    if _is_key(target):
        impl = _key_impl(target)
        if key_impl is None:
            raise ValueError(f"the target leaf at {name} is a PRNG key but the checkpoint's is not")
        if key_impl != impl:
            raise ValueError(
                f"PRNG key implementation mismatch at {name}: checkpoint {key_impl!r}, "
                f"target {impl!r}"
            )
        data_shape = jax.eval_shape(jax.random.key_data, target).shape
        if value.shape != tuple(data_shape):
            raise ValueError(
                f"shape mismatch at {name}: checkpoint key data {value.shape}, "
                f"target key data {tuple(data_shape)} (keys {tuple(target.shape)})"
            )
        restored = jax.random.wrap_key_data(value, impl=impl)
    else:
        if key_impl is not None:
            raise ValueError(f"the checkpoint leaf at {name} is a PRNG key but the target's is not")
        shape = tuple(np.shape(target))
        if value.shape != shape:
            raise ValueError(f"shape mismatch at {name}: checkpoint {value.shape}, target {shape}")
        if isinstance(target, (bool, int, float, complex)):
            return type(target)(value.item())
        dtype = target.dtype if hasattr(target, "dtype") else np.asarray(target).dtype
        if isinstance(target, np.ndarray | np.generic):
            return np.asarray(value, dtype=dtype)
        restored = jnp.asarray(value, dtype=dtype)
    sharding = getattr(target, "sharding", None)
    if isinstance(target, jax.Array) or sharding is not None:
        return put(restored, sharding)
    return restored


def restore_checkpoint(directory: PathLike, target: Any, *, step: int | None = None) -> Any:
    """Read a checkpoint into the structure, dtypes, shapes and shardings of ``target``.

    Each saved leaf is matched to the target leaf with the same path, checked
    for shape, cast to the target leaf's dtype and returned as the target's
    kind: a ``jax.Array`` placed with the target's sharding
    (``jax.device_put(value, target.sharding)``), a ``jax.ShapeDtypeStruct``
    becomes a ``jax.Array`` (on its ``sharding`` if set), numpy stays numpy,
    Python scalars stay Python scalars and typed PRNG keys are re-wrapped with
    the target key's implementation. Static fields (e.g. ``TrainState.apply_fn``
    and ``tx``) and ``None`` leaves come from ``target``.

    Args:
        directory: checkpoint directory.
        target: pytree with the structure of the saved state, e.g. the freshly
            initialised state or ``jax.eval_shape`` of its initialiser.
        step: which step to restore; ``None`` restores the latest.

    Returns:
        The restored pytree, with ``target``'s tree structure.

    Raises:
        FileNotFoundError: the directory, or the requested checkpoint, does not exist.
        ValueError: the file is truncated or corrupt (names the file), or a leaf
            path, shape or key implementation differs from the target (names
            the path).

    Example:
        >>> import tempfile, jax, jax.numpy as jnp
        >>> from jaxreg.checkpoint import restore_checkpoint, save_checkpoint
        >>> state = {"w": jnp.arange(3.0, dtype=jnp.bfloat16), "step": jnp.int32(7)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint(d, state, state["step"])
        ...     restored = restore_checkpoint(d, jax.eval_shape(lambda: state))
        >>> restored["w"].tolist(), restored["w"].dtype, int(restored["step"])
        ([0.0, 1.0, 2.0], dtype(bfloat16), 7)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(f"no checkpoint_<step>.msgpack files in {str(directory)!r}")
    else:
        step = _as_step(step)
    path = _file(directory, step)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint for step={step} in {str(directory)!r} "
            f"(available steps: {all_steps(directory)})"
        )
    payload = _read(path)

    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    names = [jax.tree_util.keystr(p) for p, _ in flat]
    _check_paths(payload["paths"], names, path)
    leaves = payload["leaves"]
    restored = []
    for name, (_, t) in zip(names, flat, strict=True):
        value = leaves[name]
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        restored.append(_restore_leaf(name, value, t, payload["key_impls"].get(name)))
    return jax.tree_util.tree_unflatten(treedef, restored)
