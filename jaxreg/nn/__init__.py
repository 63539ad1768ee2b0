"""Flax linen modules over the kernels in :mod:`jaxreg.functional` (drop-in for flax's)."""

# --- dropout family (dropouts.py) ---
from jaxreg.nn.dropouts import AlphaDropout as AlphaDropout
from jaxreg.nn.dropouts import DropBlock as DropBlock
from jaxreg.nn.dropouts import Dropout as Dropout
from jaxreg.nn.dropouts import DropPath as DropPath
from jaxreg.nn.dropouts import GaussianDropout as GaussianDropout
from jaxreg.nn.dropouts import GaussianNoise as GaussianNoise
from jaxreg.nn.dropouts import SpatialDropout as SpatialDropout

# isort: split
# --- end dropout family ---

# --- batch norm (batchnorm.py) ---
from jaxreg.nn.batchnorm import BatchNorm as BatchNorm
# --- end batch norm ---
