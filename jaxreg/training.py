"""Training state and jitted train / eval steps for regularized training.

A :class:`Trainer` holds the static parts of a run (the model, the optimizer,
the loss, named penalty terms, on-device augmentation, EMA, the device mesh);
a :class:`TrainState` holds the arrays (step, params, batch statistics,
optimizer state, key, regularization hyperparameters, EMA copies, the count of
skipped updates). Hyperparameters live in the state as float32 scalars, so a new
value never recompiles and ``jax.vmap`` over states trains a sweep in one
program (:func:`jaxreg.sweep`).

The model is a flax linen module called as ``model.apply(variables, x,
train=...)`` (the keyword is :attr:`Trainer.train_kwarg`), or a callable
``hparams -> module`` when the module itself depends on a hyperparameter (a
dropout rate). Batches are ``(inputs, labels)`` tuples with integer labels, or
soft labels ``(N, K)`` after mixup/cutmix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg._util import path_str, put, tree_where
from jaxreg.losses import soft_target_cross_entropy, softmax_cross_entropy
from jaxreg.masks import check_mask, mask_leaves, resolve_mask
from jaxreg.transforms.clipping import global_norm

__all__ = ["TrainState", "Trainer", "image_augment"]

Batch = tuple[jax.Array, jax.Array]
Hparams = Mapping[str, jax.Array]


class TrainState(struct.PyTreeNode):
    """Everything a training run carries from step to step, as arrays.

    Attributes:
        step: int32 number of steps taken (skipped ones included).
        params: model parameters.
        batch_stats: running statistics of batch norm layers (``{}`` if none).
        opt_state: optimizer state.
        key: typed base key; step ``t`` draws from ``fold_in(fold_in(key, 0), t)``
            and the data order of epoch ``e`` from ``fold_in(fold_in(key, 1), e)``,
            so a run resumed from a checkpoint repeats the uninterrupted one.
        hparams: dict of float32 scalars: regularization strengths read by the
            step (penalty weights, ``label_smoothing``, whatever the model,
            optimizer and augmentation callables read).
        ema_params, ema_batch_stats: exponential moving averages (Polyak
            averaging) of the parameters and of the batch statistics, or None.
        skipped: int32 number of updates skipped for a non-finite loss or gradient.
        lr_scale: float32 multiplier of the optimizer's updates (reduce on plateau).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array
    hparams: dict
    skipped: jax.Array
    lr_scale: jax.Array
    ema_params: Any = None
    ema_batch_stats: Any = None


def image_augment(op: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable:
    """Lift an image op ``(key, images) -> images`` to the trainer's augment signature.

    The trainer calls ``augment(key, images, labels, hparams) -> (images, labels)``;
    this wraps ops that leave labels alone (crop, flip, colour, erasing, ...).

    Example:
        >>> import functools, jax.numpy as jnp
        >>> from jaxreg.augment import random_flip
        >>> aug = image_augment(random_flip)
        >>> x, y = aug(jax.random.key(0), jnp.zeros((2, 4, 4, 1)), jnp.array([0, 1]), {})
        >>> x.shape, y.tolist()
        ((2, 4, 4, 1), [0, 1])
    """
    if not callable(op):
        raise TypeError(f"image_augment: op must be callable, got {type(op).__name__}.")

    def augment(key, images, labels, hparams):
        del hparams
        return op(key, images), labels

    return augment


def _penalty_fn(name: str, value: Any) -> tuple[Callable, float | None]:
    if callable(value):
        return value, None
    if isinstance(value, tuple) and len(value) == 2 and callable(value[0]):
        return value[0], float(value[1])
    raise TypeError(
        f"Trainer: penalties[{name!r}] must be a callable params -> scalar or a pair "
        f"(callable, default_weight), got {value!r}."
    )


def _clip_flags(opt_state) -> list[jax.Array]:
    """``clipped`` fields of the clipping states found in an optimizer state."""
    found = []

    def visit(node):
        if hasattr(node, "_fields") and "clipped" in node._fields:
            found.append(jnp.asarray(node.clipped, jnp.bool_))
        return node

    jax.tree.map(visit, opt_state, is_leaf=lambda n: hasattr(n, "_fields"))
    return found


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """Static description of a regularized training run; builds the steps.

    Args:
        model: a flax linen module, or a callable ``hparams -> module`` (for a
            module field that is a hyperparameter, e.g. a traced dropout rate).
        optimizer: an optax ``GradientTransformation``, or a callable
            ``hparams -> GradientTransformation`` (for a traced weight decay or
            clip threshold; its state structure must not depend on the values).
        loss: ``(logits, labels, hparams) -> per-example losses``; default:
            softmax cross-entropy with ``hparams["label_smoothing"]`` (0 when
            absent) for integer labels, soft-target cross-entropy for soft labels.
        penalties: ``{name: fn}`` or ``{name: (fn, default_weight)}`` with
            ``fn(params) -> scalar``; the term ``hparams[name] * fn(params)`` is
            added to the loss and logged as ``penalty/<name>``.
        augment: ``(key, images, labels, hparams) -> (images, labels)`` applied
            on device inside the step (see :func:`image_augment`).
        augment_index: the augment also takes the keywords ``index`` (the
            batch's example indices in the training set) and ``epoch``, for
            augmentation that follows each example across epochs (e.g.
            :func:`jaxreg.augment.alternating_flip`). :func:`jaxreg.fit` and
            :func:`jaxreg.sweep` pass them; :meth:`step_fn` and
            :meth:`train_step` take them as ``index=`` and ``epoch=``.
        ema_decay: decay of the parameter EMA in [0, 1), or None for no EMA.
        tta: test-time augmentation for evaluation, or None: ``images -> views``
            (a sequence of batches of the same shape, e.g.
            :func:`jaxreg.augment.flip_views`); :meth:`eval_fn` averages the
            model's logits over the views. Training steps never use it.
        ema_warmup: use ``min(ema_decay, (1 + t) / (10 + t))`` at step ``t``
            (TensorFlow's ``ExponentialMovingAverage(num_updates=t)``), so the
            average leaves the initial weights within tens of steps instead of
            thousands; False uses ``ema_decay`` from the first step.
        train_kwarg: keyword through which the model receives the training flag.
        rng_streams: flax rng streams drawn per step (``fold_in`` of the step key).
        skip_non_finite: skip (and count) an update whose loss or gradient is not
            finite, keeping params, optimizer state and statistics unchanged.
        mesh: a ``jax.sharding.Mesh``: batches are sharded over ``data_axis``,
            the state is replicated (or sharded by ``param_sharding``).
        data_axis: mesh axis name of the batch dimension.
        donate: donate the state buffers to the jitted step.
        param_sharding: ``(path, param) -> PartitionSpec | None`` (path like
            ``"Dense_0/kernel"``): shard parameters over other mesh axes (e.g.
            ``P(None, "model")`` for a kernel's output units); None replicates.
        log_norms: ``"sampled"`` (default), True or False. True logs
            ``grad_norm``, ``update_norm`` and ``param_norm`` on every step; each
            norm is one more pass over the parameters (together about 7% of a
            step of the 784-512-256-10 MLP on a 2-core CPU). ``"sampled"`` logs
            them on every :meth:`train_step` call but, when :func:`jaxreg.fit`
            or a sweep fuses steps into one ``lax.scan``, only on the last step
            of each fused call (the epoch's figure is the mean of those
            samples), which makes the fused loop as fast as one without norms.
            False never logs them. ``grad_norm`` is computed on every step
            anyway when ``skip_non_finite`` is on (it is the finiteness check).
        freeze: a mask (see :mod:`jaxreg.masks`, e.g. ``by_path("stem_bias")``)
            of parameters that stop training at step ``freeze_after``, or None.
            From then on they get no update, and their gradients are not
            computed (the step differentiates through a ``stop_gradient``):
            airbench trains its whitening bias for 3 epochs this way, which
            skips the stem's backward pass afterwards. :meth:`train_step`,
            :func:`jaxreg.fit` and :func:`jaxreg.sweep` read the step on the
            host and run one compiled program per phase; :meth:`step_fn` in
            your own ``jit`` takes the phase as ``freeze_on`` or, left None,
            branches with a ``lax.cond`` (on XLA:CPU with
            :func:`jaxreg.cpu.fast_convolutions` a small Airbench step with its
            convolutions inside cond branches ran 18x slower in a scratch timing).
        freeze_after: the step from which ``freeze`` holds (0: from the start,
            one phase).
    """

    model: Any
    optimizer: Any
    loss: Callable | None = None
    penalties: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    augment: Callable | None = None
    augment_index: bool = False
    ema_decay: float | None = None
    tta: Callable | None = None
    ema_warmup: bool = True
    train_kwarg: str = "train"
    rng_streams: tuple[str, ...] = ("dropout",)
    skip_non_finite: bool = True
    mesh: Mesh | None = None
    data_axis: str = "data"
    donate: bool = True
    log_norms: bool | str = "sampled"
    param_sharding: Callable[[str, Any], P | None] | None = None
    freeze: Any = None
    freeze_after: int = 0

    def __post_init__(self):
        if not (isinstance(self.model, nn.Module) or callable(self.model)):
            raise TypeError(
                f"Trainer: model must be a flax linen Module or a callable hparams -> Module, "
                f"got {type(self.model).__name__}."
            )
        if not (
            isinstance(self.optimizer, optax.GradientTransformation) or callable(self.optimizer)
        ):
            raise TypeError(
                "Trainer: optimizer must be an optax GradientTransformation or a callable "
                f"hparams -> GradientTransformation, got {type(self.optimizer).__name__}."
            )
        if not isinstance(self.penalties, Mapping):
            raise TypeError(f"Trainer: penalties must be a dict, got {self.penalties!r}.")
        for name, value in self.penalties.items():
            _penalty_fn(name, value)
        if self.log_norms not in (True, False, "sampled"):
            raise ValueError(
                f"Trainer: log_norms must be True, False or 'sampled', got {self.log_norms!r}."
            )
        if not isinstance(self.augment_index, bool):
            raise TypeError(f"Trainer: augment_index must be a bool, got {self.augment_index!r}.")
        if self.augment_index and self.augment is None:
            raise ValueError("Trainer: augment_index=True needs an augment.")
        if self.tta is not None and not callable(self.tta):
            raise TypeError(f"Trainer: tta must be a callable images -> views, got {self.tta!r}.")
        check_mask(self.freeze, "Trainer: freeze")
        if (
            not isinstance(self.freeze_after, (int, np.integer))
            or isinstance(self.freeze_after, bool)
            or self.freeze_after < 0
        ):
            raise ValueError(
                f"Trainer: freeze_after must be an int >= 0 (a step), got {self.freeze_after!r}."
            )
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"Trainer: ema_decay must lie in [0, 1), got {self.ema_decay!r}.")
        if self.param_sharding is not None and self.mesh is None:
            raise ValueError("Trainer: param_sharding needs a mesh.")
        if self.mesh is not None and self.data_axis not in self.mesh.axis_names:
            raise ValueError(
                f"Trainer: data_axis {self.data_axis!r} is not an axis of the mesh "
                f"{self.mesh.axis_names}."
            )

    # ------------------------------------------------------------------ pieces

    def module(self, hparams: Hparams) -> nn.Module:
        return self.model if isinstance(self.model, nn.Module) else self.model(hparams)

    def tx(self, hparams: Hparams) -> optax.GradientTransformation:
        if isinstance(self.optimizer, optax.GradientTransformation):
            return self.optimizer
        return self.optimizer(hparams)

    def _apply(self, hparams, params, batch_stats, x, *, train, rngs=None):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        kwargs = {self.train_kwarg: train}
        if train and batch_stats:
            logits, updates = self.module(hparams).apply(
                variables, x, rngs=rngs, mutable=["batch_stats"], **kwargs
            )
            return logits, updates["batch_stats"]
        return self.module(hparams).apply(variables, x, rngs=rngs, **kwargs), batch_stats

    def data_loss(self, logits, labels, hparams) -> jax.Array:
        """Per-example loss of the step (the ``loss`` callable or the default)."""
        if self.loss is not None:
            return self.loss(logits, labels, hparams)
        smoothing = hparams.get("label_smoothing", 0.0)
        if jnp.issubdtype(labels.dtype, jnp.integer):
            return softmax_cross_entropy(
                logits, labels, label_smoothing=smoothing, reduction="none"
            )
        k = logits.shape[-1]
        targets = (1.0 - smoothing) * labels + smoothing / k
        return soft_target_cross_entropy(logits, targets, reduction="none")

    # ------------------------------------------------------------------ init

    def init(
        self, key: jax.Array, sample_inputs: Any, hparams: Mapping[str, Any] | None = None
    ) -> TrainState:
        """A fresh state: parameters from ``key``, hyperparameters as float32 scalars.

        Args:
            key: a typed ``jax.random.key``; parameters use ``fold_in(key, 0)``,
                the run (steps, data order) ``fold_in(key, 1)``.
            sample_inputs: an input batch (or ``ShapeDtypeStruct``) for shapes.
            hparams: regularization strengths; each named penalty needs a weight
                here unless it was given a default.
        """
        if not (hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
            raise TypeError("Trainer.init: key must be a typed key from jax.random.key(seed).")
        hp = dict(hparams or {})
        for name, value in self.penalties.items():
            _, default = _penalty_fn(name, value)
            if name not in hp:
                if default is None:
                    raise ValueError(
                        f"Trainer.init: penalty {name!r} has no weight: pass hparams={{{name!r}: "
                        "...}} or penalties={name: (fn, default_weight)}."
                    )
                hp[name] = default
        hp = {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}
        for name, v in hp.items():
            if v.shape != ():
                raise ValueError(
                    f"Trainer.init: hparams[{name!r}] must be a scalar, got shape {v.shape} "
                    "(use jaxreg.sweep for several values)."
                )
        init_key, run_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        ema = self.ema_decay is not None
        # the model and optimizer are built here, from the concrete hparams as ever;
        # their initialisation runs as one compiled program, not op by op (the same
        # values bit for bit: tests/test_training.py; 1.45x-6x faster cold on a CPU,
        # benchmarks/bench_startup.py)
        module, tx = self.module(hp), self.tx(hp)
        shape, dtype = tuple(sample_inputs.shape), sample_inputs.dtype

        @jax.jit
        def variables_and_moments(init_key):
            variables = module.init(
                {"params": init_key, **{s: init_key for s in self.rng_streams}},
                jnp.zeros(shape, dtype),
                **{self.train_kwarg: False},
            )
            params = variables["params"]
            stats = variables.get("batch_stats", {})
            copies = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats))
            return params, stats, tx.init(params), copies if ema else (None, None)

        params, batch_stats, opt_state, (ema_params, ema_stats) = variables_and_moments(init_key)
        if self.freeze is not None and not any(mask_leaves(self.freeze, params, "freeze")):
            raise ValueError(
                "Trainer.init: freeze selects no parameter; parameter paths: "
                + ", ".join(path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))
            )
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            key=run_key,
            hparams=hp,
            skipped=jnp.zeros((), jnp.int32),
            lr_scale=jnp.ones((), jnp.float32),
            ema_params=ema_params,
            ema_batch_stats=ema_stats,
        )
        return self.replicate(state)

    # ------------------------------------------------------------------ sharding

    def replicate(self, tree: Any) -> Any:
        """Place a state on the mesh (a no-op without a mesh): replicated, except
        parameters (and the optimizer and EMA leaves that mirror them) that
        ``param_sharding`` assigns a partition spec."""
        if self.mesh is None:
            return tree
        return put(tree, self.state_shardings(tree))

    def state_shardings(self, tree: Any) -> Any:
        """``NamedSharding`` for every leaf of ``tree`` (a state or any pytree).

        With ``param_sharding``, a leaf whose path ends with a parameter's path
        (``opt_state/0/mu/Dense_0/kernel`` ends with ``Dense_0/kernel``) and has
        its shape gets that parameter's spec; everything else is replicated.
        """
        replicated = NamedSharding(self.mesh, P())
        if self.param_sharding is None or not isinstance(tree, TrainState):
            return jax.tree.map(lambda _: replicated, tree)
        specs = {}
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree.params):
            spec = self.param_sharding(path_str(path), leaf)
            if spec is not None:
                specs[path_str(path)] = (tuple(leaf.shape), spec)

        def place(path, leaf):
            name = path_str(path)
            for p_name, (shape, spec) in specs.items():
                if (name == p_name or name.endswith("/" + p_name)) and leaf.shape == shape:
                    return NamedSharding(self.mesh, spec)
            return replicated

        return jax.tree_util.tree_map_with_path(place, tree)

    def shard_batch(self, batch: Any, *, process_local: bool = False) -> Any:
        """Place a batch with its leading axis split over ``data_axis``.

        By default every process passes the same global batch. With
        ``process_local=True`` (multi-host input pipelines) each process passes
        only its own rows and the global batch is their concatenation in
        process order (``jax.make_array_from_process_local_data``).

        Raises a ``ValueError`` when the global batch size is not divisible by
        the number of devices on that axis. Without a mesh, ``jnp.asarray``.
        """
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        sharding = NamedSharding(self.mesh, P(self.data_axis))
        rows = jax.process_count() if process_local else 1
        for leaf in jax.tree.leaves(batch):
            self.check_batch_size(leaf.shape[0] * rows, "Trainer.shard_batch")
        if process_local:
            return jax.tree.map(
                lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)),
                batch,
            )
        return put(batch, jax.tree.map(lambda _: sharding, batch))

    def check_batch_size(self, batch_size: int, where: str = "Trainer") -> None:
        """Raise a ``ValueError`` unless ``batch_size`` splits evenly over ``data_axis``."""
        if self.mesh is None:
            return
        n_dev = self.mesh.shape[self.data_axis]
        if batch_size % n_dev:
            raise ValueError(
                f"{where}: batch size {batch_size} is not divisible by the "
                f"{n_dev} devices of mesh axis {self.data_axis!r}."
            )

    def _constrain_batch(self, batch: Any) -> Any:
        if self.mesh is None:
            return batch
        return jax.lax.with_sharding_constraint(batch, NamedSharding(self.mesh, P(self.data_axis)))

    def _constrain_state(self, state: TrainState) -> TrainState:
        if self.mesh is None:
            return state
        return jax.lax.with_sharding_constraint(state, self.state_shardings(state))

    # ------------------------------------------------------------------ steps

    def step_fn(
        self,
        state: TrainState,
        batch: Batch,
        *,
        log_norms: bool | None = None,
        freeze_on: bool | None = None,
        index: jax.Array | None = None,
        epoch: jax.Array | int | None = None,
    ) -> tuple[TrainState, dict]:
        """One training step, not jitted (compose it in your own ``jit``/``scan``/``vmap``).

        Returns the new state and the step's metrics: ``loss`` (total),
        ``data_loss``, ``penalty/<name>`` (weighted), ``accuracy``,
        ``grad_norm``, ``update_norm`` and ``param_norm`` (unless the trainer's
        ``log_norms`` is False, or ``log_norms=False`` is passed for this step),
        ``skipped`` (this update was skipped) and, when the optimizer clips,
        ``clipped``. A skipped update is one whose loss or gradient norm (and,
        when it is logged, update norm) is not finite. ``freeze_on`` (static):
        whether the trainer's ``freeze`` holds in this step; None decides from
        ``state.step`` inside the program (a ``lax.cond``). ``index`` (the
        batch's example indices) and ``epoch``: for an ``augment_index``
        augment (required then, ignored otherwise).
        """
        if log_norms is None:
            log_norms = bool(self.log_norms)
        x, labels = self._constrain_batch(batch)
        hp = state.hparams
        step_key = jax.random.fold_in(jax.random.fold_in(state.key, 0), state.step)
        keys = jax.random.split(step_key, len(self.rng_streams) + 1)
        rngs = {s: keys[i] for i, s in enumerate(self.rng_streams)}
        if self.augment_index:
            if index is None or epoch is None:
                raise ValueError(
                    "Trainer(augment_index=True): step_fn needs index= (the batch's example "
                    "indices in the training set) and epoch=; jaxreg.fit passes them."
                )
            x, labels = self.augment(keys[-1], x, labels, hp, index=index, epoch=epoch)
        elif self.augment is not None:
            x, labels = self.augment(keys[-1], x, labels, hp)

        frozen = (
            None
            if self.freeze is None
            else resolve_mask(self.freeze, state.params, name="Trainer: freeze")
        )

        def loss_fn(params, stop):
            if stop:  # frozen parameters: constants of this step, no gradient computed
                params = jax.tree.map(
                    lambda m, p: jax.lax.stop_gradient(p) if m else p, frozen, params
                )
            logits, new_stats = self._apply(hp, params, state.batch_stats, x, train=True, rngs=rngs)
            data = jnp.mean(self.data_loss(logits, labels, hp))
            terms = {}
            for name, value in self.penalties.items():
                fn, _ = _penalty_fn(name, value)
                terms[f"penalty/{name}"] = hp[name] * fn(params)
            total = data + sum(terms.values()) if terms else data
            return total, (logits, new_stats, data, terms)

        def value_and_grad(stop):
            return jax.value_and_grad(loss_fn, has_aux=True)(state.params, stop)

        if frozen is not None and self.freeze_after == 0:
            freeze_on = True
        if frozen is None or freeze_on is not None:
            out = value_and_grad(frozen is not None and bool(freeze_on))
        else:
            out = jax.lax.cond(
                state.step >= self.freeze_after,
                lambda: value_and_grad(True),
                lambda: value_and_grad(False),
            )
        (loss, (logits, new_stats, data, terms)), grads = out
        tx = self.tx(hp)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: (u * state.lr_scale).astype(u.dtype), updates)
        if frozen is not None:  # no update (momentum, decay) moves a frozen parameter
            now = state.step >= self.freeze_after if freeze_on is None else freeze_on
            updates = jax.tree.map(
                lambda m, u: jnp.where(now, jnp.zeros_like(u), u) if m else u, frozen, updates
            )
        new_params = optax.apply_updates(state.params, updates)

        norms = {}
        if self.skip_non_finite or log_norms:
            norms["grad_norm"] = global_norm(grads)
        if log_norms:
            norms["update_norm"] = global_norm(updates)
        ok = jnp.array(True)
        if self.skip_non_finite:
            # a NaN/Inf anywhere makes the float32 norm non-finite (a finite norm above
            # ~1.8e19 counts too: a blow-up); the optimizer's output is checked as well
            # when its norm is logged
            ok = jnp.isfinite(loss) & jnp.isfinite(norms["grad_norm"])
            if log_norms:
                ok = ok & jnp.isfinite(norms["update_norm"])
            new_params = tree_where(ok, new_params, state.params)
            new_opt = tree_where(ok, new_opt, state.opt_state)
            new_stats = tree_where(ok, new_stats, state.batch_stats)
        ema_params, ema_stats = state.ema_params, state.ema_batch_stats
        if self.ema_decay is not None:
            d = jnp.float32(self.ema_decay)
            if self.ema_warmup:
                t = state.step.astype(jnp.float32)
                d = jnp.minimum(d, (1.0 + t) / (10.0 + t))
            d = jnp.where(ok, d, 1.0)

            def ema(old, new):
                return (d * old + (1.0 - d) * new).astype(old.dtype)

            ema_params = jax.tree.map(ema, state.ema_params, new_params)
            ema_stats = jax.tree.map(ema, state.ema_batch_stats, new_stats)
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            batch_stats=new_stats,
            opt_state=new_opt,
            skipped=state.skipped + (~ok).astype(jnp.int32),
            ema_params=ema_params,
            ema_batch_stats=ema_stats,
        )
        metrics = {
            "loss": loss,
            "data_loss": data,
            **terms,
            "accuracy": _accuracy(logits, labels),
            **(norms if log_norms else {}),
            "skipped": ~ok,
        }
        flags = _clip_flags(new_opt)
        if log_norms:
            metrics["param_norm"] = global_norm(new_params)
        if flags:
            metrics["clipped"] = jnp.any(jnp.stack(flags))
        return self._constrain_state(new_state), metrics

    def eval_fn(
        self, state: TrainState, batch: Batch, *, ema: bool = False, tta: bool = True
    ) -> dict:
        """Sums over one batch with deterministic layers and running statistics.

        Returns ``loss_sum`` (plain cross-entropy, no smoothing), ``correct`` and
        ``count``; :meth:`evaluate` turns them into means. ``ema=True`` uses the
        EMA parameters and statistics. With the trainer's ``tta`` the logits are
        the mean over its views, unless ``tta=False`` (the plain images).
        """
        x, labels = self._constrain_batch(batch)
        if ema and state.ema_params is None:
            raise ValueError("Trainer.eval_fn: ema=True needs a Trainer with ema_decay set.")
        params = state.ema_params if ema else state.params
        stats = state.ema_batch_stats if ema else state.batch_stats
        logits = self.eval_logits(state.hparams, params, stats, x, tta=tta)
        if jnp.issubdtype(labels.dtype, jnp.integer):
            losses = softmax_cross_entropy(logits, labels, reduction="none")
        else:
            losses = soft_target_cross_entropy(logits, labels, reduction="none")
        n = labels.shape[0]
        return {
            "loss_sum": jnp.sum(losses),
            "correct": _accuracy(logits, labels) * n,
            "count": jnp.float32(n),
        }

    def eval_logits(self, hparams, params, batch_stats, x, *, tta: bool = True) -> jax.Array:
        """Eval-mode logits of ``x``, averaged over the ``tta`` views when set (and
        ``tta`` is True)."""
        if self.tta is None or not tta:
            return self._apply(hparams, params, batch_stats, x, train=False)[0]
        views = list(self.tta(x))
        if not views or any(v.shape != x.shape for v in views):
            raise ValueError(
                f"Trainer: tta must return a non-empty sequence of arrays shaped like its "
                f"input {x.shape}, got {[getattr(v, 'shape', v) for v in views]}."
            )
        # one forward pass over all views stacked on the batch axis
        logits = self._apply(hparams, params, batch_stats, jnp.concatenate(views), train=False)[0]
        return logits.reshape(len(views), x.shape[0], *logits.shape[1:]).mean(axis=0)

    @cached_property
    def train_step(self) -> Callable[..., tuple[TrainState, dict]]:
        """Jitted :meth:`step_fn`, donating the state buffers when ``donate``.

        With ``freeze`` from a later step the phase is read from ``state.step``
        on the host (waiting for the previous step) unless ``freeze_on`` is given.
        """
        jitted = jax.jit(
            self.step_fn,
            donate_argnums=(0,) if self.donate else (),
            static_argnames=("log_norms", "freeze_on"),
        )
        if self.freeze is None or self.freeze_after == 0:
            return jitted

        def step(state, batch, *, log_norms=None, freeze_on=None, **augment_args):
            if freeze_on is None and np.ndim(state.step) == 0:
                freeze_on = self.freeze_phase(int(state.step))
            return jitted(state, batch, log_norms=log_norms, freeze_on=freeze_on, **augment_args)

        return step

    def freeze_phase(self, step: int) -> bool | None:
        """Whether ``freeze`` holds at ``step`` (None: the trainer freezes nothing)."""
        return None if self.freeze is None else step >= self.freeze_after

    @cached_property
    def eval_step(self) -> Callable[..., dict]:
        """Jitted :meth:`eval_fn` (``ema`` and ``tta`` static)."""
        return jax.jit(self.eval_fn, static_argnames=("ema", "tta"))

    def epoch_fn(self, state: TrainState, batches: Batch, *, unroll: int | bool = 1):
        """``lax.scan`` of :meth:`step_fn` over batches stacked on a leading axis.

        Returns the final state and the per-step metrics stacked on axis 0.
        """
        return jax.lax.scan(self.step_fn, state, batches, unroll=unroll)

    def evaluate_fn(
        self, state: TrainState, batches: Batch, *, ema: bool = False, tta: bool = True
    ) -> dict:
        """Means of :meth:`eval_fn` over stacked batches: ``loss`` and ``accuracy``."""

        def body(acc, batch):
            m = self.eval_fn(state, batch, ema=ema, tta=tta)
            return jax.tree.map(jnp.add, acc, m), None

        zero = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
        sums, _ = jax.lax.scan(body, zero, batches)
        return {
            "loss": sums["loss_sum"] / sums["count"],
            "accuracy": sums["correct"] / sums["count"],
        }


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    pred = jnp.argmax(logits, axis=-1)
    target = labels if jnp.issubdtype(labels.dtype, jnp.integer) else jnp.argmax(labels, axis=-1)
    return jnp.mean((pred == target).astype(jnp.float32))
