"""Flax linen models for the regularization experiments.

Every model is called as ``model.apply(variables, x, train=...)`` on float32
inputs (images NHWC, already scaled or standardized; MNIST-1D signals
``(N, 40, 1)``) and returns logits ``(N, num_classes)``. Shared fields:

* ``num_classes``: number of logits.
* ``dropout``: drop probability of :class:`jaxreg.nn.Dropout`, a float or a traced
  scalar (so a sweep can ``vmap`` over it); active only when ``train=True``,
  drawing from the ``dropout`` rng stream.
* ``batch_norm``: ``flax.linen.BatchNorm`` (momentum 0.9) after each conv / hidden
  dense layer, which then has no bias; running statistics live in the
  ``batch_stats`` collection and change only when the caller makes it mutable.

Convolutions run through :func:`jaxreg.functional.conv_general_dilated` (im2col
and matrix-product gradients: same results as ``lax.conv_general_dilated``,
about 1.8x faster for the SmallCNN train step on a 2-core CPU,
``benchmarks/bench_conv.py``).

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = get_model("mlp", hidden=(32,), dropout=0.5)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.functional import conv_general_dilated
from jaxreg.functional._fused import bn_relu_pool, normalize, pool_blocks
from jaxreg.functional.conv import METHODS as CONV_METHODS
from jaxreg.nn import Dropout

__all__ = [
    "CNN1D",
    "MLP",
    "MLP1D",
    "MODELS",
    "Airbench",
    "ResNet",
    "SmallCNN",
    "Whitening",
    "get_model",
    "whitening_init",
]


def _norm_relu(x: jax.Array, batch_norm: bool, train: bool, name: str | None = None) -> jax.Array:
    if batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(x)
    return nn.relu(x)


def _max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, VALID (odd sizes floor): the outputs of ``nn.max_pool``.

    Written as a reshape and a max, whose gradient is elementwise, instead of
    ``nn.max_pool`` (select-and-scatter on XLA's CPU backend): the SmallCNN train
    step runs 1.5x-2.8x faster on a 2-core CPU (``benchmarks/bench_models.py``).
    Tied maxima share the gradient equally (``nn.max_pool`` gives it all to one).
    """
    return pool_blocks(x).max(axis=(2, 4))


class _BatchNormReluPool(nn.Module):
    """``_max_pool2(relu(nn.BatchNorm(momentum=0.9)(x)))`` with the same variables
    (``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``) and the same values;
    training calls run as one custom-VJP kernel (``jaxreg.functional._fused``)."""

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if not train:
            rstd = jax.lax.rsqrt(var.value + self.epsilon)
            return _max_pool2(nn.relu(normalize(x, mean.value, rstd, scale, bias)))
        y, batch_mean, batch_var = bn_relu_pool(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            m = self.momentum
            mean.value = m * mean.value + (1 - m) * jax.lax.stop_gradient(batch_mean)
            var.value = m * var.value + (1 - m) * jax.lax.stop_gradient(batch_var)
        return y


# the convolution every model's conv layers use (a benchmark may swap it for lax's)
CONV = conv_general_dilated


def _conv(
    width: int, kernel: Sequence[int], batch_norm: bool, method: str = "auto", **kw
) -> nn.Conv:
    conv = CONV if method == "auto" else functools.partial(conv_general_dilated, method=method)
    return nn.Conv(width, tuple(kernel), use_bias=not batch_norm, conv_general_dilated=conv, **kw)


class MLP(nn.Module):
    """Fully connected net on flattened inputs: ``[dense-(BN)-relu-dropout] * len(hidden)``,
    dense logits. The default on MNIST is the seed MLP 784-512-256-10."""

    num_classes: int = 10
    hidden: Sequence[int] = (512, 256)
    dropout: float | jax.Array = 0.0
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.Dense(width, use_bias=not self.batch_norm)(x)
            x = _norm_relu(x, self.batch_norm, train)
            x = Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
    """Small conv net: ``[conv3x3-(BN)-relu-maxpool2] * len(channels)``, flatten,
    dense-(BN)-relu-dropout, dense logits.

    Convs use SAME padding and pooling floors, so 28x28 -> 7x7, 32x32 -> 8x8 and
    8x8 (sklearn digits) -> 2x2 with the default two stages.

    With ``batch_norm``, ``fused_norm=True`` (default) runs each conv block's
    BN-relu-maxpool in training as one custom-VJP kernel (same values, gradients
    and variables as flax's ``BatchNorm`` + ``relu`` + pooling; the 32/64 train
    step 1.05x-1.09x faster on a 2-core CPU, ``benchmarks/bench_models.py``);
    ``False`` runs flax's ``BatchNorm`` (needed for forward-mode ``jax.jvp``).
    """

    num_classes: int = 10
    channels: Sequence[int] = (32, 64)
    dense: int = 128
    dropout: float | jax.Array = 0.0
    batch_norm: bool = False
    fused_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, width in enumerate(self.channels):
            x = _conv(width, (3, 3), self.batch_norm, padding="SAME")(x)
            if self.batch_norm and self.fused_norm:
                x = _BatchNormReluPool(name=f"BatchNorm_{i}")(x, train)
            else:
                x = _max_pool2(_norm_relu(x, self.batch_norm, train, name=f"BatchNorm_{i}"))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.dense, use_bias=not self.batch_norm)(x)
        x = _norm_relu(x, self.batch_norm, train, name=f"BatchNorm_{len(self.channels)}")
        x = Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


class ResNet(nn.Module):
    """CIFAR ResNet in the spirit of ResNet-9 / airbench (Page 2018, Jordan 2024).

    Stem conv3x3-BN-relu with ``widths[0]`` channels; then per width a stage
    conv3x3-maxpool2-BN-relu followed by a residual block ``x + f(x)``, ``f`` two
    conv3x3-BN-relu; global max (``pool="max"``) or average (``"avg"``) pooling,
    dropout, dense logits. Batch norm is always on: ``batch_norm`` exists for a
    uniform interface and must be True (False raises ``ValueError``).
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256)
    pool: str = "max"
    dropout: float | jax.Array = 0.0
    batch_norm: bool = True

    def _conv_bn_relu(self, x: jax.Array, width: int, train: bool, pool: bool = False):
        x = _conv(width, (3, 3), True, padding="SAME")(x)
        if pool:
            x = _max_pool2(x)
        return _norm_relu(x, True, train)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.batch_norm is not True:
            raise ValueError("ResNet: batch norm is always on; batch_norm=False is not supported.")
        if self.pool not in ("max", "avg"):
            raise ValueError(f"ResNet: pool must be 'max' or 'avg', got {self.pool!r}.")
        x = self._conv_bn_relu(x, self.widths[0], train)
        for width in self.widths:
            x = self._conv_bn_relu(x, width, train, pool=True)
            x = x + self._conv_bn_relu(self._conv_bn_relu(x, width, train), width, train)
        x = x.max(axis=(1, 2)) if self.pool == "max" else x.mean(axis=(1, 2))
        x = Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


class Whitening(NamedTuple):
    """A frozen whitening stem for :class:`Airbench` (from :func:`whitening_init`):
    the conv kernel ``(k, k, C, 2 k^2 C)`` and the initial bias, as flat tuples of
    floats (hashable, so a module holding one stays a static jit argument)."""

    kernel: tuple[float, ...]
    bias: tuple[float, ...]
    shape: tuple[int, int, int, int]

    def kernel_array(self) -> np.ndarray:
        """The kernel as a float32 ``(k, k, C, 2 k^2 C)`` (HWIO) array."""
        return np.asarray(self.kernel, np.float32).reshape(self.shape)


def whitening_init(images: Any, *, patch: int = 2, eps: float = 5e-4) -> Whitening:
    """airbench's whitening stem from training images: PCA of their ``patch x patch``
    patches.

    Each of the ``d = patch^2 C`` eigenvectors ``v`` of the patch covariance gives
    the filters ``+-v / sqrt(lambda + eps * mean(lambda))``: the stem's outputs are
    the patches in the decorrelated, unit-variance PCA basis (both signs, so a
    following relu or gelu keeps all of it). The bias starts at ``-W^T mean``, which
    centres the outputs (airbench normalizes the images instead; the bias stays
    trainable). ``eps`` is relative to the mean eigenvalue (airbench's ``5e-4`` on
    standardized images).

    Args:
      images: ``(N, H, W, C)`` float images as the model sees them (a few thousand
        are plenty: 5,000 CIFAR-10 images give 4.8M patches).
      patch: the stem's kernel size.
      eps: regularizes the small eigenvalues.

    Returns:
      a :class:`Whitening` for ``Airbench(whitening=...)``.

    Example:
      >>> w = whitening_init(np.random.default_rng(0).random((8, 6, 6, 3)))
      >>> w.shape
      (2, 2, 3, 24)
    """
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or x.shape[1] < patch or x.shape[2] < patch:
        raise ValueError(
            f"whitening_init: images must be (N, H, W, C) with H, W >= patch={patch}, "
            f"got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("whitening_init: images contain NaN or inf")
    _, h, w, c = x.shape
    rows, cols = h - patch + 1, w - patch + 1
    patches = np.concatenate(
        [x[:, i : i + rows, j : j + cols] for i in range(patch) for j in range(patch)], axis=-1
    ).reshape(-1, patch * patch * c)  # features ordered (i, j, c) like an HWIO kernel
    mean = patches.mean(axis=0)
    centred = patches - mean
    cov = centred.T @ centred / max(1, centred.shape[0] - 1)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]  # largest variance first
    filters = vec / np.sqrt(np.maximum(lam, 0.0) + eps * max(float(lam.mean()), 1e-12))
    kernel = np.concatenate([filters, -filters], axis=1)
    bias = -mean @ kernel
    shape = (patch, patch, c, kernel.shape[1])
    return Whitening(
        tuple(kernel.astype(np.float32).ravel().tolist()),
        tuple(bias.astype(np.float32).tolist()),
        shape,
    )


#: kernel initialisers of :class:`Airbench` (its ``kernel_init`` field, by name).
AIRBENCH_INITS = {
    # U(+-1/sqrt(fan_in)): PyTorch's default for conv and linear layers, airbench94's
    "uniform": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
    # flax's default (truncated normal of variance 1/fan_in): 3x the variance
    "lecun": nn.initializers.lecun_normal(),
}


def _dirac_init(base: Callable) -> Callable:
    """``base``, except that the first ``min(C_in, C_out)`` filters are the
    identity (airbench's implicit residual: a conv starts as a copy of its input)."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        w = base(key, shape, dtype)
        n = min(shape[-2], shape[-1])
        idx = jnp.arange(n)
        w = w.at[..., :n].set(0.0)
        return w.at[shape[0] // 2, shape[1] // 2, idx, idx].set(1.0)

    return init


class _ShiftNorm(nn.Module):
    """airbench's batch norm: no learned scale (fixed at 1), momentum 0.6, eps 1e-12,
    and the shift stored divided by ``bias_scale`` (SGD then moves it
    ``bias_scale^2`` times faster, airbench's 64x learning rate for these biases)."""

    bias_scale: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.6,
            epsilon=1e-12,
            use_scale=False,
            use_bias=False,
        )(x)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return x + self.bias_scale * bias.reshape((1,) * (x.ndim - 1) + (-1,))


class Airbench(nn.Module):
    """The small fast CIFAR net of airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29
    seconds").

    A 2x2 VALID conv stem (``stem`` channels, bias, activation: 32x32 -> 31x31);
    then per width two convs, conv3x3-maxpool2-BN-act and conv3x3-BN-act (no
    residual: 31 -> 15 -> 7 -> 3); global max pooling, dropout, a bias-free dense
    layer whose logits are multiplied by ``scale`` (airbench's 1/9: small logits
    early on suit the large SGD rates of its recipe). ``widths=(64, 256, 256)`` is
    airbench94's net; ``(32, 128, 128)`` needs about a quarter of its FLOPs.

    airbench's training tricks that live in the net: ``whitening`` (from
    :func:`whitening_init` on training images) makes the stem a frozen PCA
    whitening of 2x2 patches (a constant, not a parameter; only its bias trains);
    the 3x3 convs start as identities on their first channels; batch norm has no
    scale, momentum 0.6 and its shift multiplied by ``bias_scale`` (8: a 64x SGD
    rate for the shifts); ``activation`` is ``"gelu"`` (airbench) or ``"relu"``.
    ``kernel_init`` draws the other conv filters and the dense kernel:
    ``"uniform"`` (airbench94's, PyTorch's default: ``U(+-1/sqrt(fan_in))``),
    ``"lecun"`` (flax's lecun-normal, 3x the variance; with scale-free batch norm
    after each conv, larger filters take smaller relative SGD steps) or a flax
    initializer. Batch norm is always on (``batch_norm=False`` raises
    ``ValueError``). ``conv_method`` picks how the 3x3 convs run
    (:func:`jaxreg.functional.conv_general_dilated`'s ``method``): with
    ``"winograd"`` (Winograd's F(4x4, 3x3), 4x fewer multiply-adds) the convs of
    the widths of at least ``winograd_min_width`` run by Winograd and the narrower
    ones as ``"auto"``: on a 2-core CPU airbench94's 256-wide convs ran 1.2x-1.7x
    faster than XLA's own, its 64-wide ones (few channels: the transforms
    dominate) slower (``benchmarks/bench_conv_layers.py``), and its train step
    1.3x faster (median step, ``benchmarks/bench_malloc.py``).
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 256, 256)
    stem: int = 24
    scale: float = 1.0 / 9.0
    dropout: float | jax.Array = 0.0
    batch_norm: bool = True
    whitening: Whitening | None = None
    activation: str = "gelu"
    bias_scale: float = 8.0
    kernel_init: str | Callable = "uniform"
    conv_method: str = "auto"
    winograd_min_width: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.batch_norm is not True:
            raise ValueError("Airbench: batch norm is always on; batch_norm=False is unsupported.")
        if self.conv_method not in CONV_METHODS:
            raise ValueError(
                f"Airbench: conv_method must be one of {', '.join(map(repr, CONV_METHODS))}, "
                f"got {self.conv_method!r}"
            )
        acts = {"gelu": nn.gelu, "relu": nn.relu}
        if self.activation not in acts:
            raise ValueError(
                f"Airbench: activation must be 'gelu' or 'relu', got {self.activation!r}"
            )
        act = acts[self.activation]
        base = self.kernel_init
        if not callable(base):
            if base not in AIRBENCH_INITS:
                raise ValueError(
                    f"Airbench: kernel_init must be one of {', '.join(AIRBENCH_INITS)} or an "
                    f"initializer, got {base!r}"
                )
            base = AIRBENCH_INITS[base]
        w = self.whitening
        if w is None:
            x = _conv(self.stem, (2, 2), False, padding="VALID")(x)
        else:
            if w.shape[-1] != self.stem or w.shape[2] != x.shape[-1]:
                raise ValueError(
                    f"Airbench: whitening kernel {w.shape} does not fit stem={self.stem} "
                    f"channels and {x.shape[-1]} input channels"
                )
            kernel = jnp.asarray(w.kernel_array())
            bias = self.param("stem_bias", lambda _: jnp.asarray(w.bias, jnp.float32))
            x = CONV(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = x + bias.reshape(1, 1, 1, -1)
        x = act(x)
        for width in self.widths:
            method = self.conv_method
            if method == "winograd" and width < self.winograd_min_width:
                method = "auto"
            conv = lambda width=width, method=method: _conv(
                width,
                (3, 3),
                True,
                method,
                padding="SAME",
                kernel_init=_dirac_init(base),
            )
            x = act(_ShiftNorm(self.bias_scale)(_max_pool2(conv()(x)), train))
            x = act(_ShiftNorm(self.bias_scale)(conv()(x), train))
        x = x.max(axis=(1, 2))
        x = Dropout(self.dropout)(x, deterministic=not train)
        return self.scale * nn.Dense(self.num_classes, use_bias=False, kernel_init=base)(x)


class CNN1D(nn.Module):
    """The MNIST-1D paper's ``ConvBase`` (Greydanus 2020): ``layers`` conv1d layers
    with ``channels`` channels, stride 2, padding 1, kernel 5 for the first layer and
    3 after, each -(BN)-relu; flatten, dropout, linear logits.

    On ``(N, 40, 1)`` signals the lengths go 40 -> 19 -> 10 -> 5 (125 features).
    Inputs ``(N, L)`` get a channel axis.
    """

    num_classes: int = 10
    channels: int = 25
    layers: int = 3
    dropout: float | jax.Array = 0.0
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if x.ndim == 2:
            x = x[..., None]
        for i in range(self.layers):
            kernel = (5,) if i == 0 else (3,)
            x = _conv(self.channels, kernel, self.batch_norm, strides=(2,), padding=((1, 1),))(x)
            x = _norm_relu(x, self.batch_norm, train)
        x = x.reshape(x.shape[0], -1)
        x = Dropout(self.dropout)(x, deterministic=not train)
        return nn.Dense(self.num_classes)(x)


class MLP1D(MLP):
    """The MNIST-1D paper's MLP: 40-100-100-10 with relu (an :class:`MLP` with
    ``hidden=(100, 100)``)."""

    hidden: Sequence[int] = (100, 100)


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet": ResNet,
    "airbench": Airbench,
    "cnn1d": CNN1D,
    "mlp1d": MLP1D,
}


def get_model(name: str, **fields) -> nn.Module:
    """The model registered as ``name`` in :data:`MODELS`, built with ``fields``.

    Raises:
        ValueError: ``name`` is not in :data:`MODELS`.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    return MODELS[name](**fields)
