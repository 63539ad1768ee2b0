"""Pure kernels: the dropout family, batch norm and CPU-fast convolutions."""

from jaxreg.functional.batchnorm import batch_norm
from jaxreg.functional.conv import conv_general_dilated
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
from jaxreg.functional.winograd import winograd_conv3x3

__all__ = [
    "alpha_dropout",
    "batch_norm",
    "conv_general_dilated",
    "drop_block",
    "drop_path",
    "drop_path_rates",
    "dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "spatial_dropout",
    "winograd_conv3x3",
]
