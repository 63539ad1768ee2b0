"""Mixup and CutMix: mix each example with a partner and return soft labels.

Both take ``(key, images, labels)`` and return ``(mixed_images, soft_labels)``:
images keep their dtype (uint8 is rounded), labels come back float32 ``(N, K)``.
Labels may be one-hot or soft ``(N, K)``, or integer ``(N,)`` with
``num_classes=``.

Partner: the batch reversed, ``images[::-1]`` (timm's convention), so example
``i`` mixes with example ``N - 1 - i``. It needs no extra randomness or gather
and assumes, as every data loader provides, that the batch is shuffled. With an
odd batch size the middle example is its own partner (left unchanged).

``mode="batch"`` (default, as in both papers and timm) draws one ``lambda`` (and
for CutMix one box) for the whole batch; ``mode="example"`` draws one per
example (timm's ``"elem"``), at no extra cost. ``p`` is the probability of
mixing at all (per batch or per example, following ``mode``); an unmixed
example keeps ``lambda = 1``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import is_static_number
from jaxreg.augment._common import check_images, check_prob, from_float, to_float

__all__ = ["cutmix", "mixup"]

MODES = ("batch", "example")


def _check_alpha(fn: str, alpha: Any) -> None:
    if isinstance(alpha, bool) or not (is_static_number(alpha) or hasattr(alpha, "dtype")):
        raise TypeError(f"{fn}: alpha must be a number or a scalar array, got {alpha!r}.")
    if is_static_number(alpha) and not alpha > 0:
        raise ValueError(f"{fn}: alpha must be > 0, got {alpha!r}.")


def _soft_labels(fn: str, labels: Any, n: int, num_classes: int | None) -> jax.Array:
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.ndim == 1:
        if num_classes is None:
            raise ValueError(
                f"{fn}: integer labels need num_classes=K; or pass one-hot/soft labels (N, K)."
            )
        if labels.shape[0] != n:
            raise ValueError(f"{fn}: labels must have {n} rows (the batch), got {labels.shape}.")
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if labels.ndim != 2:
        raise ValueError(
            f"{fn}: labels must be one-hot/soft (N, K) or integer (N,), got shape {labels.shape}."
        )
    if labels.shape[0] != n:
        raise ValueError(f"{fn}: labels must have {n} rows (the batch), got {labels.shape}.")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(
            f"{fn}: labels have {labels.shape[1]} classes but num_classes={num_classes}."
        )
    return labels.astype(jnp.float32)


def _check_common(fn: str, images: Any, alpha: Any, p: Any, mode: Any) -> None:
    check_images(fn, images)
    _check_alpha(fn, alpha)
    check_prob(fn, "p", p)
    if mode not in MODES:
        raise ValueError(f"{fn}: mode must be one of {MODES}, got {mode!r}.")


def _draw_lambda(key: jax.Array, n: int, alpha: Any, p: Any, mode: str) -> jax.Array:
    """Per-example lambda ``(N,)``: Beta(alpha, alpha), or 1 (no mixing) with prob. 1 - p."""
    k_beta, k_apply = jax.random.split(key)
    m = 1 if mode == "batch" else n
    a = jnp.asarray(alpha, jnp.float32)
    # Beta(a, a) = G0 / (G0 + G1) with G ~ Gamma(a): one gamma draw of shape (2, m)
    # in log space (stable for small a; compiles faster than jax.random.beta's two)
    lg = jax.random.loggamma(k_beta, a, (2, m), jnp.float32)
    lam = jax.nn.sigmoid(lg[0] - lg[1])
    apply = jax.random.uniform(k_apply, (m,)) < jnp.asarray(p, jnp.float32)
    lam = jnp.where(apply, lam, 1.0)
    return jnp.broadcast_to(lam, (n,))


def mixup(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | jax.Array = 1.0,
    num_classes: int | None = None,
    mode: str = "batch",
    p: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Mixup: convex combinations of example pairs and of their labels.

    ``x_i' = lam_i x_i + (1 - lam_i) x_{N-1-i}``,
    ``y_i' = lam_i y_i + (1 - lam_i) y_{N-1-i}``,  ``lam ~ Beta(alpha, alpha)``

    Args:
        key: a ``jax.random.key``.
        images: ``(N, H, W, C)`` uint8 or float (any range).
        labels: ``(N, K)`` one-hot or soft, or ``(N,)`` integer with ``num_classes``.
        alpha: Beta concentration, > 0 (1.0: lambda uniform; 0.2 as for ImageNet
            in the paper); float or scalar array.
        num_classes: ``K`` for integer labels (static).
        mode: ``"batch"`` (one lambda per batch) or ``"example"`` (static).
        p: probability of mixing, in [0, 1].

    Returns:
        ``(mixed_images, soft_labels)``: images in the input dtype (uint8 rounded),
        labels float32 ``(N, K)`` whose rows sum to 1 when the inputs' do.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.stack([jnp.zeros((2, 2, 3)), jnp.ones((2, 2, 3))])
        >>> xm, ym = mixup(jax.random.key(0), x, jnp.array([0, 1]), num_classes=2)
        >>> bool(jnp.allclose(xm[0], ym[0, 1]))  # pixel value = weight of the partner
        True

    References:
        Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
    """
    fn = "mixup"
    _check_common(fn, images, alpha, p, mode)
    n = images.shape[0]
    y = _soft_labels(fn, labels, n, num_classes)
    return _mixup(key, images, y, alpha, p, mode=mode)


@partial(jax.jit, static_argnames=("mode",))
def _mixup(key, images, y, alpha, p, *, mode: str):
    n = images.shape[0]
    lam = _draw_lambda(key, n, alpha, p, mode)
    x = to_float(images)
    lx = lam[:, None, None, None]
    mixed = lx * x + (1.0 - lx) * x[::-1]
    ly = lam[:, None]
    return from_float(mixed, images.dtype), ly * y + (1.0 - ly) * y[::-1]


def cutmix(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | jax.Array = 1.0,
    num_classes: int | None = None,
    mode: str = "batch",
    p: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """CutMix: paste a box from the partner; labels weighted by the pasted area.

    ``x_i' = (1 - M_i) * x_i + M_i * x_{N-1-i}``,
    ``y_i' = (1 - f_i) y_i + f_i y_{N-1-i}``,  ``f_i = |M_i| / (H W)``

    The box has sides ``H sqrt(1 - lam)`` and ``W sqrt(1 - lam)`` (rounded down,
    ``lam ~ Beta(alpha, alpha)``) around a uniformly drawn centre and is clipped
    to the image, so ``f_i`` is the area actually pasted (after clipping), not
    the drawn ``1 - lam``.

    Args:
        key: a ``jax.random.key``.
        images: ``(N, H, W, C)`` uint8 or float.
        labels: ``(N, K)`` one-hot or soft, or ``(N,)`` integer with ``num_classes``.
        alpha: Beta concentration, > 0; float or scalar array.
        num_classes: ``K`` for integer labels (static).
        mode: ``"batch"`` (one box for the batch) or ``"example"`` (static).
        p: probability of mixing, in [0, 1].

    Returns:
        ``(mixed_images, soft_labels)``: images in the input dtype, labels
        float32 ``(N, K)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.stack([jnp.zeros((8, 8, 1)), jnp.ones((8, 8, 1))])
        >>> xm, ym = cutmix(jax.random.key(0), x, jnp.eye(2))
        >>> bool(jnp.isclose(xm[0].mean(), ym[0, 1]))  # pasted fraction = label weight
        True

    References:
        Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers
        with Localizable Features", ICCV 2019.
    """
    fn = "cutmix"
    _check_common(fn, images, alpha, p, mode)
    y = _soft_labels(fn, labels, images.shape[0], num_classes)
    return _cutmix(key, images, y, alpha, p, mode=mode)


@partial(jax.jit, static_argnames=("mode",))
def _cutmix(key, images, y, alpha, p, *, mode: str):
    n, h, w, _ = images.shape
    k_lam, k_box = jax.random.split(key)
    lam = _draw_lambda(k_lam, n, alpha, p, mode)
    m = 1 if mode == "batch" else n
    centre = jax.random.uniform(k_box, (2, m), jnp.float32)
    cy = jnp.broadcast_to(jnp.floor(centre[0] * h), (n,))
    cx = jnp.broadcast_to(jnp.floor(centre[1] * w), (n,))
    cut = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))
    half_h = jnp.floor(h * cut) / 2.0
    half_w = jnp.floor(w * cut) / 2.0
    y0 = jnp.clip(cy - jnp.floor(half_h), 0, h)
    y1 = jnp.clip(cy + jnp.ceil(half_h), 0, h)
    x0 = jnp.clip(cx - jnp.floor(half_w), 0, w)
    x1 = jnp.clip(cx + jnp.ceil(half_w), 0, w)
    rows = jnp.arange(h, dtype=jnp.float32)[None, :]
    cols = jnp.arange(w, dtype=jnp.float32)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < y1[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < x1[:, None])
    box = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    mixed = jnp.where(box, images[::-1], images)
    frac = (y1 - y0) * (x1 - x0) / float(h * w)
    f = frac[:, None]
    return mixed, (1.0 - f) * y + f * y[::-1]
