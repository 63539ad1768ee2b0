"""Pure kernels: the dropout family and batch norm (arrays + keys in, arrays out)."""

# --- dropout family (dropouts.py) ---
from jaxreg.functional.dropouts import alpha_dropout as alpha_dropout
from jaxreg.functional.dropouts import drop_block as drop_block
from jaxreg.functional.dropouts import drop_path as drop_path
from jaxreg.functional.dropouts import drop_path_rates as drop_path_rates
from jaxreg.functional.dropouts import dropout as dropout
from jaxreg.functional.dropouts import gaussian_dropout as gaussian_dropout
from jaxreg.functional.dropouts import gaussian_noise as gaussian_noise
from jaxreg.functional.dropouts import spatial_dropout as spatial_dropout

# isort: split
# --- end dropout family ---

# --- batch norm (batchnorm.py) ---
from jaxreg.functional.batchnorm import batch_norm as batch_norm
# --- end batch norm ---
