"""Pure kernels: the dropout family and batch norm (arrays + keys in, arrays out)."""

from jaxreg.functional.batchnorm import batch_norm
from jaxreg.functional.dropouts import (
    alpha_dropout,
    drop_block,
    drop_path,
    drop_path_rates,
    dropout,
    gaussian_dropout,
    gaussian_noise,
    spatial_dropout,
)

__all__ = [
    "alpha_dropout",
    "batch_norm",
    "drop_block",
    "drop_path",
    "drop_path_rates",
    "dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "spatial_dropout",
]
