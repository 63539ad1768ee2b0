"""Weight averaging inside the optimizer: Lookahead as a chain element."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._util import (
    Hyper,
    check_hyper,
    check_unit_interval,
    compute_dtype,
    init_count,
    next_count,
    resolve,
)
from jaxreg.transforms._base import require_params

__all__ = ["LookaheadState", "lookahead"]


class LookaheadState(NamedTuple):
    count: jax.Array
    slow: Any  # the slow weights, float32 or wider


def lookahead(sync_period: int = 5, slow_step_size: Hyper = 0.5) -> optax.GradientTransformation:
    """Lookahead (Zhang et al. 2019) placed last in a chain: slow weights pulled
    toward the fast ones every ``sync_period`` steps, the fast ones reset to them.

    Between syncs the chain's updates pass through unchanged (the fast weights
    ``w + u``). On every ``sync_period``-th update the slow weights move to
    ``slow + a * (w + u - slow)`` and the returned update moves the params
    there (up to the rounding of ``w + (slow - w)``); the inner optimizer's
    state (momentum) is kept, as in airbench. Unlike ``optax.lookahead``, which
    wraps the optimizer and keeps fast and slow weights in the params, this is
    one more link of an ``optax.chain`` over the plain params, so it composes
    with masks, constraints and :class:`jaxreg.Trainer` as is.

    ``slow_step_size`` may be a schedule of the update's index (0-based, as
    optax schedules): airbench94 uses ``1 - 0.95**5 * ((i + 1) / T) ** 3`` with
    ``T`` the total steps, which is 1 (no averaging) early and pulls harder near
    the end.

    Args:
        sync_period: static int >= 1; 1 with ``slow_step_size=1`` is the plain
            optimizer.
        slow_step_size: ``a`` in [0, 1]; float, array or schedule. 1 follows the
            fast weights, 0 never leaves the initial ones.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`LookaheadState`.
    """
    if not isinstance(sync_period, int) or isinstance(sync_period, bool) or sync_period < 1:
        raise ValueError(f"lookahead: sync_period must be an int >= 1, got {sync_period!r}.")
    check_hyper("lookahead: slow_step_size", slow_step_size)
    check_unit_interval("lookahead: slow_step_size", slow_step_size)

    def slow_copy(w):
        dt = compute_dtype(w.dtype)
        if isinstance(w, jax.ShapeDtypeStruct):  # abstract params: an abstract state
            return jax.ShapeDtypeStruct(w.shape, dt)
        # a copy: the slow weights must not alias params a train step donates
        return jnp.array(w, dt, copy=True)

    def init_fn(params):
        return LookaheadState(init_count(params), jax.tree.map(slow_copy, params))

    def update_fn(updates, state, params=None):
        require_params(params, "lookahead")
        a = resolve(slow_step_size, state.count)
        sync = (state.count + 1) % sync_period == 0

        def leaf(u, w, s):
            fast = w.astype(s.dtype) + u.astype(s.dtype)
            new_slow = jnp.where(sync, s + a.astype(s.dtype) * (fast - s), s)
            out = jnp.where(sync, new_slow - w.astype(s.dtype), u.astype(s.dtype))
            return out.astype(u.dtype), new_slow

        pairs = jax.tree.map(leaf, updates, params, state.slow)
        treedef = jax.tree.structure(updates)
        out, slow = jax.tree.transpose(treedef, jax.tree.structure((0, 0)), pairs)
        return out, LookaheadState(next_count(state.count), slow)

    return optax.GradientTransformation(init_fn, update_fn)
