"""On-device data augmentation: batched NHWC images, per-example draws from one key.

Every op takes the key first and the batch second, settings as keywords, keeps
the dtype (uint8 or float), and runs under ``jax.jit``, ``jax.vmap`` and inside a
``lax.scan`` training step; :func:`compose` chains them into one function.
"""

from jaxreg.augment.color import color_jitter, gaussian_noise
from jaxreg.augment.erasing import cutout, random_erasing
from jaxreg.augment.geometric import (
    affine_matrices,
    alternating_flip,
    flip_translate_views,
    flip_views,
    random_affine,
    random_crop,
    random_crop_flip,
    random_flip,
)
from jaxreg.augment.mix import cutmix, mixup
from jaxreg.augment.pipeline import compose
from jaxreg.augment.policies import OPS, rand_augment, trivial_augment

__all__ = [
    "OPS",
    "affine_matrices",
    "alternating_flip",
    "color_jitter",
    "compose",
    "cutmix",
    "cutout",
    "flip_translate_views",
    "flip_views",
    "gaussian_noise",
    "mixup",
    "rand_augment",
    "random_affine",
    "random_crop",
    "random_crop_flip",
    "random_erasing",
    "random_flip",
    "trivial_augment",
]
