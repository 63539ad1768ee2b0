"""Flax linen modules over the kernels in :mod:`jaxreg.functional` (drop-in for flax's)."""

from jaxreg.nn.batchnorm import BatchNorm
from jaxreg.nn.dropouts import (
    AlphaDropout,
    DropBlock,
    Dropout,
    DropPath,
    GaussianDropout,
    GaussianNoise,
    SpatialDropout,
)

__all__ = [
    "AlphaDropout",
    "BatchNorm",
    "DropBlock",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "SpatialDropout",
]
