"""Colour jitter and additive Gaussian noise for batches of NHWC images.

Colour ops follow torchvision's definitions, on the image scale (uint8: 0..255,
float: assumed [0, 1]) with results clipped to that range after every step,
as torchvision does. Parameters are drawn per example with one ``jax.random``
call per parameter vector, so one key gives different draws to every example
and the same output every time.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import is_static_number
from jaxreg.augment._common import (
    check_images,
    check_non_negative,
    check_prob,
    from_float,
    max_value,
    to_float,
)

__all__ = ["color_jitter", "gaussian_noise"]

# ITU-R 601-2 luma, the weights torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


def grayscale(x: jax.Array) -> jax.Array:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` of ``(..., 3)`` (1 channel: itself), keepdims."""
    if x.shape[-1] == 1:
        return x
    # a matmul, not three channel slices: several times faster in XLA on CPU
    return jnp.matmul(x, jnp.asarray(_LUMA, x.dtype)[:, None], precision="highest")


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """RGB ``(..., 3)`` in [0, 1] to HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    mn = jnp.minimum(jnp.minimum(r, g), b)
    c = v - mn
    safe_c = jnp.where(c > 0, c, 1.0)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
    rc, gc, bc = (v - r) / safe_c, (v - g) / safe_c, (v - b) / safe_c
    h = jnp.where(v == r, bc - gc, jnp.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(c > 0, jnp.mod(h / 6.0, 1.0), 0.0)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """HSV ``(..., 3)`` in [0, 1] back to RGB in [0, 1]."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    k = jnp.stack([5.0 + 0 * h, 3.0 + 0 * h, 1.0 + 0 * h], axis=-1)
    k = jnp.mod(k + 6.0 * h[..., None], 6.0)
    f = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] - (v * s)[..., None] * f


def _luma_plane(planes: list[jax.Array]) -> jax.Array:
    """Luma of per-channel planes (one plane: itself)."""
    if len(planes) == 1:
        return planes[0]
    r, g, b = planes
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _shift_hue(planes: list[jax.Array], shift: jax.Array) -> list[jax.Array]:
    """Rotate the HSV hue of R, G, B planes by ``shift`` turns (broadcast per example).

    Equal to ``hsv_to_rgb`` of ``rgb_to_hsv`` with the hue moved (within 2e-6 on
    [0, 1] images), in one division and no ``mod`` of the hue: saturation times
    value is the chroma ``c``, so the HSV round trip reduces to the hue sextant
    and ``c``. The rule is scale-free, so it runs on 0..255 planes as they are.
    """
    r, g, b = planes
    v = jnp.maximum(jnp.maximum(r, g), b)
    c = v - jnp.minimum(jnp.minimum(r, g), b)
    is_r, is_g = v == r, v == g
    num = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
    sextant = jnp.where(is_r, 0.0, jnp.where(is_g, 2.0, 4.0))
    h6 = sextant + num / jnp.where(c > 0, c, 1.0) + 6.0 * shift  # hue in sixths of a turn

    def channel(n):
        k = n + h6
        k = k - 6.0 * jnp.floor(k / 6.0)
        return v - c * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    return [channel(5.0), channel(3.0), channel(1.0)]


def _blend(x: jax.Array, other: jax.Array, factor: jax.Array, top: float) -> jax.Array:
    return jnp.clip(factor * x + (1.0 - factor) * other, 0.0, top)


def _factor_range(value: Any) -> tuple[jax.Array, jax.Array]:
    v = jnp.asarray(value, jnp.float32)
    return jnp.maximum(0.0, 1.0 - v), 1.0 + v


def color_jitter(
    key: jax.Array,
    images: jax.Array,
    *,
    brightness: float | jax.Array = 0.0,
    contrast: float | jax.Array = 0.0,
    saturation: float | jax.Array = 0.0,
    hue: float | jax.Array = 0.0,
    p: float | jax.Array = 1.0,
) -> jax.Array:
    """Random brightness, contrast, saturation and hue per example (torchvision semantics).

    ``x <- clip(b x)``; ``x <- clip(c x + (1 - c) mean(gray(x)))``;
    ``x <- clip(s x + (1 - s) gray(x))``; ``hue(x) <- hue(x) + d`` (mod 1),
    with ``b ~ U[max(0, 1 - brightness), 1 + brightness]`` (same for ``c``, ``s``)
    and ``d ~ U[-hue, hue]``, each drawn per example.

    The four steps run in this fixed order (torchvision shuffles the order per
    call; a fixed order keeps one fused computation). Hue is shifted by
    torchvision's RGB -> HSV -> RGB rule. A strength given as a Python 0 skips
    its step, as torchvision does; a traced 0 runs it as an identity (up to the
    clipping to the image range). Needs 1 or 3 channels; with 1 channel,
    saturation and hue leave the image unchanged.

    Args:
        key: a ``jax.random.key``.
        images: ``(N, H, W, C)`` uint8 (0..255) or float (assumed [0, 1]).
        brightness, contrast, saturation: jitter strengths >= 0.
        hue: max hue shift in turns, in [0, 0.5].
        p: probability that an example is jittered at all, in [0, 1].

    Returns:
        Images of the input shape and dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.full((4, 8, 8, 3), 100, jnp.uint8)
        >>> y = color_jitter(jax.random.key(0), x, brightness=0.5)
        >>> y.dtype, int(jnp.unique(y[0]).size)  # one factor per image
        (dtype('uint8'), 1)

    References:
        torchvision ``transforms.ColorJitter``; Krizhevsky et al., "ImageNet
        Classification with Deep Convolutional Neural Networks", NeurIPS 2012.
    """
    fn = "color_jitter"
    check_images(fn, images, channels=(1, 3))
    check_prob(fn, "p", p)
    if is_static_number(hue) and not 0.0 <= hue <= 0.5:
        raise ValueError(f"{fn}: hue must lie in [0, 0.5], got {hue!r}.")
    for name, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        check_non_negative(fn, name, value)
    # a strength that is a Python 0 skips its step (torchvision skips it too)
    steps = tuple(
        name
        for name, value in (("b", brightness), ("c", contrast), ("s", saturation), ("h", hue))
        if not (is_static_number(value) and value == 0)
    )
    return _color_jitter(key, images, brightness, contrast, saturation, hue, p, steps=steps)


@partial(jax.jit, static_argnames=("steps",))
def _color_jitter(key, images, brightness, contrast, saturation, hue, p, *, steps):
    """Jitted kernel (eager calls compile once per shape; values are traced).

    Works on one ``(N, H*W)`` plane per channel and interleaves the channels
    once at the end: XLA's CPU loops over a minor dimension of 3 vectorise
    poorly, and the planar form ran 1.7x faster than the same arithmetic on
    NHWC arrays (512x32x32x3 uint8, ``benchmarks/bench_augment.py``).
    """
    n, c = images.shape[0], images.shape[-1]
    top = max_value(images.dtype)
    u = jax.random.uniform(key, (5, n), jnp.float32)

    def factor(value, row):
        lo, hi = _factor_range(value)
        return (lo + (hi - lo) * u[row])[:, None]

    flat = images.reshape(n, -1, c)
    x0 = [flat[..., i].astype(jnp.float32) for i in range(c)]
    planes = x0
    if "b" in steps:
        bf = factor(brightness, 0)
        planes = [jnp.clip(bf * q, 0.0, top) for q in planes]
    if "c" in steps:
        cf = factor(contrast, 1)
        mean = jnp.mean(_luma_plane(planes), axis=1, keepdims=True)
        planes = [_blend(q, mean, cf, top) for q in planes]
    if c == 3 and "s" in steps:
        sf = factor(saturation, 2)
        gray = _luma_plane(planes)
        planes = [_blend(q, gray, sf, top) for q in planes]
    if c == 3 and "h" in steps:
        shift = (jnp.asarray(hue, jnp.float32) * (2.0 * u[3] - 1.0))[:, None]
        planes = [jnp.clip(q, 0.0, top) for q in _shift_hue(planes, shift)]
    apply = (u[4] < jnp.asarray(p, jnp.float32))[:, None]
    out = [jnp.where(apply, q, q0) for q, q0 in zip(planes, x0, strict=True)]
    out = jnp.stack(out, axis=-1)
    return from_float(out.reshape(images.shape), images.dtype)


def gaussian_noise(
    key: jax.Array,
    images: jax.Array,
    *,
    stddev: float | jax.Array,
    p: float | jax.Array = 1.0,
) -> jax.Array:
    """Additive Gaussian pixel noise on the image scale.

    ``x' = x + stddev * z``,  ``z ~ N(0, 1)`` per element; uint8 results are
    rounded and clipped to 0..255, float results are not clipped.

    Args:
        key: a ``jax.random.key``.
        images: ``(N, H, W, C)`` uint8 or float.
        stddev: noise standard deviation >= 0 in the units of the images
            (uint8: 0..255, e.g. 8.0; float: as given, e.g. 0.03).
        p: probability that an example gets noise, in [0, 1].

    Returns:
        Images of the input shape and dtype.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> y = gaussian_noise(jax.random.key(0), jnp.zeros((8, 16, 16, 3)), stddev=0.1)
        >>> round(float(y.std()), 2)
        0.1

    References:
        Bishop, "Training with Noise is Equivalent to Tikhonov Regularization",
        Neural Computation 1995.
    """
    fn = "gaussian_noise"
    check_images(fn, images)
    check_prob(fn, "p", p)
    if isinstance(stddev, bool) or not (is_static_number(stddev) or hasattr(stddev, "dtype")):
        raise TypeError(f"{fn}: stddev must be a number or a scalar array, got {stddev!r}.")
    check_non_negative(fn, "stddev", stddev)
    return _gaussian_noise(key, images, stddev, p)


@jax.jit
def _gaussian_noise(key, images, stddev, p):
    k_noise, k_apply = jax.random.split(key)
    n = images.shape[0]
    z = jax.random.normal(k_noise, images.shape, jnp.float32)
    apply = jax.random.uniform(k_apply, (n,)) < jnp.asarray(p, jnp.float32)
    sd = jnp.where(apply, jnp.asarray(stddev, jnp.float32), 0.0)[:, None, None, None]
    return from_float(to_float(images) + sd * z, images.dtype)
