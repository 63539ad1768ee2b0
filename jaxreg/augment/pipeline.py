"""Compose augmentation ops into one ``(key, images) -> images`` function.

The composed function is pure, so it runs under ``jax.jit``, ``jax.vmap`` (over
keys) and inside a ``lax.scan`` training step, on the accelerator, with no host
round trip. Op ``i`` gets the key ``jax.random.fold_in(key, i)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

__all__ = ["compose"]

Op = Callable[[jax.Array, jax.Array], jax.Array]


def compose(*ops: Op) -> Op:
    """Chain augmentation ops; op ``i`` draws from ``fold_in(key, i)``.

    ``compose(f_0, ..., f_{k-1})(key, x) = f_{k-1}(fold_in(key, k-1), ... f_0(fold_in(key, 0), x))``

    Args:
      *ops: callables ``(key, images) -> images``, e.g. ``functools.partial(random_crop,
        padding=4)``; applied left to right.

    Returns:
      A function ``(key, images) -> images``.

    ``mixup`` and ``cutmix`` also take and return labels, so they are not ops of
    ``compose``: apply them after the composed image ops, with a key of their
    own (second example). ``rand_augment`` and ``trivial_augment`` are ordinary
    ops and compose like the others.

    Example:
      >>> import functools
      >>> import jax.numpy as jnp
      >>> from jaxreg.augment.geometric import random_crop, random_flip
      >>> aug = compose(functools.partial(random_crop, padding=2), random_flip)
      >>> x = jnp.zeros((4, 8, 8, 3), jnp.uint8)
      >>> jax.jit(aug)(jax.random.key(0), x).shape
      (4, 8, 8, 3)

      With labels (one-hot or integer labels in, soft labels out):

      >>> from jaxreg.augment.mix import mixup
      >>> def augment(key, images, labels):
      ...     k_img, k_mix = jax.random.split(key)
      ...     return mixup(k_mix, aug(k_img, images), labels, num_classes=10, alpha=0.2)
      >>> y, soft = jax.jit(augment)(jax.random.key(0), x, jnp.arange(4))
      >>> y.shape, soft.shape
      ((4, 8, 8, 3), (4, 10))

    References:
      torchvision ``transforms.Compose`` (same left-to-right order).
    """
    for i, op in enumerate(ops):
        if not callable(op):
            raise TypeError(
                f"compose: op {i} must be a callable (key, images) -> images, "
                f"got {type(op).__name__}."
            )
    ops = tuple(ops)

    def augment(key: jax.Array, images: jax.Array) -> jax.Array:
        for i, op in enumerate(ops):
            images = op(jax.random.fold_in(key, i), images)
        return images

    names = ", ".join(
        getattr(op, "__name__", None) or getattr(getattr(op, "func", None), "__name__", repr(op))
        for op in ops
    )
    augment.__name__ = "compose"
    augment.__qualname__ = f"compose({names})"
    return augment
