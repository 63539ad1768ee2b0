"""Epoch loops: fused steps chosen by measurement, evaluation, early stopping, fit.

An epoch shuffles the device-resident training set with ``fold_in(fold_in(key,
1), epoch)``, runs its steps in *chunks* (a chunk is one jitted call running
``fuse`` steps as a ``lax.scan`` with a given ``unroll``; ``fuse = 1`` is the
plain Python loop of jitted steps), then evaluates, updates early stopping and
reduce-on-plateau in one jitted end-of-epoch call. Which ``(fuse, unroll)`` is
fastest depends on the model and the backend (on a 2-core CPU a conv net's step
inside ``lax.scan`` with ``unroll=1`` ran several times slower than the Python
loop, while a full unroll ran faster), so :func:`choose_loop` measures the
candidates on the real state and data and :func:`fit` uses the fastest.

The loop functions take a ``frozen`` flag (or None: nothing is ever frozen, and
the step skips the select): a member of a sweep that has stopped keeps its
state while the others train on (:func:`jaxreg.sweep`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._util import tree_where
from jaxreg.training import Batch, Trainer, TrainState

__all__ = ["MEMBER_MODES", "EpochRunner", "History", "Loop", "choose_loop", "fit"]


MEMBER_MODES = ("vmap", "map", "sequential")
# metrics that ``log_norms="sampled"`` logs once per fused call; their epoch mean
# divides by the number of steps that logged them (summed under NORM_STEPS)
NORMS = ("grad_norm", "update_norm", "param_norm")
NORM_STEPS = "_norm_steps"


class Loop(NamedTuple):
    """How the steps of an epoch run: ``fuse`` steps per jitted call, scan ``unroll``."""

    fuse: int
    unroll: int

    @property
    def name(self) -> str:
        if self.fuse == 1:
            return "python loop"
        return f"scan {self.fuse} steps, unroll {self.unroll}"


def _epoch_index(state: TrainState, steps_per_epoch: int) -> jax.Array:
    return state.step // steps_per_epoch


def _order(state: TrainState, n: int, steps: int, batch_size: int) -> jax.Array:
    """Example indices of this epoch's steps, ``(steps, batch_size)``."""
    key = jax.random.fold_in(jax.random.fold_in(state.key, 1), _epoch_index(state, steps))
    perm = jax.random.permutation(key, n)
    return perm[: steps * batch_size].reshape(steps, batch_size)


@dataclasses.dataclass(frozen=True, eq=False)
class EpochRunner:
    """The jitted pieces of an epoch for one trainer, data size and batch size.

    ``chunk_at(step)`` gives the jitted ``fn(state, data, order, start, frozen)``
    that runs ``loop.fuse`` steps (fewer across a ``Trainer.freeze`` boundary)
    starting at row ``start`` of ``order``; ``end(state, es_state, pl_state,
    sums, val)`` evaluates and updates the stopping rules. With ``members``
    set, every argument but the data has a leading member axis and the members
    run batched (``"vmap"``), one after another inside one program (``"map"``,
    a ``lax.map``), or one after another as calls of the single-model program
    (``"sequential"``: compiled once for all members; a stopped member is
    skipped).
    """

    trainer: Trainer
    n_train: int
    batch_size: int
    loop: Loop
    early_stopping: Any = None
    plateau: Any = None
    members: str | None = None
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.members not in (None, *MEMBER_MODES):
            raise ValueError(
                f"members must be None or one of {MEMBER_MODES}, got {self.members!r}."
            )

    def _member_runner(self) -> EpochRunner:
        """The single-model runner that ``members="sequential"`` applies per member."""
        return dataclasses.replace(self, members=None)

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    # ---------------------------------------------------------------- pure pieces

    def _chunk(self, state, data, order, start, frozen, fuse, unroll, freeze_on=None):
        x, y = data

        def body(st, row, log_norms=None):
            idx = order[row]
            extra = {}
            if self.trainer.augment_index:
                extra = {"index": idx, "epoch": st.step // self.steps_per_epoch}
            new, metrics = self.trainer.step_fn(
                st, (x[idx], y[idx]), log_norms=log_norms, freeze_on=freeze_on, **extra
            )
            if frozen is not None:  # a stopped sweep member keeps its state
                new = tree_where(frozen, st, new)
            return new, metrics

        rows = start + jnp.arange(fuse)
        sampled = self.trainer.log_norms == "sampled"
        if fuse == 1:
            state, metrics = body(state, rows[0])
            metrics = jax.tree.map(lambda m: m[None], metrics)
        elif sampled:  # the norms on the last step only
            lean = functools.partial(body, log_norms=False)
            state, metrics = jax.lax.scan(lean, state, rows[:-1], unroll=min(unroll, fuse - 1))
            state, last = body(state, rows[-1])
            metrics = {
                k: jnp.concatenate([metrics[k], v[None]]) if k in metrics else v[None]
                for k, v in last.items()
            }
        else:
            state, metrics = jax.lax.scan(body, state, rows, unroll=unroll)
        sums = jax.tree.map(lambda m: jnp.sum(m.astype(jnp.float32), axis=0), metrics)
        if self.trainer.log_norms:
            sums[NORM_STEPS] = jnp.float32(1 if sampled else fuse)
        return state, sums

    def _order(self, state):
        return _order(state, self.n_train, self.steps_per_epoch, self.batch_size)

    def _end(self, state, es_state, pl_state, sums, val):
        steps = jnp.float32(self.steps_per_epoch)
        sums = dict(sums)
        norm_steps = jnp.maximum(sums.pop(NORM_STEPS, steps), 1.0)  # 0: a skipped member
        metrics = {k: v / (norm_steps if k in NORMS else steps) for k, v in sums.items()}
        metrics["skipped"] = sums["skipped"]
        if val is not None:
            v = self.trainer.evaluate_fn(state, val)
            metrics["val_loss"], metrics["val_accuracy"] = v["loss"], v["accuracy"]
            if self.trainer.ema_decay is not None:
                e = self.trainer.evaluate_fn(state, val, ema=True)
                metrics["val_ema_loss"], metrics["val_ema_accuracy"] = e["loss"], e["accuracy"]
        if self.early_stopping is not None:
            was_stopped = es_state.should_stop
            es_state = self.early_stopping.update(es_state, metrics, state.params)
            just_stopped = es_state.should_stop & ~was_stopped
            if self.early_stopping.restore_best_weights:
                state = state.replace(
                    params=tree_where(just_stopped, es_state.best_params, state.params)
                )
        if self.plateau is not None:
            pl_state = self.plateau.update(pl_state, metrics)
            state = state.replace(lr_scale=pl_state.scale)
        return state, es_state, pl_state, metrics

    # ---------------------------------------------------------------- jitted

    def _maybe_vmap(self, fn, in_axes):
        if self.members is None:
            return fn
        if self.members == "vmap":
            return jax.vmap(fn, in_axes=in_axes)

        def mapped(*args):
            batched = tuple(a for a, ax in zip(args, in_axes, strict=True) if ax is not None)

            def one(member_args):
                it = iter(member_args)
                return fn(
                    *(
                        next(it) if ax is not None else a
                        for a, ax in zip(args, in_axes, strict=True)
                    )
                )

            return jax.lax.map(one, batched)

        return mapped

    def _shared(self, key: tuple, build: Callable[[], Callable]) -> Callable:
        """A jitted function cached on the trainer: runners that agree on ``key``
        (and fits and sweeps with new hyperparameter values) share the program."""
        cache = self.trainer.__dict__.setdefault("_jitted", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def _chunk_fn(self, fuse, unroll, freeze_on=None):
        """The jitted chunk; ``freeze_on``: the trainer's freeze phase of its steps
        (None: decided per step inside the program)."""

        def build():
            def fn(state, data, order, start, frozen):
                return self._chunk(state, data, order, start, frozen, fuse, unroll, freeze_on)

            fn = self._maybe_vmap(fn, (0, None, 0, None, 0))
            return jax.jit(fn, donate_argnums=(0,) if self.trainer.donate else ())

        return self._shared(("chunk", fuse, unroll, self.members, freeze_on), build)

    def chunk_at(self, step: int, fuse: int | None = None) -> tuple[Callable, int]:
        """The jitted chunk of ``fuse`` steps (default ``loop.fuse``) from global
        ``step``, compiled for the trainer's freeze phase there, and its number of
        steps (1 when the phase changes inside the chunk)."""
        fuse = self.loop.fuse if fuse is None else fuse
        phase = self.trainer.freeze_phase
        if phase(step) != phase(step + fuse - 1):
            fuse = 1
        return self._chunk_fn(fuse, min(self.loop.unroll, fuse), phase(step)), fuse

    @property
    def order(self) -> Callable:
        key = ("order", self.n_train, self.batch_size, self.members)
        return self._shared(key, lambda: jax.jit(self._maybe_vmap(self._order, (0,))))

    def _per_member(self, fn, state, frozen, *rest, skip=False):
        """``members="sequential"``: ``fn`` on each member in turn, results stacked.

        With ``skip``, a frozen member is not run at all (its state is kept, its
        sums are zeros): stopped members of a sweep cost nothing.
        """
        inner = self._member_runner()
        k = state.step.shape[0]
        stopped = np.zeros(k, bool) if frozen is None else np.asarray(frozen)
        outs = []
        for i, member in enumerate(_unstack((state, *rest), k)):
            if skip and stopped[i] and outs:
                outs.append((member[0], jax.tree.map(jnp.zeros_like, outs[-1][1])))
                continue
            fr = None if frozen is None else frozen[i]
            outs.append(fn(inner, member[0], fr, *member[1:]))
        return _stack(outs)

    def end_epoch(self, state, es_state, pl_state, sums, val):
        """Evaluate and update the stopping rules (per member for sweeps)."""
        if self.members == "sequential":
            return self._per_member(
                lambda inner, st, _, es, pl, sm: inner.end(st, es, pl, sm, val),
                state, None, es_state, pl_state, sums,
            )  # fmt: skip
        return self.end(state, es_state, pl_state, sums, val)

    @property
    def end(self) -> Callable:
        key = ("end", self.steps_per_epoch, self.early_stopping, self.plateau, self.members)
        return self._shared(key, lambda: jax.jit(self._maybe_vmap(self._end, (0, 0, 0, 0, None))))

    # ---------------------------------------------------------------- driver

    def train_epoch(self, state, data, frozen):
        """Run one epoch's steps; returns the state and the summed step metrics."""
        if self.members == "sequential":
            return self._per_member(
                lambda inner, st, fr: inner.train_epoch(st, data, fr), state, frozen, skip=True
            )
        order = self.order(state)
        steps, fuse = self.steps_per_epoch, self.loop.fuse
        step0 = _freeze_step0(self.trainer, state)
        total = None
        start = 0
        while start < steps:
            fn, n = self.chunk_at(step0 + start, fuse if steps - start >= fuse else 1)
            state, sums = fn(state, data, order, start, frozen)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
            start += n
        return state, total


def _freeze_step0(trainer: Trainer, state: TrainState) -> int:
    """The state's step read on the host (the furthest member's), when the
    trainer's freeze phase depends on it; else 0 without waiting for the device."""
    return 0 if trainer.freeze is None else int(np.max(np.asarray(state.step)))


@functools.partial(jax.jit, static_argnums=1)
def _unstack(tree: Any, k: int) -> list:
    """The ``k`` members of a stacked tree, in one call."""
    return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(k)]


@jax.jit
def _stack(trees: list) -> Any:
    """Members stacked on a leading axis, in one call."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _batched_eval(data: Batch, batch_size: int) -> Batch:
    """Stack evaluation data into ``(n_batches, batch, ...)`` (the tail is dropped)."""
    x, y = data
    n = (x.shape[0] // batch_size) * batch_size
    if n == 0:
        batch_size, n = x.shape[0], x.shape[0]
    shape = (n // batch_size, batch_size)
    return x[:n].reshape(shape + x.shape[1:]), y[:n].reshape(shape + y.shape[1:])


def _check_data(name: str, data: Any) -> Batch:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name} must be a pair (inputs, labels), got {type(data).__name__}.")
    x, y = data
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: inputs and labels differ in length ({x.shape[0]} vs {y.shape[0]})."
        )
    return jnp.asarray(x), jnp.asarray(y)


def _fuse_size(steps: int, limit: int) -> int:
    """The largest divisor of ``steps`` up to ``limit`` (``limit`` itself when the
    divisors are all small: one remainder chunk then costs less than many calls)."""
    k = max(d for d in range(1, min(limit, steps) + 1) if steps % d == 0)
    return limit if (k < limit // 2 and steps > limit) else k


def choose_loop(
    trainer: Trainer,
    state: TrainState,
    train: Batch,
    *,
    batch_size: int,
    candidates: Sequence[Loop] | None = None,
    repeats: int = 3,
    members: str | None = None,
    max_fuse: int = 64,
    max_unroll: int = 16,
    slow_step: float = 0.05,
) -> tuple[Loop, dict[str, float]]:
    """Measure how to run an epoch's steps and return the fastest :class:`Loop`.

    Each candidate is compiled (not timed), then timed on copies of ``state``
    (the state is never modified) over the same number of steps (the largest
    ``fuse`` among the candidates, so a Python loop calls its step that often),
    best of ``repeats``. Default candidates: the Python loop ``Loop(1, 1)``,
    ``Loop(k, 1)`` with ``k`` the largest divisor of the epoch's steps up to
    ``max_fuse``, and the fully unrolled ``Loop(u, u)`` with ``u`` the same up
    to ``max_unroll`` (an unrolled program's compile time grows with ``u``).

    With ``members`` (``"vmap"``, ``"map"`` or ``"sequential"``) the state
    holds a sweep's members on a leading axis and the time is per step of all
    members (``"sequential"``: member 0's single-model time times K).

    With the default candidates, a compiled Python-loop step that takes at least
    ``slow_step`` seconds ends the search there: fusing only saves the per-call
    dispatch (well under a millisecond), nothing next to such a step, while
    timing the fused programs would run a few hundred steps (minutes for a conv
    net on a CPU). ``slow_step=inf`` always times every candidate.

    Returns:
        The fastest loop and ``{loop.name: seconds per step}``.
    """
    train = _check_data("choose_loop: train", train)
    steps = train[0].shape[0] // batch_size
    if steps < 1:
        raise ValueError(f"choose_loop: batch_size {batch_size} exceeds the data size.")
    k, u = _fuse_size(steps, max_fuse), _fuse_size(steps, max_unroll)
    cands = list(candidates or dict.fromkeys([Loop(1, 1), Loop(k, 1), Loop(u, u)]))
    n = max(loop.fuse for loop in cands)
    scale = 1
    if members == "sequential":  # the members run the single-model program in turn
        scale, members = state.step.shape[0], None
        state = jax.tree.map(lambda a: a[0], state)
    timings = {}
    first_step = _freeze_step0(trainer, state)
    for loop in cands:
        runner = EpochRunner(trainer, train[0].shape[0], batch_size, loop, members=members)
        copy = jax.tree.map(jnp.copy, state)
        order = runner.order(copy)
        chunk, _ = runner.chunk_at(first_step, loop.fuse)  # the phase at the state's step
        copy, _ = chunk(copy, train, order, 0, None)  # compile + warm up
        jax.block_until_ready(copy)
        if candidates is None and loop.fuse == 1:  # the Python loop comes first
            t0 = time.perf_counter()
            copy, sums = chunk(copy, train, order, 0, None)
            jax.block_until_ready((copy, sums))
            step = scale * (time.perf_counter() - t0)
            if step >= slow_step:
                return loop, {loop.name: step}
        calls = max(1, n // loop.fuse)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                copy, sums = chunk(copy, train, order, 0, None)
            jax.block_until_ready((copy, sums))
            best = min(best, scale * (time.perf_counter() - t0) / (calls * loop.fuse))
        timings[loop.name] = best
    fastest = min(cands, key=lambda loop: timings[loop.name])
    return fastest, timings


@dataclasses.dataclass
class History:
    """Per-epoch metrics of :func:`fit` (host floats) and how the run went."""

    epochs: list[dict[str, float]] = dataclasses.field(default_factory=list)
    loop: str = ""
    loop_timings: dict[str, float] = dataclasses.field(default_factory=dict)
    stopped_epoch: int | None = None
    seconds: float = 0.0

    def series(self, name: str) -> np.ndarray:
        return np.asarray([e[name] for e in self.epochs])


def fit(
    trainer: Trainer,
    state: TrainState,
    train: Batch,
    val: Batch | None = None,
    *,
    epochs: int,
    batch_size: int,
    early_stopping: Any = None,
    plateau: Any = None,
    loop: Loop | str = "auto",
    eval_batch_size: int = 1000,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    early_stopping_state: Any = None,
    plateau_state: Any = None,
    learning_rate: float = 1.0,
) -> tuple[TrainState, History, Any, Any]:
    """Train for ``epochs`` epochs (or until early stopping) on device-resident data.

    Args:
        trainer: the :class:`~jaxreg.training.Trainer`.
        state: its :class:`~jaxreg.training.TrainState`; training continues from
            ``state.step`` (a restored checkpoint resumes where it stopped).
        train: ``(inputs, labels)`` arrays; reshuffled every epoch on device;
            the last ``n % batch_size`` examples of each shuffled epoch are dropped.
        val: optional ``(inputs, labels)`` evaluated after every epoch
            (``val_loss``, ``val_accuracy``; ``val_ema_*`` with EMA).
        epochs: number of epochs to run in total (counting those in ``state``).
        batch_size: examples per step.
        early_stopping: a :class:`jaxreg.EarlyStopping` or None; with
            ``restore_best_weights`` the returned params are the best epoch's
            (Keras 3: whether or not the run stopped early).
        plateau: a :class:`jaxreg.ReduceLROnPlateau` or None (scales the updates).
        learning_rate: the optimizer's base rate, the unit of the plateau's
            ``min_lr`` (default 1.0: ``min_lr`` is then a fraction of the base rate).
        loop: a :class:`Loop`, or ``"auto"`` to measure with :func:`choose_loop`.
        eval_batch_size: batch size of evaluation.
        callback: called on the host as ``callback(epoch, metrics)`` after every epoch.
        early_stopping_state, plateau_state: states returned by an earlier call,
            to resume a run (fresh ones by default).

    Returns:
        ``(state, history, early_stopping_state, plateau_state)``.
    """
    train = _check_data("fit: train", train)
    val_b = None if val is None else _batched_eval(_check_data("fit: val", val), eval_batch_size)
    if batch_size < 1 or batch_size > train[0].shape[0]:
        raise ValueError(
            f"fit: batch_size must lie in [1, {train[0].shape[0]}] (the training set size), "
            f"got {batch_size}."
        )
    trainer.check_batch_size(batch_size, "fit")
    if trainer.mesh is not None:  # the data once on every device (every host)
        train, val_b = trainer.replicate((train, val_b))
    if (early_stopping is not None or plateau is not None) and val is None:
        monitors = [r.monitor for r in (early_stopping, plateau) if r is not None]
        if any(m.startswith("val_") for m in monitors):
            raise ValueError(f"fit: monitor {monitors} needs val data.")
    history = History()
    if loop == "auto":
        loop, history.loop_timings = choose_loop(trainer, state, train, batch_size=batch_size)
    if not isinstance(loop, Loop):
        raise TypeError(f"fit: loop must be a Loop or 'auto', got {loop!r}.")
    history.loop = loop.name
    runner = EpochRunner(
        trainer, train[0].shape[0], batch_size, loop, early_stopping, plateau, None,
        eval_batch_size,
    )  # fmt: skip
    es_state, pl_state = early_stopping_state, plateau_state
    if early_stopping is not None and es_state is None:
        es_state = early_stopping.init(state.params)
    if plateau is not None and pl_state is None:
        pl_state = plateau.init(learning_rate)
    t0 = time.perf_counter()
    first = int(state.step) // runner.steps_per_epoch
    for epoch in range(first, epochs):
        state, sums = runner.train_epoch(state, train, None)
        state, es_state, pl_state, metrics = runner.end_epoch(
            state, es_state, pl_state, sums, val_b
        )
        host = {k: float(v) for k, v in metrics.items()}
        host["epoch"] = epoch
        host["seconds"] = time.perf_counter() - t0
        history.epochs.append(host)
        if callback is not None:
            callback(epoch, host)
        if es_state is not None and bool(es_state.should_stop):
            history.stopped_epoch = epoch
            break
    if early_stopping is not None and early_stopping.restore_best_weights:
        # Keras 3 leaves the best weights in the model at the end of fit, stopped or not
        state = state.replace(params=_final_params(early_stopping)(es_state, state.params))
    history.seconds = time.perf_counter() - t0
    return state, history, es_state, pl_state


def _final_params(early_stopping, vmapped: bool = False):
    fn = early_stopping.final_params
    return jax.jit(jax.vmap(fn) if vmapped else fn)
