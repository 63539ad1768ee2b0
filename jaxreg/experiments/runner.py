"""Run the regularization experiments: data, trainers per config, compare and sweep.

:func:`prepare` loads a dataset (:mod:`jaxreg.data`) onto the device as float32
with a seeded validation split; :func:`build` turns a
:class:`~jaxreg.experiments.configs.Regularization` into a
:class:`~jaxreg.Trainer`; :func:`run_config` trains one model per config with
:func:`jaxreg.fit`; :func:`run_sweep` trains the members of one hyperparameter
sweep in one program with :func:`jaxreg.sweep`. Results are plain dicts (JSON
ready), written out by :mod:`jaxreg.experiments.report`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import data as data_lib
from ..augment import (
    alternating_flip,
    flip_translate_views,
    flip_views,
    random_crop,
    random_crop_flip,
)
from ..early_stopping import EarlyStopping
from ..fitting import Loop, fit
from ..masks import by_kernels, by_path
from ..models import get_model, whitening_init
from ..penalties import l2_penalty
from ..sweeps import sweep
from ..training import Trainer, image_augment
from ..transforms import clip_by_global_norm, decoupled_weight_decay, keep_max_norm, lookahead
from .configs import SWEEPABLE, Regularization

#: the model each dataset uses unless ``model`` is given.
DEFAULT_MODEL = {
    "digits": "cnn",
    "mnist": "cnn",
    "fashion_mnist": "cnn",
    "kmnist": "cnn",
    "cifar10": "resnet",
    "cifar100": "resnet",
    "mnist1d": "cnn1d",
}
NATURAL_IMAGES = ("cifar10", "cifar100")  # horizontal flips keep the label
#: test-time views of ``tta`` (``True`` is ``"flip"``): the image and its mirror,
#: or those of the image and of two copies shifted by a pixel (airbench's level 2).
TTA_VIEWS = {"flip": flip_views, "flip_translate": flip_translate_views}
#: horizontal flips of the ``augmentation`` config on natural images: ``random``
#: (each example, each step, with probability 1/2) or ``alternating`` (airbench's
#: :func:`jaxreg.augment.alternating_flip`: each example's mirror alternates per epoch).
FLIPS = ("random", "alternating")
ALWAYS_BATCHNORM = ("resnet", "airbench")  # its BatchNorm is part of the architecture


@dataclasses.dataclass
class Data:
    """Device-resident float32 splits of one dataset."""

    name: str
    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array] | None  # None when prepared with val_fraction=0
    test: tuple[jax.Array, jax.Array]
    num_classes: int

    @property
    def is_image(self) -> bool:
        return self.train[0].ndim == 4


def prepare(
    dataset: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    train_size: int | None = None,
    val_fraction: float = 0.2,
    loader: Callable[..., data_lib.Dataset] = data_lib.load,
    folds: int = 0,
    fold: int = 0,
) -> Data:
    """Load ``dataset``, scale images to [0, 1], standardize signals, split off validation.

    The validation set is a seeded ``val_fraction`` of the training split
    (rounded to a multiple of 500 above 2,500 examples, so evaluation batches
    divide it), or none with ``val_fraction=0`` (``Data.val`` is then None and
    the whole training split trains); ``train_size`` then keeps a seeded random
    subset of the rest for training (a small training set overfits sooner).

    ``folds=K`` (K >= 2) splits for K-fold cross-validation instead of
    ``val_fraction``: the seeded permutation of the training split is cut into K
    blocks of ``n // K`` examples (the ``n % K`` left over always train) and
    block ``fold`` validates. The K folds' validation sets are disjoint and the
    splits have the same shapes, so one compiled program serves every fold.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if folds and (folds < 2 or not 0 <= fold < folds):
        raise ValueError(f"folds must be >= 2 and fold in [0, folds), got {folds=} {fold=}")
    ds = loader(dataset, data_dir=data_dir)
    (x, y), (xt, yt) = ds.train, ds.test
    perm = np.random.default_rng(seed).permutation(len(y))
    if folds:
        size = len(perm) // folds
        if size < 1:
            raise ValueError(f"folds={folds} exceeds the {len(perm)} training examples")
        block = np.arange(fold * size, (fold + 1) * size)
        n_val, perm = size, np.concatenate([perm[block], np.delete(perm, block)])
    else:
        n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * len(perm)))
        if n_val > 2500:
            n_val -= n_val % 500
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_size is not None:
        if not 1 < train_size <= len(train_idx):
            raise ValueError(
                f"train_size must lie in [2, {len(train_idx)}] for {dataset} "
                f"(the training split minus validation), got {train_size}"
            )
        train_idx = train_idx[:train_size]
    if x.dtype == np.uint8:
        scale = lambda a: jnp.asarray(a, jnp.float32) / 255.0
    else:
        mean, std = float(x[train_idx].mean()), float(x[train_idx].std()) or 1.0
        scale = lambda a: (jnp.asarray(a, jnp.float32) - mean) / std
    put = lambda xs, ys: (scale(xs), jnp.asarray(ys, jnp.int32))
    return Data(
        name=ds.name,
        train=put(x[train_idx], y[train_idx]),
        val=put(x[val_idx], y[val_idx]) if n_val else None,
        test=put(xt, yt),
        num_classes=ds.num_classes,
    )


def random_shift_1d(key: jax.Array, x: jax.Array, *, max_shift: int) -> jax.Array:
    """Shift every signal of ``x`` ``(N, L, C)`` by ``U{-max_shift..max_shift}`` steps,
    repeating the edge values (the 1-D counterpart of a random crop)."""
    length = x.shape[1]
    s = jax.random.randint(key, (x.shape[0], 1), -max_shift, max_shift + 1)
    idx = jnp.clip(jnp.arange(length)[None, :] + s, 0, length - 1)
    return jnp.take_along_axis(x, idx[..., None], axis=1)


def _augment(data: Data, strength: float, flip: str = "random", seed: int = 0) -> Callable:
    """The trainer's augment callable: translations (and flips for natural images).

    ``flip="alternating"`` returns an ``augment_index`` augment (its flips are
    drawn once per example from ``seed``)."""
    if data.is_image:
        pad = max(1, round(strength * data.train[0].shape[1] / 8))
        if data.name in NATURAL_IMAGES and flip == "alternating":
            flip_key = jax.random.fold_in(jax.random.key(seed), 0xF11)

            def augment(key, images, labels, hparams, *, index, epoch):
                del hparams
                images = random_crop(key, images, padding=pad, mode="reflect")
                return alternating_flip(flip_key, images, index, epoch), labels

            return augment
        if data.name in NATURAL_IMAGES:
            op = functools.partial(random_crop_flip, padding=pad, mode="reflect")
        else:
            op = functools.partial(random_crop, padding=pad, mode="constant")
    else:
        shift = max(1, round(strength * data.train[0].shape[1] / 10))
        op = functools.partial(random_shift_1d, max_shift=shift)
    return image_augment(op)


#: learning-rate schedules of the runs (``jaxreg compare/sweep --schedule``).
SCHEDULES = ("constant", "cosine", "triangle")

#: optimizers of the runs (``--optimizer``): Adam, or SGD with Nesterov momentum (0.9 default).
OPTIMIZERS = ("adam", "sgd")


def learning_rate_schedule(learning_rate: float, schedule: str, total_steps: int):
    """The optimizer's rate over ``total_steps`` steps.

    ``constant``: ``learning_rate`` throughout. ``cosine``: cosine decay to 0.
    ``triangle``: linear from ``0.2 * learning_rate`` up to ``learning_rate`` at
    a quarter of the run, then linear down to 0 (the one-cycle shape of the fast
    CIFAR-10 trainers, Page 2018 and airbench).
    """
    total = max(1, int(total_steps))
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total)
    if schedule == "triangle":
        peak = max(1, total // 4)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.2 * learning_rate, learning_rate, peak),
                optax.linear_schedule(learning_rate, 0.0, max(1, total - peak)),
            ],
            [peak],
        )
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def base_optimizer(name: str, learning_rate, momentum: float = 0.9) -> optax.GradientTransformation:
    """``adam`` (optax defaults) or ``sgd`` (Nesterov ``momentum``) at ``learning_rate``."""
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def lookahead_step_size(total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """airbench94's Lookahead pull at update ``i`` of ``total_steps``:
    ``1 - 0.95**5 * ((i + 1) / total_steps) ** 3`` (1 early: no averaging)."""
    total = max(1, int(total_steps))
    return lambda i: 1.0 - 0.95**5 * jnp.minimum((i + 1) / total, 1.0) ** 3


def build(
    reg: Regularization,
    model: str,
    data: Data,
    *,
    learning_rate: float | Callable = 1e-3,
    model_fields: dict[str, Any] | None = None,
    optimizer: str = "adam",
    tta: bool | str = False,
    momentum: float = 0.9,
    freeze: tuple[str, int] | None = None,
    total_steps: int | None = None,
    flip: str = "random",
    seed: int = 0,
) -> tuple[Trainer, dict[str, float], EarlyStopping | None]:
    """The trainer, its hyperparameters and early stopping for one config.

    Every numeric regularizer that is on is a traced hyperparameter of the
    trainer (``hparams[name]``), so :func:`run_sweep` can vary it per member.
    The ResNet and Airbench nets always have BatchNorm (the ``batchnorm`` switch
    does not change them). ``optimizer`` is one of :data:`OPTIMIZERS` (``momentum``:
    SGD's Nesterov momentum); ``tta`` evaluates natural images as the mean logits
    over test views (:data:`TTA_VIEWS`: ``"flip"`` or True, the image and its
    mirror; ``"flip_translate"``, six views). The Airbench
    net gets its frozen whitening stem from the first 5,000 training images
    (:func:`jaxreg.models.whitening_init`) unless ``model_fields`` has one.
    ``freeze=(regex, step)`` stops training the parameters whose path matches
    ``regex`` (:func:`jaxreg.by_path`) from ``step`` on (``Trainer.freeze``).
    ``lookahead`` schedules its pull over ``total_steps`` (required then).
    ``flip`` (:data:`FLIPS`): the ``augmentation`` config's flips on natural
    images; ``alternating`` draws each example's first orientation from ``seed``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if tta is True:
        tta = "flip"
    if tta and tta not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {', '.join(TTA_VIEWS)} or a bool, got {tta!r}")
    if tta and data.name not in NATURAL_IMAGES:
        raise ValueError(
            f"tta (mirrored test views) needs natural images ({', '.join(NATURAL_IMAGES)}), "
            f"got dataset {data.name!r}"
        )
    if flip not in FLIPS:
        raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got {flip!r}")
    if flip != "random" and data.name not in NATURAL_IMAGES:
        raise ValueError(
            f"flip={flip!r} needs natural images ({', '.join(NATURAL_IMAGES)}), "
            f"got dataset {data.name!r}"
        )
    on = reg.active()
    if "lookahead" in on and not (isinstance(total_steps, int) and total_steps >= 1):
        raise ValueError(f"lookahead needs total_steps (an int >= 1), got {total_steps!r}")
    hp = {k: float(v) for k, v in on.items() if k in SWEEPABLE}
    base_optimizer(optimizer, 0.0, momentum)  # bad momentum fails here, not in jit
    fields = dict(model_fields or {})
    if model == "airbench" and fields.get("whitening") is None and data.is_image:
        fields["whitening"] = whitening_init(data.train[0][:5000])
    kernels = by_kernels()

    def make_model(h):
        rate = h["dropout"] if "dropout" in h else 0.0
        if model not in ALWAYS_BATCHNORM:
            fields["batch_norm"] = reg.batchnorm
        return get_model(model, num_classes=data.num_classes, dropout=rate, **fields)

    def make_optimizer(h):
        parts = []
        if "clipping" in h:
            parts.append(clip_by_global_norm(h["clipping"]))
        if "weight_decay" in h:
            parts.append(
                decoupled_weight_decay(
                    base_optimizer(optimizer, learning_rate, momentum),
                    h["weight_decay"],
                    learning_rate,
                    mask=kernels,
                )
            )
        else:
            parts.append(base_optimizer(optimizer, learning_rate, momentum))
        if "max_norm" in h:
            parts.append(keep_max_norm(h["max_norm"], mask=kernels))
        if "lookahead" in on:
            parts.append(lookahead(5, lookahead_step_size(total_steps)))
        return optax.chain(*parts) if len(parts) > 1 else parts[0]

    penalties = {}
    if "l2" in hp:
        penalties["l2"] = lambda p: l2_penalty(p, mask=kernels)
    trainer = Trainer(
        model=make_model,
        optimizer=make_optimizer,
        penalties=penalties,
        augment=_augment(data, on["augmentation"], flip, seed) if "augmentation" in on else None,
        augment_index="augmentation" in on and flip == "alternating",
        ema_decay=on.get("ema"),
        tta=TTA_VIEWS[tta] if tta else None,
        **({} if freeze is None else {"freeze": by_path(freeze[0]), "freeze_after": freeze[1]}),
    )
    es = None
    if "early_stopping" in on:
        es = EarlyStopping("val_loss", patience=on["early_stopping"], restore_best_weights=True)
    return trainer, hp, es


def _eval_batches(n: int) -> int:
    return n if n <= 2500 else 500


#: the batch of :func:`evaluate`: every split runs through one compiled program of
#: this many rows (a short split or tail is padded and masked)
EVAL_BATCH = 500


def evaluate(
    trainer: Trainer, state, x: jax.Array, y: jax.Array, *, ema: bool = False, tta: bool = True
) -> dict:
    """``{"loss", "accuracy"}`` over all of ``(x, y)`` (the tail batch included);
    ``tta=False`` evaluates the plain images even when the trainer has views.

    Every split of a run goes through the same compiled program (batches of
    :data:`EVAL_BATCH`; the last batch is the split's last rows, its rows counted
    already masked out, and a split shorter than a batch is padded): one
    compilation for all splits instead of one per split size.
    """
    n = x.shape[0]
    if n < 1:
        raise ValueError("evaluate: x has no rows")
    if ema and state.ema_params is None:
        raise ValueError("evaluate: ema=True needs a Trainer with ema_decay set.")
    tta = bool(tta) and trainer.tta is not None  # without views both are one program
    cache = trainer.__dict__.setdefault("_experiment_eval", {})
    if (ema, tta) not in cache:
        cache[ema, tta] = jax.jit(functools.partial(_batch_sums, trainer, ema=ema, tta=tta))
    if n < EVAL_BATCH:  # pad once to a whole batch; the pad rows get no weight
        pad = ((0, EVAL_BATCH - n),) + ((0, 0),) * (x.ndim - 1)
        x, y = jnp.pad(x, pad), jnp.pad(y, pad[:1])
    rows = np.arange(EVAL_BATCH)
    loss = correct = 0.0
    for done in range(0, n, EVAL_BATCH):
        start = min(done, x.shape[0] - EVAL_BATCH)  # the tail: the last whole batch
        weight = (rows >= done - start) & (rows < n - start)  # each row counted once
        sums = cache[ema, tta](state, *_rows(x, y, start), weight)
        loss, correct = loss + sums[0], correct + sums[1]
    return {"loss": float(loss) / n, "accuracy": float(correct) / n}


@jax.jit
def _rows(x, y, start):
    """:data:`EVAL_BATCH` rows of ``(x, y)`` from ``start`` (a small program per
    split shape; the model's program sees batches only)."""
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, EVAL_BATCH)
    return take(x), take(y)


def _batch_sums(trainer: Trainer, state, x, y, weight, *, ema: bool, tta: bool):
    """Masked sums of the plain cross-entropy and of the correct predictions."""
    params = state.ema_params if ema else state.params
    stats = state.ema_batch_stats if ema else state.batch_stats
    logits = trainer.eval_logits(state.hparams, params, stats, x, tta=tta)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    w = jnp.asarray(weight, jnp.float32)
    return jnp.sum(losses * w), jnp.sum((jnp.argmax(logits, -1) == y) * w)


def _eval_batch_size(data: Data) -> int:
    return 1000 if data.val is None else _eval_batches(data.val[0].shape[0])


#: the final train figures are over this many images of the (seeded, shuffled)
#: training split at most: an estimate of the fit to within a few tenths of a
#: point that costs a fifth of a full pass over CIFAR-10's 50,000.
TRAIN_EVAL_SIZE = 10_000


def _final(trainer: Trainer, state, data: Data, ema: bool) -> dict[str, float | None]:
    """Final figures per split; the train split (its first :data:`TRAIN_EVAL_SIZE`
    images) without test-time views: its accuracy measures the fit."""
    out = {}
    for split in ("train", "val", "test"):
        if getattr(data, split) is None:  # no validation split
            out[f"{split}_acc"] = out[f"{split}_loss"] = None
            continue
        x, y = getattr(data, split)
        if split == "train":
            x, y = x[:TRAIN_EVAL_SIZE], y[:TRAIN_EVAL_SIZE]
        m = evaluate(trainer, state, x, y, ema=ema, tta=split != "train")
        out[f"{split}_acc"], out[f"{split}_loss"] = m["accuracy"], m["loss"]
    out["gap"] = out["train_acc"] - out["test_acc"]
    return out


def run_config(
    reg: Regularization,
    data: Data,
    *,
    model: str,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    loop: Loop | str = "auto",
    repeats: int = 1,
    mode: str = "auto",
    model_fields: dict[str, Any] | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    schedule: str = "constant",
    optimizer: str = "adam",
    tta: bool | str = False,
    momentum: float = 0.9,
    freeze: tuple[str, float] | None = None,
    flip: str = "random",
) -> dict[str, Any]:
    """Train one config with :func:`jaxreg.fit` and evaluate it (eval mode) on all splits.

    Returns a JSON-ready dict: ``config``, the regularizers, final ``train_acc``,
    ``val_acc``, ``test_acc`` (and losses), ``gap`` (train minus test accuracy),
    ``best_epoch`` (best ``val_loss`` under early stopping, else best
    ``val_accuracy``), ``epochs_run``, ``stopped_epoch``, ``seconds`` (wall time
    of the run, compilation included) and the per-epoch ``history``.

    With ``repeats > 1`` the config trains ``repeats`` times with different
    initialisation, dropout and data-order keys (``seed`` members of one
    :func:`jaxreg.sweep`, ``mode`` as there) on the same data; the figures are
    means over the repeats, with ``<name>_std`` beside them, ``repeats`` holding
    each repeat's row and ``history`` the per-epoch means.
    """
    if repeats > 1:
        return _repeated(
            reg, data, model=model, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, loop=loop, repeats=repeats, mode=mode,
            model_fields=model_fields, callback=callback, schedule=schedule,
            optimizer=optimizer, tta=tta, momentum=momentum, freeze=freeze, flip=flip,
        )  # fmt: skip
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    steps = epochs * (data.train[0].shape[0] // batch_size)
    lr = learning_rate_schedule(learning_rate, schedule, steps)
    trainer, hp, es = build(
        reg, model, data, learning_rate=lr, model_fields=model_fields, optimizer=optimizer,
        tta=tta, momentum=momentum, freeze=_freeze_step(freeze, data, batch_size),
        total_steps=steps, flip=flip, seed=seed,
    )  # fmt: skip
    state = trainer.init(jax.random.key(seed), data.train[0][:batch_size], hp)
    state, history, es_state, _ = fit(
        trainer,
        state,
        data.train,
        data.val,
        epochs=epochs,
        batch_size=batch_size,
        early_stopping=es,
        loop=loop,
        eval_batch_size=_eval_batch_size(data),
        callback=callback,
    )
    ema = reg.ema is not None
    final = _final(trainer, state, data, ema)
    seconds = time.perf_counter() - t0
    if es_state is not None:
        best = int(es_state.best_step)
    elif data.val is None:
        best = len(history.epochs) - 1
    else:
        best = int(np.argmax(history.series("val_accuracy")))
    keep = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")
    return {
        "config": reg.name,
        "regularizers": reg.active(),
        **final,
        "best_epoch": best,
        "epochs_run": len(history.epochs),
        "stopped_epoch": history.stopped_epoch,
        "seconds": seconds,
        "loop": history.loop,
        "history": [{k: e[k] for k in keep if k in e} for e in history.epochs],
    }


def _freeze_step(freeze: tuple[str, float] | None, data: Data, batch_size: int):
    """``(regex, epochs)`` -> ``(regex, step)`` for :func:`build`."""
    if freeze is None:
        return None
    regex, epochs = freeze
    if not epochs >= 0:
        raise ValueError(f"freeze: epochs must be >= 0, got {epochs!r}")
    return regex, round(epochs * (data.train[0].shape[0] // batch_size))


SUMMARIZED = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "gap")


def _repeated(reg, data, *, repeats, callback, **kwargs) -> dict[str, Any]:
    def mean_callback(epoch, metrics):
        callback(epoch, {k: float(np.mean(v)) for k, v in metrics.items()})

    r = run_sweep(
        reg, "seed", list(range(repeats)), data,
        callback=None if callback is None else mean_callback, **kwargs,
    )  # fmt: skip
    rows = r["members"]
    out: dict[str, Any] = {"config": reg.name, "regularizers": reg.active()}
    for key in SUMMARIZED:
        if rows[0][key] is None:  # no validation split
            out[key] = None
            continue
        vals = np.asarray([row[key] for row in rows])
        out[key], out[f"{key}_std"] = float(vals.mean()), float(vals.std(ddof=1))
    hist = {k: np.asarray(v).mean(axis=1) for k, v in r["history"].items()}
    stopped = [row["stopped_epoch"] for row in rows]
    out.update(
        best_epoch=round(float(np.mean([row["best_epoch"] for row in rows]))),
        epochs_run=len(hist["loss"]),
        stopped_epoch=None if max(stopped) < 0 else stopped,
        seconds=r["seconds"],
        loop=f"{r['mode']}, {r['loop']}",
        repeats=rows,
        history=[{k: float(v[i]) for k, v in hist.items()} for i in range(len(hist["loss"]))],
    )
    return out


def run_sweep(
    reg: Regularization,
    param: str,
    values: Sequence[float],
    data: Data | Sequence[Data],
    *,
    model: str,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    mode: str = "auto",
    loop: Loop | str = "auto",
    model_fields: dict[str, Any] | None = None,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    schedule: str = "constant",
    optimizer: str = "adam",
    tta: bool | str = False,
    momentum: float = 0.9,
    freeze: tuple[str, float] | None = None,
    flip: str = "random",
) -> dict[str, Any]:
    """Train one member per value of ``param`` (on top of ``reg``) as one :func:`jaxreg.sweep`.

    Returns a JSON-ready dict with one row per member (the value, final train /
    val / test accuracy in eval mode, gap, best epoch, stopped epoch), the
    per-epoch metrics of every member and ``picked``: the value with the highest
    validation accuracy, ties going to the lower validation loss (None without a
    validation split).

    ``data`` may be a list of the folds of a cross-validation (:func:`prepare`
    with ``folds=K``, one per ``fold``): the sweep then runs once per fold with
    the same compiled program (the mode and loop measured on the first fold), and
    each row's figures are means over the folds, with ``*_std`` (population std)
    and the per-fold validation accuracies (``val_acc_folds``); ``history`` is the
    mean over folds (a fold that stopped early repeats its last epoch) and
    ``callback`` counts epochs on across folds (fold ``i``'s epoch ``e`` is
    ``i * epochs + e``).
    """
    if param not in SWEEPABLE:
        raise ValueError(f"cannot sweep {param!r}; sweepable: {', '.join(SWEEPABLE)}")
    values = [float(v) for v in values]
    if len(values) < 1:
        raise ValueError("a sweep needs at least one value")
    if param == "seed":
        if any(v != int(v) or v < 0 for v in values):
            raise ValueError(f"seed values must be non-negative ints, got {values}")
    else:
        reg = dataclasses.replace(reg, **{param: values[0]})
    folds = list(data) if isinstance(data, (list, tuple)) else [data]
    if (
        not folds
        or any(d.val is None for d in folds[1:])
        or len({(d.train[0].shape, None if d.val is None else d.val[0].shape) for d in folds}) != 1
    ):
        raise ValueError("run_sweep: folds must be non-empty, with validation splits of one shape")
    t0 = time.perf_counter()
    first = folds[0]
    steps = epochs * (first.train[0].shape[0] // batch_size)
    lr = learning_rate_schedule(learning_rate, schedule, steps)
    trainer, hp, es = build(
        reg, model, first, learning_rate=lr, model_fields=model_fields, optimizer=optimizer,
        tta=tta, momentum=momentum, freeze=_freeze_step(freeze, first, batch_size),
        total_steps=steps, flip=flip, seed=seed,
    )  # fmt: skip
    members = {k: [v] * len(values) for k, v in hp.items()}
    members[param] = values
    ema = reg.ema is not None
    per_fold, histories = [], []
    for i, d in enumerate(folds):
        fold_callback = callback
        if callback is not None and i:  # epochs count on across the folds
            fold_callback = lambda epoch, m, i=i: callback(i * epochs + epoch, m)
        result = sweep(
            trainer,
            members,
            d.train,
            d.val,
            key=jax.random.key(seed),
            epochs=epochs,
            batch_size=batch_size,
            early_stopping=es,
            mode=mode,
            loop=loop,
            eval_batch_size=_eval_batch_size(d),
            callback=fold_callback,
        )
        mode, loop = result.mode, result.loop_used  # later folds reuse the first's choice
        rows = []
        for j, value in enumerate(values):
            member = jax.tree.map(lambda a, j=j: a[j], result.state)
            rows.append(
                {
                    param: value,
                    **_final(trainer, member, d, ema),
                    "best_epoch": int(result.best_epoch[j]),
                    "stopped_epoch": int(result.stopped_epoch[j]),
                }
            )
        per_fold.append(rows)
        histories.append(result.metrics)
    rows = per_fold[0] if len(folds) == 1 else [_fold_mean(r) for r in zip(*per_fold, strict=True)]
    keep = ("loss", "accuracy", "val_loss", "val_accuracy")
    history = {k: _mean_series([h[k] for h in histories]) for k in keep if k in histories[0]}
    return {
        "param": param,
        "base_config": reg.name,
        "members": rows,
        "picked": _pick(rows, param),
        "folds": len(folds) if len(folds) > 1 else None,
        "mode": mode,
        "loop": result.loop,
        "seconds": time.perf_counter() - t0,
        "history": history,
    }


def _fold_mean(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One member's row over the folds: means, ``*_std`` of the accuracies and gap,
    ``val_acc_folds``; epochs rounded means."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        got = [r[key] for r in rows]
        if value is None or key not in _FOLD_KEYS:
            continue
        out[key] = float(np.mean(got))
        if key.endswith("_acc") or key == "gap":
            out[f"{key}_std"] = float(np.std(got))
    for key in ("best_epoch", "stopped_epoch"):
        out[key] = round(float(np.mean([r[key] for r in rows])))
    out["val_acc_folds"] = [r["val_acc"] for r in rows]
    return out


_FOLD_KEYS = ("train_acc", "train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "gap")


def _mean_series(series: Sequence[np.ndarray]) -> list:
    """Per-epoch ``(epochs, K)`` series of the folds, averaged; a fold that ran fewer
    epochs (early stopping) repeats its last one."""
    n = max(len(s) for s in series)
    padded = [np.concatenate([s, np.repeat(s[-1:], n - len(s), axis=0)]) for s in series]
    return np.mean(padded, axis=0).tolist()


def _pick(rows: Sequence[dict[str, Any]], param: str) -> float | None:
    """The swept value with the highest validation accuracy; ties (equal to 1e-9)
    go to the lower validation loss, then to the first listed."""
    if rows[0]["val_acc"] is None:
        return None
    best = max(rows, key=lambda r: (round(r["val_acc"], 9), -r["val_loss"]))
    return best[param]
