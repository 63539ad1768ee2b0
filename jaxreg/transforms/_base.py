"""Plumbing shared by the transforms: masked leaf maps and parameter checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxreg._util import NO_PARAMS, compute_dtype, init_count, next_count, path_str
from jaxreg.masks import check_mask, resolve_mask


def require_params(params: Any, name: str) -> None:
    if params is None:
        raise ValueError(NO_PARAMS.format(name=name))


def map_masked(fn: Callable, mask: Any, updates: Any, *rest: Any) -> Any:
    """``fn(path, u, *r)`` over the leaves of ``updates`` that ``mask`` selects.

    ``path`` is the '/'-joined leaf path, for error messages. Unselected leaves of
    ``updates`` pass through unchanged. The mask is resolved against the params
    when given (``rest[0]``), else against the updates, at trace time: it is
    static. ``None`` and ``optax.MaskedNode`` leaves are empty subtrees and pass
    through.
    """
    if mask is None:
        flags = jax.tree.map(lambda _: True, updates)
    else:
        flags = resolve_mask(mask, rest[0] if rest else updates)

    def leaf(path, flag, u, *r):
        return fn(path_str(path), u, *r) if flag else u

    return jax.tree_util.tree_map_with_path(leaf, flags, updates, *rest)


def last_in_chain(name: str, state_cls: Any, new_params: Callable, mask: Any):
    """A transform that moves the params to ``new_params(z, count, path)``.

    ``z = w + u`` is the step the preceding chain proposes; the returned update is
    ``new_params(z) - w`` so that ``optax.apply_updates`` lands exactly on the
    projected / proximal point (exact zeros stay exact). Computed in float32 or
    wider, returned in the dtype of the updates. ``state_cls(count)`` is the state;
    ``None`` gives ``optax.EmptyState`` for transforms with nothing to schedule.
    """
    check_mask(mask)

    def init_fn(params):
        return optax.EmptyState() if state_cls is None else state_cls(init_count(params))

    def update_fn(updates, state, params=None):
        require_params(params, name)
        count = None if state_cls is None else state.count

        def leaf(path, u, w):
            dt = compute_dtype(w.dtype)
            z = w.astype(dt) + u.astype(dt)
            return (new_params(z, count, path) - w.astype(dt)).astype(u.dtype)

        new_state = state if state_cls is None else state_cls(next_count(state.count))
        return map_masked(leaf, mask, updates, params), new_state

    return optax.GradientTransformation(init_fn, update_fn)
