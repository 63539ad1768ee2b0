"""Shared checks and conversions for the augmentation ops (private).

Images are batched ``NHWC`` arrays, ``uint8`` (0..255) or floating point (any
range, typically [0, 1]). Ops compute in float32 and return the input dtype
(uint8 results are rounded and clipped to 0..255).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._util import is_static_number


def check_images(fn: str, images: Any, *, name: str = "images", channels: Any = None) -> None:
    """Raise a clear error unless ``images`` is a rank-4 NHWC uint8 or float array."""
    shape = jnp.shape(images)
    if len(shape) != 4:
        raise ValueError(f"{fn}: {name} must be a batch NHWC of rank 4, got shape {shape}.")
    dtype = jnp.result_type(images)
    if not (dtype == jnp.uint8 or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"{fn}: {name} must be uint8 or floating point, got {dtype}.")
    if channels is not None and shape[-1] not in (
        channels if isinstance(channels, tuple) else (channels,)
    ):
        raise ValueError(f"{fn}: {name} must have {channels} channels (last axis), got {shape}.")


def check_prob(fn: str, name: str, p: Any) -> None:
    """A static probability must lie in [0, 1] (traced values are not checked)."""
    if is_static_number(p) and not 0.0 <= p <= 1.0:
        raise ValueError(f"{fn}: {name} must lie in [0, 1], got {p!r}.")


def check_non_negative(fn: str, name: str, value: Any) -> None:
    if is_static_number(value) and not value >= 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {value!r}.")


def to_float(images: jax.Array) -> jax.Array:
    """float32 view of the images (uint8 keeps its 0..255 scale)."""
    return images.astype(jnp.float32)


def from_float(x: jax.Array, dtype: Any) -> jax.Array:
    """Back to ``dtype``: uint8 is rounded and clipped to 0..255, floats are cast."""
    if jnp.dtype(dtype) == jnp.uint8:
        return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)
    return x.astype(dtype)


def max_value(dtype: Any) -> float:
    """255 for uint8 images, 1.0 for float images (the assumed [0, 1] range)."""
    return 255.0 if jnp.dtype(dtype) == jnp.uint8 else 1.0
