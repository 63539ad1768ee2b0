"""Occlusion augmentation: random erasing (Zhong et al. 2017) and cutout (DeVries & Taylor 2017).

Both paint one axis-aligned box per example. Box parameters are drawn with one
``jax.random`` call per batch (a function of the key and the example index
only), and the box mask is built from broadcasted iotas: no loops, one select.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import is_static_number
from jaxreg.augment._common import check_images, check_prob, from_float, max_value

__all__ = ["cutout", "random_erasing"]

# Zhong et al. (and torchvision) retry the box draw up to 10 times.
_ATTEMPTS = 10


def _box_mask(top: jax.Array, left: jax.Array, h: jax.Array, w: jax.Array, shape: tuple):
    """``(N, H, W, 1)`` bool: ``top_n <= i < top_n + h_n`` and ``left_n <= j < left_n + w_n``."""
    n, height, width, _ = shape
    i = jax.lax.broadcasted_iota(jnp.int32, (n, height, 1, 1), 1)
    j = jax.lax.broadcasted_iota(jnp.int32, (n, 1, width, 1), 2)

    def col(v):
        return v.reshape(n, 1, 1, 1)

    rows = (i >= col(top)) & (i < col(top + h))
    cols = (j >= col(left)) & (j < col(left + w))
    return rows & cols


def _value(fn: str, value: Any, images: jax.Array) -> jax.Array:
    """The fill as a float32 array broadcastable to ``images`` (0 for ``"random"``)."""
    c = images.shape[-1]
    if isinstance(value, str):
        if value != "random":
            raise ValueError(f"{fn}: value must be a number, one per channel, or 'random'.")
        return jnp.zeros((1, 1, 1, 1), jnp.float32)
    if isinstance(value, Sequence):
        if len(value) != c:
            raise ValueError(f"{fn}: value has {len(value)} entries but images have {c} channels.")
        v = jnp.asarray(value, jnp.float32).reshape(1, 1, 1, c)
    else:
        if is_static_number(value) and images.dtype == jnp.uint8 and not 0 <= value <= 255:
            raise ValueError(f"{fn}: value must lie in 0..255 for uint8 images, got {value!r}.")
        v = jnp.asarray(value, jnp.float32).reshape(1, 1, 1, 1)
    return v


def _fill(key: jax.Array, fill: jax.Array, images: jax.Array, random_value: bool) -> jax.Array:
    """Inside a kernel: the fill in ``images``' dtype, or per-pixel uniform noise."""
    if random_value:
        fill = jax.random.uniform(key, images.shape, jnp.float32) * max_value(images.dtype)
    return from_float(fill, images.dtype)


def _check_range(fn: str, name: str, rng: Any, low: float, high: float | None) -> None:
    if not (isinstance(rng, Sequence) and len(rng) == 2):
        raise TypeError(f"{fn}: {name} must be a pair (min, max), got {rng!r}.")
    a, b = rng
    if is_static_number(a) and is_static_number(b):
        if not (low <= a <= b and (high is None or b <= high)):
            bounds = f"[{low}, {high}]" if high is not None else f"[{low}, inf)"
            raise ValueError(f"{fn}: {name} must satisfy min <= max within {bounds}, got {rng!r}.")


def random_erasing(
    key: jax.Array,
    images: jax.Array,
    *,
    p: Any = 0.5,
    scale: tuple = (0.02, 0.33),
    ratio: tuple = (0.3, 3.3),
    value: Any = 0,
) -> jax.Array:
    """Erase one random rectangle per image with probability ``p`` (Random Erasing).

    With probability ``p``: area ``s ~ U[scale] * H W`` and aspect
    ``log r ~ U[log ratio]`` give ``h = round(sqrt(s r))``, ``w = round(sqrt(s / r))``;
    the first of 10 draws with ``h < H`` and ``w < W`` is placed uniformly and
    its pixels set to ``value`` (none fits: the image is kept, as in torchvision).

    Args:
      key: a ``jax.random.key``.
      images: ``(N, H, W, C)`` uint8 or float.
      p: probability of erasing an image, in [0, 1] (may be traced).
      scale: (min, max) erased fraction of the image area, within [0, 1].
      ratio: (min, max) aspect ratio h / w of the box, > 0.
      value: a number, one number per channel, or ``"random"`` (per-pixel uniform
        noise over [0, 255] for uint8, [0, 1] for floats).

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype.

    Example:
      >>> x = jnp.ones((4, 16, 16, 3))
      >>> y = random_erasing(jax.random.key(0), x, p=1.0)
      >>> bool(jnp.all(jnp.mean(y == 0, axis=(1, 2, 3)) > 0))
      True

    References:
      Zhong, Zheng, Kang, Li & Yang, Random erasing data augmentation, AAAI 2020
      (arXiv:1708.04896, 2017).
    """
    fn = "random_erasing"
    check_images(fn, images)
    check_prob(fn, "p", p)
    _check_range(fn, "scale", scale, 0.0, 1.0)
    _check_range(fn, "ratio", ratio, 0.0, None)
    if all(is_static_number(r) for r in ratio) and ratio[0] <= 0:
        raise ValueError(f"{fn}: ratio must be > 0, got {ratio!r}.")
    k_box, k_val = jax.random.split(key)
    fill = _value(fn, value, images)
    rnd = isinstance(value, str)
    return _erasing(k_box, k_val, images, fill, p, *scale, *ratio, random_value=rnd)


@functools.partial(jax.jit, static_argnames=("random_value",))
def _erasing(key, k_val, images, fill, p, scale_lo, scale_hi, ratio_lo, ratio_hi, *, random_value):
    """Kernel of random_erasing: 10 candidate boxes per example, first fitting one."""
    n, height, width, _ = images.shape
    u = jax.random.uniform(key, (n, 2 * _ATTEMPTS + 3))
    area = height * width * (scale_lo + (scale_hi - scale_lo) * u[:, :_ATTEMPTS])
    log_lo = jnp.log(jnp.asarray(ratio_lo, jnp.float32))
    log_hi = jnp.log(jnp.asarray(ratio_hi, jnp.float32))
    r = jnp.exp(log_lo + (log_hi - log_lo) * u[:, _ATTEMPTS : 2 * _ATTEMPTS])
    hs = jnp.round(jnp.sqrt(area * r)).astype(jnp.int32)
    ws = jnp.round(jnp.sqrt(area / r)).astype(jnp.int32)
    fits = (hs < height) & (ws < width)
    first = jnp.argmax(fits, axis=1)  # first fitting attempt (0 if none fits)
    h = jnp.take_along_axis(hs, first[:, None], axis=1)[:, 0]
    w = jnp.take_along_axis(ws, first[:, None], axis=1)[:, 0]
    apply = (u[:, -3] < p) & jnp.any(fits, axis=1)
    h, w = jnp.where(apply, h, 0), jnp.where(apply, w, 0)
    top = jnp.floor(u[:, -2] * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(u[:, -1] * (width - w + 1)).astype(jnp.int32)
    mask = _box_mask(top, left, h, w, images.shape)
    return jnp.where(mask, _fill(k_val, fill, images, random_value), images)


def cutout(
    key: jax.Array, images: jax.Array, *, size: int = 16, p: Any = 1.0, value: Any = 0
) -> jax.Array:
    """Mask one ``size x size`` square per image, centred anywhere (Cutout).

    With probability ``p``: centre ``(cy, cx) ~ U{0..H-1} x U{0..W-1}``; pixels with
    ``cy - size//2 <= i < cy - size//2 + size`` (same for ``j``) are set to ``value``.
    The square may extend past the border (only its part inside is masked).

    Args:
      key: a ``jax.random.key``.
      images: ``(N, H, W, C)`` uint8 or float.
      size: side of the square in pixels (static int, >= 0; 16 for CIFAR-10 in the paper).
      p: probability of applying cutout to an image, in [0, 1] (may be traced).
      value: a number or one number per channel.

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype.

    Example:
      >>> x = jnp.ones((2, 32, 32, 3), jnp.uint8)
      >>> y = cutout(jax.random.key(0), x, size=8)
      >>> bool(jnp.all(jnp.sum(y == 0, axis=(1, 2, 3)) <= 8 * 8 * 3))
      True

    References:
      DeVries & Taylor, Improved regularization of convolutional neural networks
      with cutout, arXiv:1708.04552, 2017.
    """
    fn = "cutout"
    check_images(fn, images)
    check_prob(fn, "p", p)
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{fn}: size must be a Python int (static), got {size!r}.")
    if size < 0:
        raise ValueError(f"{fn}: size must be >= 0, got {size}.")
    if isinstance(value, str):
        raise ValueError(f"{fn}: value must be a number or one number per channel, got {value!r}.")
    return _cutout(key, images, _value(fn, value, images), p, size=size)


@functools.partial(jax.jit, static_argnames=("size",))
def _cutout(key, images, fill, p, *, size):
    n, height, width, _ = images.shape
    u = jax.random.uniform(key, (n, 3))
    cy = jnp.floor(u[:, 0] * height).astype(jnp.int32)
    cx = jnp.floor(u[:, 1] * width).astype(jnp.int32)
    side = jnp.where(u[:, 2] < p, size, 0)
    mask = _box_mask(cy - size // 2, cx - size // 2, side, side, images.shape)
    return jnp.where(mask, from_float(fill, images.dtype), images)
