"""``python -m jaxreg`` runs the ``jaxreg`` console script."""

import sys

from .cli import main

sys.exit(main())
