"""flax.nnx wrappers of the kernels in :mod:`jaxreg.functional`.

Drop-in replacements for ``flax.nnx.Dropout`` and ``flax.nnx.BatchNorm`` (same
constructor and call signatures, attributes ``deterministic`` and
``use_running_average`` so ``model.train()`` / ``model.eval()`` /
``nnx.view`` switch them), plus ``DropPath``. They compute exactly what the
linen modules in :mod:`jaxreg.nn` compute for the same key and statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx as fnnx
from flax.nnx import rnglib

from jaxreg import functional as F
from jaxreg._util import is_static_number

__all__ = ["BatchNorm", "DropPath", "Dropout"]

_ZEROS = fnnx.initializers.zeros_init()
_ONES = fnnx.initializers.ones_init()


def _first(name: str, call_value: Any, attr_value: Any, owner: str) -> Any:
    value = call_value if call_value is not None else attr_value
    if value is None:
        raise ValueError(
            f"{owner}: no `{name}` given; pass it to the constructor or the call, "
            f"or use model.train() / model.eval()."
        )
    return value


def _fork(rngs: Any, collection: str) -> Any:
    if isinstance(rngs, fnnx.Rngs):
        return rngs[collection].fork()
    if isinstance(rngs, rnglib.RngStream):
        return rngs.fork()
    if rngs is None:
        return fnnx.data(None)
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs)}.")


def _key(module: Any, rngs: Any) -> jax.Array:
    rngs = rngs if rngs is not None else module.rngs
    if isinstance(rngs, fnnx.Rngs):
        return rngs[module.rng_collection]()
    if isinstance(rngs, rnglib.RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    raise ValueError(
        f"{type(module).__name__}: deterministic is False but no rngs were given: pass "
        f"rngs=nnx.Rngs(dropout=0) to the constructor or rngs=key to the call."
    )


class _Stochastic(fnnx.Module):
    """Shared plumbing: rate, deterministic flag, rng stream."""

    def __init__(
        self,
        rate: float | jax.Array,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Any = None,
    ):
        if is_static_number(rate) and not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate!r}.")
        self.rate = rate
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs = _fork(rngs, rng_collection)

    def _off(self, deterministic: bool | None) -> bool:
        det = _first("deterministic", deterministic, self.deterministic, type(self).__name__)
        return bool(det) or (is_static_number(self.rate) and self.rate == 0)


class Dropout(_Stochastic):
    """Inverted dropout for flax.nnx (``flax.nnx.Dropout``'s signature, jaxreg's fast masks).

    ``y = m * x / q``, ``m ~ Bernoulli(q)``, ``q`` the realised keep probability;
    ``y = x`` when deterministic. See :func:`jaxreg.functional.dropout`.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxreg.nnx
        >>> layer = jaxreg.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> sorted(set(layer(jnp.ones((2, 4))).ravel().tolist()))
        [0.0, 2.0]
        >>> layer.eval()
        >>> layer(jnp.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        rate: float | jax.Array,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Any = None,
    ):
        super().__init__(
            rate, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs
        )
        self.broadcast_dims = tuple(broadcast_dims)

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs: Any = None):
        if self._off(deterministic):
            return inputs
        return F.dropout(_key(self, rngs), inputs, self.rate, broadcast_dims=self.broadcast_dims)


class DropPath(_Stochastic):
    """Stochastic depth for flax.nnx: drop whole examples, scale by 1/keep.

    See :func:`jaxreg.functional.drop_path`; rates growing with depth come from
    :func:`jaxreg.functional.drop_path_rates`.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxreg.nnx
        >>> layer = jaxreg.nnx.DropPath(0.5, rngs=nnx.Rngs(dropout=0))
        >>> [r in ([0.0] * 3, [2.0] * 3) for r in layer(jnp.ones((4, 3))).tolist()]
        [True, True, True, True]
    """

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs: Any = None):
        if self._off(deterministic):
            return inputs
        return F.drop_path(_key(self, rngs), inputs, self.rate)


class BatchNorm(fnnx.Module):
    """Batch norm for flax.nnx (``flax.nnx.BatchNorm``'s signature) with ghost batches.

    Running statistics live in ``nnx.BatchStat`` variables ``mean`` and ``var``
    (float32) and are updated in training mode only. ``virtual_batch_size``
    normalizes contiguous groups of the batch separately (Hoffer et al. 2017).
    See :func:`jaxreg.functional.batch_norm` for the rule.

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxreg.nnx
        >>> bn = jaxreg.nnx.BatchNorm(2, momentum=0.5, rngs=nnx.Rngs(0))
        >>> y = bn(jnp.array([[0.0, 1.0], [2.0, 3.0]]))
        >>> y.round(3).tolist(), bn.mean[...].tolist()
        ([[-1.0, -1.0], [1.0, 1.0]], [0.5, 1.0])
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = _ZEROS,
        scale_init: Any = _ONES,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        virtual_batch_size: int | None = None,
        rngs: fnnx.Rngs,
    ):
        shape = (num_features,)
        self.mean = fnnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = fnnx.BatchStat(jnp.ones(shape, jnp.float32))
        self.scale = (
            fnnx.Param(scale_init(rngs.params(), shape, param_dtype))
            if use_scale
            else fnnx.data(None)
        )
        self.bias = (
            fnnx.Param(bias_init(rngs.params(), shape, param_dtype))
            if use_bias
            else fnnx.data(None)
        )
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.virtual_batch_size = virtual_batch_size

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        ura = _first(
            "use_running_average", use_running_average, self.use_running_average, "BatchNorm"
        )
        y, mean, var = F.batch_norm(
            x,
            self.mean[...],
            self.var[...],
            scale=None if self.scale is None else self.scale[...],
            bias=None if self.bias is None else self.bias[...],
            use_running_average=bool(ura),
            momentum=self.momentum,
            epsilon=self.epsilon,
            axis=self.axis,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            virtual_batch_size=self.virtual_batch_size,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
            dtype=self.dtype,
        )
        if not ura:
            self.mean[...] = jax.lax.stop_gradient(mean)
            self.var[...] = jax.lax.stop_gradient(var)
        return y
