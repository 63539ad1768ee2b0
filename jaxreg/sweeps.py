"""Regularization sweeps: K models that differ in hyperparameters, one compiled program.

Hyperparameters are float32 arrays in the :class:`~jaxreg.training.TrainState`,
so the K members are one state with a leading member axis: the same compiled
epoch serves every value (a new value never recompiles). The members run
batched with ``jax.vmap`` or one after another with ``lax.map`` inside the
same program, or as calls of the single-model program (compiled once); which
is fastest depends on the device (small models leave an accelerator idle, so
``vmap`` wins there; on a busy 2-core CPU the members one after another are
faster), so ``mode="auto"`` measures them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.fitting import (
    MEMBER_MODES,
    EpochRunner,
    Loop,
    _batched_eval,
    _check_data,
    _final_params,
    choose_loop,
)
from jaxreg.training import Batch, Trainer, TrainState

__all__ = ["SweepResult", "init_members", "sweep"]


@dataclasses.dataclass
class SweepResult:
    """What :func:`sweep` returns (host NumPy arrays unless noted).

    Attributes:
        hparams: ``{name: (K,) values}`` of the members (``seed`` included when given).
        metrics: ``{name: (epochs_run, K)}`` per-epoch metrics (``loss``,
            ``accuracy``, ``val_loss``, ``val_accuracy``, ...); a member's rows
            after it stopped repeat its frozen values.
        state: the final :class:`TrainState` of all members (device arrays,
            member axis first).
        early_stopping_state: its final state (member axis first) or None.
        stopped_epoch: ``(K,)`` epoch at which each member stopped, -1 if it did not.
        best_epoch: ``(K,)`` epoch of the best monitored value (early stopping),
            else of the best ``val_accuracy`` (or ``accuracy`` without val data).
        mode: ``"vmap"``, ``"map"`` or ``"sequential"``; ``loop``: the loop used; ``timings``:
            what ``mode="auto"`` / ``loop="auto"`` measured (seconds per step).
        seconds: wall time of the training epochs (compilation of the measured
            candidates excluded, the first epoch's compile included).
        loop_used: the :class:`~jaxreg.fitting.Loop` itself (pass it and ``mode``
            to another sweep of the same trainer to skip the measurement).
    """

    hparams: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    state: TrainState
    early_stopping_state: Any
    stopped_epoch: np.ndarray
    best_epoch: np.ndarray
    mode: str
    loop: str
    timings: dict[str, float]
    seconds: float
    loop_used: Loop | None = None

    def table(self) -> list[dict[str, float]]:
        """One row per member: its hyperparameters and final/best metrics."""
        rows = []
        for i in range(len(self.best_epoch)):
            row = {k: float(v[i]) for k, v in self.hparams.items()}
            b = int(self.best_epoch[i])
            for name, series in self.metrics.items():
                row[name] = float(series[-1, i])
                row[f"best_{name}"] = float(series[b, i])
            row["best_epoch"] = b
            row["stopped_epoch"] = int(self.stopped_epoch[i])
            rows.append(row)
        return rows


def _members(hparams: Mapping[str, Sequence[float]]) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(hparams, Mapping) or not hparams:
        raise ValueError(
            "sweep: hparams must be a non-empty dict {name: list of values}, one value per "
            f"member, got {hparams!r}."
        )
    values = {k: np.asarray(v, np.float64).reshape(-1) for k, v in hparams.items()}
    sizes = {k: v.shape[0] for k, v in values.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"sweep: every hparams list needs the same length (one value per member), got {sizes}."
        )
    return values, next(iter(sizes.values()))


def init_members(
    trainer: Trainer,
    key: jax.Array,
    sample_inputs: Any,
    hparams: Mapping[str, Sequence[float]],
) -> TrainState:
    """Initial states of K members with a leading member axis (one compiled init).

    A ``seed`` entry gives each member its own key ``fold_in(key, seed)``
    (initialisation, dropout, data order); without it all members share ``key``
    (common random numbers: they differ only in the swept values).
    """
    values, k = _members(hparams)
    seeds = values.pop("seed", None)
    if seeds is not None:
        keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seeds, jnp.uint32))
    else:
        keys = jnp.stack([key] * k)
    hp = {name: jnp.asarray(v, jnp.float32) for name, v in values.items()}
    x = jax.ShapeDtypeStruct(sample_inputs.shape, sample_inputs.dtype)
    cache = trainer.__dict__.setdefault("_member_init", {})
    if (x.shape, x.dtype) not in cache:
        cache[(x.shape, x.dtype)] = jax.jit(jax.vmap(lambda kk, h: trainer.init(kk, x, h)))
    return cache[(x.shape, x.dtype)](keys, hp)


def sweep(
    trainer: Trainer,
    hparams: Mapping[str, Sequence[float]],
    train: Batch,
    val: Batch | None = None,
    *,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    early_stopping: Any = None,
    mode: str = "auto",
    loop: Loop | str = "auto",
    eval_batch_size: int = 1000,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> SweepResult:
    """Train K members that differ in regularization hyperparameters, in one program.

    ``hparams = {"weight_decay": [0, 1e-4, 1e-3], "dropout": [0.1, 0.3, 0.5]}``
    trains three members (values are zipped, not crossed: build a grid with
    ``itertools.product`` if you want one). Every name the trainer's callables
    read must be present (penalty weights may fall back to their defaults). A
    ``seed`` entry varies the key per member.

    Args:
        trainer: the :class:`~jaxreg.training.Trainer` (its callables read
            ``hparams[name]`` as traced scalars).
        hparams: ``{name: K values}``.
        train, val: ``(inputs, labels)`` arrays shared by all members.
        key: a typed ``jax.random.key``.
        epochs: maximum number of epochs.
        batch_size: examples per step.
        early_stopping: a :class:`jaxreg.EarlyStopping`; a member that stops
            keeps its (best, if ``restore_best_weights``) parameters frozen while
            the others train on; the sweep ends when all have stopped. With
            ``restore_best_weights`` every member ends with its best epoch's
            params, as Keras 3's ``fit`` does.
        mode: ``"vmap"`` (members batched), ``"map"`` (one after another inside
            one program), ``"sequential"`` (one after another as calls of the
            single-model program, compiled once; stopped members are skipped)
            or ``"auto"`` (measure all three, take the fastest).
        loop: a :class:`~jaxreg.fitting.Loop` or ``"auto"`` (measured).
        eval_batch_size: evaluation batch size.
        callback: ``callback(epoch, metrics)`` on the host after every epoch,
            metrics as ``(K,)`` arrays.

    Returns:
        A :class:`SweepResult`.
    """
    train = _check_data("sweep: train", train)
    val_b = None if val is None else _batched_eval(_check_data("sweep: val", val), eval_batch_size)
    if mode != "auto" and mode not in MEMBER_MODES:
        raise ValueError(f"sweep: mode must be 'auto' or one of {MEMBER_MODES}, got {mode!r}.")
    values, k = _members(hparams)
    state = init_members(trainer, key, train[0][:batch_size], hparams)
    timings: dict[str, float] = {}
    modes = MEMBER_MODES if mode == "auto" else (mode,)
    best = None
    for m in modes:
        if loop == "auto":
            chosen, t = choose_loop(trainer, state, train, batch_size=batch_size, members=m)
        elif len(modes) > 1:
            chosen, t = choose_loop(
                trainer, state, train, batch_size=batch_size, members=m, candidates=[loop]
            )
        else:
            chosen, t = loop, {}
        timings.update({f"{m}: {name}": sec for name, sec in t.items()})
        sec = min(t.values()) if t else 0.0
        if best is None or sec < best[0]:
            best = (sec, m, chosen)
    _, mode, loop = best
    if not isinstance(loop, Loop):
        raise TypeError(f"sweep: loop must be a Loop or 'auto', got {loop!r}.")
    runner = EpochRunner(
        trainer, train[0].shape[0], batch_size, loop, early_stopping, None, mode, eval_batch_size
    )
    es_state = None
    if early_stopping is not None:
        es_state = jax.jit(jax.vmap(early_stopping.init))(state.params)
    frozen = jnp.zeros((k,), jnp.bool_) if early_stopping is not None else None
    stopped = np.full((k,), -1)
    history: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        state, sums = runner.train_epoch(state, train, frozen)
        state, es_new, _, metrics = runner.end_epoch(state, es_state, None, sums, val_b)
        host = {name: np.asarray(v) for name, v in metrics.items()}
        if history and frozen is not None:  # a frozen member repeats its last metrics
            fz = np.asarray(frozen)
            host = {n: np.where(fz, history[-1][n], v) for n, v in host.items()}
        history.append(host)
        if callback is not None:
            callback(epoch, host)
        if early_stopping is not None:
            es_state = es_new
            now = np.asarray(es_state.should_stop)
            stopped = np.where(now & (stopped < 0), epoch, stopped)
            frozen = jnp.asarray(now)
            if now.all():
                break
    if early_stopping is not None and early_stopping.restore_best_weights:
        best = _final_params(early_stopping, vmapped=True)(es_state, state.params)
        state = state.replace(params=best)
    seconds = time.perf_counter() - t0
    series = {n: np.stack([h[n] for h in history]) for n in history[0]}
    if early_stopping is not None:
        best_epoch = np.asarray(es_state.best_step)
    else:
        ref = series.get("val_accuracy", series["accuracy"])
        best_epoch = np.argmax(ref, axis=0)
    return SweepResult(
        hparams={n: np.asarray(v) for n, v in values.items()},
        metrics=series,
        state=state,
        early_stopping_state=es_state,
        stopped_epoch=stopped,
        best_epoch=best_epoch,
        mode=mode,
        loop=loop.name,
        timings=timings,
        seconds=seconds,
        loop_used=loop,
    )
