"""Flax linen modules for the dropout family: drop-in replacements for ``flax.linen.Dropout``.

Each module keeps flax's fields and flags: ``deterministic`` as a field and/or a
``__call__`` argument (merged with ``nn.merge_param``, exactly one must be set),
an optional ``rng`` argument, and keys from ``self.make_rng(rng_collection)``
(stream ``'dropout'``; flax folds in the module path, so every layer gets its
own mask, and falls back to the ``'params'`` stream during ``init``).

Unlike flax's, ``rate`` may be a traced array (``jax.vmap`` over rates works),
the masks come from jaxreg's fast counter-based bits, and a missing rng raises
an error that says which stream to pass. The maths lives in
:mod:`jaxreg.functional.dropouts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax

from jaxreg._util import is_static_number
from jaxreg.functional import dropouts as F

__all__ = [
    "AlphaDropout",
    "DropBlock",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "SpatialDropout",
]


def _key(module: nn.Module, rng: jax.Array | None) -> jax.Array:
    """The key for this call: ``rng`` if given, else the module's ``rng_collection`` stream."""
    if rng is not None:
        return rng
    stream = module.rng_collection
    if not (module.has_rng(stream) or module.has_rng("params")):
        where = "/".join(str(p) for p in module.path) or type(module).__name__
        raise flax.errors.InvalidRngError(
            f"{type(module).__name__} at '{where}' needs a '{stream}' rng when "
            f"deterministic=False: pass rngs={{'{stream}': key}} to apply() (or call with "
            f"deterministic=True)."
        )
    return module.make_rng(stream)


def _inactive(module: nn.Module, deterministic: bool | None, rate: Any) -> bool:
    """Merged ``deterministic`` flag; a static rate of 0 also needs no rng (as in flax)."""
    deterministic = nn.merge_param("deterministic", module.deterministic, deterministic)
    return bool(deterministic) or (is_static_number(rate) and rate == 0)


def _run(module, kernel, inputs, strength, deterministic, rng, **settings):
    """Call ``kernel(key, inputs, strength, deterministic=..., **settings)`` for a module.

    The flag is merged like flax's; the key is only drawn when the layer is active.
    """
    off = _inactive(module, deterministic, strength)
    key = None if off else _key(module, rng)
    return kernel(key, inputs, strength, deterministic=off, **settings)


class Dropout(nn.Module):
    """Inverted dropout, a drop-in for ``flax.linen.Dropout`` (same fields and flags).

    ``y = m * x / q``, ``m ~ Bernoulli(q)``, ``q`` the realised keep probability
    (within ``2**-17`` of ``1 - rate``); ``y = x`` when deterministic.

    Attributes:
      rate: drop probability in [0, 1] (not the keep rate); float or scalar array.
      broadcast_dims: axes sharing one mask value (static).
      deterministic: if True, return the input unchanged; may instead be given
        at call time.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = Dropout(0.5)
      >>> y = layer.apply({}, jnp.ones((2, 4)), deterministic=False,
      ...                 rngs={"dropout": jax.random.key(1)})
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]

    References:
      Srivastava et al., "Dropout", JMLR 2014.
    """

    rate: float | jax.Array
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Mask ``inputs`` (training) or return them unchanged (``deterministic``)."""
        return _run(
            self,
            F.dropout,
            inputs,
            self.rate,
            deterministic,
            rng,
            broadcast_dims=self.broadcast_dims,
        )


class SpatialDropout(nn.Module):
    """Drop whole channels per example (Keras ``SpatialDropout2D`` on NHWC).

    ``y[n, ..., c] = m[n, c] * x[n, ..., c] / q``.

    Attributes:
      rate: drop probability of a channel in [0, 1]; float or scalar array.
      channel_axis: channel axis (static; -1 for NHWC, 1 for NCHW).
      deterministic: if True, return the input unchanged.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = SpatialDropout(0.5, deterministic=False).apply(
      ...     {}, jnp.ones((2, 4, 4, 3)), rngs={"dropout": jax.random.key(0)})
      >>> bool(((y == 0).all(axis=(1, 2)) | (y == 2).all(axis=(1, 2))).all())
      True

    References:
      Tompson et al., "Efficient object localization using convolutional
      networks", CVPR 2015.
    """

    rate: float | jax.Array
    channel_axis: int = -1
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Mask whole channels of ``inputs`` or return them unchanged."""
        return _run(
            self,
            F.spatial_dropout,
            inputs,
            self.rate,
            deterministic,
            rng,
            channel_axis=self.channel_axis,
        )


class DropPath(nn.Module):
    """Stochastic depth: drop whole examples of a residual branch (timm ``DropPath``).

    ``y[n] = m[n] * x[n] / q``; use ``x + DropPath(rate)(f(x), ...)`` with the
    rates of :func:`~jaxreg.functional.drop_path_rates`.

    Attributes:
      rate: drop probability of an example in [0, 1]; float or scalar array.
      deterministic: if True, return the input unchanged.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = DropPath(0.5).apply({}, jnp.ones((4, 2)), deterministic=False,
      ...                         rngs={"dropout": jax.random.key(0)})
      >>> [row.tolist() in ([0.0, 0.0], [2.0, 2.0]) for row in y]
      [True, True, True, True]

    References:
      Huang et al., "Deep networks with stochastic depth", ECCV 2016.
    """

    rate: float | jax.Array
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Drop whole examples of ``inputs`` or return them unchanged."""
        return _run(self, F.drop_path, inputs, self.rate, deterministic, rng)


class DropBlock(nn.Module):
    """DropBlock on ``(batch, *spatial, channels)`` maps (:func:`~jaxreg.functional.drop_block`).

    Contiguous ``block_size`` squares are zeroed, a ``rate`` fraction of the map
    in expectation; the rest is scaled by ``size / kept``.

    Attributes:
      rate: expected dropped fraction in [0, 1]; float or scalar array.
      block_size: block side (static int, or one per spatial axis).
      broadcast_dims: subset of ``(0, -1)`` sharing one mask (``(-1,)``: same
        blocks in every channel).
      deterministic: if True, return the input unchanged.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = DropBlock(0.2, block_size=3, deterministic=False).apply(
      ...     {}, jnp.ones((2, 8, 8, 4)), rngs={"dropout": jax.random.key(0)})
      >>> y.shape
      (2, 8, 8, 4)

    References:
      Ghiasi, Lin and Le, "DropBlock", NeurIPS 2018.
    """

    rate: float | jax.Array
    block_size: int | Sequence[int] = 7
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Drop blocks of ``inputs`` or return them unchanged."""
        return _run(
            self,
            F.drop_block,
            inputs,
            self.rate,
            deterministic,
            rng,
            block_size=self.block_size,
            broadcast_dims=self.broadcast_dims,
        )


class GaussianDropout(nn.Module):
    """Multiplicative ``N(1, rate / (1 - rate))`` noise (Keras ``GaussianDropout``).

    ``y = x * (1 + sqrt(rate / (1 - rate)) z)``, ``z ~ N(0, 1)``.

    Attributes:
      rate: equivalent drop probability in [0, 1); float or scalar array.
      deterministic: if True, return the input unchanged.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> GaussianDropout(0.3).apply({}, jnp.ones(2), deterministic=True)
      Array([1., 1.], dtype=float32)

    References:
      Srivastava et al., "Dropout", JMLR 2014, section 10.
    """

    rate: float | jax.Array
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Multiply ``inputs`` by noise or return them unchanged."""
        return _run(self, F.gaussian_dropout, inputs, self.rate, deterministic, rng)


class GaussianNoise(nn.Module):
    """Additive Gaussian noise ``y = x + stddev * z`` (Keras ``GaussianNoise``).

    Attributes:
      stddev: noise standard deviation >= 0; float or scalar array.
      deterministic: if True, return the input unchanged.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> y = GaussianNoise(0.1).apply({}, jnp.zeros(1000), deterministic=False,
      ...                              rngs={"dropout": jax.random.key(0)})
      >>> round(float(y.std()), 1)
      0.1

    References:
      Bishop, "Training with noise is equivalent to Tikhonov regularization",
      Neural Computation 1995.
    """

    stddev: float | jax.Array
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Add noise to ``inputs`` or return them unchanged."""
        return _run(self, F.gaussian_noise, inputs, self.stddev, deterministic, rng)


class AlphaDropout(nn.Module):
    """SELU-preserving dropout (Keras ``AlphaDropout``; :func:`~jaxreg.functional.alpha_dropout`).

    Dropped units go to ``alpha' = -1.7581``, then ``y = a * . + b`` restores
    mean 0 and variance 1.

    Attributes:
      rate: drop probability in [0, 1]; float or scalar array.
      broadcast_dims: axes sharing one mask value (static).
      deterministic: if True, return the input unchanged.
      rng_collection: the rng stream the keys come from.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> y = AlphaDropout(0.1).apply({}, x, deterministic=False,
      ...                             rngs={"dropout": jax.random.key(1)})
      >>> round(float(y.mean()), 1), round(float(y.std()), 1)
      (0.0, 1.0)

    References:
      Klambauer et al., "Self-normalizing neural networks", NeurIPS 2017.
    """

    rate: float | jax.Array
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
        """Alpha-dropout ``inputs`` or return them unchanged."""
        return _run(
            self,
            F.alpha_dropout,
            inputs,
            self.rate,
            deterministic,
            rng,
            broadcast_dims=self.broadcast_dims,
        )
