"""Shared helpers: argument checks, hyperparameter resolution, unit axes, tree paths.

Private module. Everything here is small and used by several public modules, so
the rules (how a schedule is evaluated, what ``axis`` means, how a path is
spelled in an error) are written once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# A hyperparameter: a Python number, a schedule ``step -> value`` or an array
# (possibly traced, e.g. under ``jax.vmap`` or ``optax.inject_hyperparams``).
Hyper = float | int | jax.Array | Callable[[jax.Array], jax.Array]
# ``axis`` for per-unit norms: a preset name, an int, a tuple of ints, or None.
AxisSpec = str | int | Sequence[int] | None

NO_PARAMS = (
    "{name} needs the current parameters: call update(updates, state, params) "
    "with params (got params=None)."
)


def is_static_number(x: Any) -> bool:
    """True for a Python (or NumPy scalar) number whose value may be checked now."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_non_negative(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if a static number is negative or NaN."""
    if is_static_number(value) and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}.")


def check_positive(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if a static number is not > 0."""
    if is_static_number(value) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_unit_interval(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` if a static number lies outside [0, 1]."""
    if is_static_number(value) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")


def check_hyper(name: str, value: Any) -> None:
    """Reject values that are neither numbers, arrays nor schedules."""
    if isinstance(value, bool) or not (
        is_static_number(value) or callable(value) or hasattr(value, "dtype")
    ):
        raise TypeError(
            f"{name} must be a number, an array or a schedule (step -> value), "
            f"got {type(value).__name__}."
        )


def resolve(value: Hyper, count: jax.Array) -> jax.Array:
    """Value of a hyperparameter at step ``count`` as a float32 array."""
    if callable(value):
        value = value(count)
    return jnp.asarray(value, dtype=jnp.float32)


def compute_dtype(dtype: Any) -> Any:
    """dtype to compute in: at least float32 (bf16/f16 go up, f64 stays)."""
    dt = jnp.dtype(dtype)
    if jnp.issubdtype(dt, jnp.floating) and dt.itemsize >= 4:
        return dt
    return jnp.dtype(jnp.float32)


def init_count(params: Any) -> jax.Array:
    """The step counter every stateful jaxreg transform starts from."""
    del params
    return jnp.zeros([], jnp.int32)


def next_count(count: jax.Array) -> jax.Array:
    return optax.safe_increment(count)


# --------------------------------------------------------------------------- paths


def tree_where(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """``jnp.where(pred, a, b)`` on every pair of leaves, keeping ``b``'s dtype.

    The one select behind skipped updates, frozen sweep members and early-stopping
    state: traced ``pred``, no Python branch, so it works under jit, scan and vmap.
    """
    return jax.tree.map(lambda a, b: jnp.where(pred, jnp.asarray(a, b.dtype), b), on_true, on_false)


def path_str(path: Sequence[Any]) -> str:
    """'/'-joined flax-style name of a key path, e.g. ``Dense_0/kernel``."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(str(k.name))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover - future key types
            parts.append(str(k))
    return "/".join(parts)


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """Flatten ``tree`` into ``(path, leaf)`` pairs (None and MaskedNode are skipped)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_str(p), leaf) for p, leaf in flat]


# --------------------------------------------------------------------------- axes

UNIT_AXIS_PRESETS = ("per_output", "per_input", "whole")


def unit_axes(axis: AxisSpec, ndim: int, *, name: str = "axis", path: str = "") -> tuple:
    """Reduction axes of a per-unit norm for a leaf of rank ``ndim``.

    ``axis`` follows Keras constraints: the axes the norm is taken over. Presets:

    * ``"per_output"``: every axis but the last. One norm per output unit of a
      flax ``Dense`` kernel ``(in, out)`` (a column) and per filter of a ``Conv``
      kernel ``HWIO``. Rank-1 leaves (biases) are treated element-wise.
    * ``"per_input"``: every axis but the second-to-last (rows of ``(in, out)``;
      input channels of ``HWIO``). Rank < 2: element-wise.
    * ``"whole"`` or ``None``: one norm for the whole leaf.
    """
    where = f" for the parameter at '{path}'" if path else ""
    if axis is None or axis == "whole":
        return tuple(range(ndim))
    if isinstance(axis, str):
        if axis == "per_output":
            return tuple(range(ndim - 1))
        if axis == "per_input":
            return tuple(a for a in range(ndim) if a != ndim - 2) if ndim >= 2 else ()
        raise ValueError(
            f"{name} must be one of {UNIT_AXIS_PRESETS}, an int or a tuple of ints, got {axis!r}."
        )
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(
                f"{name} must hold Python ints (it is static; with optax.inject_hyperparams "
                f"pass static_args=('{name}',)), got {a!r}."
            )
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={axis!r} is out of range{where} of rank {ndim}.")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def check_axis_spec(axis: AxisSpec, name: str = "axis") -> None:
    """Construction-time check of what can be checked without shapes."""
    if axis is None:
        return
    if isinstance(axis, str):
        if axis not in UNIT_AXIS_PRESETS:
            raise ValueError(
                f"{name} must be one of {UNIT_AXIS_PRESETS}, an int or a tuple of ints, "
                f"got {axis!r}."
            )
        return
    axes = (axis,) if isinstance(axis, int) else axis
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(
            f"{name} must be a preset name, an int or a tuple of ints, got {axis!r}."
        ) from None
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(
                f"{name} must hold Python ints (it is static; with optax.inject_hyperparams "
                f"pass static_args=('{name}',)), got {a!r}."
            )


def unit_sq_norms(x: jax.Array, axes: tuple) -> jax.Array:
    """Squared L2 norm over ``axes`` (kept as size-1 dims), accumulated in float32+."""
    xf = x.astype(compute_dtype(x.dtype))
    return jnp.sum(xf * xf, axis=axes, keepdims=True)


def group_size(shape: tuple, axes: tuple) -> int:
    return math.prod(shape[a] for a in axes)


def safe_norm(sq: jax.Array) -> jax.Array:
    """``sqrt(sq)`` with gradient 0 (not NaN) where ``sq == 0``."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def put(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` that also works across processes.

    Under multi-process JAX a sharding that spans other hosts' devices is not
    addressable here, and ``device_put`` refuses an array that lives on a local
    device. Every process then holds the same value: each one builds its own
    shards of the global array from its host copy. Typed PRNG keys go through
    their key data.
    """

    def one(leaf, sharding):
        if sharding.is_fully_addressable or (
            isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
        ):
            return jax.device_put(leaf, sharding)
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)
