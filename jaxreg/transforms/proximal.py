"""Proximal steps: exact zeros for L1, elastic net and group lasso.

A subgradient of ``|w|`` oscillates around zero and never lands on it; the
proximal step of the penalty does (Parikh & Boyd 2014). Each transform here takes
the candidate ``z = w + u`` that the preceding chain proposes, applies the
proximal operator of ``lr_t * strength_t * P`` and returns the update that moves
``w`` there. Put them **last** in a chain, after the learning rate::

    tx = optax.chain(optax.sgd(lr), jaxreg.prox_l1(1e-3, learning_rate=lr))
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
    resolve,
    safe_norm,
    unit_axes,
    unit_sq_norms,
)
from jaxreg.transforms._base import last_in_chain

__all__ = [
    "ProxElasticNetState",
    "ProxGroupLassoState",
    "ProxL1State",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "soft_threshold",
]


class ProxL1State(NamedTuple):
    count: jax.Array


class ProxElasticNetState(NamedTuple):
    count: jax.Array


class ProxGroupLassoState(NamedTuple):
    count: jax.Array


def soft_threshold(x: jax.Array, threshold: jax.Array) -> jax.Array:
    """``sign(x) * max(|x| - threshold, 0)``: the proximal operator of ``threshold*|x|``.

    Example:
        >>> import jax.numpy as jnp, jaxreg
        >>> jaxreg.soft_threshold(jnp.array([-3.0, 0.5, 2.0]), 1.0).tolist()
        [-2.0, 0.0, 1.0]
    """
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)


def _check_strength_lr(strength: Any, learning_rate: Any) -> None:
    check_hyper("strength", strength)
    check_non_negative("strength", strength)
    check_hyper("learning_rate", learning_rate)
    check_non_negative("learning_rate", learning_rate)


def prox_l1(
    strength: Hyper, learning_rate: Hyper, *, mask: Any = None
) -> optax.GradientTransformation:
    """Proximal L1 (soft-thresholding) step, placed last in a chain.

    ``w_{t+1} = sign(z) * max(|z| - lr_t * lam_t, 0)`` with ``z = w_t + u_t`` the
    step the chain proposes. Minimizes ``loss + lam * l1_penalty`` (ISTA /
    proximal gradient) and produces exact zeros.

    Args:
        strength: ``lam >= 0``; a float, a schedule or an array.
        learning_rate: ``lr_t >= 0``, the step size of the preceding optimizer; a
            float or a schedule (the same one the optimizer uses).
        mask: leaves to shrink (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ProxL1State`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([0.05, -1.0])}
        >>> tx = optax.chain(optax.sgd(0.1), jaxreg.prox_l1(1.0, learning_rate=0.1))
        >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        >>> optax.apply_updates(params, u)["w"].tolist()
        [0.0, -0.9]

    References:
        Parikh & Boyd, Proximal algorithms, 2014; Daubechies et al. 2004 (ISTA).
    """
    _check_strength_lr(strength, learning_rate)

    def prox(z, count, _):
        return soft_threshold(z, resolve(learning_rate, count) * resolve(strength, count))

    return last_in_chain("prox_l1", ProxL1State, prox, mask)


def prox_elastic_net(
    strength: Hyper, learning_rate: Hyper, *, l1_ratio: Hyper = 0.5, mask: Any = None
) -> optax.GradientTransformation:
    """Proximal elastic-net step, placed last in a chain.

    For ``P = r |w|_1 + (1 - r)/2 ||w||^2`` (as :func:`jaxreg.elastic_net_penalty`)
    and ``t = lr_t * lam_t``: ``w_{t+1} = soft(z, t r) / (1 + t (1 - r))``.

    Args:
        strength: ``lam >= 0``; a float, a schedule or an array.
        learning_rate: ``lr_t >= 0`` of the preceding optimizer; float or schedule.
        l1_ratio: ``r`` in [0, 1]; 1 gives :func:`prox_l1`, 0 a pure L2 shrink.
        mask: leaves to shrink (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ProxElasticNetState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([0.05, -2.0])}
        >>> tx = jaxreg.prox_elastic_net(1.0, learning_rate=1.0, l1_ratio=0.5)
        >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        >>> optax.apply_updates(params, u)["w"].tolist()
        [0.0, -1.0]

    References:
        Zou & Hastie, Regularization and variable selection via the elastic net, 2005.
    """
    _check_strength_lr(strength, learning_rate)
    check_hyper("l1_ratio", l1_ratio)
    check_unit_interval("l1_ratio", l1_ratio)

    def prox(z, count, _):
        t = resolve(learning_rate, count) * resolve(strength, count)
        r = resolve(l1_ratio, count)
        return soft_threshold(z, t * r) / (1.0 + t * (1.0 - r))

    return last_in_chain("prox_elastic_net", ProxElasticNetState, prox, mask)


def prox_group_lasso(
    strength: Hyper,
    learning_rate: Hyper,
    *,
    axis: AxisSpec = "per_output",
    mask: Any = None,
) -> optax.GradientTransformation:
    """Proximal group-lasso (block soft-thresholding) step, placed last in a chain.

    For ``P = sum_g ||w_g||_2`` (as :func:`jaxreg.group_lasso_penalty`) and
    ``t = lr_t * lam_t``: ``w_g <- z_g * max(0, 1 - t / ||z_g||)``. Whole output
    units or conv filters become exactly zero.

    Args:
        strength: ``lam >= 0``; a float, a schedule or an array.
        learning_rate: ``lr_t >= 0`` of the preceding optimizer; float or schedule.
        axis: static; the axes each group norm runs over: ``"per_output"``
            (default; columns of a Dense ``(in, out)`` kernel, filters of a Conv
            ``HWIO`` kernel), ``"per_input"``, ``"whole"``/None, or ints.
        mask: leaves to shrink (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`ProxGroupLassoState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"kernel": jnp.array([[3.0, 0.1], [4.0, 0.1]])}
        >>> tx = jaxreg.prox_group_lasso(1.0, learning_rate=1.0)
        >>> u, _ = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
        >>> optax.apply_updates(params, u)["kernel"].tolist()  # column norms 5 and 0.14
        [[2.4, 0.0], [3.2, 0.0]]

    References:
        Yuan & Lin 2006; Parikh & Boyd, Proximal algorithms, 2014 (sec. 6.5.4).
    """
    _check_strength_lr(strength, learning_rate)
    check_axis_spec(axis)

    def prox(z, count, path):
        t = resolve(learning_rate, count) * resolve(strength, count)
        norm = safe_norm(unit_sq_norms(z, unit_axes(axis, z.ndim, path=path)))
        shrink = jnp.where(norm > t, 1.0 - t / jnp.where(norm > 0, norm, 1.0), 0.0)
        return z * shrink

    return last_in_chain("prox_group_lasso", ProxGroupLassoState, prox, mask)
