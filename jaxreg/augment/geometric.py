"""Geometric augmentation: random crop with padding, flips, random affine.

Every op takes ``(key, images, **settings)`` with ``images`` a batch ``NHWC``
of uint8 or floats and returns a batch of the same shape and dtype. Each example
gets its own draw; the draws are one ``jax.random`` call per parameter vector
of shape ``(N, ...)``, so they depend only on the key and the example index
(never on how the batch is sharded under ``jax.jit``).

Crop and flip are pure index arithmetic: output pixel ``(n, i, j)`` reads one
input pixel, found on broadcasted iotas, with a single gather (no padded copy of
the batch is materialized). :func:`random_crop_flip` fuses both into one gather.
:func:`random_affine` composes rotation, translation, zoom and shear into one
2x3 matrix per example and resamples once (nearest or bilinear, in float32),
reading from a copy with a one-pixel border of ``fill``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import is_static_number
from jaxreg.augment._common import (
    check_images,
    check_non_negative,
    check_prob,
    from_float,
    to_float,
)

__all__ = [
    "affine_matrices",
    "alternating_flip",
    "flip_translate_views",
    "flip_views",
    "random_affine",
    "random_crop",
    "random_crop_flip",
    "random_flip",
]

_MODES = ("reflect", "constant")
_INTERPOLATIONS = ("bilinear", "nearest")


# --------------------------------------------------------------------------- helpers


def _check_padding(fn: str, padding: Any, mode: str, shape: tuple) -> None:
    if not isinstance(padding, int) or isinstance(padding, bool):
        raise TypeError(f"{fn}: padding must be a Python int (static), got {padding!r}.")
    if padding < 0:
        raise ValueError(f"{fn}: padding must be >= 0, got {padding}.")
    if mode not in _MODES:
        raise ValueError(f"{fn}: mode must be one of {_MODES}, got {mode!r}.")
    _, h, w, _ = shape
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(
            f"{fn}: padding={padding} is too large for mode='reflect' on {h}x{w} images "
            f"(reflect padding must be < height and width; use mode='constant')."
        )


def _fill_value(fn: str, fill: Any, images: jax.Array) -> jax.Array:
    """``fill`` as an array broadcastable to ``(N, H, W, C)`` in float32."""
    c = images.shape[-1]
    if is_static_number(fill):
        if images.dtype == jnp.uint8 and not 0 <= fill <= 255:
            raise ValueError(f"{fn}: fill must lie in 0..255 for uint8 images, got {fill!r}.")
        return jnp.full((1, 1, 1, 1), fill, jnp.float32)
    if isinstance(fill, Sequence) and not isinstance(fill, str):
        if len(fill) != c:
            raise ValueError(
                f"{fn}: fill has {len(fill)} values but images have {c} channels "
                f"(give a number or one value per channel)."
            )
        return jnp.asarray(fill, jnp.float32).reshape(1, 1, 1, c)
    arr = jnp.asarray(fill, jnp.float32)
    if arr.ndim == 0:
        return arr.reshape(1, 1, 1, 1)
    if arr.shape != (c,):
        raise ValueError(f"{fn}: fill must be a scalar or have shape ({c},), got {arr.shape}.")
    return arr.reshape(1, 1, 1, c)


def _reflect(i: jax.Array, size: int) -> jax.Array:
    """Index of a reflect-padded axis (NumPy ``mode='reflect'``, edge not repeated)."""
    i = jnp.abs(i)
    return jnp.where(i > size - 1, 2 * (size - 1) - i, i)


def _gather(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``images[n, rows[n, i], cols[n, j]]`` with rows ``(N, H)`` and cols ``(N, W)``."""
    n = images.shape[0]
    batch = jax.lax.broadcasted_iota(jnp.int32, (n, 1, 1), 0)
    return images[batch, rows[:, :, None], cols[:, None, :]]


def _crop_indices(
    key: jax.Array, shape: tuple, padding: int, mode: str
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Source rows ``(N, H)``, cols ``(N, W)`` of a padded crop, and (constant mode) a mask.

    Offsets ``(dy, dx) - padding`` come from one ``randint`` of shape ``(N, 2)``.
    """
    n, h, w, _ = shape
    off = jax.random.randint(key, (n, 2), 0, 2 * padding + 1) - padding
    rows = jax.lax.broadcasted_iota(jnp.int32, (n, h), 1) + off[:, 0:1]
    cols = jax.lax.broadcasted_iota(jnp.int32, (n, w), 1) + off[:, 1:2]
    if mode == "reflect":
        return _reflect(rows, h), _reflect(cols, w), None
    valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    return jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1), valid


@functools.partial(jax.jit, static_argnames=("padding", "mode", "crop", "horizontal", "vertical"))
def _crop_flip(k_off, k_flip, images, fill, p, *, padding, mode, crop, horizontal, vertical):
    """Kernel of crop and crop+flip: index vectors, then one gather (and a select)."""
    n, h, w, _ = images.shape
    if crop:
        rows, cols, valid = _crop_indices(k_off, images.shape, padding, mode)
    else:
        rows = jax.lax.broadcasted_iota(jnp.int32, (n, h), 1)
        cols = jax.lax.broadcasted_iota(jnp.int32, (n, w), 1)
        valid = None
    u = jax.random.uniform(k_flip, (n, 2)) if horizontal or vertical else None
    # Flipping the crop output = reversing its index vectors (and its validity mask).
    if horizontal:
        hf = u[:, 1:2] < p
        cols = jnp.where(hf, cols[:, ::-1], cols)
        if valid is not None:
            valid = jnp.where(hf[:, :, None], valid[:, :, ::-1], valid)
    if vertical:
        vf = u[:, 0:1] < p
        rows = jnp.where(vf, rows[:, ::-1], rows)
        if valid is not None:
            valid = jnp.where(vf[:, :, None], valid[:, ::-1, :], valid)
    out = _gather(images, rows, cols)
    if valid is None:
        return out
    return jnp.where(valid[..., None], out, from_float(fill, images.dtype))


@functools.partial(jax.jit, static_argnames=("horizontal", "vertical"))
def _flip(key, images, p, *, horizontal, vertical):
    n = images.shape[0]
    u = jax.random.uniform(key, (n, 2))
    out = images
    if vertical:
        out = jnp.where((u[:, 0] < p).reshape(n, 1, 1, 1), out[:, ::-1], out)
    if horizontal:
        out = jnp.where((u[:, 1] < p).reshape(n, 1, 1, 1), out[:, :, ::-1], out)
    return out


# --------------------------------------------------------------------------- crop / flip


def random_crop(
    key: jax.Array, images: jax.Array, *, padding: int = 4, mode: str = "reflect", fill: Any = 0
) -> jax.Array:
    """Pad every image by ``padding`` pixels and crop back to its size at a random offset.

    ``out[n, i, j] = pad(x)[n, i + dy_n, j + dx_n]`` with ``dy_n, dx_n ~ U{0..2 padding}``
    drawn per example; ``pad`` reflects (NumPy ``mode='reflect'``) or fills with
    ``fill``. Computed as one gather; no padded copy is built.

    Args:
      key: a ``jax.random.key``.
      images: ``(N, H, W, C)`` uint8 or float.
      padding: pixels added on each side (static int, >= 0; < H and W for reflect).
      mode: ``"reflect"`` or ``"constant"`` (static).
      fill: value of the constant padding (a number or one value per channel).

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype.

    Example:
      >>> x = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
      >>> random_crop(jax.random.key(0), x, padding=2).shape
      (2, 6, 6, 1)

    References:
      Krizhevsky, Sutskever & Hinton, ImageNet classification with deep
      convolutional neural networks, NeurIPS 2012 (random crops);
      He et al., Deep residual learning, CVPR 2016 (4-pixel padding on CIFAR).
    """
    check_images("random_crop", images)
    _check_padding("random_crop", padding, mode, images.shape)
    fill = _fill_value("random_crop", fill, images)
    k_off, k_flip = jax.random.split(key)
    return _crop_flip(
        k_off,
        k_flip,
        images,
        fill,
        0.0,
        padding=padding,
        mode=mode,
        crop=True,
        horizontal=False,
        vertical=False,
    )


def random_flip(
    key: jax.Array,
    images: jax.Array,
    *,
    horizontal: bool = True,
    vertical: bool = False,
    p: Any = 0.5,
) -> jax.Array:
    """Mirror each image left-right and/or top-bottom with probability ``p``.

    ``out[n, i, j] = x[n, v_n ? H-1-i : i, h_n ? W-1-j : j]`` with independent
    ``h_n, v_n ~ Bernoulli(p)`` per example (only for the enabled directions).

    Args:
      key: a ``jax.random.key``.
      images: ``(N, H, W, C)`` uint8 or float.
      horizontal: flip left-right (static bool).
      vertical: flip top-bottom (static bool).
      p: probability of each enabled flip, in [0, 1] (may be traced).

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype.

    Example:
      >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
      >>> random_flip(jax.random.key(0), x, p=1.0)[0, 0, :, 0]
      Array([2., 1., 0.], dtype=float32)

    References:
      Krizhevsky, Sutskever & Hinton, NeurIPS 2012 (horizontal reflections).
    """
    check_images("random_flip", images)
    check_prob("random_flip", "p", p)
    return _flip(jax.random.split(key)[1], images, p, horizontal=horizontal, vertical=vertical)


def random_crop_flip(
    key: jax.Array,
    images: jax.Array,
    *,
    padding: int = 4,
    mode: str = "reflect",
    fill: Any = 0,
    horizontal: bool = True,
    vertical: bool = False,
    p: Any = 0.5,
) -> jax.Array:
    """Random crop with padding then random flip, fused into a single gather.

    ``out[n, i, j] = pad(x)[n, r_n(i) + dy_n, c_n(j) + dx_n]`` with
    ``c_n(j) = h_n ? W-1-j : j`` and ``r_n(i) = v_n ? H-1-i : i``. Same draws as
    ``random_flip(k2, random_crop(k1, x))`` with ``k1, k2 = jax.random.split(key)``.

    Args:
      key: a ``jax.random.key``.
      images: ``(N, H, W, C)`` uint8 or float.
      padding, mode, fill: as in :func:`random_crop`.
      horizontal, vertical, p: as in :func:`random_flip`.

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype.

    Example:
      >>> x = jnp.zeros((4, 8, 8, 3), jnp.uint8)
      >>> random_crop_flip(jax.random.key(0), x).dtype
      dtype('uint8')

    References:
      He et al., Deep residual learning, CVPR 2016 (CIFAR crop + flip).
    """
    check_images("random_crop_flip", images)
    check_prob("random_crop_flip", "p", p)
    _check_padding("random_crop_flip", padding, mode, images.shape)
    fill = _fill_value("random_crop_flip", fill, images)
    k_crop, k_flip = jax.random.split(key)
    # Same parameter draws as random_crop(k_crop) and random_flip(k_flip).
    return _crop_flip(
        jax.random.split(k_crop)[0],
        jax.random.split(k_flip)[1],
        images,
        fill,
        p,
        padding=padding,
        mode=mode,
        crop=True,
        horizontal=horizontal,
        vertical=vertical,
    )


def alternating_flip(key: jax.Array, images: jax.Array, index: jax.Array, epoch: Any) -> jax.Array:
    """Airbench's derandomized horizontal flip: each example alternates its mirror.

    Example ``index[n]`` is mirrored left-right in ``epoch`` iff
    ``b XOR (epoch odd)``, where ``b ~ Bernoulli(0.5)`` is drawn once per example
    from ``key`` and the example's index (``fold_in(key, index[n])``). ``key``
    must be the same in every epoch (a run's key, not a step's): then each
    example shows one orientation in epoch 0 as under random flipping, and the
    other one in every following epoch, so any two consecutive epochs see it
    both ways, where random flipping repeats an orientation half of the time
    (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds": better than random
    flipping in every case they measured where flipping helps).

    :class:`jaxreg.Trainer` passes the batch's ``index`` and ``epoch`` to an
    augment when ``augment_index=True``; :func:`jaxreg.fit` supplies them.

    Args:
      key: a ``jax.random.key``, fixed for the run.
      images: ``(N, H, W, C)`` uint8 or float.
      index: ``(N,)`` integer indices of the examples in the training set.
      epoch: the epoch (int, may be traced).

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype.

    Example:
      >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
      >>> a = alternating_flip(jax.random.key(0), x, jnp.array([7]), 0)
      >>> b = alternating_flip(jax.random.key(0), x, jnp.array([7]), 1)
      >>> sorted([a[0, 0, 0, 0].item(), b[0, 0, 0, 0].item()])
      [0.0, 2.0]
    """
    check_images("alternating_flip", images)
    index = jnp.asarray(index)
    if index.shape != images.shape[:1] or not jnp.issubdtype(index.dtype, jnp.integer):
        raise ValueError(
            "alternating_flip: index must be an integer vector with one entry per image "
            f"(shape ({images.shape[0]},)), got {index.dtype} {index.shape}."
        )
    epoch = jnp.asarray(epoch)
    if epoch.shape != () or not jnp.issubdtype(epoch.dtype, jnp.integer):
        raise ValueError(
            f"alternating_flip: epoch must be an integer scalar, got {epoch.dtype} {epoch.shape}."
        )
    return _alternating_flip(key, images, index, epoch)


@jax.jit
def _alternating_flip(key, images, index, epoch):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    first = jax.vmap(jax.random.bernoulli)(keys)
    flip = jnp.logical_xor(first, epoch % 2 == 1)
    return jnp.where(flip.reshape(-1, 1, 1, 1), images[:, :, ::-1], images)


def flip_views(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Test-time augmentation views: the batch and its left-right mirror.

    For :class:`jaxreg.Trainer`'s ``tta`` field: evaluation then averages the
    model's logits over both views (airbench's and the ResNet papers' "flip"
    test-time augmentation on natural images).

    Example:
      >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
      >>> flip_views(x)[1][0, 0, :, 0]
      Array([2., 1., 0.], dtype=float32)
    """
    check_images("flip_views", images)
    return images, images[:, :, ::-1]


def flip_translate_views(images: jax.Array, shift: int = 1) -> tuple[jax.Array, ...]:
    """Test-time views: :func:`flip_views` of the batch and of two translated copies.

    The copies move the content by ``shift`` pixels down-right and up-left
    (reflect padding at the edges they uncover), and each comes with its mirror:
    six views, airbench's level-2 test-time augmentation (flip and translate) for
    :class:`jaxreg.Trainer`'s ``tta`` field, which averages the logits over them.

    Example:
      >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)  # rows 0 1 2 / 3 4 5 / 6 7 8
      >>> down_right = flip_translate_views(x)[2]
      >>> down_right[0, 1:, 1:, 0].tolist()
      [[0.0, 1.0], [3.0, 4.0]]
    """
    check_images("flip_translate_views", images)
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 1:
        raise ValueError(f"flip_translate_views: shift must be an int >= 1, got {shift!r}.")
    _, h, w, _ = images.shape
    if shift >= min(h, w):
        raise ValueError(
            f"flip_translate_views: shift={shift} must be below the image size {h}x{w} "
            "(reflect padding)."
        )
    s = shift
    padded = jnp.pad(images, ((0, 0), (s, s), (s, s), (0, 0)), mode="reflect")
    views = [images, padded[:, :h, :w], padded[:, 2 * s :, 2 * s :]]
    return tuple(v for x in views for v in (x, x[:, :, ::-1]))


# --------------------------------------------------------------------------- affine


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def affine_matrices(
    key: jax.Array,
    n: int,
    height: int,
    width: int,
    *,
    rotation: Any = 0.0,
    translation: Any = 0.0,
    zoom: Any = 0.0,
    shear: Any = 0.0,
) -> jax.Array:
    """Per-example inverse 2x3 matrices mapping output ``(x, y, 1)`` to input ``(x, y)``.

    Forward map about the image centre ``c``: ``p -> R(theta) Sh(phi) s (p - c) + c + t``;
    the returned ``M = [A | b]`` is its inverse, ``p_in = A p_out + b``. The draws (one
    uniform call of shape ``(N, 5)``) are those of :func:`random_affine` with the same key.

    Args:
      key: a ``jax.random.key``.
      n, height, width: batch size and image size (static ints).
      rotation, translation, zoom, shear: as in :func:`random_affine`.

    Returns:
      ``(n, 2, 3)`` float32 matrices, ``x`` = column and ``y`` = row coordinates.

    Example:
      >>> m = affine_matrices(jax.random.key(0), 2, 5, 5)  # all ranges 0: identity
      >>> m.shape, bool(jnp.all(m[:, :, :2] == jnp.eye(2)[None]) & jnp.all(m[:, :, 2] == 0))
      ((2, 2, 3), True)
    """
    u = jax.random.uniform(key, (n, 5), minval=-1.0, maxval=1.0)
    theta = jnp.deg2rad(u[:, 0] * jnp.asarray(rotation, jnp.float32))
    phi = jnp.deg2rad(u[:, 1] * jnp.asarray(shear, jnp.float32))
    scale = 1.0 + u[:, 2] * jnp.asarray(zoom, jnp.float32)
    t = jnp.asarray(translation, jnp.float32)
    tx, ty = u[:, 3] * t * width, u[:, 4] * t * height
    cos, sin, tan = jnp.cos(theta), jnp.sin(theta), jnp.tan(phi)
    # inverse of R Sh S = S^-1 Sh^-1 R^-1, Sh = [[1, tan], [0, 1]], R = [[cos, -sin], [sin, cos]]
    inv_s = 1.0 / scale
    a00 = inv_s * (cos - tan * (-sin))
    a01 = inv_s * (sin - tan * cos)
    a10 = inv_s * (-sin)
    a11 = inv_s * cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # p_in = A (p_out - c - t) + c
    b0 = cx - a00 * (cx + tx) - a01 * (cy + ty)
    b1 = cy - a10 * (cx + tx) - a11 * (cy + ty)
    return jnp.stack([jnp.stack([a00, a01, b0], -1), jnp.stack([a10, a11, b1], -1)], -2)


def random_affine(
    key: jax.Array,
    images: jax.Array,
    *,
    rotation: Any = 0.0,
    translation: Any = 0.0,
    zoom: Any = 0.0,
    shear: Any = 0.0,
    interpolation: str = "bilinear",
    fill: Any = 0,
) -> jax.Array:
    """Random rotation, translation, zoom and shear in one resampling per image.

    ``out[n](p) = x[n](A_n (p - c - t_n) + c)`` with ``A_n = (R(theta_n) Sh(phi_n) s_n)^-1``,
    ``theta_n ~ U[-rotation, rotation]`` degrees, ``phi_n ~ U[-shear, shear]`` degrees
    (x-shear), ``s_n ~ U[1 - zoom, 1 + zoom]``, ``t_n ~ U[-translation, translation] * (W, H)``,
    ``c`` the image centre. Pixels mapped from outside the image take ``fill``.

    Args:
      key: a ``jax.random.key``.
      images: ``(N, H, W, C)`` uint8 or float.
      rotation: maximum angle in degrees (>= 0; may be traced).
      translation: maximum shift as a fraction of width/height (>= 0).
      zoom: maximum relative scale change (in [0, 1)).
      shear: maximum shear angle in degrees (>= 0, < 90).
      interpolation: ``"bilinear"`` or ``"nearest"`` (static).
      fill: value outside the image (a number or one value per channel).

    Returns:
      ``(N, H, W, C)`` array, ``images``' dtype (uint8 results are rounded).

    Example:
      >>> x = jax.random.uniform(jax.random.key(1), (2, 5, 5, 3))
      >>> bool(jnp.array_equal(random_affine(jax.random.key(0), x), x))
      True

    References:
      Simard, Steinkraus & Platt, Best practices for convolutional neural
      networks applied to visual document analysis, ICDAR 2003 (affine distortions).
    """
    fn = "random_affine"
    check_images(fn, images)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"{fn}: interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}."
        )
    for name, value in (("rotation", rotation), ("translation", translation), ("shear", shear)):
        check_non_negative(fn, name, value)
    if is_static_number(zoom) and not 0.0 <= zoom < 1.0:
        raise ValueError(f"{fn}: zoom must lie in [0, 1), got {zoom!r}.")
    if is_static_number(shear) and not shear < 90:
        raise ValueError(f"{fn}: shear must be < 90 degrees, got {shear!r}.")
    fill = _fill_value(fn, fill, images)
    return _affine(
        key, images, fill, rotation, translation, zoom, shear, interpolation=interpolation
    )


@functools.partial(jax.jit, static_argnames=("interpolation",))
def _affine(key, images, fill_v, rotation, translation, zoom, shear, *, interpolation):
    """Kernel of random_affine: per-example matrices, then one resampling."""
    n, h, w, _ = images.shape
    m = affine_matrices(
        key, n, h, w, rotation=rotation, translation=translation, zoom=zoom, shear=shear
    )
    return resample(images, m, fill_v, interpolation=interpolation)


def resample(images: jax.Array, m: jax.Array, fill_v: jax.Array, *, interpolation: str):
    """Inverse-warp each image: output pixel (x, y) reads source ``m[n] @ (x, y, 1)``.

    ``images`` (N, H, W, C), ``m`` (N, 2, 3) in (x, y) pixel coordinates, ``fill_v``
    the value (scalar or per channel, in the image scale) outside the source;
    ``interpolation`` "nearest" or "bilinear". Returns the dtype of ``images``.
    """
    n, h, w, _ = images.shape
    xs = jax.lax.broadcasted_iota(jnp.float32, (1, h, w), 2)
    ys = jax.lax.broadcasted_iota(jnp.float32, (1, h, w), 1)

    def coef(r, k):
        return m[:, r, k].reshape(n, 1, 1)

    sx = coef(0, 0) * xs + coef(0, 1) * ys + coef(0, 2)
    sy = coef(1, 0) * xs + coef(1, 1) * ys + coef(1, 2)
    # A one-pixel border of `fill` around each image: taps clipped to [-1, size] read
    # either a pixel or the fill, so no per-tap in-bounds masks are needed. (Measured:
    # this, integer clipping and the (1 - w) a + w b blend are the fastest on CPU.)
    fill = from_float(fill_v, images.dtype)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    if fill.size == 1:
        padded = jnp.pad(images, pad, constant_values=fill.reshape(()))
    else:  # one value per channel
        border = jnp.pad(jnp.zeros((1, h, w, 1), jnp.bool_), pad, constant_values=True)
        padded = jnp.where(border, fill, jnp.pad(images, pad))
    batch = jax.lax.broadcasted_iota(jnp.int32, (n, 1, 1), 0)

    def tap(yi, xi):
        yi, xi = jnp.clip(yi, -1, h) + 1, jnp.clip(xi, -1, w) + 1
        return to_float(padded[batch, yi, xi])

    # Coordinates are clipped in float before the int cast (no int32 overflow).
    sx, sy = jnp.clip(sx, -2.0, w + 1.0), jnp.clip(sy, -2.0, h + 1.0)
    if interpolation == "nearest":
        out = tap(jnp.round(sy).astype(jnp.int32), jnp.round(sx).astype(jnp.int32))
    else:
        x0f, y0f = jnp.floor(sx), jnp.floor(sy)
        wx, wy = (sx - x0f)[..., None], (sy - y0f)[..., None]
        x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
        top = tap(y0, x0) * (1.0 - wx) + tap(y0, x0 + 1) * wx
        bottom = tap(y0 + 1, x0) * (1.0 - wx) + tap(y0 + 1, x0 + 1) * wx
        out = top * (1.0 - wy) + bottom * wy
    return from_float(out, images.dtype)
