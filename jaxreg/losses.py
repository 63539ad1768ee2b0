"""Classification losses: integer labels with label smoothing, soft targets, confidence penalty.

Every loss computes in float32 (bf16/f16 logits are upcast; float64 stays) and
returns float32. ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"``
(per-example losses, the shape of the leading axes). Optional per-example
``weights`` (same shape as the per-example losses) follow PyTorch's weighted
mean: ``"mean"`` is ``sum(w l) / sum(w)`` (0 when every weight is 0), so 0/1
weights act as a mask over padding examples and the loss scale does not depend
on how many are masked out. (Keras's ``sample_weight`` divides by the number of
examples instead; pass ``reduction="sum"`` and divide yourself for that.)

Numeric hyperparameters (``label_smoothing``) may be traced arrays, so
``jax.vmap`` over a vector of smoothing values works.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import check_unit_interval, compute_dtype

__all__ = ["confidence_penalty", "soft_target_cross_entropy", "softmax_cross_entropy"]

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(fn: str, reduction: Any) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def _check_logits(fn: str, logits: Any) -> jax.Array:
    logits = jnp.asarray(logits)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: logits must have a class axis (last), got a scalar.")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{fn}: logits must be floating point, got {logits.dtype}.")
    return logits.astype(compute_dtype(logits.dtype))


def _reduce(fn: str, losses: jax.Array, weights: Any, reduction: str) -> jax.Array:
    if weights is not None:
        weights = jnp.asarray(weights)
        if weights.shape != losses.shape:
            raise ValueError(
                f"{fn}: weights must have the per-example shape {losses.shape}, "
                f"got {weights.shape}."
            )
        weights = weights.astype(losses.dtype)
        losses = losses * weights
    if reduction == "none":
        return losses
    total = jnp.sum(losses)
    if reduction == "sum":
        return total
    if weights is None:
        return total / max(losses.size, 1)
    denom = jnp.sum(weights)
    return jnp.where(denom != 0, total / jnp.where(denom != 0, denom, 1.0), 0.0)


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float | jax.Array = 0.0,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Softmax cross-entropy with integer labels and label smoothing, without a one-hot.

    ``l_i = logsumexp(z_i) - (1 - a) z_{i, y_i} - (a / K) sum_k z_{i, k}``

    which equals the cross-entropy against the smoothed target
    ``(1 - a) onehot(y_i) + a / K`` (``optax.smooth_labels``), in value and
    gradient, while reading only one logit per example (``take_along_axis``).

    Args:
        logits: ``(..., K)`` floating point; bf16/f16 are computed in float32.
        labels: ``(...)`` integer class indices in ``[0, K)``; an index outside
            that range gives a NaN loss for that example.
        label_smoothing: ``a`` in [0, 1]; float or (traced) scalar array.
        weights: optional per-example weights of shape ``(...)``.
        reduction: ``"mean"`` (weighted: ``sum(w l) / sum(w)``), ``"sum"`` or
            ``"none"``.

    Returns:
        float32 scalar, or float32 ``(...)`` with ``reduction="none"``.

    Example:
        >>> import jax.numpy as jnp
        >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> float(softmax_cross_entropy(logits, jnp.array([0, 1]), label_smoothing=0.1))
        0.7357
        >>> softmax_cross_entropy(logits, jnp.array([0, 1]), reduction="none").tolist()
        [0.2395, 1.0986]

    References:
        Szegedy et al., "Rethinking the Inception Architecture for Computer
        Vision", CVPR 2016 (label smoothing).
    """
    fn = "softmax_cross_entropy"
    _check_reduction(fn, reduction)
    check_unit_interval("label_smoothing", label_smoothing)
    if not isinstance(label_smoothing, (int, float)) and jnp.ndim(label_smoothing) != 0:
        raise ValueError(
            f"{fn}: label_smoothing must be a scalar, got shape {jnp.shape(label_smoothing)}."
        )
    z = _check_logits(fn, logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: labels must be integer class indices, got {labels.dtype} "
            "(for one-hot or soft targets use soft_target_cross_entropy)."
        )
    if labels.shape != z.shape[:-1]:
        raise ValueError(
            f"{fn}: labels must have shape logits.shape[:-1] = {z.shape[:-1]}, got {labels.shape}."
        )
    k = z.shape[-1]
    a = jnp.asarray(label_smoothing, z.dtype)
    lse = jax.nn.logsumexp(z, axis=-1)
    safe = jnp.clip(labels, 0, k - 1).astype(jnp.int32)
    z_y = jnp.take_along_axis(z, safe[..., None], axis=-1)[..., 0]
    losses = lse - (1.0 - a) * z_y - (a / k) * jnp.sum(z, axis=-1)
    valid = (labels >= 0) & (labels < k)
    losses = jnp.where(valid, losses, jnp.nan)
    return _reduce(fn, losses, weights, reduction).astype(jnp.float32)


def soft_target_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    *,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Cross-entropy against soft targets (mixup/cutmix labels, distillation).

    ``l_i = -sum_k t_{i, k} log softmax(z_i)_k``

    Args:
        logits: ``(..., K)`` floating point; bf16/f16 are computed in float32.
        targets: ``(..., K)`` target distributions (rows summing to 1 for a
            proper cross-entropy; not checked, so they may be traced).
        weights: optional per-example weights of shape ``(...)``.
        reduction: ``"mean"`` (weighted: ``sum(w l) / sum(w)``), ``"sum"`` or
            ``"none"``.

    Returns:
        float32 scalar, or float32 ``(...)`` with ``reduction="none"``.

    Example:
        >>> import jax.numpy as jnp
        >>> logits = jnp.array([[2.0, 0.0, 0.0]])
        >>> float(soft_target_cross_entropy(logits, jnp.array([[0.5, 0.5, 0.0]])))
        1.2395

    References:
        Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
    """
    fn = "soft_target_cross_entropy"
    _check_reduction(fn, reduction)
    z = _check_logits(fn, logits)
    targets = jnp.asarray(targets)
    if targets.shape != z.shape:
        raise ValueError(
            f"{fn}: targets must have the shape of logits {z.shape}, got {targets.shape} "
            "(for integer labels use softmax_cross_entropy)."
        )
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise TypeError(f"{fn}: targets must be floating point, got {targets.dtype}.")
    t = targets.astype(z.dtype)
    losses = -jnp.sum(t * jax.nn.log_softmax(z, axis=-1), axis=-1)
    return _reduce(fn, losses, weights, reduction).astype(jnp.float32)


def confidence_penalty(
    logits: jax.Array,
    *,
    weights: jax.Array | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Negative entropy of the predicted distribution: add ``beta *`` it to penalize confidence.

    ``P_i = -H(p_i) = sum_k p_{i, k} log p_{i, k}``,  ``p_i = softmax(z_i)``

    The sign makes ``loss + beta * confidence_penalty(logits)`` (``beta > 0``)
    the objective of Pereyra et al.: it is lowest (``-log K``) for a uniform
    prediction and rises to 0 for a one-hot one.

    Args:
        logits: ``(..., K)`` floating point; bf16/f16 are computed in float32.
        weights: optional per-example weights of shape ``(...)``.
        reduction: ``"mean"`` (weighted: ``sum(w P) / sum(w)``), ``"sum"`` or
            ``"none"``.

    Returns:
        float32 scalar (<= 0), or float32 ``(...)`` with ``reduction="none"``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(confidence_penalty(jnp.zeros((2, 4))))  # -log 4
        -1.3863

    References:
        Pereyra et al., "Regularizing Neural Networks by Penalizing Confident
        Output Distributions", ICLR workshop 2017.
    """
    fn = "confidence_penalty"
    _check_reduction(fn, reduction)
    z = _check_logits(fn, logits)
    logp = jax.nn.log_softmax(z, axis=-1)
    losses = jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return _reduce(fn, losses, weights, reduction).astype(jnp.float32)
