"""Penalties: pure functions ``params -> float32 scalar`` to add to a loss.

Each is differentiable and safe under ``jax.jit`` and ``jax.vmap``; the strength
multiplies from outside (``loss + lam * jaxreg.l2_penalty(params)``), so one
penalty serves any schedule or swept strength. ``mask=`` (keyword-only) selects
leaves: a bool pytree or a callable (see :mod:`jaxreg.masks`). Sums accumulate in
float32 whatever the parameter dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import (
    AxisSpec,
    check_axis_spec,
    check_unit_interval,
    compute_dtype,
    leaves_with_paths,
    safe_norm,
    unit_axes,
    unit_sq_norms,
)
from jaxreg.masks import mask_leaves

__all__ = [
    "elastic_net_penalty",
    "group_lasso_penalty",
    "l1_penalty",
    "l2_penalty",
    "orthogonal_penalty",
    "spectral_penalty",
]


def _selected(params: Any, mask: Any) -> list[tuple[str, jax.Array]]:
    flags = mask_leaves(mask, params)
    return [pl for pl, keep in zip(leaves_with_paths(params), flags, strict=True) if keep]


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(compute_dtype(jnp.result_type(x)))


def _total(terms: list[jax.Array]) -> jax.Array:
    total = jnp.zeros([], jnp.float32)
    for t in terms:
        total = total + t.astype(jnp.float32)
    return total


def l1_penalty(params: Any, *, mask: Any = None) -> jax.Array:
    """Sum of absolute values.

    ``P(w) = sum_i |w_i|``

    Args:
        params: a pytree of arrays.
        mask: leaves to include (bool pytree or callable); all when None.

    Returns:
        float32 scalar.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> float(jaxreg.l1_penalty({"w": jnp.array([1.0, -2.0]), "b": jnp.array([3.0])}))
        6.0
    """
    return _total([jnp.sum(jnp.abs(_f32(x))) for _, x in _selected(params, mask)])


def l2_penalty(params: Any, *, mask: Any = None) -> jax.Array:
    """Half the squared L2 norm, so that ``grad(lam * l2_penalty) = lam * w``.

    ``P(w) = 1/2 sum_i w_i^2``

    Args:
        params: a pytree of arrays.
        mask: leaves to include (bool pytree or callable); all when None.

    Returns:
        float32 scalar.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> float(jaxreg.l2_penalty({"w": jnp.array([1.0, -2.0])}))
        2.5
    """
    return _total([0.5 * jnp.sum(jnp.square(_f32(x))) for _, x in _selected(params, mask)])


def elastic_net_penalty(params: Any, *, l1_ratio: Any = 0.5, mask: Any = None) -> jax.Array:
    """Mix of L1 and half squared L2 (scikit-learn's ``ElasticNet`` convention).

    ``P(w) = r * sum_i |w_i| + (1 - r)/2 * sum_i w_i^2`` with ``r = l1_ratio``.

    Args:
        params: a pytree of arrays.
        l1_ratio: ``r`` in [0, 1]; 1 is pure L1, 0 pure L2. May be a traced array.
        mask: leaves to include (bool pytree or callable); all when None.

    Returns:
        float32 scalar.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> float(jaxreg.elastic_net_penalty({"w": jnp.array([1.0, -2.0])}, l1_ratio=0.5))
        2.75
    """
    check_unit_interval("l1_ratio", l1_ratio)
    r = jnp.asarray(l1_ratio, jnp.float32)
    return r * l1_penalty(params, mask=mask) + (1.0 - r) * l2_penalty(params, mask=mask)


def group_lasso_penalty(
    params: Any, *, axis: AxisSpec = "per_output", mask: Any = None
) -> jax.Array:
    """Sum of the L2 norms of groups (output units or conv filters by default).

    ``P(w) = sum_g ||w_g||_2``; a group is one slice of a leaf, the norm taken
    over ``axis``. Drives whole units to zero (Yuan & Lin 2006); its proximal
    step is :func:`jaxreg.prox_group_lasso`.

    Args:
        params: a pytree of arrays.
        axis: static; the axes each norm runs over. ``"per_output"`` (default):
            all but the last, i.e. columns of a flax ``Dense`` kernel ``(in, out)``
            and filters of a ``Conv`` kernel ``HWIO``. ``"per_input"``: rows /
            input channels. ``"whole"``/None: one group per leaf. Or ints (Keras).
        mask: leaves to include (bool pytree or callable); all when None.

    Returns:
        float32 scalar; the gradient at a zero group is 0.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> w = jnp.array([[3.0, 0.0], [4.0, 1.0]])  # columns have norms 5 and 1
        >>> float(jaxreg.group_lasso_penalty({"kernel": w}))
        6.0

    References:
        Yuan & Lin, Model selection and estimation in regression with grouped
        variables, 2006.
    """
    check_axis_spec(axis)
    terms = []
    for path, x in _selected(params, mask):
        axes = unit_axes(axis, x.ndim, path=path)
        terms.append(jnp.sum(safe_norm(unit_sq_norms(x, axes))))
    return _total(terms)


def _as_matrix(x: jax.Array) -> jax.Array:
    """Kernel as ``(fan_in, units)``: all leading axes flattened, units last."""
    return _f32(x).reshape(-1, x.shape[-1])


def orthogonal_penalty(params: Any, *, mode: str = "columns", mask: Any = None) -> jax.Array:
    """Soft orthogonality: squared distance of the Gram matrix to the identity.

    ``P(W) = ||W^T W - I||_F^2`` (``mode="columns"``: output units orthonormal) or
    ``||W W^T - I||_F^2`` (``mode="rows"``), with each kernel viewed as a
    ``(fan_in, units)`` matrix (conv ``HWIO`` -> ``(H*W*I, O)``). Leaves of rank
    < 2 contribute nothing.

    Args:
        params: a pytree of arrays.
        mode: static, ``"columns"`` or ``"rows"``.
        mask: leaves to include (bool pytree or callable); all when None.

    Returns:
        float32 scalar.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> float(jaxreg.orthogonal_penalty({"kernel": jnp.eye(3)}))
        0.0
        >>> float(jaxreg.orthogonal_penalty({"kernel": 2 * jnp.eye(2)}))
        18.0

    References:
        Brock et al., Neural photo editing with introspective adversarial
        networks, 2017; Bansal et al., Can we gain more from orthogonality
        regularizations in training deep CNNs?, 2018.
    """
    if mode not in ("columns", "rows"):
        raise ValueError(f"mode must be 'columns' or 'rows', got {mode!r}.")
    terms = []
    for _, x in _selected(params, mask):
        if x.ndim < 2:
            continue
        w = _as_matrix(x)
        gram = w.T @ w if mode == "columns" else w @ w.T
        terms.append(jnp.sum(jnp.square(gram - jnp.eye(gram.shape[0], dtype=gram.dtype))))
    return _total(terms)


def _top_singular_value(w: jax.Array, n_iter: int) -> jax.Array:
    v = jax.random.normal(jax.random.key(0), (w.shape[1],), w.dtype)
    v = v / jnp.linalg.norm(v)
    wd = jax.lax.stop_gradient(w)

    def body(_, uv):
        _, v = uv
        u = wd @ v
        u = u / (jnp.linalg.norm(u) + 1e-12)
        v = wd.T @ u
        v = v / (jnp.linalg.norm(v) + 1e-12)
        return u, v

    u, v = jax.lax.fori_loop(0, n_iter, body, (jnp.zeros(w.shape[0], w.dtype), v))
    return u @ w @ v


def spectral_penalty(params: Any, *, n_iter: int = 20, mask: Any = None) -> jax.Array:
    """Sum over kernels of the largest singular value squared, by power iteration.

    ``P(W) = sigma_max(W)^2`` with each kernel viewed as ``(fan_in, units)``. The
    singular vectors are held constant in the gradient, which is then
    ``2 sigma u v^T`` (Yoshida & Miyato 2017). Leaves of rank < 2 contribute
    nothing. The start vector is fixed, so the value is deterministic.

    Args:
        params: a pytree of arrays.
        n_iter: static number of power iterations (>= 1); more for matrices whose
            top two singular values are close.
        mask: leaves to include (bool pytree or callable); all when None.

    Returns:
        float32 scalar.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> round(float(jaxreg.spectral_penalty({"kernel": jnp.diag(jnp.array([3.0, 1.0]))})), 4)
        9.0

    References:
        Yoshida & Miyato, Spectral norm regularization for improving the
        generalizability of deep learning, 2017.
    """
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"n_iter must be a Python int >= 1 (static), got {n_iter!r}.")
    terms = []
    for _, x in _selected(params, mask):
        if x.ndim < 2:
            continue
        terms.append(jnp.square(_top_singular_value(_as_matrix(x), n_iter)))
    return _total(terms)
