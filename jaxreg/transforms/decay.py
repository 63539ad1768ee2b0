"""Weight decay whose semantics are chosen by name, not by position in a chain.

``optax.add_decayed_weights`` means coupled L2 before the optimizer and decoupled
decay after it; a chain that moves it changes the maths silently. Here each
flavour has its own name and wraps the optimizer it applies to:

* ``coupled_weight_decay``: ``u_t = optimizer(g_t + lam_t w_t)``, as PyTorch
  ``Adam(weight_decay=...)`` and SGD's L2;
* ``decoupled_weight_decay``: ``u_t = optimizer(g_t) - lr_t lam_t w_t``, as
  ``optax.adamw``, PyTorch ``AdamW`` and Keras optimizers' ``weight_decay``;
* ``independent_weight_decay``: ``u_t = optimizer(g_t) - eta_t lam_t w_t`` with
  ``eta_t`` the schedule multiplier only (Loshchilov & Hutter 2019).

``add_l2_decay`` is the coupled term on its own (``g + lam w``, the gradient of
``lam * l2_penalty``), for chains that put it first by hand.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._util import (
    Hyper,
    check_hyper,
    check_non_negative,
    compute_dtype,
    init_count,
    next_count,
    resolve,
)
from jaxreg.masks import check_mask
from jaxreg.transforms._base import map_masked, require_params

__all__ = [
    "AddL2DecayState",
    "WeightDecayState",
    "add_l2_decay",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "independent_weight_decay",
]


class AddL2DecayState(NamedTuple):
    count: jax.Array


class WeightDecayState(NamedTuple):
    """State of the wrapping decays: the step and the wrapped optimizer's state."""

    count: jax.Array
    inner_state: Any


def _add_scaled_params(updates: Any, params: Any, coeff: jax.Array, mask: Any) -> Any:
    """``u + coeff * w`` on the masked leaves, computed in float32, dtype of ``u`` kept."""

    def leaf(_, u, w):
        dt = compute_dtype(u.dtype)
        return (u.astype(dt) + coeff.astype(dt) * w.astype(dt)).astype(u.dtype)

    return map_masked(leaf, mask, updates, params)


def _check_decay(weight_decay: Any) -> None:
    check_hyper("weight_decay", weight_decay)
    check_non_negative("weight_decay", weight_decay)


def add_l2_decay(weight_decay: Hyper = 1e-4, *, mask: Any = None) -> optax.GradientTransformation:
    """Add ``weight_decay * params`` to the updates: the gradient of an L2 penalty.

    ``u <- u + lam_t * w``. Coupled L2 when placed *before* the optimizer
    (``optax.chain(add_l2_decay(lam), optax.adam(lr))``), identical to adding
    ``lam * l2_penalty(params)`` to the loss. Prefer :func:`coupled_weight_decay`,
    which cannot be put in the wrong place.

    Args:
        weight_decay: ``lam >= 0``; a float, a schedule ``step -> lam`` or an array.
        mask: leaves to decay (bool pytree or callable); all when None.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`AddL2DecayState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> tx = optax.chain(jaxreg.add_l2_decay(0.1), optax.sgd(1.0))
        >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        >>> updates["w"].tolist()
        [-0.1, 0.2]
    """
    _check_decay(weight_decay)
    check_mask(mask)

    def update_fn(updates, state, params=None):
        require_params(params, "add_l2_decay")
        lam = resolve(weight_decay, state.count)
        return _add_scaled_params(updates, params, lam, mask), AddL2DecayState(
            next_count(state.count)
        )

    return optax.GradientTransformation(lambda p: AddL2DecayState(init_count(p)), update_fn)


def _wrapping_decay(optimizer, name, coefficient, mask, *, before: bool):
    """Wrap ``optimizer``; add ``coefficient(count) * w`` before or after it."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}."
        )
    check_mask(mask)
    inner = optax.with_extra_args_support(optimizer)

    def init_fn(params):
        return WeightDecayState(init_count(params), inner.init(params))

    def update_fn(updates, state, params=None, **extra):
        require_params(params, name)
        coeff = coefficient(state.count)
        if before:
            updates = _add_scaled_params(updates, params, coeff, mask)
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
        if not before:
            updates = _add_scaled_params(updates, params, -coeff, mask)
        return updates, WeightDecayState(next_count(state.count), inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def coupled_weight_decay(
    optimizer: optax.GradientTransformation, weight_decay: Hyper = 1e-4, *, mask: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Coupled L2: decay enters the gradient before the optimizer preconditions it.

    ``u_t = optimizer(g_t + lam_t w_t)``. With Adam the decay is divided by the
    second-moment estimate like the gradient (PyTorch ``Adam(weight_decay=...)``);
    with SGD it equals L2 regularization of the loss.

    Args:
        optimizer: the optax transformation to wrap, e.g. ``optax.adam(1e-3)``.
        weight_decay: ``lam >= 0``; a float, a schedule or an array.
        mask: leaves to decay (bool pytree or callable); all when None.

    Returns:
        A transformation with state :class:`WeightDecayState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> tx = jaxreg.coupled_weight_decay(optax.sgd(0.5), 0.1)
        >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        >>> u["w"].tolist()  # -0.5 * 0.1 * w
        [-0.05, 0.1]
    """
    _check_decay(weight_decay)
    return _wrapping_decay(
        optimizer,
        "coupled_weight_decay",
        lambda count: resolve(weight_decay, count),
        mask,
        before=True,
    )


def decoupled_weight_decay(
    optimizer: optax.GradientTransformation,
    weight_decay: Hyper = 1e-4,
    learning_rate: Hyper = 1e-3,
    *,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Decoupled decay multiplied by the learning rate (AdamW as in PyTorch and optax).

    ``u_t = optimizer(g_t) - lr_t lam_t w_t``. With ``optimizer=optax.adam(lr)``
    and the same ``lr`` this equals ``optax.adamw(lr, weight_decay=lam)``; Keras
    optimizers' ``weight_decay`` follows the same rule.

    Args:
        optimizer: the optax transformation to wrap; it must already include the
            learning rate (``optax.adam(lr)``, ``optax.sgd(lr)``).
        weight_decay: ``lam >= 0``; a float, a schedule or an array.
        learning_rate: ``lr_t`` the decay is multiplied by: the optimizer's own
            learning rate or schedule.
        mask: leaves to decay (bool pytree or callable); all when None.

    Returns:
        A transformation with state :class:`WeightDecayState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> tx = jaxreg.decoupled_weight_decay(optax.sgd(0.5), 0.1, learning_rate=0.5)
        >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        >>> u["w"].tolist()
        [-0.05, 0.1]

    References:
        Loshchilov & Hutter, Decoupled weight decay regularization, ICLR 2019.
    """
    _check_decay(weight_decay)
    check_hyper("learning_rate", learning_rate)
    check_non_negative("learning_rate", learning_rate)
    return _wrapping_decay(
        optimizer,
        "decoupled_weight_decay",
        lambda count: resolve(learning_rate, count) * resolve(weight_decay, count),
        mask,
        before=False,
    )


def independent_weight_decay(
    optimizer: optax.GradientTransformation,
    weight_decay: Hyper = 1e-4,
    *,
    schedule: Hyper | None = None,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Decoupled decay independent of the base learning rate (Loshchilov & Hutter).

    ``u_t = optimizer(g_t) - eta_t lam_t w_t``, where ``eta_t`` is the schedule
    *multiplier* (1 when ``schedule`` is None), not the learning rate: changing
    the base learning rate does not change how fast weights decay. ``lam`` is
    therefore ~``lr`` times smaller than an AdamW ``weight_decay``.

    Args:
        optimizer: the optax transformation to wrap.
        weight_decay: ``lam >= 0`` per step; a float, a schedule or an array.
        schedule: ``eta_t``, the multiplier the learning-rate schedule applies
            (e.g. ``optax.cosine_decay_schedule(1.0, steps)``); None for 1.
        mask: leaves to decay (bool pytree or callable); all when None.

    Returns:
        A transformation with state :class:`WeightDecayState`.

    Example:
        >>> import jax.numpy as jnp, optax, jaxreg
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> tx = jaxreg.independent_weight_decay(optax.sgd(0.5), 0.1)
        >>> u, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
        >>> u["w"].tolist()  # -0.1 * w, whatever the learning rate
        [-0.1, 0.2]

    References:
        Loshchilov & Hutter, Decoupled weight decay regularization, ICLR 2019
        (Algorithm 2: ``w_t = w_{t-1} - eta_t (alpha d_t + lam w_{t-1})``).
    """
    _check_decay(weight_decay)
    if schedule is not None:
        check_hyper("schedule", schedule)

    def coefficient(count):
        eta = jnp.ones([], jnp.float32) if schedule is None else resolve(schedule, count)
        return eta * resolve(weight_decay, count)

    return _wrapping_decay(optimizer, "independent_weight_decay", coefficient, mask, before=False)
