"""Tests for jaxreg.early_stopping: scripted runs, Keras-rule references, jit/scan/while/vmap."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxreg.early_stopping import (
    EarlyStopping,
    EarlyStoppingState,
    ReduceLROnPlateau,
    ReduceLROnPlateauState,
)

F32 = np.float32


# --------------------------------------------------------------------------- references
# Plain-Python re-implementations of Keras 3.15's callbacks (keras/src/callbacks/
# early_stopping.py, reduce_lr_on_plateau.py, monitor_callback.py), comparing in
# float32 like Keras on the JAX backend; NaN is never an improvement (our rule).


def _better(direction, x, ref, d):
    if ref is None:
        return not np.isnan(x)
    if direction == "min":
        return bool(F32(x) + F32(d) < F32(ref))
    return bool(F32(x) - F32(d) > F32(ref))


def ref_early_stopping(values, *, direction, patience=0, min_delta=0.0, baseline=None, start=0):
    """Per epoch: should_stop; and the final (stopped_epoch, best, best_epoch, wait)."""
    d = abs(min_delta)
    wait, best, best_epoch, stopped = 0, None, -1, -1
    stops = []
    for epoch, x in enumerate(values):
        if stopped < 0 and epoch >= start:
            wait += 1
            if _better(direction, x, best, d):
                best, best_epoch = x, epoch
                if baseline is None or _better(direction, x, baseline, d):
                    wait = 0
            elif wait >= patience and epoch > 0:
                stopped = epoch
        stops.append(stopped >= 0)
    return stops, stopped, best, best_epoch, wait


def ref_plateau(values, lr, *, direction, factor, patience, min_delta, cooldown, min_lr):
    """Learning rate after each epoch under Keras's ReduceLROnPlateau rule."""
    d = abs(min_delta)
    best, wait, cd, lrs = None, 0, 0, []
    for x in values:
        if cd > 0:
            cd -= 1
            wait = 0
        if _better(direction, x, best, d):
            best, wait = x, 0
        elif cd == 0:
            wait += 1
            if wait >= patience and F32(lr) > F32(min_lr):
                lr = max(lr * factor, min_lr)
                cd, wait = cooldown, 0
        lrs.append(lr)
    return lrs


# --------------------------------------------------------------------------- runners


def _params(epoch):
    """Params 'after epoch e' encode e, so best_params tell which epoch they came from."""
    return {"w": jnp.full((3,), epoch, jnp.float32), "b": jnp.asarray(epoch, jnp.int32)}


_P0 = {"w": jnp.zeros((3,), jnp.float32), "b": jnp.zeros([], jnp.int32)}


@functools.cache
def scan_runner(es):
    """Jitted scan of es.update over a metric sequence; returns final state and all states."""

    def step(state, xe):
        x, e = xe
        params = _params(e) if es.restore_best_weights else None
        state = es.update(state, {es.monitor: x, "other": -x}, params)
        return state, state

    @jax.jit
    def run(values):
        init = es.init(_P0 if es.restore_best_weights else None)
        return jax.lax.scan(step, init, (values, jnp.arange(values.shape[0])))

    return run


def _run(es, values):
    return scan_runner(es)(jnp.asarray(values, jnp.float32))


def _check_against_ref(es, values, final, states, **ref_kw):
    stops, stopped, best, best_epoch, wait = ref_early_stopping(
        values,
        direction=es.direction,
        patience=es.patience,
        min_delta=es.min_delta,
        baseline=es.baseline,
        start=es.start_from_epoch,
        **ref_kw,
    )
    assert np.asarray(states.should_stop).tolist() == stops
    assert int(final.stopped_epoch) == stopped
    assert bool(final.should_stop) == (stopped >= 0)
    assert int(final.best_step) == best_epoch
    assert int(final.wait) == wait
    if best is None:
        assert np.isinf(final.best_value)
    else:
        assert float(final.best_value) == float(F32(best))
    assert int(final.epoch) == (stopped + 1 if stopped >= 0 else len(values))
    if es.restore_best_weights and best_epoch >= 0:
        np.testing.assert_array_equal(final.best_params["w"], np.full(3, best_epoch))
        assert int(final.best_params["b"]) == best_epoch
        assert final.best_params["b"].dtype == jnp.int32


def _leaves_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- scripted runs


SCRIPTED = [
    # (config, values, stopped_epoch, best_value, best_step)
    (dict(patience=2), [5, 4, 3, 3.5, 3.2, 1, 0], 4, 3.0, 2),
    (dict(patience=0), [5, 4, 4, 1], 2, 4.0, 1),  # patience 0: first non-improvement stops
    (dict(patience=1, mode="max", monitor="acc_x"), [0.1, 0.5, 0.4, 0.9], 2, 0.5, 1),
    (dict(patience=1, monitor="val_accuracy"), [0.1, 0.5, 0.4, 0.9], 2, 0.5, 1),  # auto -> max
    (dict(patience=1, monitor="val_loss"), [0.5, 0.1, 0.4, 0.0], 2, 0.1, 1),  # auto -> min
    # min_delta 0.5: 4.75 and 4.5 are not improvements on 5 (sign is ignored: abs)
    (dict(patience=2, min_delta=-0.5), [5, 4.75, 4.5, 1], 2, 5.0, 0),
    # baseline 2 never beaten: improving epochs keep counting, stop at first non-improvement
    (dict(patience=2, baseline=2.0), [5, 4, 3, 3.5, 1], 3, 3.0, 2),
    (dict(patience=5, baseline=2.0), [5, 4, 3, 2.5, 2.2, 2.1, 2.3, 0], 6, 2.1, 5),
    # start_from_epoch 3: the large early values are never seen
    (dict(patience=1, start_from_epoch=3), [0, 0, 0, 9, 8, 8.5, 0], 5, 8.0, 4),
    (dict(patience=3), [3, 2, 1, 0.5, 0.25], -1, 0.25, 4),  # never stops
]


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize(("cfg", "values", "stopped", "best", "best_step"), SCRIPTED)
def test_scripted_sequences(cfg, values, stopped, best, best_step, restore):
    es = EarlyStopping(**{"monitor": "val_loss", **cfg}, restore_best_weights=restore)
    final, states = _run(es, values)
    assert int(final.stopped_epoch) == stopped
    assert float(final.best_value) == float(F32(best))
    assert int(final.best_step) == best_step
    _check_against_ref(es, values, final, states)
    if restore:
        np.testing.assert_array_equal(final.best_params["w"], np.full(3, best_step))
        last = _params(stopped if stopped >= 0 else len(values) - 1)
        # Keras 3 restores the best weights at the end of training, stopped or not
        restored = es.final_params(final, last)
        np.testing.assert_array_equal(restored["w"], np.full(3, best_step))
        kept = es.final_params(final, last, only_if_stopped=True)
        want = best_step if stopped >= 0 else len(values) - 1
        np.testing.assert_array_equal(kept["w"], np.full(3, want))
    else:
        assert final.best_params is None
        assert es.final_params(final, _P0) is _P0


def test_auto_mode_directions():
    assert EarlyStopping(monitor="val_accuracy").direction == "max"
    assert EarlyStopping(monitor="auc").direction == "max"
    assert EarlyStopping(monitor="out_1_accuracy").direction == "max"
    assert EarlyStopping(monitor="val_loss").direction == "min"
    assert EarlyStopping(monitor="decoder_loss").direction == "min"
    assert EarlyStopping(monitor="val_mean_squared_error").direction == "min"
    assert EarlyStopping(monitor="val_accuracy", mode="min").direction == "min"
    assert ReduceLROnPlateau(monitor="val_accuracy").direction == "max"
    with pytest.raises(ValueError, match=r"mode='auto'.*'val_elbo'.*mode='min'"):
        EarlyStopping(monitor="val_elbo")


def test_nan_is_never_an_improvement():
    es = EarlyStopping(monitor="loss", patience=2)
    final, states = _run(es, [np.nan, 3.0, np.nan, 2.0, np.nan, 2.5])
    # epoch 0 NaN: no best yet (and epoch 0 never stops); 3 becomes the first best;
    # NaNs count as waiting
    assert int(final.best_step) == 3 and float(final.best_value) == 2.0
    assert int(final.stopped_epoch) == 5
    _check_against_ref(es, [np.nan, 3.0, np.nan, 2.0, np.nan, 2.5], final, states)


# --------------------------------------------------------------------------- reference


CONFIGS = [
    EarlyStopping(monitor="loss", patience=0),
    EarlyStopping(monitor="loss", patience=2, restore_best_weights=True),
    EarlyStopping(monitor="acc", mode="max", patience=3, min_delta=0.25),
    EarlyStopping(monitor="loss", patience=2, baseline=0.75, restore_best_weights=True),
    EarlyStopping(monitor="val_accuracy", patience=1, baseline=1.0, start_from_epoch=3),
    EarlyStopping(monitor="loss", patience=4, min_delta=-0.5, start_from_epoch=2),
]


@settings(max_examples=40, deadline=None)
@given(
    es=st.sampled_from(CONFIGS),
    ints=st.lists(st.integers(-4, 8), min_size=12, max_size=12),
)
def test_matches_keras_rule_reference(es, ints):
    # a grid of quarter steps: ties and exact min_delta edges happen often
    values = [i / 4 for i in ints]
    final, states = _run(es, values)
    _check_against_ref(es, values, final, states)


# --------------------------------------------------------------------------- loops, vmap


def test_while_loop_stops_where_scan_says():
    es = EarlyStopping(monitor="loss", patience=2, restore_best_weights=True)
    values = jnp.asarray([5, 4, 3, 3.5, 3.2, 1, 0], jnp.float32)

    @jax.jit
    def run(values):
        def cond(carry):
            i, state = carry
            return ~state.should_stop & (i < values.shape[0])

        def body(carry):
            i, state = carry
            return i + 1, es.update(state, {"loss": values[i]}, _params(i))

        return jax.lax.while_loop(cond, body, (jnp.int32(0), es.init(_P0)))

    i, state = run(values)
    assert int(i) == 5 and int(state.stopped_epoch) == 4
    final, _ = _run(es, values)
    _leaves_equal(state, final)


def test_vmap_members_stop_at_different_epochs_and_freeze():
    es = EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    seqs = np.array(
        [
            [5, 4, 4.5, 0, 0, 0, 0, 0],  # stops at 2
            [5, 4, 3, 2, 2.5, 0, 0, 0],  # stops at 4
            [5, 4, 3, 2, 1, 0, -1, -2],  # never
        ],
        np.float32,
    )
    run = scan_runner(es)
    final, states = jax.jit(jax.vmap(run))(jnp.asarray(seqs))
    assert final.stopped_epoch.tolist() == [2, 4, -1]
    assert final.best_step.tolist() == [1, 3, 7]
    for m in range(3):
        alone_final, alone_states = run(jnp.asarray(seqs[m]))
        _leaves_equal(jax.tree.map(lambda x, m=m: x[m], final), alone_final)
        _leaves_equal(jax.tree.map(lambda x, m=m: x[m], states), alone_states)
        stop = int(final.stopped_epoch[m])
        if stop >= 0:  # frozen after the stop
            at_stop = jax.tree.map(lambda x, m=m, s=stop: x[m, s], states)
            for t in range(stop + 1, seqs.shape[1]):
                _leaves_equal(jax.tree.map(lambda x, m=m, t=t: x[m, t], states), at_stop)
    restored = jax.vmap(es.final_params)(final, jax.vmap(_params)(jnp.array([7, 7, 7])))
    assert restored["w"][:, 0].tolist() == [1, 3, 7]


def test_stopped_state_never_changes():
    es = EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)
    final, _ = _run(es, [3.0, 2.0, 2.5])
    assert bool(final.should_stop)
    upd = jax.jit(lambda s, x, p: es.update(s, {"loss": x}, p))
    for x, e in [(-100.0, 9), (np.nan, 10), (1e9, 11)]:
        _leaves_equal(upd(final, x, _params(e)), final)


def test_init_is_abstract_and_structure_is_stable():
    es = EarlyStopping(monitor="loss", restore_best_weights=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _P0)
    s_abs = jax.eval_shape(es.init, abstract)
    s_direct = es.init(abstract)  # ShapeDtypeStruct params work eagerly too
    s = es.init(_P0)
    assert jax.tree.structure(s_abs) == jax.tree.structure(s) == jax.tree.structure(s_direct)
    s2 = es.update(s, {"loss": 1.0}, _params(0))
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s2), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert s.epoch.dtype == jnp.int32 and s.best_value.dtype == jnp.float32
    assert float(s.best_value) == np.inf and int(s.best_step) == -1
    assert float(EarlyStopping(monitor="acc", mode="max").init().best_value) == -np.inf
    assert int(s.stopped_epoch) == -1 and not bool(s.should_stop)
    assert isinstance(s, EarlyStoppingState)
    assert hash(es) == hash(EarlyStopping(monitor="loss", restore_best_weights=True))


# --------------------------------------------------------------------------- errors


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="maximize")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=1.5)
    with pytest.raises(ValueError, match="start_from_epoch"):
        EarlyStopping(start_from_epoch=-2)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta="0.1")
    with pytest.raises(ValueError, match="baseline"):
        EarlyStopping(baseline="high")
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"factor must lie in \(0, 1\)"):
            ReduceLROnPlateau(factor=bad)
    with pytest.raises(ValueError, match="cooldown"):
        ReduceLROnPlateau(cooldown=-1)
    with pytest.raises(ValueError, match="min_lr"):
        ReduceLROnPlateau(min_lr=-1e-3)
    with pytest.raises(ValueError, match="mode"):
        ReduceLROnPlateau(mode="up")
    assert EarlyStopping(min_delta=-0.5).min_delta == 0.5  # Keras takes abs


def test_missing_monitor_lists_available_keys():
    es = EarlyStopping(monitor="val_loss")
    with pytest.raises(KeyError, match=r"'val_loss'.*\['loss', 'val_acc'\]"):
        jax.jit(lambda s: es.update(s, {"loss": 1.0, "val_acc": 0.5}))(es.init())
    plateau = ReduceLROnPlateau(monitor="val_loss")
    with pytest.raises(KeyError, match=r"'val_loss'.*\['loss'\]"):
        plateau.update(plateau.init(0.1), {"loss": 1.0})


def test_restore_best_weights_needs_params():
    es = EarlyStopping(monitor="loss", restore_best_weights=True)
    with pytest.raises(ValueError, match=r"restore_best_weights.*params"):
        es.init()
    with pytest.raises(ValueError, match=r"restore_best_weights.*params"):
        es.update(es.init(_P0), {"loss": 1.0})


# --------------------------------------------------------------------------- plateau


@functools.cache
def plateau_runner(rp):
    @jax.jit
    def run(lr, values):
        def step(state, x):
            state = rp.update(state, {rp.monitor: x})
            return state, state

        return jax.lax.scan(step, rp.init(lr), values)

    return run


PLATEAU_CASES = [
    # a flat negative loss: absolute min_delta sees the plateau (optax's rtol does not)
    (
        ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2),
        [-1.0, -1.00001, -1.00002, -1.00003, -1.00004, -2.0, -2.0, -2.0],
    ),
    (
        ReduceLROnPlateau(monitor="loss", factor=0.1, patience=1, cooldown=2),
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5],
    ),
    (
        ReduceLROnPlateau(monitor="loss", factor=0.1, patience=0, min_lr=2e-3),
        [1.0, 2.0, 2.0, 2.0, 2.0, 0.0],
    ),
    (
        ReduceLROnPlateau(monitor="val_accuracy", factor=0.2, patience=1, min_delta=0.05),
        [0.5, 0.52, 0.6, 0.61, 0.7, 0.7, 0.7],
    ),
]


def _ref_plateau_for(rp, values, lr=0.1):
    """The plain-Python Keras rule with ``rp``'s settings."""
    return ref_plateau(
        values,
        lr,
        direction=rp.direction,
        factor=rp.factor,
        patience=rp.patience,
        min_delta=rp.min_delta,
        cooldown=rp.cooldown,
        min_lr=rp.min_lr,
    )


@pytest.mark.parametrize(("rp", "values"), PLATEAU_CASES)
def test_plateau_matches_keras_rule(rp, values):
    final, states = plateau_runner(rp)(jnp.float32(0.1), jnp.asarray(values, jnp.float32))
    want = _ref_plateau_for(rp, values)
    np.testing.assert_allclose(states.learning_rate, want, rtol=1e-6)
    np.testing.assert_allclose(states.scale, np.asarray(want) / 0.1, rtol=1e-6)
    assert isinstance(final, ReduceLROnPlateauState)
    assert int(final.num_reductions) == len(set(want) - {0.1})


def test_plateau_scripted_values():
    rp, values = PLATEAU_CASES[0]
    _, states = plateau_runner(rp)(jnp.float32(0.1), jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(
        states.learning_rate, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125], rtol=1e-6
    )
    rp, values = PLATEAU_CASES[1]  # cooldown 2: two epochs with wait held at 0
    _, states = plateau_runner(rp)(jnp.float32(0.1), jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(
        states.learning_rate,
        [0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5],
        rtol=1e-5,
    )
    # the counter is decremented before the check, so cooldown 2 reduces every 2nd epoch
    assert states.cooldown_counter.tolist() == [0, 2, 1, 2, 1, 2, 1, 0, 2, 1]
    rp, values = PLATEAU_CASES[2]  # min_lr floor
    _, states = plateau_runner(rp)(jnp.float32(0.1), jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(states.learning_rate, [0.1, 0.01, 2e-3, 2e-3, 2e-3, 2e-3], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    case=st.sampled_from(
        [
            ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1, min_lr=0.01),
            ReduceLROnPlateau(monitor="acc", mode="max", factor=0.1, patience=0, min_delta=0.25),
        ]
    ),
    ints=st.lists(st.integers(-6, 6), min_size=12, max_size=12),
)
def test_plateau_reference_random(case, ints):
    values = [i / 4 for i in ints]
    _, states = plateau_runner(case)(jnp.float32(0.1), jnp.asarray(values, jnp.float32))
    want = _ref_plateau_for(case, values)
    np.testing.assert_allclose(states.learning_rate, want, rtol=1e-6)


def test_plateau_vmap_over_members_and_traced_learning_rate():
    rp = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    seqs = np.array([[1, 1, 1, 1], [1, 0, -1, -2], [-1, -1, -2, -2]], np.float32)
    lrs = jnp.asarray([0.1, 1.0, 0.4], jnp.float32)
    run = plateau_runner(rp)
    final, _ = jax.jit(jax.vmap(run))(lrs, jnp.asarray(seqs))
    for m in range(3):
        alone, _ = run(lrs[m], jnp.asarray(seqs[m]))
        _leaves_equal(jax.tree.map(lambda x, m=m: x[m], final), alone)
    np.testing.assert_allclose(final.scale, [0.125, 1.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(final.learning_rate, [0.0125, 1.0, 0.1], rtol=1e-6)


# --------------------------------------------------------------------------- real Keras

_KERAS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras

    class Opt:  # stores the rate as float32, like a Keras optimizer variable
        def __init__(self):
            self._lr = np.float32(0.1)
        @property
        def learning_rate(self):
            return self._lr
        @learning_rate.setter
        def learning_rate(self, value):
            self._lr = np.float32(value)

    class Stub:
        def __init__(self):
            self.stop_training = False
            self.w = [np.zeros(3)]
            self.optimizer = Opt()
        def get_weights(self):
            return [x.copy() for x in self.w]
        def set_weights(self, w):
            self.w = [np.array(x) for x in w]

    out = []
    for case in json.loads(sys.stdin.read()):
        model = Stub()
        if case["kind"] == "es":
            cb = keras.callbacks.EarlyStopping(**case["kwargs"])
        else:
            cb = keras.callbacks.ReduceLROnPlateau(**case["kwargs"])
        cb.set_model(model)
        cb.on_train_begin()
        lrs, ran = [], 0
        for epoch, x in enumerate(case["values"]):
            model.w = [np.full(3, float(epoch))]
            cb.on_epoch_end(epoch, {case["kwargs"]["monitor"]: x})
            lrs.append(float(model.optimizer.learning_rate))
            ran = epoch + 1
            if model.stop_training:
                break
        cb.on_train_end()
        out.append({"ran": ran, "final_w": float(model.w[0][0]), "lrs": lrs})
    print(json.dumps(out))
    """
)


def test_equivalent_to_real_keras_callbacks():
    # keras is not a jaxreg dependency (CI skips this); it runs in a subprocess with the
    # JAX backend, so this process never imports it
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    rng = np.random.default_rng(0)
    es_kwargs = [
        dict(monitor="val_loss", patience=2, restore_best_weights=True),
        dict(monitor="val_loss", patience=0, min_delta=0.25),
        dict(monitor="acc", mode="max", patience=3, restore_best_weights=True, baseline=1.0),
        dict(monitor="loss", mode="min", patience=1, start_from_epoch=3),
    ]
    rp_kwargs = [
        dict(monitor="val_loss", factor=0.5, patience=1, cooldown=1),
        dict(monitor="val_loss", factor=0.1, patience=0, min_lr=0.005, min_delta=0.25),
    ]
    cases = []
    for kw in es_kwargs:
        for _ in range(4):
            vals = (rng.integers(-4, 8, size=10) / 4).tolist()
            cases.append({"kind": "es", "kwargs": kw, "values": vals})
        steady = [2.0 - i / 4 for i in range(10)]  # improves every epoch: never stops
        if EarlyStopping(**kw).direction == "max":
            steady = [-x for x in steady]
        cases.append({"kind": "es", "kwargs": kw, "values": steady})
    for kw in rp_kwargs:
        for _ in range(3):
            vals = (rng.integers(-4, 8, size=10) / 4).tolist()
            cases.append({"kind": "rp", "kwargs": kw, "values": vals})
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _KERAS_SCRIPT],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    n_stopped = 0
    for case, got in zip(cases, results, strict=True):
        values = case["values"]
        if case["kind"] == "es":
            es = EarlyStopping(**case["kwargs"])
            final, _ = _run(es, values)
            assert int(final.epoch) == got["ran"], case
            n_stopped += bool(final.should_stop)
            last = got["ran"] - 1
            p = es.final_params(final, _params(last)) if es.restore_best_weights else None
            final_w = float(p["w"][0]) if p is not None else float(last)
            assert final_w == got["final_w"], case
        else:
            rp = ReduceLROnPlateau(**case["kwargs"])
            _, states = plateau_runner(rp)(jnp.float32(0.1), jnp.asarray(values, jnp.float32))
            np.testing.assert_allclose(states.learning_rate, got["lrs"], rtol=1e-6)
    assert 0 < n_stopped < len(es_kwargs) * 5  # both outcomes were exercised
