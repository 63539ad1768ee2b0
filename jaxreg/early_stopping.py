"""Early stopping and reduce-on-plateau as state: pure updates for jit, scan, while_loop, vmap.

* :class:`EarlyStopping`: Keras 3's ``keras.callbacks.EarlyStopping`` rule with
  its argument names and defaults, as a frozen (hashable) config whose
  ``init`` / ``update`` / ``final_params`` are pure functions of an
  :class:`EarlyStoppingState` pytree.
* :class:`ReduceLROnPlateau`: Keras 3's ``keras.callbacks.ReduceLROnPlateau``
  rule (absolute ``min_delta``, ``cooldown``, ``min_lr``) with state
  :class:`ReduceLROnPlateauState`; ``state.scale`` is the multiplier relative
  to the initial learning rate.

No Python branching happens on traced values, so a loop can be a
``lax.while_loop`` with ``cond = ~state.should_stop``, and ``jax.vmap`` runs
members that stop at different epochs (a stopped member's state is frozen).
The rules follow Keras 3.15 (``keras/src/callbacks/early_stopping.py``,
``reduce_lr_on_plateau.py`` and ``monitor_callback.py``); the one deliberate
difference is that a NaN value is never an improvement (Keras records a first
NaN as the best value and then never improves again).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxreg._util import tree_where

__all__ = [
    "EarlyStopping",
    "EarlyStoppingState",
    "ReduceLROnPlateau",
    "ReduceLROnPlateauState",
]

# mode="auto": Keras 3 minimizes "loss" and otherwise asks the compiled model's
# metrics for their direction. Without a model we use the names (and their
# "<output>_" prefixed forms) of Keras 3's built-in metrics and their direction.
_MAXIMIZED = frozenset(
    """accuracy acc binary_accuracy categorical_accuracy sparse_categorical_accuracy
    top_k_categorical_accuracy sparse_top_k_categorical_accuracy auc precision recall
    f1_score fbeta_score r2_score cosine_similarity pearson_correlation
    concordance_correlation iou mean_iou binary_iou one_hot_iou one_hot_mean_iou
    precision_at_recall recall_at_precision sensitivity_at_specificity
    specificity_at_sensitivity""".split()
)
_MINIMIZED = frozenset(
    """loss mean_squared_error mse mean_absolute_error mae mean_absolute_percentage_error
    mape mean_squared_logarithmic_error msle root_mean_squared_error binary_crossentropy
    categorical_crossentropy sparse_categorical_crossentropy hinge squared_hinge
    categorical_hinge logcosh kl_divergence kld poisson""".split()
)


def _resolve_mode(owner: str, monitor: str, mode: str) -> str:
    """``"min"`` or ``"max"`` for a static ``mode`` and ``monitor``."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be one of 'auto', 'min', 'max', got {mode!r}.")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    for names, direction in ((_MAXIMIZED, "max"), (_MINIMIZED, "min")):
        if name in names or any(name.endswith("_" + n) for n in names):
            return direction
    raise ValueError(
        f"{owner}: mode='auto' cannot tell whether monitor={monitor!r} should be "
        "minimized or maximized (known: 'loss', Keras's built-in metric names such as "
        "'accuracy', 'auc', 'mean_squared_error', with optional 'val_' / '<output>_' "
        "prefixes). Pass mode='min' or mode='max'."
    )


def _check_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: {name} must be an int >= 0, got {value!r}.")


def _check_number(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{owner}: {name} must be a (non-NaN) number, got {value!r}.")
    return float(value)


def _monitored(owner: str, monitor: str, metrics: Mapping[str, Any]) -> jax.Array:
    """The monitored scalar from ``metrics`` as float32; clear errors at trace time."""
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"{owner}.update expects metrics as a dict holding {monitor!r}, "
            f"got {type(metrics).__name__}."
        )
    if monitor not in metrics:
        raise KeyError(
            f"{owner} monitors {monitor!r}, which is not in metrics; "
            f"available keys: {sorted(map(str, metrics))}."
        )
    value = jnp.asarray(metrics[monitor], jnp.float32)
    if value.ndim != 0:
        raise ValueError(
            f"{owner}: metrics[{monitor!r}] must be a scalar, got shape {value.shape}."
        )
    return value


def _improves(direction: str, value: jax.Array, ref: Any, min_delta: float) -> jax.Array:
    # Keras: monitor_op(value - signed_min_delta, ref), min_delta negated in min mode.
    if direction == "min":
        return jnp.less(value + jnp.float32(min_delta), ref)
    return jnp.greater(value - jnp.float32(min_delta), ref)


class EarlyStoppingState(NamedTuple):
    """``epoch``: updates taken (frozen once stopped); ``wait``: Keras's wait counter;
    ``best_value`` / ``best_step``: best monitored value and its epoch index (+-inf
    and -1 before any); ``best_params``: params at ``best_step`` (None unless
    ``restore_best_weights``); ``should_stop``; ``stopped_epoch`` (-1 if running)."""

    epoch: jax.Array
    wait: jax.Array
    best_value: jax.Array
    best_step: jax.Array
    best_params: Any
    should_stop: jax.Array
    stopped_epoch: jax.Array


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when the monitored metric has not improved for ``patience`` epochs (Keras 3 rule).

    Call ``update`` once per epoch (index ``e = state.epoch``); epochs with
    ``e < start_from_epoch`` are ignored (only counted). Otherwise, with
    ``d = |min_delta|``, ``x`` improves on ``r`` when ``x + d < r`` (min) or
    ``x - d > r`` (max); the first value always improves (NaN never does)::

        wait += 1
        if x improves on best:  best, best_step = x, e   (best_params = params)
                                wait = 0 if baseline is None or x improves on baseline
        elif wait >= patience and e > 0:  should_stop, stopped_epoch = True, e

    So a baseline never beaten lets ``wait`` grow through improving epochs,
    and a run stops at the first non-improving epoch once ``wait >= patience``.
    Once ``should_stop`` is True every further ``update`` returns the state
    unchanged. ``final_params`` gives what Keras leaves in the model.

    Args:
        monitor: static; key of the metric in the ``metrics`` dict.
        min_delta: absolute change that counts as an improvement, any number
            (Keras takes ``abs``; stored as ``abs(min_delta)``).
        patience: int >= 0; epochs without improvement before stopping.
        mode: static; ``"min"``, ``"max"`` or ``"auto"`` (min for ``"loss"`` /
            ``"val_loss"`` and Keras's loss-like metric names, max for
            accuracy-like names such as ``"val_accuracy"``, ``"auc"``; other
            names raise and ask for an explicit mode).
        baseline: float or None; an improvement resets ``wait`` only if it also
            improves on ``baseline``.
        restore_best_weights: static; keep a copy of the params of the best
            epoch in the state (``init`` and ``update`` then need params).
        start_from_epoch: int >= 0; warm-up epochs that are not monitored.

    Returns:
        A frozen, hashable config (safe to close over in ``jax.jit``) with
        ``init(params=None)``, ``update(state, metrics, params=None)`` and
        ``final_params(state, params)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxreg.early_stopping import EarlyStopping
        >>> es = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
        >>> def epoch(state, x):
        ...     params = {"w": jnp.full((2,), x)}  # stand-in for one epoch of training
        ...     state = es.update(state, {"val_loss": x}, params)
        ...     return state, state.should_stop
        >>> p0 = {"w": jnp.zeros(2)}
        >>> losses = jnp.array([3.0, 2.0, 2.5, 2.2, 1.0, 0.5])
        >>> state, stops = jax.jit(lambda s: jax.lax.scan(epoch, s, losses))(es.init(p0))
        >>> stops.tolist(), int(state.stopped_epoch), int(state.best_step)
        ([False, False, False, True, True, True], 3, 1)
        >>> es.final_params(state, p0)["w"].tolist()
        [2.0, 2.0]

    References:
        Prechelt, Early stopping - but when?, 1998. Keras 3.15,
        ``keras.callbacks.EarlyStopping``.
    """

    monitor: str = "val_loss"
    min_delta: float = 0.0
    patience: int = 0
    mode: str = "auto"
    baseline: float | None = None
    restore_best_weights: bool = False
    start_from_epoch: int = 0

    def __post_init__(self):
        owner = "EarlyStopping"
        if not isinstance(self.monitor, str):
            raise TypeError(f"{owner}: monitor must be a str, got {self.monitor!r}.")
        object.__setattr__(
            self, "min_delta", abs(_check_number(owner, "min_delta", self.min_delta))
        )
        _check_int(owner, "patience", self.patience)
        _check_int(owner, "start_from_epoch", self.start_from_epoch)
        if self.baseline is not None:
            object.__setattr__(self, "baseline", _check_number(owner, "baseline", self.baseline))
        if not isinstance(self.restore_best_weights, bool):
            raise TypeError(
                f"{owner}: restore_best_weights must be a bool, got {self.restore_best_weights!r}."
            )
        _resolve_mode(owner, self.monitor, self.mode)

    @property
    def direction(self) -> str:
        """``"min"`` or ``"max"``: the resolved ``mode``."""
        return _resolve_mode("EarlyStopping", self.monitor, self.mode)

    def _need_params(self, params: Any, where: str) -> None:
        if self.restore_best_weights and params is None:
            raise ValueError(
                f"EarlyStopping(restore_best_weights=True).{where} needs params "
                "(the current parameters), got params=None."
            )

    def init(self, params: Any = None) -> EarlyStoppingState:
        """Fresh state; ``params`` (arrays or ``jax.ShapeDtypeStruct``) only give the
        structure of ``best_params`` and are needed iff ``restore_best_weights``."""
        self._need_params(params, "init")
        best_params = None
        if self.restore_best_weights:
            best_params = jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params)
        inf = jnp.inf if self.direction == "min" else -jnp.inf
        return EarlyStoppingState(
            epoch=jnp.zeros([], jnp.int32),
            wait=jnp.zeros([], jnp.int32),
            best_value=jnp.full([], inf, jnp.float32),
            best_step=jnp.full([], -1, jnp.int32),
            best_params=best_params,
            should_stop=jnp.zeros([], jnp.bool_),
            stopped_epoch=jnp.full([], -1, jnp.int32),
        )

    def update(
        self, state: EarlyStoppingState, metrics: Mapping[str, Any], params: Any = None
    ) -> EarlyStoppingState:
        """State after one epoch whose metrics are ``metrics`` (a dict holding ``monitor``)."""
        current = _monitored("EarlyStopping", self.monitor, metrics)
        self._need_params(params, "update")
        direction = self.direction
        e = state.epoch
        active = e >= self.start_from_epoch
        improved = (
            active
            & ~jnp.isnan(current)
            & (
                (state.best_step < 0)
                | _improves(direction, current, state.best_value, self.min_delta)
            )
        )
        if self.baseline is None:
            resets = improved
        else:
            baseline = jnp.float32(self.baseline)
            resets = improved & _improves(direction, current, baseline, self.min_delta)
        wait = jnp.where(active, state.wait + 1, state.wait)
        wait = jnp.where(resets, 0, wait).astype(jnp.int32)
        stop = active & ~improved & (wait >= self.patience) & (e > 0)
        best_params = state.best_params
        if self.restore_best_weights:
            best_params = tree_where(improved, params, state.best_params)
        new = EarlyStoppingState(
            epoch=(e + 1).astype(jnp.int32),
            wait=wait,
            best_value=jnp.where(improved, current, state.best_value),
            best_step=jnp.where(improved, e, state.best_step).astype(jnp.int32),
            best_params=best_params,
            should_stop=stop,
            stopped_epoch=jnp.where(stop, e, state.stopped_epoch).astype(jnp.int32),
        )
        return tree_where(state.should_stop, state, new)

    def final_params(
        self, state: EarlyStoppingState, params: Any, *, only_if_stopped: bool = False
    ) -> Any:
        """The params Keras 3 leaves in the model at the end of ``fit``.

        With ``restore_best_weights`` and a recorded best epoch
        (``state.best_step >= 0``) this is ``state.best_params``, whether or not
        the run stopped early (Keras 3 restores in ``on_train_end``); otherwise
        ``params``. ``only_if_stopped=True`` (static) restores only when
        ``state.should_stop``, as tf.keras 2.x did. Works under jit and vmap.
        """
        if not self.restore_best_weights:
            return params
        restore = state.best_step >= 0
        if only_if_stopped:
            restore = restore & state.should_stop
        return tree_where(restore, state.best_params, params)


class ReduceLROnPlateauState(NamedTuple):
    """``learning_rate``: current rate (float32); ``initial_learning_rate``; ``best_value``
    / ``best_step`` (+-inf and -1 before any); ``wait``; ``cooldown_counter``;
    ``count``: updates taken; ``num_reductions``. ``scale`` = current / initial rate."""

    learning_rate: jax.Array
    initial_learning_rate: jax.Array
    best_value: jax.Array
    best_step: jax.Array
    wait: jax.Array
    cooldown_counter: jax.Array
    count: jax.Array
    num_reductions: jax.Array

    @property
    def scale(self) -> jax.Array:
        """``learning_rate / initial_learning_rate`` (1 when the initial rate is 0)."""
        init = self.initial_learning_rate
        return jnp.where(init == 0, 1.0, self.learning_rate / jnp.where(init == 0, 1.0, init))


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
    """Multiply the learning rate by ``factor`` when the metric plateaus (Keras 3 rule).

    Per ``update``, with ``d = |min_delta|`` and ``x`` improving on ``r`` when
    ``x + d < r`` (min) or ``x - d > r`` (max), the first value always improving
    and NaN never::

        if cooldown_counter > 0:  cooldown_counter -= 1; wait = 0
        if x improves on best:    best = x; wait = 0
        elif cooldown_counter == 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr = max(lr * factor, min_lr); cooldown_counter = cooldown; wait = 0

    ``min_delta`` is absolute, so negative metrics (negative log-likelihoods,
    ELBOs) behave: ``optax.contrib.reduce_on_plateau`` tests
    ``x < (1 - rtol) * best - atol``, which for a negative ``best`` and
    ``rtol > 0`` counts values slightly worse than ``best`` as improvements and
    so never reduces on a flat negative loss (optax PR #698 introduced the form;
    optax PR #1767 reports the negative-value bug).

    Args:
        monitor: static; key of the metric in the ``metrics`` dict.
        factor: in (0, 1); ``new_lr = lr * factor``.
        patience: int >= 0; non-improving epochs (outside cooldown) before reducing.
        mode: static; ``"min"``, ``"max"`` or ``"auto"`` (as :class:`EarlyStopping`).
        min_delta: absolute threshold for a new best, any number (``abs`` is used).
        cooldown: int >= 0; epochs after a reduction during which ``wait`` stays 0.
        min_lr: >= 0; floor on the learning rate.

    Returns:
        A frozen, hashable config with ``init(learning_rate)`` and
        ``update(state, metrics)``; multiply optimizer updates by ``state.scale``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxreg.early_stopping import ReduceLROnPlateau
        >>> plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e-3)
        >>> state = plateau.init(0.1)
        >>> lrs = []
        >>> for x in [-1.0, -1.00001, -1.00002, -1.5, -1.5]:
        ...     state = plateau.update(state, {"loss": x})
        ...     lrs.append(round(float(state.learning_rate), 6))
        >>> lrs, float(state.scale)
        ([0.1, 0.05, 0.025, 0.025, 0.0125], 0.125)

    References:
        Keras 3.15, ``keras.callbacks.ReduceLROnPlateau``.
    """

    monitor: str = "val_loss"
    factor: float = 0.1
    patience: int = 10
    mode: str = "auto"
    min_delta: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0

    def __post_init__(self):
        owner = "ReduceLROnPlateau"
        if not isinstance(self.monitor, str):
            raise TypeError(f"{owner}: monitor must be a str, got {self.monitor!r}.")
        factor = _check_number(owner, "factor", self.factor)
        if not 0.0 < factor < 1.0:
            raise ValueError(f"{owner}: factor must lie in (0, 1), got {self.factor!r}.")
        object.__setattr__(self, "factor", factor)
        object.__setattr__(
            self, "min_delta", abs(_check_number(owner, "min_delta", self.min_delta))
        )
        min_lr = _check_number(owner, "min_lr", self.min_lr)
        if min_lr < 0:
            raise ValueError(f"{owner}: min_lr must be >= 0, got {self.min_lr!r}.")
        object.__setattr__(self, "min_lr", min_lr)
        _check_int(owner, "patience", self.patience)
        _check_int(owner, "cooldown", self.cooldown)
        _resolve_mode(owner, self.monitor, self.mode)

    @property
    def direction(self) -> str:
        """``"min"`` or ``"max"``: the resolved ``mode``."""
        return _resolve_mode("ReduceLROnPlateau", self.monitor, self.mode)

    def init(self, learning_rate: Any) -> ReduceLROnPlateauState:
        """Fresh state at ``learning_rate`` (a float or a float32 scalar, may be traced)."""
        lr = jnp.asarray(learning_rate, jnp.float32)
        if lr.ndim != 0:
            raise ValueError(f"learning_rate must be a scalar, got shape {lr.shape}.")
        inf = jnp.inf if self.direction == "min" else -jnp.inf
        zero = jnp.zeros([], jnp.int32)
        return ReduceLROnPlateauState(
            learning_rate=lr,
            initial_learning_rate=lr,
            best_value=jnp.full([], inf, jnp.float32),
            best_step=jnp.full([], -1, jnp.int32),
            wait=zero,
            cooldown_counter=zero,
            count=zero,
            num_reductions=zero,
        )

    def update(
        self, state: ReduceLROnPlateauState, metrics: Mapping[str, Any]
    ) -> ReduceLROnPlateauState:
        """State after one epoch whose metrics are ``metrics`` (a dict holding ``monitor``)."""
        current = _monitored("ReduceLROnPlateau", self.monitor, metrics)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = jnp.where(
            in_cooldown, state.cooldown_counter - 1, state.cooldown_counter
        )
        wait = jnp.where(in_cooldown, 0, state.wait)
        improved = ~jnp.isnan(current) & (
            (state.best_step < 0)
            | _improves(self.direction, current, state.best_value, self.min_delta)
        )
        counting = ~improved & (cooldown_counter == 0)
        wait = jnp.where(improved, 0, jnp.where(counting, wait + 1, wait))
        lr = state.learning_rate
        reduce = counting & (wait >= self.patience) & (lr > jnp.float32(self.min_lr))
        new_lr = jnp.maximum(lr * jnp.float32(self.factor), jnp.float32(self.min_lr))
        return ReduceLROnPlateauState(
            learning_rate=jnp.where(reduce, new_lr, lr),
            initial_learning_rate=state.initial_learning_rate,
            best_value=jnp.where(improved, current, state.best_value),
            best_step=jnp.where(improved, state.count, state.best_step).astype(jnp.int32),
            wait=jnp.where(reduce, 0, wait).astype(jnp.int32),
            cooldown_counter=jnp.where(reduce, self.cooldown, cooldown_counter).astype(jnp.int32),
            count=(state.count + 1).astype(jnp.int32),
            num_reductions=(state.num_reductions + reduce).astype(jnp.int32),
        )
