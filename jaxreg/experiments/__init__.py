"""The seed experiments behind ``jaxreg compare`` and ``jaxreg sweep``.

* :mod:`~jaxreg.experiments.configs`: regularization configs and their parser.
* :mod:`~jaxreg.experiments.runner`: data preparation, one trainer per config,
  :func:`~jaxreg.experiments.runner.run_config` and
  :func:`~jaxreg.experiments.runner.run_sweep`.
* :mod:`~jaxreg.experiments.report`: tables, ``results.json``, plots, progress bar.
"""

from . import configs, report, runner
from .configs import DEFAULT_CONFIGS, Regularization, parse_config
from .runner import Data, prepare, run_config, run_sweep

__all__ = [
    "DEFAULT_CONFIGS",
    "Data",
    "Regularization",
    "configs",
    "parse_config",
    "prepare",
    "report",
    "run_config",
    "run_sweep",
    "runner",
]
