"""Batch normalization as a pure function, with ghost (virtual) batches.

:func:`batch_norm` takes the running statistics in and returns the updated ones,
so the same kernel serves :class:`jaxreg.nn.BatchNorm`, hand-written ``jit``
loops and ``shard_map`` programs. Statistics are reduced in float32 (at least)
for half-precision inputs; the output keeps the input dtype unless ``dtype`` is
given.

Cross-device statistics: under ``jax.jit`` with the batch sharded, the means are
global with nothing to do (XLA inserts the all-reduce); under ``shard_map`` /
``pmap`` pass the mapped ``axis_name``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxreg._util import check_hyper, check_non_negative, check_unit_interval

__all__ = ["batch_norm"]


def feature_axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """Sorted non-negative feature axes of an input of rank ``ndim`` (``axis`` checked)."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    try:
        axes = tuple(axes)
    except TypeError:
        raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}.") from None
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"axis must hold Python ints (it is static), got {axis!r}.")
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis={axis!r} is out of range for an input of rank {ndim}.")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis={axis!r} repeats an axis of an input of rank {ndim}.")
    return tuple(sorted(out))


def check_feature_shape(
    name: str, value: Any, x_shape: tuple, feat: tuple[int, ...], axis: Any
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` has the feature shape of ``x``."""
    want = tuple(x_shape[a] for a in feat)
    got = tuple(jnp.shape(value))
    if got != want:
        raise ValueError(
            f"{name} has shape {got}, but x of shape {tuple(x_shape)} has feature shape "
            f"{want} along axis={axis!r}; {name} must have shape {want} (was it built "
            f"for another input?)."
        )


def _check_virtual_batch_size(virtual_batch_size: Any, x_shape: tuple, feat: tuple) -> int:
    """Number of ghost batches; raises naming ``virtual_batch_size`` on bad input."""
    vbs = virtual_batch_size
    if not isinstance(vbs, int) or isinstance(vbs, bool):
        raise TypeError(
            f"virtual_batch_size must be a Python int or None (it is static: it sets a "
            f"shape), got {vbs!r}."
        )
    if vbs < 1:
        raise ValueError(f"virtual_batch_size must be >= 1, got {vbs}.")
    if 0 in feat:
        raise ValueError(
            "virtual_batch_size splits axis 0 (the batch axis) into groups, so axis 0 "
            f"cannot be a feature axis (x has shape {tuple(x_shape)})."
        )
    if x_shape[0] % vbs:
        raise ValueError(
            f"virtual_batch_size={vbs} does not divide the batch size {x_shape[0]} "
            f"(axis 0 of x, shape {tuple(x_shape)})."
        )
    return x_shape[0] // vbs


def _explicit_batch_shards(x: jax.Array) -> tuple[tuple[str, ...], int]:
    """Mesh axes and shard count of axis 0 of ``x`` when it is sharded explicitly.

    Under ``Auto`` mesh axes (classic SPMD) the type carries no sharding and this
    is ``((), 1)``: XLA then moves data as the ghost-batch reshape needs.
    """
    typeof = getattr(jax, "typeof", None)
    sharding = getattr(typeof(x), "sharding", None) if typeof is not None else None
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return (), 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return names, math.prod(sharding.mesh.shape[n] for n in names)


def _moments(x, axes, mask, fast, axis_name, axis_index_groups):
    """Mean and biased variance of ``x`` over ``axes`` (kept as size-1 dims)."""

    def mean(*arrays):
        mus = [jnp.mean(a, axis=axes, where=mask, keepdims=True) for a in arrays]
        if axis_name is None:
            return mus
        # One collective for both statistics.
        stacked = lax.pmean(jnp.stack(mus), axis_name, axis_index_groups=axis_index_groups)
        return [stacked[i] for i in range(len(mus))]

    if fast:
        mu, mu2 = mean(x, jnp.square(x))
        # E[x^2] - E[x]^2 can round below zero.
        var = jnp.maximum(mu2 - jnp.square(mu), 0.0)
    else:
        (mu,) = mean(x)
        (var,) = mean(jnp.square(x - mu))
    return mu, var


def _normalize(x, mu, var, scale, bias, epsilon):
    mul = lax.rsqrt(var + epsilon)
    if scale is not None:
        mul = mul * scale
    y = (x - mu) * mul
    if bias is not None:
        y = y + bias
    return y


def batch_norm(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    *,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    use_running_average: bool,
    momentum: float | jax.Array = 0.99,
    epsilon: float | jax.Array = 1e-5,
    axis: int | Sequence[int] = -1,
    axis_name: Any = None,
    axis_index_groups: Any = None,
    virtual_batch_size: int | None = None,
    use_fast_variance: bool = True,
    mask: jax.Array | None = None,
    dtype: Any = None,
    force_float32_reductions: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch normalization: normalize with batch (or running) statistics, update the running ones.

    Training (``use_running_average=False``), per feature::

        mu_B, var_B = mean and biased variance of x over every axis but `axis`
        y           = scale * (x - mu_B) / sqrt(var_B + epsilon) + bias
        new_mean    = momentum * mean + (1 - momentum) * mu_B
        new_var     = momentum * var  + (1 - momentum) * var_B

    Inference (``use_running_average=True``): ``y = scale * (x - mean) /
    sqrt(var + epsilon) + bias`` and the statistics come back unchanged.

    Ghost batch norm (``virtual_batch_size=v``, training only): axis 0 is split
    into ``n / v`` contiguous groups ``x[0:v], x[v:2v], ...`` (Hoffer et al. 2017,
    Algorithm 1); each group ``g`` is normalized with its own ``mu_g, var_g``, and
    the running statistics take one step towards the mean over groups,
    ``mu_B = mean_g mu_g`` and ``var_B = mean_g var_g`` (as TF/Keras
    ``virtual_batch_size`` does, rather than Hoffer's one EMA step per group).
    ``var_B`` is then the variance a ghost batch sees, which leaves out the
    spread between group means, so inference matches what training normalized
    with. Keras forms its groups by a ``[v, -1]`` reshape, i.e. strided
    (example ``i`` in group ``i mod n/v``); here they are contiguous, so under a
    sharded ``jit`` a group stays on one device whenever ``v`` divides the
    per-device batch. ``virtual_batch_size = n`` is ordinary batch norm.

    Args:
      x: input, any real dtype; statistics are reduced in at least float32
        (see ``force_float32_reductions``).
      mean: running mean, shape ``x.shape[a] for a in axis``; any float dtype,
        kept on the way out (float32 for half-precision models).
      var: running (biased) variance, same shape as ``mean``.
      scale: optional per-feature multiplier (gamma), shape as ``mean``.
      bias: optional per-feature offset (beta), shape as ``mean``.
      use_running_average: static Python bool; ``True`` normalizes with
        ``mean``/``var`` (inference), ``False`` with the batch statistics.
      momentum: decay of the running statistics, in [0, 1] (float or traced
        array; a schedule is not accepted here, resolve it first).
      epsilon: added to the variance, >= 0 (float or traced array).
      axis: static feature axis or tuple of axes (default ``-1``, channels last);
        statistics are reduced over all the others.
      axis_name: mapped axis (``shard_map``/``pmap``/``vmap``) over which batch
        statistics are averaged (each device's shard must have the same size).
        With ``virtual_batch_size`` the groups are local to each device and
        only the running-statistics step ``mu_B, var_B`` is averaged over
        ``axis_name``. Not needed under ``jit`` with a sharded batch.
      axis_index_groups: optional groups of ``axis_name`` indices to reduce
        over separately (see ``jax.lax.psum``); needs ``axis_name``.
      virtual_batch_size: static int dividing ``x.shape[0]``, the ghost batch
        size; ``None`` (default) for ordinary batch norm. Under ``jit`` with
        axis 0 sharded over ``Explicit`` mesh axes it must also divide the
        per-device batch (with ``Auto`` axes XLA moves data for groups that
        straddle devices).
      use_fast_variance: ``E[x^2] - E[x]^2`` (one pass, clipped at 0) if True,
        else ``E[(x - E[x])^2]``.
      mask: optional bool array broadcastable to ``x``: only ``True`` positions
        enter the statistics (every position is normalized); a feature, or with
        ghost batches a group, without any gives NaN statistics, as in flax.
      dtype: output dtype (and minimum statistics precision); default: the
        dtype of ``x`` (float32 for integer ``x``).
      force_float32_reductions: if True (default), reduce in at least float32;
        if False, in ``dtype`` or the dtype of ``x`` (as ``flax``).

    Returns:
      ``(y, new_mean, new_var)``: ``y`` has the shape of ``x`` and dtype
      ``dtype`` or ``x.dtype``; ``new_mean``/``new_var`` have the shapes and
      dtypes of ``mean``/``var`` (they are ``mean``/``var`` themselves when
      ``use_running_average`` is True).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxreg.functional import batch_norm
      >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0], [5.0, 2.0], [7.0, 6.0]])
      >>> y, mean, var = batch_norm(x, jnp.zeros(2), jnp.ones(2),
      ...                           use_running_average=False, momentum=0.9)
      >>> y[:, 0].tolist()
      [-1.342, -0.447, 0.447, 1.342]
      >>> mean, var
      (Array([0.4, 0.4], dtype=float32), Array([1.4, 1.3], dtype=float32))
      >>> y, mean, var = batch_norm(x, jnp.zeros(2), jnp.ones(2), virtual_batch_size=2,
      ...                           use_running_average=False, momentum=0.9)
      >>> y[:, 0].tolist()  # two ghost batches, each normalized on its own
      [-1.0, 1.0, -1.0, 1.0]
      >>> mean, var  # mean over the groups of the group statistics
      (Array([0.4, 0.4], dtype=float32), Array([1. , 1.3], dtype=float32))

    References:
      Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
      Reducing Internal Covariate Shift", ICML 2015.
      Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
      generalization gap in large batch training of neural networks", NeurIPS 2017.
    """
    if not isinstance(use_running_average, (bool, np.bool_)):
        raise TypeError(
            "use_running_average must be a Python bool (it is static: it chooses the "
            f"computation), got {type(use_running_average).__name__}."
        )
    use_running_average = bool(use_running_average)
    for name, value in (("momentum", momentum), ("epsilon", epsilon)):
        if callable(value):
            raise TypeError(f"{name} must be a number or an array here, got a callable.")
        check_hyper(name, value)
    check_unit_interval("momentum", momentum)
    check_non_negative("epsilon", epsilon)
    if axis_index_groups is not None and axis_name is None:
        raise ValueError("axis_index_groups needs axis_name (the mapped axis it groups).")

    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"batch_norm supports real inputs, got x of dtype {x.dtype}.")
    if x.ndim == 0:
        raise ValueError("x must have at least one axis (the batch), got a scalar.")
    feat = feature_axes(axis, x.ndim)
    for name, value in (("mean", mean), ("var", var), ("scale", scale), ("bias", bias)):
        if value is not None:
            check_feature_shape(name, value, x.shape, feat, axis)

    if dtype is not None:
        out_dtype = jnp.dtype(dtype)
    elif jnp.issubdtype(x.dtype, jnp.inexact):
        out_dtype = x.dtype
    else:
        out_dtype = jnp.dtype(jnp.float32)
    cdt = jnp.dtype(dtype) if dtype is not None else x.dtype
    if force_float32_reductions or not jnp.issubdtype(cdt, jnp.inexact):
        cdt = jnp.promote_types(cdt, jnp.float32)

    # Per-feature arrays reshaped to broadcast against x explicitly (same rank).
    bshape = tuple(x.shape[a] if a in feat else 1 for a in range(x.ndim))

    def per_feature(value, lead=()):
        return None if value is None else jnp.asarray(value, cdt).reshape(lead + bshape)

    if use_running_average:
        y = _normalize(
            x.astype(cdt), per_feature(mean), per_feature(var), per_feature(scale),
            per_feature(bias), epsilon,
        )  # fmt: skip
        return y.astype(out_dtype), mean, var

    # Training: view the batch as (groups, examples per group, ...); one group
    # for ordinary batch norm, so both paths share one computation.
    ghost = virtual_batch_size is not None
    groups = _check_virtual_batch_size(virtual_batch_size, x.shape, feat) if ghost else 1
    names, shards = _explicit_batch_shards(x) if ghost else ((), 1)
    if groups % shards:
        raise ValueError(
            f"virtual_batch_size={virtual_batch_size} does not divide the per-device batch "
            f"{x.shape[0] // shards}: axis 0 of x is sharded {shards} ways over the Explicit "
            f"mesh axes {names}, so a ghost batch would straddle devices. Choose a "
            "virtual_batch_size dividing the per-device batch, or reshard x."
        )
    gshape = (groups, x.shape[0] // groups, *x.shape[1:])
    xg = x.astype(cdt).reshape(gshape)
    feat_g = tuple(a + 1 for a in feat)
    red = tuple(a for a in range(1, xg.ndim) if a not in feat_g)
    mask_g = None
    if mask is not None:
        mask_g = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape).reshape(gshape)

    # Ordinary BN syncs the statistics across axis_name; ghost groups stay local.
    mu, v = _moments(
        xg, red, mask_g, use_fast_variance,
        None if ghost else axis_name, None if ghost else axis_index_groups,
    )  # fmt: skip
    y = _normalize(xg, mu, v, per_feature(scale, (1,)), per_feature(bias, (1,)), epsilon)
    y = y.reshape(x.shape).astype(out_dtype)

    stat_shape = tuple(x.shape[a] for a in feat)
    mu_b = jnp.mean(mu.reshape((groups, *stat_shape)), axis=0)
    var_b = jnp.mean(v.reshape((groups, *stat_shape)), axis=0)
    if ghost and axis_name is not None:
        stacked = lax.pmean(
            jnp.stack([mu_b, var_b]), axis_name, axis_index_groups=axis_index_groups
        )
        mu_b, var_b = stacked[0], stacked[1]
    mean = jnp.asarray(mean)
    var = jnp.asarray(var)
    new_mean = (momentum * mean + (1 - momentum) * mu_b).astype(mean.dtype)
    new_var = (momentum * var + (1 - momentum) * var_b).astype(var.dtype)
    return y, new_mean, new_var
