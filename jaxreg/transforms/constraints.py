"""Per-unit parameter constraints (Keras semantics), placed last in a chain.

Each transform rewrites the update so that the *new* parameters satisfy the
constraint for every unit: a column of a flax ``Dense`` kernel ``(in, out)``, a
filter of a ``Conv`` kernel ``HWIO``. optax's ``projections`` act on the norm of
the whole tree instead; Keras's ``kernel_constraint`` acts per unit, as here.

``axis`` gives the axes each norm runs over, as in Keras (``MaxNorm(axis=0)`` for
a Dense kernel, ``axis=[0, 1, 2]`` for a Conv2D kernel). The default preset
``"per_output"`` means "all axes but the last", which is both of those at once, so
one transform serves a whole flax model without the row/column trap. Combine
with a mask (``jaxreg.by_kernels()``) to leave biases alone.

Warning:
    Put these last in a chain, after the learning rate: they see ``w + u``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._util import (
    AxisSpec,
    Hyper,
    check_axis_spec,
    check_hyper,
    check_non_negative,
    check_unit_interval,
    is_static_number,
    resolve,
    unit_axes,
    unit_sq_norms,
)
from jaxreg.transforms._base import last_in_chain

__all__ = [
    "KeepMaxNormState",
    "KeepMinMaxNormState",
    "keep_max_norm",
    "keep_min_max_norm",
    "keep_non_negative",
    "keep_unit_norm",
]


class KeepMaxNormState(NamedTuple):
    count: jax.Array


class KeepMinMaxNormState(NamedTuple):
    count: jax.Array


def _norms(z: jax.Array, axis: AxisSpec, path: str) -> jax.Array:
    return jnp.sqrt(unit_sq_norms(z, unit_axes(axis, z.ndim, path=path)))


def keep_max_norm(
    max_value: Hyper = 2.0, *, axis: AxisSpec = "per_output", mask: Any = None
) -> optax.GradientTransformation:
    """Rescale every unit whose L2 norm exceeds ``max_value`` back to it.

    For each unit ``j`` of ``z = w + u``: ``w_j <- z_j * min(1, c / ||z_j||)``.
    Keras ``MaxNorm`` (Srivastava et al. 2014), except that units within the
    bound are left bit-for-bit unchanged (Keras multiplies them by
    ``n / (n + 1e-7)``).

    Args:
        max_value: ``c >= 0``; float, schedule or array. Keras's default is 2.
        axis: static; axes each norm runs over (see module docs). Default
            ``"per_output"``: Dense columns, Conv filters.
        mask: leaves to constrain (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`KeepMaxNormState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"kernel": jnp.array([[3.0, 0.3], [4.0, 0.4]])}
        >>> tx = jaxreg.keep_max_norm(1.0)
        >>> u, _ = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
        >>> optax.apply_updates(params, u)["kernel"].tolist()
        [[0.6, 0.3], [0.8, 0.4]]
    """
    check_hyper("max_value", max_value)
    check_non_negative("max_value", max_value)
    check_axis_spec(axis)

    def project(z, count, path):
        c = resolve(max_value, count)
        n = _norms(z, axis, path)
        return z * jnp.where(n > c, c / jnp.where(n > 0, n, 1.0), 1.0)

    return last_in_chain("keep_max_norm", KeepMaxNormState, project, mask)


def keep_unit_norm(*, axis: AxisSpec = "per_output", mask: Any = None):
    """Rescale every unit to L2 norm 1 (Keras ``UnitNorm``); all-zero units stay zero.

    ``w_j <- z_j / ||z_j||``.

    Args:
        axis: static; axes each norm runs over (see module docs).
        mask: leaves to constrain (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with ``optax.EmptyState``.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"kernel": jnp.array([[3.0], [4.0]])}
        >>> tx = jaxreg.keep_unit_norm()
        >>> u, _ = tx.update({"kernel": jnp.zeros((2, 1))}, tx.init(params), params)
        >>> optax.apply_updates(params, u)["kernel"].tolist()
        [[0.6], [0.8]]
    """
    check_axis_spec(axis)

    def project(z, _, path):
        n = _norms(z, axis, path)
        return z / jnp.where(n > 0, n, 1.0)

    return last_in_chain("keep_unit_norm", None, project, mask)


def keep_min_max_norm(
    min_value: Hyper = 0.0,
    max_value: Hyper = 1.0,
    rate: Hyper = 1.0,
    *,
    axis: AxisSpec = "per_output",
    mask: Any = None,
) -> optax.GradientTransformation:
    """Pull every unit's norm into ``[min_value, max_value]`` (Keras ``MinMaxNorm``).

    ``n = ||z_j||``, ``n' = rate * clip(n, min, max) + (1 - rate) * n``,
    ``w_j <- z_j * n' / n``. ``rate=1`` enforces the interval strictly; smaller
    rates move the norm part of the way each step. All-zero units stay zero.

    Args:
        min_value: lower bound, >= 0; float, schedule or array.
        max_value: upper bound, >= ``min_value``; float, schedule or array.
        rate: in [0, 1]; float, schedule or array.
        axis: static; axes each norm runs over (see module docs).
        mask: leaves to constrain (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`KeepMinMaxNormState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"kernel": jnp.array([[0.3, 30.0], [0.4, 40.0]])}
        >>> tx = jaxreg.keep_min_max_norm(1.0, 2.0)
        >>> u, _ = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
        >>> jnp.linalg.norm(optax.apply_updates(params, u)["kernel"], axis=0).round(4).tolist()
        [1.0, 2.0]
    """
    for name, value in (("min_value", min_value), ("max_value", max_value), ("rate", rate)):
        check_hyper(name, value)
    check_non_negative("min_value", min_value)
    check_non_negative("max_value", max_value)
    check_unit_interval("rate", rate)
    if is_static_number(min_value) and is_static_number(max_value) and min_value > max_value:
        raise ValueError(
            f"min_value must be <= max_value, got min_value={min_value!r} > "
            f"max_value={max_value!r}."
        )
    check_axis_spec(axis)

    def project(z, count, path):
        lo, hi, r = (resolve(v, count) for v in (min_value, max_value, rate))
        n = _norms(z, axis, path)
        desired = r * jnp.clip(n, lo, hi) + (1.0 - r) * n
        return z * jnp.where(n > 0, desired / jnp.where(n > 0, n, 1.0), 1.0)

    return last_in_chain("keep_min_max_norm", KeepMinMaxNormState, project, mask)


def keep_non_negative(*, mask: Any = None) -> optax.GradientTransformation:
    """Clamp the new parameters at zero (Keras ``NonNeg``): ``w <- max(z, 0)``.

    Args:
        mask: leaves to constrain (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with ``optax.EmptyState``.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([0.5, -0.5])}
        >>> tx = optax.chain(optax.sgd(1.0), jaxreg.keep_non_negative())
        >>> u, _ = tx.update({"w": jnp.array([1.0, 0.0])}, tx.init(params), params)
        >>> optax.apply_updates(params, u)["w"].tolist()
        [0.0, 0.0]
    """
    return last_in_chain("keep_non_negative", None, lambda z, *_: jnp.maximum(z, 0.0), mask)
