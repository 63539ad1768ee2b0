"""Regularization configs of the experiments: names, default strengths, parsing.

A config is a :class:`Regularization`: which regularizers are on and how strong.
On the command line a config is written as regularizer names joined by ``+``,
each optionally with a value: ``none``, ``l2``, ``dropout=0.5+batchnorm``,
``all``, ``all+max_norm=2``. ``all`` is the seven default regularizers
combined. The name of a config is its spec as written.

=================== ============================================================
``l2``              ``value * l2_penalty(kernels)`` added to the loss (coupled)
``weight_decay``    decoupled weight decay on kernels (AdamW style)
``dropout``         dropout rate of the model's dropout layers
``batchnorm``       the model's BatchNorm layers (no value)
``augmentation``    on-device augmentation; the value scales the translation
                    (images: random crop with ``value * H / 8`` pixels of
                    padding, plus horizontal flips for natural images; 1-D
                    signals: random shifts of up to ``value * L / 10`` steps)
``label_smoothing`` label smoothing of the cross-entropy
``early_stopping``  early stopping on ``val_loss``, the value is the patience,
                    restoring the best epoch's weights
``max_norm``        per-unit max-norm constraint on kernels
``clipping``        clip the gradient's global norm to the value
``ema``             evaluate an exponential moving average of the parameters
``lookahead``       Lookahead on the optimizer (no value): airbench94's slow
                    weights, synced every 5 steps with a pull that grows
                    toward the end of the run (:func:`jaxreg.lookahead`)
=================== ============================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: regularizer -> default value (True for switches).
DEFAULTS: dict[str, Any] = {
    "l2": 1e-3,
    "weight_decay": 5e-4,
    "dropout": 0.3,
    "batchnorm": True,
    "augmentation": 1.0,
    "label_smoothing": 0.1,
    "early_stopping": 5,
    "max_norm": 3.0,
    "clipping": 1.0,
    "ema": 0.99,
    "lookahead": True,
}

#: what ``all`` switches on.
ALL = ("l2", "dropout", "batchnorm", "augmentation", "label_smoothing", "early_stopping")

#: the default configs of ``jaxreg compare``.
DEFAULT_CONFIGS = ("none", *ALL, "all")

#: regularizers whose strength ``jaxreg sweep`` can vary in one compiled program.
SWEEPABLE = ("l2", "weight_decay", "dropout", "label_smoothing", "max_norm", "clipping", "seed")


@dataclasses.dataclass(frozen=True)
class Regularization:
    """One experiment config: the regularizers that are on and their strengths.

    ``None`` (or False) means off. ``name`` is the spec it was parsed from.
    """

    name: str = "none"
    l2: float | None = None
    weight_decay: float | None = None
    dropout: float | None = None
    batchnorm: bool = False
    augmentation: float | None = None
    label_smoothing: float | None = None
    early_stopping: int | None = None
    max_norm: float | None = None
    clipping: float | None = None
    ema: float | None = None
    lookahead: bool = False

    def active(self) -> dict[str, Any]:
        """``{regularizer: value}`` of what is on."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "name" and v is not None and v is not False:
                out[f.name] = v
        return out


def _value(name: str, text: str, spec: str) -> Any:
    default = DEFAULTS[name]
    if default is True:
        raise ValueError(f"config {spec!r}: {name} takes no value, got {name}={text}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"config {spec!r}: {name}={text} is not a number") from None
    if name == "early_stopping":
        if value != int(value) or value < 0:
            raise ValueError(f"config {spec!r}: early_stopping patience must be an int >= 0")
        return int(value)
    if value < 0:
        raise ValueError(f"config {spec!r}: {name} must be >= 0, got {value}")
    if name in ("dropout", "label_smoothing", "ema") and value >= 1:
        raise ValueError(f"config {spec!r}: {name} must lie in [0, 1), got {value}")
    return value


def parse_config(spec: str) -> Regularization:
    """Parse ``"dropout=0.5+batchnorm"`` (see the module docstring).

    Raises ``ValueError`` naming an unknown regularizer and listing the known ones.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"config must be a non-empty string, got {spec!r}")
    values: dict[str, Any] = {}
    for part in spec.strip().split("+"):
        name, sep, text = part.strip().partition("=")
        name = name.strip().replace("-", "_")
        if name == "none" and not sep:
            continue
        if name == "all" and not sep:
            values.update({k: DEFAULTS[k] for k in ALL if k not in values})
            continue
        if name not in DEFAULTS:
            known = ", ".join(["none", "all", *DEFAULTS])
            raise ValueError(f"unknown config {part.strip()!r} in {spec!r}; known: {known}")
        values[name] = _value(name, text.strip(), spec) if sep else DEFAULTS[name]
    return Regularization(name=spec.strip(), **values)
