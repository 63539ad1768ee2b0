"""Convolution as im2col + one matrix product, with the gradients as matrix products too.

A drop-in for ``jax.lax.conv_general_dilated`` (and for ``flax.linen.Conv``'s
``conv_general_dilated`` field) that is faster on XLA's CPU backend. Measured on
a 2-core CPU (``benchmarks/bench_conv.py``): XLA differentiates a conv's kernel
as another convolution with a large "kernel" and a tiny output, which its CPU
backend runs several times slower than the same sums as one matrix product on
the patch matrix, and its forward 3x3 conv ran at half PyTorch's speed. Here the
forward builds the patch matrix once (``kh * kw`` shifted slices, concatenated
on the channel axis), multiplies it by the kernel, and keeps it for the
backward pass: the kernel gradient is ``patches.T @ grad`` and the input
gradient ``grad @ kernel.T`` scattered back by ``kh * kw`` padded adds. Values
and gradients equal ``lax.conv_general_dilated``'s up to float rounding
(tested). The cost is memory: the patch matrix of every layer (``kh * kw``
times its input) is kept until the backward pass. Called without
differentiation (evaluation, inference), a 2-D convolution needs no patches and
runs as ``lax.conv_general_dilated`` (under the default flags YNNPACK's direct
convolution: the eval forward of the MNIST ``SmallCNN`` ran 2.0x-2.1x faster than the
im2col forward at batch 500 on a 2-core CPU, airbench's 1.04x-1.08x,
``benchmarks/bench_conv.py --cases eval``), except under ``vmap`` over kernels
(a sweep's members), where lax's grouped convolution is slower than the batched
im2col products; 1-D convolutions keep the im2col product, faster there.

That holds while XLA's YNNPACK fusions are on (jaxlib's default). Off the CPU,
or with them off (:func:`jaxreg.cpu.fast_convolutions`), XLA's own convolution
is the faster one (airbench's CIFAR step 930 ms against im2col's 1,855 ms under
the default flags, ``benchmarks/bench_xla_conv.py``)
and this function calls ``lax.conv_general_dilated`` (see
:func:`jaxreg.cpu.native_convolutions`).

Handled: 1-D and 2-D convolutions in flax's layout (``NWC``/``NHWC`` inputs,
``WIO``/``HWIO`` kernels), any strides and padding, no dilation, one feature
group. Anything else goes to ``lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..cpu import native_convolutions
from .winograd import winograd_conv3x3

__all__ = ["METHODS", "conv_general_dilated"]

#: ``conv_general_dilated``'s ``method`` values.
METHODS = ("auto", "im2col", "lax", "winograd")


def _explicit_padding(padding, in_sizes, kernel, strides):
    if not isinstance(padding, str):
        return tuple((int(lo), int(hi)) for lo, hi in padding)
    if padding.upper() == "VALID":
        return tuple((0, 0) for _ in kernel)
    if padding.upper() in ("SAME", "SAME_LOWER"):
        return tuple(
            (lo, hi) if padding.upper() == "SAME" else (hi, lo)
            for lo, hi in lax.padtype_to_pads(in_sizes, kernel, strides, "SAME")
        )
    raise ValueError(f"conv_general_dilated: unknown padding {padding!r}.")


def _channels_last(dimension_numbers, ndim: int) -> bool:
    """True for flax's layout: inputs (N, *spatial, C), kernels (*spatial, I, O)."""
    if dimension_numbers is None:
        return False  # lax's default is NCHW / OIHW
    spatial = tuple(range(1, ndim - 1))
    want = lax.ConvDimensionNumbers(
        lhs_spec=(0, ndim - 1, *spatial),
        rhs_spec=(ndim - 1, ndim - 2, *range(ndim - 2)),
        out_spec=(0, ndim - 1, *spatial),
    )
    try:
        got = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    except (TypeError, ValueError):
        return False
    return got == want


def _patches(x, kernel_hw, strides, pads):
    """(N, H', W', kh*kw*C): the input under each kernel tap, taps major."""
    kh, kw = kernel_hw
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    h_out = (xp.shape[1] - kh) // sh + 1
    w_out = (xp.shape[2] - kw) // sw + 1
    taps = [
        xp[:, i : i + sh * (h_out - 1) + 1 : sh, j : j + sw * (w_out - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]


#: flax's layouts, as ``lax.conv_general_dilated``'s dimension numbers
_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, k, strides, pads):
    # called without differentiation (evaluation, inference) no patch matrix is
    # kept, and XLA's own 2-D convolution runs the models' forward faster (the 1-D
    # nets' one height row: the im2col product does)
    if x.shape[1] == 1 and k.shape[0] == 1:
        return _im2col(x, k, strides, pads)
    return _eval_conv2d(x, k, strides, pads)


def _im2col(x, k, strides, pads):
    return _conv2d_fwd(x, k, strides, pads)[0]


def _eval_conv2d(x, k, strides, pads):
    """XLA's convolution, except under ``vmap`` over kernels (a sweep's members):
    lax batches those as a grouped convolution, which ran 4 ``SmallCNN``
    members' eval forward 1.33x-1.40x slower than the im2col products batched
    as one (a scratch measurement, ``benchmarks/README.md``)."""

    @jax.custom_batching.custom_vmap
    def conv(x, k):
        return lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_NHWC)

    @conv.def_vmap
    def _batched(axis_size, in_batched, x, k):
        x_batched, k_batched = in_batched
        if k_batched:
            fn = functools.partial(_im2col, strides=strides, pads=pads)
            return jax.vmap(fn, in_axes=(0 if x_batched else None, 0))(x, k), True
        y = conv(x.reshape(-1, *x.shape[2:]), k)  # the mapped axis joins the batch
        return y.reshape(axis_size, -1, *y.shape[1:]), True

    return conv(x, k)


def _conv2d_fwd(x, k, strides, pads):
    kh, kw, c, o = k.shape
    p = _patches(x, (kh, kw), strides, pads)
    y = (p.reshape(-1, kh * kw * c) @ k.reshape(-1, o)).reshape(*p.shape[:3], o)
    return y, (p, k, x.shape)


def _conv2d_bwd(strides, pads, res, ct):
    p, k, x_shape = res
    kh, kw, c, o = k.shape
    n, h_out, w_out, _ = p.shape
    sh, sw = strides
    ct2 = ct.reshape(-1, o)
    dk = (p.reshape(-1, kh * kw * c).T @ ct2).reshape(k.shape).astype(k.dtype)
    dp = (ct2 @ k.reshape(-1, o).T).reshape(n, h_out, w_out, kh * kw, c)
    hp = x_shape[1] + pads[0][0] + pads[0][1]
    wp = x_shape[2] + pads[1][0] + pads[1][1]
    zero = jnp.zeros((), dp.dtype)
    dxp = None
    for i in range(kh):
        for j in range(kw):
            # tap (i, j) read rows i, i + sh, ...: put its gradient back there
            hi = hp - i - (sh * (h_out - 1) + 1)
            wi = wp - j - (sw * (w_out - 1) + 1)
            cfg = ((0, 0, 0), (i, hi, sh - 1), (j, wi, sw - 1), (0, 0, 0))
            part = lax.pad(dp[:, :, :, i * kw + j, :], zero, cfg)
            dxp = part if dxp is None else dxp + part
    dx = dxp[:, pads[0][0] : hp - pads[0][1], pads[1][0] : wp - pads[1][1], :]
    return dx.astype(p.dtype), dk


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    method: str = "auto",
) -> jax.Array:
    """``lax.conv_general_dilated`` with im2col forward and matrix-product gradients.

    Same signature and results as :func:`jax.lax.conv_general_dilated`. Use it in
    flax as ``nn.Conv(..., conv_general_dilated=jaxreg.functional.conv_general_dilated)``
    (``jaxreg.models`` does). 1-D and 2-D channels-last convolutions without
    dilation or groups take the im2col path; anything else is passed to
    ``lax.conv_general_dilated`` unchanged, and so does every convolution when
    :func:`jaxreg.cpu.native_convolutions` is True (off the CPU, or with
    :func:`jaxreg.cpu.fast_convolutions`). On the im2col path a call that is not
    differentiated (evaluation) runs 2-D convolutions as
    ``lax.conv_general_dilated`` too: only the gradients need the patch matrix.
    ``method="im2col"`` or ``"lax"`` forces one path (``"im2col"`` still defers
    the cases it does not handle).
    ``method="winograd"`` runs 3x3 stride-1 SAME 2-D convolutions (flax's layout,
    no dilation or groups) by :func:`jaxreg.functional.winograd_conv3x3` (4x fewer
    multiply-adds; faster on the CPU where the channels are many; ``precision`` is
    not used) and treats the others as ``"auto"``.
    """
    if method not in METHODS:
        raise ValueError(
            f"conv_general_dilated: method must be one of {', '.join(map(repr, METHODS))}, "
            f"got {method!r}"
        )
    ndim = lhs.ndim
    plain = (
        ndim in (3, 4)
        and rhs.ndim == ndim
        and _channels_last(dimension_numbers, ndim)
        and all(d == 1 for d in (lhs_dilation or ()))
        and all(d == 1 for d in (rhs_dilation or ()))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and lhs.dtype == rhs.dtype
        and jnp.issubdtype(lhs.dtype, jnp.floating)
    )
    if method == "winograd":
        if (
            plain
            and ndim == 4
            and rhs.shape[:2] == (3, 3)
            and tuple(int(s) for s in window_strides) == (1, 1)
            and _explicit_padding(padding, lhs.shape[1:3], (3, 3), (1, 1)) == ((1, 1), (1, 1))
        ):
            return winograd_conv3x3(lhs, rhs)
        method = "auto"
    if method == "auto":
        method = "lax" if native_convolutions() else "im2col"
    if not (plain and method == "im2col"):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, batch_group_count, precision,
            preferred_element_type,
        )  # fmt: skip
    strides = tuple(int(s) for s in window_strides)
    pads = _explicit_padding(padding, lhs.shape[1:-1], rhs.shape[:-2], strides)
    if ndim == 3:  # (N, W, C) as (N, 1, W, C)
        y = _conv2d(lhs[:, None], rhs[None], (1, strides[0]), ((0, 0), pads[0]))
        return y[:, 0]
    return _conv2d(lhs, rhs, strides, pads)
