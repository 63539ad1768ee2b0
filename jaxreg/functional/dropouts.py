"""The dropout family as pure kernels: ``(key, x, rate) -> array``, key first.

* :func:`dropout`: inverted dropout (flax/Keras/PyTorch), optional shared axes.
* :func:`spatial_dropout`: whole channels per example (Keras ``SpatialDropout``).
* :func:`drop_path`: whole examples, i.e. stochastic depth on a residual branch
  (timm ``drop_path``); :func:`drop_path_rates` gives the per-block rates.
* :func:`drop_block`: contiguous square blocks of feature maps (DropBlock).
* :func:`gaussian_dropout`, :func:`gaussian_noise`, :func:`alpha_dropout`:
  Keras semantics.

Conventions shared by every kernel:

* ``rate`` is the drop probability; it may be a Python float (checked now) or a
  scalar array, possibly traced (``jax.vmap`` over a vector of rates works).
* ``deterministic=True`` returns ``x`` unchanged and ``key`` may be None.
* Masks come from a counter-based hash of each element's global position
  (:mod:`jaxreg.functional._bits`): fast, reproducible (same key, same mask) and
  identical whatever the sharding of ``x`` under ``jax.jit``.
* Keep thresholds have 16 bits; kept values are scaled by the *realised* keep
  probability, so ``E[y] = x`` exactly. A rate of 1 gives zeros with zero
  (finite) gradients.
* Arithmetic runs in float32 (float64 stays float64); the output has x's dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxreg._util import check_non_negative, compute_dtype, is_static_number
from jaxreg.functional import _bits

__all__ = [
    "alpha_dropout",
    "drop_block",
    "drop_path",
    "drop_path_rates",
    "dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "spatial_dropout",
]

# SELU constants (Klambauer et al. 2017); alpha' = -scale * alpha is SELU's negative saturation.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_ALPHA_P = -_SELU_SCALE * _SELU_ALPHA

# --------------------------------------------------------------------------- checks


def _check_rate(fn: str, rate: Any, *, name: str = "rate", open_top: bool = False) -> None:
    if (
        isinstance(rate, bool)
        or callable(rate)
        or not (is_static_number(rate) or hasattr(rate, "dtype"))
    ):
        raise TypeError(f"{fn}: {name} must be a number or a scalar array, got {rate!r}.")
    if is_static_number(rate):
        ok = 0.0 <= rate < 1.0 if open_top else 0.0 <= rate <= 1.0
        if not ok:
            interval = "[0, 1)" if open_top else "[0, 1]"
            raise ValueError(f"{name} must lie in {interval}, got {rate!r}.")
    elif jnp.ndim(rate) != 0:
        raise ValueError(f"{fn}: {name} must be a scalar, got an array of shape {jnp.shape(rate)}.")


def _check_call(fn: str, key: Any, x: Any, deterministic: Any) -> None:
    if not isinstance(deterministic, (bool, np.bool_)):
        raise TypeError(
            f"{fn}: deterministic must be a Python bool (it is static), got {deterministic!r}."
        )
    if not deterministic and key is None:
        raise ValueError(f"{fn} needs a key when deterministic=False.")
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise TypeError(f"{fn}: x must be a floating-point array, got dtype {jnp.result_type(x)}.")


def _axes(fn: str, name: str, dims: Sequence[int], ndim: int) -> tuple[int, ...]:
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = []
    for d in dims:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
            raise TypeError(f"{fn}: {name} must hold Python ints (static), got {d!r}.")
        if not -ndim <= d < ndim:
            raise ValueError(f"{fn}: {name}={dims!r} is out of range for x of rank {ndim}.")
        out.append(int(d) % ndim)
    return tuple(sorted(set(out)))


def _mask_shape(shape: tuple[int, ...], broadcast: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if ax in broadcast else d for ax, d in enumerate(shape))


# --------------------------------------------------------------------------- core


def _scale_where(x: jax.Array, keep: jax.Array, scale: jax.Array) -> jax.Array:
    """``where(keep, x * scale, 0)`` computed in float32+, returned in x's dtype."""
    cd = compute_dtype(x.dtype)
    y = (x.astype(cd) * scale.astype(cd)).astype(x.dtype)
    return jnp.where(jnp.broadcast_to(keep, x.shape), y, jnp.zeros((), x.dtype))


def _inverse(q: jax.Array) -> jax.Array:
    """``1 / q`` for q > 0 and 0 for q == 0, with finite gradients everywhere."""
    positive = q > 0
    return jnp.where(positive, 1.0 / jnp.where(positive, q, 1.0), 0.0)


# The implementations below are jitted (structure static, rate traced): one compiled
# program per shape in eager use instead of op-by-op dispatch; inlined under jit.


@functools.partial(jax.jit, static_argnums=3)
def _masked(key, x, rate, broadcast: tuple[int, ...]) -> jax.Array:
    threshold, q = _bits.keep_threshold(rate)
    keep = _bits.keep_mask(key, _mask_shape(x.shape, broadcast), threshold)
    return _scale_where(x, keep, _inverse(q))


def dropout(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by 1/keep.

    ``y = m * x / q`` with ``m ~ Bernoulli(q)`` independent per element (shared
    along ``broadcast_dims``) and ``q = round((1 - rate) 2**16) / 2**16`` the
    realised keep probability, so ``E[y] = x`` exactly; ``q = 0`` gives ``y = 0``.
    At inference (``deterministic=True``) ``y = x``.

    Args:
      key: a ``jax.random.key``; derive one per layer and step. May be None when
        ``deterministic=True``.
      x: floating-point array of any shape.
      rate: drop probability in [0, 1]; a float or a scalar (traced) array.
      broadcast_dims: axes that share one mask value (static), as in flax.
      deterministic: if True, return ``x`` unchanged (static bool).

    Returns:
      An array like ``x`` (same shape and dtype).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = dropout(jax.random.key(0), jnp.ones((2, 4)), 0.5)
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
      >>> dropout(None, jnp.ones(3), 0.5, deterministic=True)
      Array([1., 1., 1.], dtype=float32)

    References:
      Srivastava et al., "Dropout: a simple way to prevent neural networks from
      overfitting", JMLR 2014.
    """
    _check_rate("dropout", rate)
    _check_call("dropout", key, x, deterministic)
    broadcast = _axes("dropout", "broadcast_dims", broadcast_dims, jnp.ndim(x))
    if deterministic:
        return x
    return _masked(key, x, rate, broadcast)


def spatial_dropout(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    channel_axis: int = -1,
    deterministic: bool = False,
) -> jax.Array:
    """Channel dropout: zero whole channels of each example with probability ``rate``.

    ``y[n, ..., c] = m[n, c] * x[n, ..., c] / q`` with ``m ~ Bernoulli(q)`` per
    (example, channel); :func:`dropout` with every axis but 0 and
    ``channel_axis`` broadcast. For NHWC this is Keras ``SpatialDropout2D``; for
    NCHW pass ``channel_axis=1`` (PyTorch ``Dropout2d``).

    Args:
      key: a ``jax.random.key`` (None allowed when ``deterministic=True``).
      x: floating-point array ``(batch, ..., channels)`` of rank >= 2.
      rate: drop probability of a channel, in [0, 1]; float or scalar array.
      channel_axis: the channel axis (static), not 0.
      deterministic: if True, return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = spatial_dropout(jax.random.key(1), jnp.ones((1, 3, 3, 4)), 0.5)
      >>> y[0, :, :, 0].tolist() in ([[0.0] * 3] * 3, [[2.0] * 3] * 3)
      True

    References:
      Tompson et al., "Efficient object localization using convolutional
      networks", CVPR 2015.
    """
    _check_rate("spatial_dropout", rate)
    _check_call("spatial_dropout", key, x, deterministic)
    ndim = jnp.ndim(x)
    if ndim < 2:
        raise ValueError(f"spatial_dropout: x must have rank >= 2, got shape {jnp.shape(x)}.")
    (channel,) = _axes("spatial_dropout", "channel_axis", (channel_axis,), ndim)
    if channel == 0:
        raise ValueError("spatial_dropout: channel_axis must not be the batch axis 0.")
    if deterministic:
        return x
    broadcast = tuple(ax for ax in range(1, ndim) if ax != channel)
    return _masked(key, x, rate, broadcast)


def drop_path(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    deterministic: bool = False,
) -> jax.Array:
    """Stochastic depth: zero whole examples (axis 0) with probability ``rate``, scale by 1/keep.

    ``y[n] = m[n] * x[n] / q`` with ``m ~ Bernoulli(q)`` per example. Apply it to
    a residual branch, ``x + drop_path(key, f(x), rate)``; timm's ``drop_path``
    with ``scale_by_keep=True``.

    Args:
      key: a ``jax.random.key`` (None allowed when ``deterministic=True``).
      x: floating-point array ``(batch, ...)``.
      rate: drop probability of an example, in [0, 1]; float or scalar array.
      deterministic: if True, return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = drop_path(jax.random.key(0), jnp.ones((4, 3)), 0.5)
      >>> [row.tolist() in ([0.0] * 3, [2.0] * 3) for row in y]
      [True, True, True, True]

    References:
      Huang et al., "Deep networks with stochastic depth", ECCV 2016.
    """
    _check_rate("drop_path", rate)
    _check_call("drop_path", key, x, deterministic)
    if deterministic:
        return x
    return _masked(key, x, rate, tuple(range(1, jnp.ndim(x))))


def drop_path_rates(depth: int, max_rate: float | jax.Array) -> list[float] | jax.Array:
    """Per-block drop-path rates growing linearly from 0 (first block) to ``max_rate`` (last).

    ``rate_i = max_rate * i / (depth - 1)`` for ``i = 0 .. depth - 1`` (timm's
    ``linspace(0, drop_path_rate, depth)``; a single block gets 0).

    Args:
      depth: number of blocks, >= 0 (static int).
      max_rate: rate of the last block, in [0, 1]; float or scalar array.

    Returns:
      A list of Python floats for a float ``max_rate`` (usable as static module
      fields), otherwise a float32 array of shape ``(depth,)``.

    Example:
      >>> drop_path_rates(5, 0.2)
      [0.0, 0.05, 0.1, 0.15, 0.2]

    References:
      Huang et al., "Deep networks with stochastic depth", ECCV 2016.
    """
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth must be an int >= 0, got {depth!r}.")
    _check_rate("drop_path_rates", max_rate, name="max_rate")
    if is_static_number(max_rate):
        return [float(max_rate) * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
    return jnp.asarray(max_rate, jnp.float32) * jnp.linspace(0.0, 1.0, int(depth))


# --------------------------------------------------------------------------- DropBlock


def _coverage(size: int, block: int) -> np.ndarray:
    """How many valid block origins (blocks fully inside ``size``) cover each position."""
    r = np.arange(size)
    return np.minimum(r, size - block) - np.maximum(0, r - block + 1) + 1


def _seed_rate(rate: jax.Array, spatial: tuple[int, ...], block: tuple[int, ...]) -> jax.Array:
    """Seed probability gamma with mean over positions of ``1 - (1 - gamma)**cover`` = rate.

    ``cover`` (static) counts the seeds whose block covers a position; the mean
    drop probability is increasing in gamma, so 40 bisection steps solve it.
    """
    cover = np.ones((), np.int64)
    for size, b in zip(spatial, block, strict=True):
        cover = np.multiply.outer(cover, _coverage(size, b))
    values, counts = np.unique(cover, return_counts=True)
    c = jnp.asarray(values, jnp.float32)
    w = jnp.asarray(counts / counts.sum(), jnp.float32)
    rate = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)

    def dropped(gamma):
        return 1.0 - jnp.sum(w * jnp.exp(c * jnp.log1p(-gamma)))

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = dropped(mid) < rate
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    _, hi = lax.fori_loop(0, 40, step, (jnp.float32(0.0), jnp.float32(1.0)))
    return lax.stop_gradient(hi)


def drop_block(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    block_size: int | Sequence[int] = 7,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
) -> jax.Array:
    """DropBlock: zero contiguous ``block_size`` squares of feature maps, ``rate`` of them in all.

    Block origins are drawn i.i.d. with probability ``gamma`` among the positions
    where a whole block fits; ``m`` is 0 on the union of their blocks. ``gamma``
    solves ``mean_pos(1 - (1 - gamma)**cover(pos)) = rate`` exactly (the paper's
    closed form ignores overlaps and drops less than asked). Then
    ``y = m * x * size(m) / sum(m)``: normalised by the realised kept fraction
    over the whole batch, as in the paper (all dropped -> ``y = 0``).

    Args:
      key: a ``jax.random.key`` (None allowed when ``deterministic=True``).
      x: floating-point array ``(batch, *spatial, channels)``, rank >= 3 (NHWC
        for images).
      rate: expected dropped fraction, in [0, 1]; float or scalar array.
      block_size: block side (static int >= 1, or one per spatial axis); clipped
        to the feature-map size.
      broadcast_dims: subset of ``(0, -1)`` sharing one mask: ``(-1,)`` drops the
        same blocks in every channel (default: independent per channel).
      deterministic: if True, return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = drop_block(jax.random.key(3), jnp.ones((1, 6, 6, 1)), 0.3, block_size=3)
      >>> round(float(y.sum()), 3)  # kept values are scaled so that the total is preserved
      36.0

    References:
      Ghiasi, Lin and Le, "DropBlock: a regularization method for convolutional
      networks", NeurIPS 2018.
    """
    _check_rate("drop_block", rate)
    _check_call("drop_block", key, x, deterministic)
    ndim = jnp.ndim(x)
    if ndim < 3:
        raise ValueError(
            f"drop_block: x must be (batch, *spatial, channels) of rank >= 3, "
            f"got shape {jnp.shape(x)}."
        )
    spatial = tuple(jnp.shape(x)[1:-1])
    sizes = (block_size,) * len(spatial) if isinstance(block_size, int) else tuple(block_size)
    if len(sizes) != len(spatial) or not all(
        isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1 for b in sizes
    ):
        raise ValueError(
            f"block_size must be an int >= 1 or {len(spatial)} of them, got {block_size!r}."
        )
    broadcast = _axes("drop_block", "broadcast_dims", broadcast_dims, ndim)
    if not set(broadcast) <= {0, ndim - 1}:
        raise ValueError(
            f"drop_block: broadcast_dims may hold only the batch axis 0 and the channel "
            f"axis -1, got {broadcast_dims!r}."
        )
    if deterministic:
        return x
    block = tuple(min(int(b), s) for b, s in zip(sizes, spatial, strict=True))
    return _drop_block(key, x, rate, block, broadcast)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _drop_block(key, x, rate, block: tuple[int, ...], broadcast: tuple[int, ...]) -> jax.Array:
    spatial = x.shape[1:-1]
    mshape = _mask_shape(x.shape, broadcast)
    seed_shape = (mshape[0], *(s - b + 1 for s, b in zip(spatial, block, strict=True)), mshape[-1])
    gamma = _seed_rate(rate, spatial, block)
    seeds = (_bits.uniform(key, seed_shape) < gamma).astype(jnp.float32)
    hit = lax.reduce_window(
        seeds,
        0.0,
        lax.max,
        window_dimensions=(1, *block, 1),
        window_strides=(1,) * x.ndim,
        padding=((0, 0), *((b - 1, b - 1) for b in block), (0, 0)),
    )
    keep = hit == 0.0
    kept = jnp.sum(keep, dtype=jnp.float32)
    scale = math.prod(mshape) * _inverse(kept)
    return _scale_where(x, keep, scale)


# --------------------------------------------------------------------------- noise


def gaussian_dropout(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    deterministic: bool = False,
) -> jax.Array:
    """Gaussian dropout: multiply by noise ``N(1, rate / (1 - rate))``.

    ``y = x * (1 + sigma * z)``, ``z ~ N(0, 1)`` per element,
    ``sigma = sqrt(rate / (1 - rate))``: the variance of Bernoulli dropout at the
    same rate, with ``E[y] = x`` (Keras ``GaussianDropout``).

    Args:
      key: a ``jax.random.key`` (None allowed when ``deterministic=True``).
      x: floating-point array of any shape.
      rate: equivalent drop probability in [0, 1); float or scalar array (a
        traced 1 gives infinite noise).
      deterministic: if True, return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = gaussian_dropout(jax.random.key(0), jnp.ones((1000,)), 0.5)
      >>> abs(float(y.mean()) - 1.0) < 0.1 and abs(float(y.std()) - 1.0) < 0.1
      True

    References:
      Srivastava et al., "Dropout: a simple way to prevent neural networks from
      overfitting", JMLR 2014, section 10.
    """
    _check_rate("gaussian_dropout", rate, open_top=True)
    _check_call("gaussian_dropout", key, x, deterministic)
    if deterministic:
        return x
    return _gaussian_dropout(key, x, rate)


@jax.jit
def _gaussian_dropout(key, x, rate) -> jax.Array:
    cd = compute_dtype(x.dtype)
    rate = jnp.asarray(rate, jnp.float32)
    sigma = jnp.sqrt(rate / (1.0 - rate)).astype(cd)
    noise = 1.0 + sigma * _bits.normal(key, x.shape).astype(cd)
    return (x.astype(cd) * noise).astype(x.dtype)


def gaussian_noise(
    key: jax.Array | None,
    x: jax.Array,
    stddev: float | jax.Array,
    *,
    deterministic: bool = False,
) -> jax.Array:
    """Additive Gaussian noise: ``y = x + stddev * z``, ``z ~ N(0, 1)`` per element.

    Keras ``GaussianNoise``; identity when ``deterministic=True``.

    Args:
      key: a ``jax.random.key`` (None allowed when ``deterministic=True``).
      x: floating-point array of any shape.
      stddev: noise standard deviation, >= 0 (units of x); float or scalar array.
      deterministic: if True, return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = gaussian_noise(jax.random.key(0), jnp.zeros((1000,)), 0.1)
      >>> abs(float(y.std()) - 0.1) < 0.01
      True

    References:
      Bishop, "Training with noise is equivalent to Tikhonov regularization",
      Neural Computation 1995.
    """
    if (
        isinstance(stddev, bool)
        or callable(stddev)
        or not (is_static_number(stddev) or hasattr(stddev, "dtype"))
    ):
        raise TypeError(f"gaussian_noise: stddev must be a number or scalar array, got {stddev!r}.")
    check_non_negative("stddev", stddev)
    if not is_static_number(stddev) and jnp.ndim(stddev) != 0:
        raise ValueError(f"gaussian_noise: stddev must be a scalar, got shape {jnp.shape(stddev)}.")
    _check_call("gaussian_noise", key, x, deterministic)
    if deterministic:
        return x
    return _gaussian_noise(key, x, stddev)


@jax.jit
def _gaussian_noise(key, x, stddev) -> jax.Array:
    cd = compute_dtype(x.dtype)
    noise = jnp.asarray(stddev, cd) * _bits.normal(key, x.shape).astype(cd)
    return (x.astype(cd) + noise).astype(x.dtype)


def alpha_dropout(
    key: jax.Array | None,
    x: jax.Array,
    rate: float | jax.Array,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool = False,
) -> jax.Array:
    """Alpha dropout: set dropped units to SELU's saturation and keep mean 0, variance 1.

    ``y = a * (m * x + (1 - m) * alpha') + b`` with ``m ~ Bernoulli(q)``,
    ``alpha' = -scale * alpha = -1.7581`` (SELU),
    ``a = (q (1 + (1 - q) alpha'^2))^(-1/2)``, ``b = -a alpha' (1 - q)`` and ``q``
    the realised keep probability (Keras ``AlphaDropout``, PyTorch
    ``alpha_dropout``). Inputs with mean 0 and variance 1 keep both. ``q = 0``
    gives ``y = 0`` (as PyTorch at ``p = 1``).

    Args:
      key: a ``jax.random.key`` (None allowed when ``deterministic=True``).
      x: floating-point array (SELU activations).
      rate: drop probability in [0, 1]; float or scalar array.
      broadcast_dims: axes sharing one mask value (static).
      deterministic: if True, return ``x`` unchanged.

    Returns:
      An array like ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = alpha_dropout(jax.random.key(2), x, 0.2)
      >>> round(float(y.mean()), 1), round(float(y.std()), 1)
      (0.0, 1.0)

    References:
      Klambauer et al., "Self-normalizing neural networks", NeurIPS 2017.
    """
    _check_rate("alpha_dropout", rate)
    _check_call("alpha_dropout", key, x, deterministic)
    broadcast = _axes("alpha_dropout", "broadcast_dims", broadcast_dims, jnp.ndim(x))
    if deterministic:
        return x
    return _alpha_dropout(key, x, rate, broadcast)


@functools.partial(jax.jit, static_argnums=3)
def _alpha_dropout(key, x, rate, broadcast: tuple[int, ...]) -> jax.Array:
    cd = compute_dtype(x.dtype)
    threshold, q = _bits.keep_threshold(rate)
    keep = _bits.keep_mask(key, _mask_shape(x.shape, broadcast), threshold)
    positive = q > 0
    qs = jnp.where(positive, q, 1.0)
    a = jnp.where(positive, lax.rsqrt(qs * (1.0 + (1.0 - qs) * _ALPHA_P**2)), 0.0)
    b = -a * _ALPHA_P * (1.0 - q)
    kept = x.astype(cd) * a.astype(cd) + b.astype(cd)
    dropped = (a * _ALPHA_P + b).astype(cd)
    y = jnp.where(jnp.broadcast_to(keep, x.shape), kept, dropped)
    return y.astype(x.dtype)
