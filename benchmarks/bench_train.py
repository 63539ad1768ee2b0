"""Training step of the seed MLP: flax+optax (jit, donated, scan), torch and Keras 3 (jax) fit.

The model is the seed MLP, 784-512-256-10: ``Dense -> BatchNorm -> ReLU -> Dropout(0.3)``
for each hidden layer (the same order in every framework), then ``Dense(10)``. Loss:
softmax cross-entropy + ``1e-3 * 0.5 * sum(w**2)`` over the Dense kernels only (not
biases, not BatchNorm parameters). Adam, learning rate 1e-3, eps 1e-8; batch 128,
float32. BatchNorm uses the flax convention momentum 0.99 (torch ``momentum=0.01``)
and eps 1e-5 everywhere. All frameworks start from the same NumPy kernels
(``N(0, 1/fan_in)``, zero biases). Data: ``steps * 128`` random ``N(0, 1)`` inputs
and integer labels in 0..9 drawn once with NumPy (seed 0) and put on the device
(torch: tensors) before timing, already split into batches.

Implementations (``IMPLS``, each ``make_<name>(data, args) -> run``; ``run()``
trains ``--steps`` steps, blocks until done and returns the last loss):

* ``flax+optax jit``: hand-written ``flax.linen`` model + ``optax.adam``, one
  ``jax.jit`` train step per batch from a Python loop, dropout key
  ``jax.random.fold_in(key, step)``, ``batch_stats`` updated (``mutable``).
* ``flax+optax jit donated``: the same with ``donate_argnums`` for the state
  (the reference: ``ratio_<impl>_over_reference`` = time(impl) / time(reference)).
* ``flax+optax scan`` / ``flax+optax scan unrolled``: the same step inside
  ``jax.lax.scan`` over device-resident batches, ``--scan-steps`` steps per
  (jitted, donated) call, ``unroll=1`` / ``unroll=True``.
* ``torch eager``: ``nn.Sequential`` equivalent, ``model.train()``, the L2 term
  added to the loss explicitly (not ``weight_decay``: that would also decay biases
  and BatchNorm parameters), ``torch.optim.Adam``, as many threads as CPUs
  available to the process. Skipped (``not_measured``) if torch does not import.
* ``keras-jax fit``: Keras 3 on the jax backend (``KERAS_BACKEND=jax`` set only
  when this implementation is built), ``kernel_regularizer=L2(5e-4)`` on the Dense
  kernels (Keras's L2 is ``l2 * sum(w**2)``), BatchNorm ``momentum=0.99`` (the
  Keras default) and ``epsilon=1e-5`` (the Keras default is 1e-3), one
  ``model.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)`` call on
  exactly ``steps * 128`` samples per timing, after a first warm-up ``fit``. The
  time includes what ``fit`` does once per call (data adapter, callbacks, epoch
  iterator, moving the state in and out of its jitted step): that is what a Keras
  user pays, and it is amortised over ``--steps`` steps. Its ``final_loss`` is
  the epoch mean ``fit`` reports, not the last step's. Skipped if keras does not
  import (or was already imported with another backend).

* ``jaxreg``: ``jaxreg.Trainer`` (the same model with ``jaxreg.nn.Dropout``, the L2
  term as a named penalty on ``by_kernels()``) run by the epoch runner ``fit``
  uses, its loop chosen by ``jaxreg.choose_loop``; it also logs per-step metrics
  (loss parts, accuracy), guards non-finite updates and, with its default
  ``log_norms="sampled"``, logs the grad/update/parameter norms of the last step
  of each fused call. ``jaxreg norms every step``: ``log_norms=True``.
  ``jaxreg lean``: ``log_norms=False``. ``jaxreg unguarded``: also
  ``skip_non_finite=False``, the same work as the hand-written loops (the guard
  is one reduction over the gradients per step).

Case 2, the sweep: K members (``--members``, dropout 0.1..0.5 and L2 1e-4..1e-2)
for ``--sweep-steps`` steps each, with ``sweep``'s three modes (``vmap``, ``map``,
``sequential``) against the K members as separate runs one after another; ms per
member-step. Case 3: a small CNN's loop candidates as ``choose_loop`` measures
them (Python loop, ``lax.scan``, fully unrolled scan).

Compile time is excluded (one warm-up ``run()`` each); implementations are
interleaved within each repeat; the report gives the median ms per step and
samples/s. ``final_loss`` is a sanity figure from the last timed run (random
labels: about ln(10) plus the L2 term), not a comparison.

Command (the table in benchmarks/README.md):

    pip install -e . torch==2.13.0 keras
    python benchmarks/bench_train.py --repeats 5 --steps 200

Smoke test (a few seconds of compute, under a minute with imports and compiles):

    python benchmarks/bench_train.py --tiny

Prints one JSON line per case.
"""

# No ``from __future__ import annotations``: with string annotations the flax module
# dataclass looks itself up in ``sys.modules``, which fails when the script is loaded
# with ``importlib.util.spec_from_file_location`` (as tests/test_benchmarks.py does).

import argparse
import functools
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import sys
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
import jaxreg.fitting
from jaxreg.experiments.report import cpu_model

N_IN, N_OUT = 784, 10
BATCH = 128
RATE = 0.3
L2 = 1e-3  # loss += L2 * 0.5 * sum(kernel**2)
LR = 1e-3
ADAM_EPS = 1e-8
BN_MOMENTUM = 0.99  # flax convention: running = m * running + (1 - m) * batch
BN_EPS = 1e-5
REFERENCE = "flax+optax jit donated"


class NotMeasured(Exception):
    """Raised by a factory whose library is not usable here; the message is the reason."""


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# --------------------------------------------------------------------------- data


def make_data(args):
    """Inputs, labels and the shared initial kernels, drawn once with NumPy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps * BATCH, N_IN), dtype=np.float32)
    y = rng.integers(0, N_OUT, size=args.steps * BATCH).astype(np.int32)
    sizes = [N_IN, *args.hidden, N_OUT]
    init = np.random.default_rng(1)
    kernels = [
        (init.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        for a, b in itertools.pairwise(sizes)
    ]
    return {"x": x, "y": y, "kernels": kernels, "sizes": sizes}


# --------------------------------------------------------------------------- flax + optax


class MLP(nn.Module):
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x, train: bool):
        for h in self.hidden:
            x = nn.Dense(h)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS)(x)
            x = nn.relu(x)
            x = nn.Dropout(RATE, deterministic=not train)(x)
        return nn.Dense(N_OUT)(x)


def _flax_setup(data, args):
    """Initial state ``(params, batch_stats, opt_state, step)`` and ``train_step``."""
    model = MLP(tuple(args.hidden))
    variables = model.init(jax.random.key(0), jnp.zeros((1, N_IN)), train=False)
    params = jax.tree.map(jnp.asarray, variables["params"])
    dense = [f"Dense_{i}" for i in range(len(data["kernels"]))]
    for name, k in zip(dense, data["kernels"], strict=True):
        params[name] = {"kernel": jnp.asarray(k), "bias": jnp.zeros(k.shape[1], jnp.float32)}
    tx = optax.adam(LR, eps=ADAM_EPS)
    dropout_key = jax.random.key(1)

    def train_step(state, x, y):
        params, batch_stats, opt_state, step = state

        def loss_fn(params):
            logits, updated = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                rngs={"dropout": jax.random.fold_in(dropout_key, step)},
                mutable=["batch_stats"],
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            l2 = sum(jnp.sum(jnp.square(params[n]["kernel"])) for n in dense)
            return ce + L2 * 0.5 * l2, updated["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, batch_stats, opt_state, step + 1), loss

    state = (params, variables["batch_stats"], tx.init(params), jnp.zeros((), jnp.int32))
    return state, train_step


def _device_batches(data, args, per_call=None):
    """Device-resident batches (made before timing): one per step, or stacks of ``per_call``."""
    n = args.steps // (per_call or 1)
    shape = (n, per_call) if per_call else (n,)
    xs = jnp.asarray(data["x"]).reshape(*shape, BATCH, N_IN)
    ys = jnp.asarray(data["y"]).reshape(*shape, BATCH)
    batches = [(xs[i], ys[i]) for i in range(n)]
    jax.block_until_ready(batches)
    return batches


def _flax_loop(state, step, batches):
    """``run()``: ``state, loss = step(state, x, y)`` for each batch; state kept across runs."""
    box = [state]

    def run():
        state, loss = box[0], None
        for x, y in batches:
            state, loss = step(state, x, y)
        box[0] = state
        return float(jax.block_until_ready(loss))

    run()  # compile + warm-up
    return run


def make_flax_jit(data, args):
    state, train_step = _flax_setup(data, args)
    return _flax_loop(state, jax.jit(train_step), _device_batches(data, args))


def make_flax_jit_donated(data, args):
    state, train_step = _flax_setup(data, args)
    step = jax.jit(train_step, donate_argnums=0)
    return _flax_loop(state, step, _device_batches(data, args))


def _make_flax_scan(data, args, unroll):
    state, train_step = _flax_setup(data, args)

    @functools.partial(jax.jit, donate_argnums=0)
    def chunk(state, xs, ys):
        state, losses = jax.lax.scan(lambda s, b: train_step(s, *b), state, (xs, ys), unroll=unroll)
        return state, losses[-1]

    return _flax_loop(state, chunk, _device_batches(data, args, args.scan_steps))


def make_flax_scan(data, args):
    return _make_flax_scan(data, args, unroll=1)


def make_flax_scan_unrolled(data, args):
    return _make_flax_scan(data, args, unroll=True)


# --------------------------------------------------------------------------- torch


def make_torch_eager(data, args):
    try:
        import torch
    except ImportError as e:
        raise NotMeasured(f"torch does not import: {e}") from e
    torch.set_num_threads(args.torch_threads or _cpu_count())
    torch.manual_seed(0)
    layers, linears = [], []
    for a, b in itertools.pairwise(data["sizes"][:-1]):
        linears.append(torch.nn.Linear(a, b))
        layers += [
            linears[-1],
            torch.nn.BatchNorm1d(b, eps=BN_EPS, momentum=1.0 - BN_MOMENTUM),
            torch.nn.ReLU(),
            torch.nn.Dropout(RATE),
        ]
    linears.append(torch.nn.Linear(*data["sizes"][-2:]))
    model = torch.nn.Sequential(*layers, linears[-1])
    with torch.no_grad():
        for lin, k in zip(linears, data["kernels"], strict=True):
            lin.weight.copy_(torch.from_numpy(k.T.copy()))
            lin.bias.zero_()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR, eps=ADAM_EPS)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs = torch.from_numpy(data["x"]).split(BATCH)
    ys = torch.from_numpy(data["y"].astype(np.int64)).split(BATCH)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        l2 = sum(lin.weight.square().sum() for lin in linears)
        loss = loss_fn(model(x), y) + L2 * 0.5 * l2
        loss.backward()
        opt.step()
        return loss

    def run():
        loss = None
        for x, y in zip(xs, ys, strict=True):
            loss = step(x, y)
        return loss.item()

    run()  # warm-up
    return run


# --------------------------------------------------------------------------- keras (jax backend)


def make_keras_jax_fit(data, args):
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
        if backend != "jax":
            raise NotMeasured(f"keras already imported with the {backend} backend")
    os.environ["KERAS_BACKEND"] = "jax"
    try:
        import keras
    except ImportError as e:
        raise NotMeasured(f"keras does not import: {e}") from e
    keras.utils.set_random_seed(0)
    reg = keras.regularizers.L2(L2 * 0.5)  # Keras: l2 * sum(w**2)
    layers = [keras.Input((N_IN,))]
    for h in args.hidden:
        layers += [
            keras.layers.Dense(h, kernel_regularizer=reg),
            keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS),
            keras.layers.ReLU(),
            keras.layers.Dropout(RATE),
        ]
    layers.append(keras.layers.Dense(N_OUT, kernel_regularizer=reg))
    model = keras.Sequential(layers)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer, k in zip(dense, data["kernels"], strict=True):
        layer.set_weights([k, np.zeros(k.shape[1], np.float32)])
    model.compile(
        optimizer=keras.optimizers.Adam(LR, epsilon=ADAM_EPS),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    jax.block_until_ready((x, y))

    def run():
        hist = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        jax.block_until_ready([v.value for v in model.variables])
        return float(hist.history["loss"][-1])

    run()  # compile + warm-up
    return run


# --------------------------------------------------------------------------- jaxreg


class JaxregMLP(nn.Module):
    """The seed MLP with ``jaxreg.nn.Dropout`` (its rate may be a traced hyperparameter)."""

    hidden: tuple[int, ...]
    rate: float | jax.Array = RATE

    @nn.compact
    def __call__(self, x, train: bool):
        for h in self.hidden:
            x = nn.Dense(h)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS)(x)
            x = jaxreg.nn.Dropout(self.rate)(nn.relu(x), deterministic=not train)
        return nn.Dense(N_OUT)(x)


def _jaxreg_trainer(args, swept=False, log_norms="sampled", guard=True):
    def model(hp):
        return JaxregMLP(tuple(args.hidden), hp["dropout"] if swept else RATE)

    return jaxreg.Trainer(
        model=model,
        optimizer=optax.adam(LR, eps=ADAM_EPS),
        penalties={"l2": (lambda p: jaxreg.l2_penalty(p, mask=jaxreg.by_kernels()), L2)},
        log_norms=log_norms,
        skip_non_finite=guard,
    )


def _with_shared_kernels(state, data):
    params = dict(state.params)
    for i, k in enumerate(data["kernels"]):
        params[f"Dense_{i}"] = {"kernel": jnp.asarray(k), "bias": jnp.zeros(k.shape[1])}
    return state.replace(params=params, opt_state=optax.adam(LR, eps=ADAM_EPS).init(params))


def make_jaxreg(data, args, log_norms="sampled", name="jaxreg", guard=True):
    """jaxreg's engine: ``Trainer`` + the epoch runner ``fit`` uses, loop chosen by
    ``jaxreg.choose_loop`` (Python loop, scan, unrolled scan, measured on this state)."""
    trainer = _jaxreg_trainer(args, log_norms=log_norms, guard=guard)
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    state = _with_shared_kernels(trainer.init(jax.random.key(0), x[:BATCH]), data)
    loop, timings = _choose(args, trainer, state, (x, y))
    CHOSEN[name] = {"loop": loop.name, "candidates_ms": _ms(timings)}
    runner = jaxreg.fitting.EpochRunner(trainer, x.shape[0], BATCH, loop)
    return _engine_loop(runner, state, (x, y))


def _choose(args, trainer, state, data, members=None):
    """``jaxreg.choose_loop``'s measured choice, or ``--jaxreg-fuse`` steps per scan call."""
    if args.jaxreg_fuse:
        return jaxreg.Loop(args.jaxreg_fuse, 1), {}
    return jaxreg.choose_loop(trainer, state, data, batch_size=BATCH, members=members)


def _machine():
    """Where a result was measured: device, CPU and versions."""
    return {
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_count": _cpu_count(),
        "cpu_model": cpu_model(),
        "jax": jax.__version__,
        "jaxreg": _version("jaxreg"),
    }


def _ms(timings):
    return {name: round(sec * 1e3, 4) for name, sec in timings.items()}


def _engine_loop(runner, state, data, frozen=None):
    """``run()``: one epoch of the runner (``--steps`` steps); state kept across runs."""
    box = [state]
    if frozen is None:
        frozen = jnp.zeros(state.step.shape, jnp.bool_)

    def run():
        state, sums = runner.train_epoch(box[0], data, frozen)
        box[0] = state
        loss = jax.block_until_ready(sums["loss"]) / runner.steps_per_epoch
        return float(np.mean(loss))

    run()  # compile + warm-up
    return run


CHOSEN: dict = {}


def make_jaxreg_lean(data, args):
    """The same without the norms (``log_norms=False``)."""
    return make_jaxreg(data, args, log_norms=False, name="jaxreg lean")


def make_jaxreg_every(data, args):
    """The same with the norms of every step (``log_norms=True``)."""
    return make_jaxreg(data, args, log_norms=True, name="jaxreg norms every step")


def make_jaxreg_unguarded(data, args):
    """No norms and no non-finite guard (``skip_non_finite=False``)."""
    return make_jaxreg(data, args, log_norms=False, name="jaxreg unguarded", guard=False)


IMPLS = {
    "jaxreg": make_jaxreg,
    "jaxreg lean": make_jaxreg_lean,
    "jaxreg norms every step": make_jaxreg_every,
    "jaxreg unguarded": make_jaxreg_unguarded,
    "flax+optax jit": make_flax_jit,
    "flax+optax jit donated": make_flax_jit_donated,
    "flax+optax scan": make_flax_scan,
    "flax+optax scan unrolled": make_flax_scan_unrolled,
    "torch eager": make_torch_eager,
    "keras-jax fit": make_keras_jax_fit,
}


# --------------------------------------------------------------------------- cases


def run_case(args, impls):
    data = make_data(args)
    runners, not_measured = {}, {}
    for name in impls:
        try:
            runners[name] = IMPLS[name](data, args)
        except NotMeasured as e:
            not_measured[name] = str(e)
    times = {name: [] for name in runners}
    losses = {}
    for _ in range(args.repeats):  # interleaved
        for name, run in runners.items():
            t0 = time.perf_counter()
            losses[name] = run()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "case": f"seed MLP train step {'-'.join(map(str, data['sizes']))} batch {BATCH} float32",
        "ms_per_step": {name: round(t * 1e3, 4) for name, t in med.items()},
        "samples_per_s": {name: round(BATCH / t, 1) for name, t in med.items()},
    }
    if REFERENCE in med:
        for name, t in med.items():
            if name != REFERENCE:
                result[f"ratio_{name}_over_reference"] = round(t / med[REFERENCE], 3)
    result["reference"] = REFERENCE
    best_hand = min((t for n, t in med.items() if n.startswith("flax+optax")), default=None)
    for mine in ("jaxreg", "jaxreg lean", "jaxreg norms every step", "jaxreg unguarded"):
        if mine in med and best_hand is not None:
            result[f"ratio_best_flax+optax_over_{mine}"] = round(best_hand / med[mine], 3)
        if mine in med and "torch eager" in med:
            result[f"ratio_torch eager_over_{mine}"] = round(med["torch eager"] / med[mine], 3)
    result["jaxreg_loops"] = dict(CHOSEN)
    result["not_measured"] = not_measured
    result["final_loss"] = {name: round(v, 4) for name, v in losses.items()}
    cpus = _cpu_count()
    result.update(
        layers=data["sizes"],
        x_shape=list(data["x"].shape),
        batch_shape=[BATCH, N_IN],
        dtype="float32",
        steps_per_repeat=args.steps,
        scan_steps=args.scan_steps,
        repeats=args.repeats,
        **_machine(),
        torch_threads=(args.torch_threads or cpus) if "torch eager" in runners else None,
        jaxlib=_version("jaxlib"),
        flax=flax.__version__,
        optax=optax.__version__,
        torch=_version("torch"),
        keras=_version("keras"),
        numpy=np.__version__,
        python=platform.python_version(),
    )
    return result


class SmallCNN(nn.Module):
    """conv3x3(32)-BN-ReLU-pool, conv3x3(64)-BN-ReLU-pool, dense(128)-dropout, dense(10)."""

    @nn.compact
    def __call__(self, x, train: bool):
        for width in (32, 64):
            x = nn.Conv(width, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        x = jaxreg.nn.Dropout(RATE)(x, deterministic=not train)
        return nn.Dense(N_OUT)(x)


def run_cnn_case(args):
    """How to run a conv net's steps: the loop candidates ``choose_loop`` measures."""
    steps = args.cnn_steps
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((steps * BATCH, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, N_OUT, size=steps * BATCH).astype(np.int32))
    trainer = jaxreg.Trainer(
        model=SmallCNN(),
        optimizer=optax.adam(LR, eps=ADAM_EPS),
        penalties={"l2": (lambda p: jaxreg.l2_penalty(p, mask=jaxreg.by_kernels()), L2)},
    )
    state = trainer.init(jax.random.key(0), x[:BATCH])
    fuse = args.jaxreg_fuse or steps
    cands = [jaxreg.Loop(1, 1), jaxreg.Loop(fuse, 1), jaxreg.Loop(fuse, fuse)]
    loop, timings = jaxreg.choose_loop(
        trainer, state, (x, y), batch_size=BATCH, candidates=list(dict.fromkeys(cands)),
        repeats=args.repeats,
    )  # fmt: skip
    return {
        "case": f"small CNN 28x28x1 batch {BATCH}: loop candidates over {steps} steps",
        "ms_per_step": _ms(timings),
        "chosen": loop.name,
        "repeats": args.repeats,
        **_machine(),
    }


def run_sweep_case(args):
    """K members differing in dropout rate and L2 weight: the sweep's three modes (vmap,
    lax.map, sequential calls of the single-model program) vs K separate runs."""
    k, steps = args.members, args.sweep_steps
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((steps * BATCH, N_IN), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, N_OUT, size=steps * BATCH).astype(np.int32))
    hp = {"dropout": np.linspace(0.1, 0.5, k), "l2": np.geomspace(1e-4, 1e-2, k)}
    trainer = _jaxreg_trainer(args, swept=True)
    members = jaxreg.init_members(trainer, jax.random.key(0), x[:BATCH], hp)
    runs, chosen = {}, {}
    for mode in jaxreg.fitting.MEMBER_MODES:
        loop, timings = _choose(args, trainer, members, (x, y), members=mode)
        chosen[mode] = {"loop": loop.name, "candidates_ms": _ms(timings)}
        runner = jaxreg.fitting.EpochRunner(trainer, x.shape[0], BATCH, loop, members=mode)
        runs[f"sweep {mode}"] = _engine_loop(runner, jax.tree.map(jnp.copy, members), (x, y))
    # the K members one after another, each a separate single-model run (one compile)
    loop, timings = _choose(args, trainer, jax.tree.map(lambda a: a[0], members), (x, y))
    chosen["separate runs"] = {"loop": loop.name, "candidates_ms": _ms(timings)}
    runner = jaxreg.fitting.EpochRunner(trainer, x.shape[0], BATCH, loop)
    singles = [
        _engine_loop(runner, jax.tree.map(lambda a, i=i: a[i], members), (x, y)) for i in range(k)
    ]
    runs["separate runs"] = lambda: [run() for run in singles][-1]
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) / (steps * k))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    modes = jaxreg.fitting.MEMBER_MODES

    def measured(mode):  # what sweep(mode="auto") compares (timed medians with --jaxreg-fuse)
        cands = chosen[mode]["candidates_ms"]
        return min(cands.values()) if cands else med[f"sweep {mode}"]

    auto = min(modes, key=measured)
    return {
        "case": f"sweep of {k} seed-MLP members, {steps} steps each, batch {BATCH}",
        "ms_per_member_step": {name: round(t * 1e3, 4) for name, t in med.items()},
        "ratio_separate_runs_over_vmap": round(med["separate runs"] / med["sweep vmap"], 3),
        "ratio_separate_runs_over_map": round(med["separate runs"] / med["sweep map"], 3),
        "ratio_separate_runs_over_sequential": round(
            med["separate runs"] / med["sweep sequential"], 3
        ),
        "ratio_separate_runs_over_auto": round(med["separate runs"] / med[f"sweep {auto}"], 3),
        "sweep_auto_mode": auto,
        "loops": chosen,
        "hparams": {n: [round(float(v), 6) for v in vals] for n, vals in hp.items()},
        "repeats": args.repeats,
        **_machine(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan-steps", type=int, default=50, help="steps per lax.scan call")
    ap.add_argument("--hidden", default="512,256", help="comma-separated hidden sizes")
    ap.add_argument("--only", default="", help="comma-separated implementation names")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: CPUs available")
    ap.add_argument("--members", type=int, default=8, help="sweep case: K members")
    ap.add_argument("--sweep-steps", type=int, default=50, help="sweep case: steps per member")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep case")
    ap.add_argument("--cnn-steps", type=int, default=16, help="CNN case: steps per candidate")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN loop case")
    ap.add_argument(
        "--jaxreg-fuse", type=int, default=0, help="fixed scan length for jaxreg (0: measured)"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: --steps 4 --repeats 1 --scan-steps 2 --hidden 32,16, "
        "2 members x 2 steps, --jaxreg-fuse 2",
    )
    args = ap.parse_args(argv)
    if args.tiny:
        args.steps, args.repeats, args.scan_steps, args.hidden = 4, 1, 2, "32,16"
        args.members, args.sweep_steps, args.jaxreg_fuse, args.cnn_steps = 2, 2, 2, 2
    args.hidden = [int(h) for h in args.hidden.split(",") if h]
    if args.steps % args.scan_steps:
        ap.error(f"--steps ({args.steps}) must be a multiple of --scan-steps ({args.scan_steps})")
    impls = [n.strip() for n in args.only.split(",") if n.strip()] or list(IMPLS)
    unknown = [n for n in impls if n not in IMPLS]
    if unknown:
        ap.error(f"unknown implementation(s) {unknown}; choose from {list(IMPLS)}")
    results = []
    # case 1: one model, one training run per implementation
    res = run_case(args, impls)
    print(json.dumps(res), flush=True)
    results.append(res)
    # case 2: a K-member sweep, vmap and lax.map, vs the members one after another
    if not args.no_sweep:
        res = run_sweep_case(args)
        print(json.dumps(res), flush=True)
        results.append(res)
    # case 3: a conv net's loop candidates (Python loop, scan, unrolled scan)
    if not args.no_cnn:
        res = run_cnn_case(args)
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
