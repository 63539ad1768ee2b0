"""Batch norm (training) + relu + 2x2 max pooling as one custom-VJP kernel.

SmallCNN's conv blocks end in ``BatchNorm -> relu -> max-pool 2x2``. Left to
autodiff, XLA's CPU backend keeps the normalized activations, the relu mask and
the pooling mask as separate full-size passes, forward and backward. Here the
forward takes the batch statistics in one pass over ``x`` and writes only the
pooled output; the backward recomputes the normalized block from ``x`` and
makes one reduction pass (the two per-channel sums of batch norm's gradient)
and one elementwise pass. Same values as ``flax.linen.BatchNorm`` (fast
variance, ``E[x^2] - E[x]^2`` clipped at 0) followed by ``relu`` and
``jaxreg.models._max_pool2`` (tied maxima share the gradient equally; odd sizes
floor); the SmallCNN 32/64 train step with batch norm ran 1.05x-1.09x faster
on a 2-core CPU (``benchmarks/bench_models.py --cases bn``).

Reverse mode only (``jax.jvp`` through the training call is not supported, as
for :func:`jaxreg.functional.conv_general_dilated`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def pool_blocks(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> its 2x2 pooling blocks (N, H//2, 2, W//2, 2, C); odd sizes floor."""
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.maximum(jnp.mean(x * x, axis=(0, 1, 2)) - mean * mean, 0.0)
    return mean, var


def _c(v: jax.Array) -> jax.Array:
    """A per-channel vector (C,) as (1, 1, 1, C)."""
    return v.reshape(1, 1, 1, -1)


def normalize(x, mean, rstd, scale, bias):
    """``(x - mean) * (rstd * scale) + bias`` per channel (flax's order of operations)."""
    return (x - _c(mean)) * _c(rstd * scale) + _c(bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def bn_relu_pool(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
    """``max_pool2(relu(batch_norm(x)))`` with batch statistics, NHWC.

    Returns ``(y, mean, var)``: the pooled output (N, H//2, W//2, C) and the batch
    mean and biased variance per channel (float32; for the running statistics,
    their gradient is not defined: pass them through ``stop_gradient``).
    """
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
    mean, var = _stats(x)
    rstd = jax.lax.rsqrt(var + epsilon)
    pooled = pool_blocks(normalize(x, mean, rstd, scale, bias)).max(axis=(2, 4))
    y = jnp.maximum(pooled, 0.0).astype(x.dtype)  # relu commutes with max
    return (y, mean, var), (x, scale, bias, mean, rstd)


def _backward(epsilon, res, cts):
    del epsilon
    x, scale, bias, mean, rstd = res
    n, h, w, c = x.shape
    # the maxima are recomputed from the recomputed blocks (not kept from the
    # forward), so each block has at least one hit whatever the rounding
    z = pool_blocks(normalize(x, mean, rstd, scale, bias))
    pooled = z.max(axis=(2, 4))
    g = jnp.where(pooled > 0, cts[0], 0.0)  # cotangents of mean and var are ignored
    hit = (z == pooled[:, :, None, :, None, :]).astype(g.dtype)
    share = g / hit.sum(axis=(2, 4))  # ties share the gradient equally
    gz = (hit * share[:, :, None, :, None, :]).reshape(n, h - h % 2, w - w % 2, c)
    gz = jnp.pad(gz, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    xhat = (x - _c(mean)) * _c(rstd)
    count = n * h * w
    s1 = gz.sum(axis=(0, 1, 2))
    s2 = (gz * xhat).sum(axis=(0, 1, 2))
    gx = _c(scale * rstd) * (gz - _c(s1 / count) - xhat * _c(s2 / count))
    return gx.astype(x.dtype), s2.astype(scale.dtype), s1.astype(scale.dtype)


bn_relu_pool.defvjp(_forward, _backward)
