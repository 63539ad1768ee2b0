"""Training engine: the step against a hand-written flax+optax step, non-finite
skips, EMA, scanned epochs == the Python loop, sweeps == separate runs without
retracing, resume == uninterrupted, a sharded step == the single-device step."""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg.checkpoint import restore_checkpoint, save_checkpoint
from jaxreg.fitting import EpochRunner, Loop, choose_loop, fit
from jaxreg.sweeps import sweep
from jaxreg.training import Trainer, image_augment
from tests.conftest import assert_trees_close, run_on_cpu_devices


class MLP(nn.Module):
    rate: float = 0.3
    hidden: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.hidden, use_bias=False)(x)  # a bias before BN has no gradient
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = jaxreg.nn.Dropout(self.rate)(x, deterministic=not train)
        return nn.Dense(4)(x)


def _data(n=96, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


X, Y = _data()
L2 = (lambda p: jaxreg.l2_penalty(p, mask=jaxreg.by_kernels()), 1e-2)


def _trainer(**kw):
    kw.setdefault("model", MLP())
    kw.setdefault("optimizer", optax.adam(1e-2))
    kw.setdefault("penalties", {"l2": L2})
    return Trainer(**kw)


# --------------------------------------------------------------------------- the step


def test_step_equals_hand_written_flax_optax_step():
    tr = _trainer()
    state = tr.init(jax.random.key(0), X[:16], {"label_smoothing": 0.1})
    model, tx = MLP(), optax.adam(1e-2)
    params, stats = state.params, state.batch_stats
    opt = tx.init(params)

    @jax.jit
    def ref_step(params, stats, opt, step, batch):
        x, y = batch
        key = jax.random.fold_in(jax.random.fold_in(state.key, 0), step)
        rngs = {"dropout": jax.random.split(key, 2)[0]}

        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True, rngs=rngs,
                mutable=["batch_stats"],
            )  # fmt: skip
            onehot = optax.smooth_labels(jax.nn.one_hot(y, 4), 0.1)
            data = optax.softmax_cross_entropy(logits, onehot).mean()
            return data + 1e-2 * jaxreg.l2_penalty(p, mask=jaxreg.by_kernels()), upd

        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), upd["batch_stats"], opt, loss

    for i in range(3):
        batch = (X[16 * i : 16 * (i + 1)], Y[16 * i : 16 * (i + 1)])
        params, stats, opt, loss = ref_step(params, stats, opt, i, batch)
        state, metrics = tr.train_step(state, batch)
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    assert_trees_close(state.params, params, rtol=1e-5, atol=1e-6)
    assert_trees_close(state.batch_stats, stats, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 3 and int(state.skipped) == 0


def test_init_equals_eager_flax_and_optax_init_bit_for_bit():
    # init compiles the model's and optimizer's initialisation as one program; the
    # values must be those of flax's and optax's own (eager) init, bit for bit
    tr = _trainer(model=lambda hp: MLP(rate=hp["dropout"]), ema_decay=0.9)
    key = jax.random.key(7)
    state = tr.init(key, jax.ShapeDtypeStruct((16, 6), jnp.float32), {"dropout": 0.2})
    init_key = jax.random.fold_in(key, 0)
    ref = MLP(rate=0.2).init({"params": init_key, "dropout": init_key}, X[:16], train=False)
    tree_equal = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
    assert tree_equal(state.params, ref["params"])
    assert tree_equal(state.batch_stats, ref["batch_stats"])
    assert tree_equal(state.opt_state, optax.adam(1e-2).init(ref["params"]))
    assert tree_equal(state.ema_params, ref["params"])
    assert tree_equal(state.ema_batch_stats, ref["batch_stats"])
    # the EMA copies are buffers of their own: a donating step moves on from them
    pointers = lambda t: {a.unsafe_buffer_pointer() for a in jax.tree.leaves(t)}
    assert not pointers(state.params) & pointers(state.ema_params)
    before = jax.tree.map(np.asarray, state.ema_params)
    state, _ = tr.train_step(state, (X[:16], Y[:16]))
    assert not tree_equal(state.params, before) and int(state.step) == 1
    # the factories get concrete hyperparameters, as before: a Python-level use works
    tr = _trainer(model=lambda hp: MLP(hidden=int(hp["width"])))
    state = tr.init(key, X[:16], {"width": 8.0})
    assert state.params["Dense_0"]["kernel"].shape == (6, 8)


def test_step_metrics_are_consistent():
    tr = _trainer(optimizer=optax.chain(jaxreg.clip_by_global_norm(1e-3), optax.sgd(0.1)))
    state = tr.init(jax.random.key(1), X[:16])
    p0 = state.params
    pen = float(L2[1] * L2[0](p0))
    state, m = tr.train_step(state, (X[:16], Y[:16]))
    np.testing.assert_allclose(m["penalty/l2"], pen, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], m["data_loss"] + m["penalty/l2"], rtol=1e-6)
    assert bool(m["clipped"]) and float(m["grad_norm"]) > 1e-3
    np.testing.assert_allclose(m["update_norm"], 0.1 * 1e-3, rtol=1e-4)  # clipped, then sgd
    np.testing.assert_allclose(m["param_norm"], optax.tree.norm(state.params), rtol=1e-6)
    assert 0.0 <= float(m["accuracy"]) <= 1.0 and not bool(m["skipped"])


def test_non_finite_batch_is_skipped_and_counted():
    tr = _trainer(ema_decay=0.5)
    state = tr.init(jax.random.key(2), X[:16])
    before = jax.tree.map(np.asarray, (state.params, state.batch_stats, state.opt_state))
    bad = X[:16].at[3, 2].set(jnp.nan)
    state, m = tr.train_step(state, (bad, Y[:16]))
    assert bool(m["skipped"]) and int(state.skipped) == 1 and int(state.step) == 1
    after = (state.params, state.batch_stats, state.opt_state)
    assert_trees_close(after, before, rtol=0, atol=0)
    assert_trees_close(state.ema_params, before[0], rtol=0, atol=0)
    state, m = tr.train_step(state, (X[:16], Y[:16]))
    assert not bool(m["skipped"]) and int(state.skipped) == 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_polyak_average_and_evaluates_with_its_statistics(warmup):
    tr = _trainer(ema_decay=0.8, ema_warmup=warmup)
    state = tr.init(jax.random.key(3), X[:16])
    ema = jax.tree.map(np.asarray, state.params)  # copies: the step donates the state
    ema_stats = jax.tree.map(np.asarray, state.batch_stats)
    for i in range(3):
        state, _ = tr.train_step(state, (X[16 * i : 16 * i + 16], Y[16 * i : 16 * i + 16]))
        d = min(0.8, (1 + i) / (10 + i)) if warmup else 0.8
        ema = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, ema, state.params)
        ema_stats = jax.tree.map(
            lambda e, s, d=d: d * e + (1 - d) * s, ema_stats, state.batch_stats
        )
    assert_trees_close(state.ema_params, ema, rtol=1e-5, atol=1e-7)
    assert_trees_close(state.ema_batch_stats, ema_stats, rtol=1e-5, atol=1e-7)
    got = tr.eval_step(state, (X, Y), ema=True)
    swapped = state.replace(params=state.ema_params, batch_stats=state.ema_batch_stats)
    want = tr.eval_step(swapped, (X, Y))
    assert_trees_close(got, want, rtol=0, atol=0)
    assert float(got["loss_sum"]) != float(tr.eval_step(state, (X, Y))["loss_sum"])


def test_augment_and_soft_labels_in_the_step():
    calls = []

    def aug(key, images, labels, hparams):
        calls.append(1)
        noisy = images + hparams["noise"] * jax.random.normal(key, images.shape)
        return noisy, jax.nn.one_hot(labels, 4)

    tr = _trainer(augment=aug)
    state = tr.init(jax.random.key(4), X[:16], {"noise": 0.5, "label_smoothing": 0.2})
    plain = _trainer().init(jax.random.key(4), X[:16], {"label_smoothing": 0.2})
    _, m1 = tr.train_step(state, (X[:16], Y[:16]))
    _, m2 = _trainer().train_step(plain, (X[:16], Y[:16]))
    assert calls and float(m1["data_loss"]) != float(m2["data_loss"])
    # zero noise and one-hot labels: the same step as integer labels
    _, m3 = tr.train_step(
        tr.init(jax.random.key(4), X[:16], {"noise": 0.0, "label_smoothing": 0.2}),
        (X[:16], Y[:16]),
    )
    np.testing.assert_allclose(m3["loss"], m2["loss"], rtol=1e-5)
    lifted = image_augment(lambda k, x: x[:, ::-1])
    out, lab = lifted(jax.random.key(0), X[:2], Y[:2], {})
    np.testing.assert_array_equal(out, X[:2, ::-1])
    np.testing.assert_array_equal(lab, Y[:2])


def test_augment_index_gets_each_examples_index_and_epoch_from_fit_and_sweep():
    seen = []

    def record(images, index, epoch):
        seen.append((np.asarray(images), np.asarray(index), np.asarray(epoch)))

    def aug(key, images, labels, hparams, *, index, epoch):
        jax.debug.callback(record, images, index, epoch)
        return images, labels

    tr = _trainer(augment=aug, augment_index=True)
    fit(tr, tr.init(jax.random.key(3), X[:16]), (X, Y), epochs=2, batch_size=16, loop=Loop(3, 1))
    assert len(seen) == 12  # 2 epochs of 96 / 16 steps
    for e in (0, 1):
        rows = [(x, i) for x, i, ep in seen if int(ep) == e]
        index = np.concatenate([i for _, i in rows])
        assert sorted(index.tolist()) == list(range(96))  # each example once per epoch
        np.testing.assert_array_equal(np.concatenate([x for x, _ in rows]), np.asarray(X)[index])
    seen.clear()
    sweep(
        tr, {"l2": [0.0, 1e-2]}, (X, Y), key=jax.random.key(0), epochs=2, batch_size=48,
        mode="vmap", loop=Loop(2, 1),
    )  # fmt: skip
    assert sorted(int(e) for *_, e in seen) == [0] * 4 + [1] * 4  # 2 members x 2 steps
    state = tr.init(jax.random.key(3), X[:16])
    with pytest.raises(ValueError, match=r"augment_index=True\): step_fn needs index="):
        tr.step_fn(state, (X[:16], Y[:16]))
    _, m = tr.train_step(state, (X[:16], Y[:16]), index=jnp.arange(16), epoch=0)
    assert np.isfinite(float(m["loss"]))
    with pytest.raises(ValueError, match="augment_index=True needs an augment"):
        _trainer(augment_index=True)
    with pytest.raises(TypeError, match="augment_index must be a bool"):
        _trainer(augment=aug, augment_index=1)


# --------------------------------------------------------------------------- loops


@pytest.mark.parametrize("after", [0, 2])
def test_freeze_stops_the_selected_params_at_freeze_after(after):
    """Before ``freeze_after`` the step equals an unfrozen trainer's; from then on
    the selected params (here the head's bias) stay put under SGD momentum while
    the others keep training, in a python loop and in a scanned epoch alike."""
    frozen = jaxreg.by_path(r"Dense_1/bias")
    sgd = optax.sgd(0.1, momentum=0.9)
    tr = _trainer(optimizer=sgd, freeze=frozen, freeze_after=after)
    free = _trainer(optimizer=sgd)
    s = tr.init(jax.random.key(0), X[:16])
    ref = free.init(jax.random.key(0), X[:16])
    batches = [(X[16 * i : 16 * (i + 1)], Y[16 * i : 16 * (i + 1)]) for i in range(5)]
    bias = []
    for i, batch in enumerate(batches):
        s, _ = tr.train_step(s, batch)
        ref, _ = free.train_step(ref, batch)
        bias.append(np.asarray(s.params["Dense_1"]["bias"]))
        if i < after:
            assert_trees_close(s.params, ref.params, atol=1e-6)
    initial = tr.init(jax.random.key(0), X[:16]).params["Dense_1"]["bias"]
    start = bias[after - 1] if after else np.asarray(initial)
    for b in bias[after:]:
        np.testing.assert_array_equal(b, start)  # momentum does not move it either
    moved = np.abs(np.asarray(s.params["Dense_0"]["kernel"]) - ref.params["Dense_0"]["kernel"])
    assert after == 0 or moved.max() > 0  # after freezing the runs part ways
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *batches)
    s2, _ = jax.jit(tr.epoch_fn)(tr.init(jax.random.key(0), X[:16]), stacked)
    assert_trees_close(s2.params, s.params, atol=1e-5)
    # fit: fused chunks that straddle the boundary fall back to single steps
    fits = [
        fit(tr, tr.init(jax.random.key(0), X[:16]), (X, Y), epochs=2, batch_size=16, loop=lp)[0]
        for lp in (Loop(4, 1), Loop(1, 1))
    ]
    assert_trees_close(fits[0].params, fits[1].params, atol=1e-5)
    moved = not np.allclose(fits[0].params["Dense_1"]["bias"], initial)
    assert moved == (after > 0)


def test_freeze_skips_the_frozen_params_gradient():
    """In the frozen branch no gradient reaches the frozen leaves (stop_gradient),
    so a penalty on them alone adds nothing to the step's gradient norm."""
    only_bias = (lambda p: jnp.sum(p["Dense_1"]["bias"] ** 2), 10.0)
    kw = {"freeze": jaxreg.by_path("Dense_1/bias"), "donate": False}
    tr, plain = _trainer(penalties={"b": only_bias}, **kw), _trainer(penalties={}, **kw)
    s = tr.init(jax.random.key(0), X[:16])
    head = {**s.params["Dense_1"], "bias": jnp.ones(4)}
    s = s.replace(params={**s.params, "Dense_1": head})
    _, m = tr.train_step(s, (X[:16], Y[:16]))
    _, m0 = plain.train_step(s, (X[:16], Y[:16]))
    assert float(m["loss"]) > float(m0["loss"]) + 1.0  # the penalty is in the loss
    assert float(m["grad_norm"]) == pytest.approx(float(m0["grad_norm"]), rel=1e-6)


def test_eval_without_tta_views_uses_the_plain_images():
    mirror = lambda v: (v, -v)
    tr = _trainer(tta=mirror)
    s = tr.init(jax.random.key(0), X[:16])
    plain = _trainer().eval_fn(s, (X, Y))
    views = tr.eval_fn(s, (X, Y))
    off = tr.eval_fn(s, (X, Y), tta=False)
    assert float(views["loss_sum"]) != pytest.approx(float(plain["loss_sum"]))
    assert float(off["loss_sum"]) == pytest.approx(float(plain["loss_sum"]))
    batches = (X.reshape(6, 16, -1), Y.reshape(6, 16))
    got = tr.evaluate_fn(s, batches, tta=False)["loss"]
    assert float(got) == pytest.approx(float(plain["loss_sum"]) / X.shape[0], rel=1e-5)


def test_scanned_epochs_equal_the_python_loop_of_single_steps():
    tr = _trainer()
    finals = {}
    for loop in (Loop(1, 1), Loop(4, 1), Loop(5, 5)):
        state = tr.init(jax.random.key(5), X[:16])
        state, hist, _, _ = fit(tr, state, (X, Y), (X, Y), epochs=2, batch_size=16, loop=loop)
        finals[loop] = state
        assert int(state.step) == 12 and len(hist.epochs) == 2
    python, scan, unrolled = finals.values()
    assert_trees_close(scan.params, python.params, rtol=0, atol=0)
    assert_trees_close(scan.batch_stats, python.batch_stats, rtol=0, atol=0)
    assert_trees_close(unrolled.params, python.params, rtol=1e-4, atol=1e-4)


def test_choose_loop_measures_every_candidate_and_leaves_the_state_alone():
    tr = _trainer()
    state = tr.init(jax.random.key(6), X[:16])
    before = jax.tree.map(np.asarray, state.params)
    loop, timings = choose_loop(tr, state, (X, Y), batch_size=16, slow_step=float("inf"))
    assert set(timings) == {"python loop", "scan 6 steps, unroll 1", "scan 6 steps, unroll 6"}
    assert loop.name in timings and timings[loop.name] == min(timings.values())
    assert_trees_close(state.params, before, rtol=0, atol=0)


def test_choose_loop_stops_at_a_slow_python_step():
    """A step slower than ``slow_step`` ends the search before any fused program."""
    tr = _trainer()
    state = tr.init(jax.random.key(6), X[:16])
    loop, timings = choose_loop(tr, state, (X, Y), batch_size=16, slow_step=0.0)
    assert loop == Loop(1, 1) and list(timings) == ["python loop"]
    # explicit candidates are always all timed
    cands = [Loop(1, 1), Loop(3, 1)]
    _, timings = choose_loop(tr, state, (X, Y), batch_size=16, slow_step=0.0, candidates=cands)
    assert set(timings) == {"python loop", "scan 3 steps, unroll 1"}


def test_fit_learns_and_resume_equals_uninterrupted(tmp_path):
    tr = _trainer()
    key = jax.random.key(7)
    straight, hist, _, _ = fit(
        tr, tr.init(key, X[:16]), (X, Y), (X, Y), epochs=4, batch_size=16, loop=Loop(3, 1)
    )
    assert hist.epochs[-1]["val_accuracy"] > hist.epochs[0]["val_accuracy"]
    half, _, _, _ = fit(
        tr, tr.init(key, X[:16]), (X, Y), (X, Y), epochs=2, batch_size=16, loop=Loop(3, 1)
    )
    save_checkpoint(tmp_path, half, int(half.step))
    restored = restore_checkpoint(tmp_path, tr.init(jax.random.key(99), X[:16]))
    resumed, hist2, _, _ = fit(
        tr, restored, (X, Y), (X, Y), epochs=4, batch_size=16, loop=Loop(3, 1)
    )
    assert [e["epoch"] for e in hist2.epochs] == [2, 3]
    assert_trees_close(resumed.params, straight.params, rtol=0, atol=0)
    assert_trees_close(resumed.opt_state, straight.opt_state, rtol=0, atol=0)


def _overfit_trainer(**kw):
    return _trainer(model=MLP(rate=0.0, hidden=64), penalties={}, **kw)


def test_fit_early_stopping_stops_and_restores_the_best_epoch():
    tr = _overfit_trainer(optimizer=optax.adam(0.05))
    train, val = (X[:24], Y[:24]), (X[24:], Y[24:])
    key = jax.random.key(10)
    # reference: epoch by epoch without early stopping, params kept after each epoch
    state, losses, kept = tr.init(key, X[:8]), [], []
    for e in range(8):
        state, hist, _, _ = fit(tr, state, train, val, epochs=e + 1, batch_size=8, loop=Loop(3, 1))
        losses.append(hist.epochs[-1]["val_loss"])
        kept.append(jax.tree.map(np.asarray, state.params))
    es = jaxreg.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    state, hist, es_state, _ = fit(
        tr, tr.init(key, X[:8]), train, val, epochs=8, batch_size=8, loop=Loop(3, 1),
        early_stopping=es,
    )  # fmt: skip
    stop, best = hist.stopped_epoch, int(es_state.best_step)
    assert stop is not None and stop < 7 and best < stop  # it overfits, then stops
    assert int(es_state.stopped_epoch) == stop and len(hist.epochs) == stop + 1
    np.testing.assert_allclose(hist.series("val_loss"), losses[: stop + 1], rtol=1e-6)
    assert best == int(np.argmin(losses[: stop + 1]))
    assert_trees_close(state.params, kept[best], rtol=0, atol=0)


def test_sweep_members_stop_at_their_own_epochs_and_keep_their_best_params():
    tr = _overfit_trainer(optimizer=lambda hp: optax.adam(hp["lr"]))
    train, val = (X[:24], Y[:24]), (X[24:], Y[24:])
    es = jaxreg.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    hp = {"lr": [0.05, 0.003]}
    res, seq = (
        sweep(
            tr, hp, train, val, key=jax.random.key(11), epochs=6, batch_size=8, mode=mode,
            loop=Loop(3, 1), early_stopping=es,
        )
        for mode in ("vmap", "sequential")
    )  # fmt: skip
    assert res.stopped_epoch[0] >= 0 and res.stopped_epoch[0] != res.stopped_epoch[1]
    np.testing.assert_array_equal(seq.stopped_epoch, res.stopped_epoch)
    assert_trees_close(seq.state.params, res.state.params, rtol=1e-5, atol=1e-6)
    for i in range(2):
        state = tr.init(jax.random.key(11), X[:8], {"lr": hp["lr"][i]})
        state, hist, es_state, _ = fit(
            tr, state, train, val, epochs=6, batch_size=8, loop=Loop(3, 1), early_stopping=es
        )
        member = jax.tree.map(lambda leaf, i=i: leaf[i], res.state.params)
        assert_trees_close(member, state.params, rtol=1e-5, atol=1e-6)
        assert int(res.best_epoch[i]) == int(es_state.best_step)
        assert int(res.stopped_epoch[i]) == (
            -1 if hist.stopped_epoch is None else hist.stopped_epoch
        )


def test_plateau_scales_the_updates():
    tr = _trainer(optimizer=optax.sgd(0.1), penalties={})
    state = tr.init(jax.random.key(12), X[:16])
    _, m1 = tr.step_fn(state, (X[:16], Y[:16]))
    _, m2 = tr.step_fn(state.replace(lr_scale=jnp.float32(0.25)), (X[:16], Y[:16]))
    np.testing.assert_allclose(m2["update_norm"], 0.25 * m1["update_norm"], rtol=1e-5)
    plateau = jaxreg.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=0)
    state, _, _, pl_state = fit(
        tr, state, (X, Y), (X[:8], Y[:8]), epochs=4, batch_size=16, loop=Loop(3, 1),
        plateau=plateau, learning_rate=0.1,
    )  # fmt: skip
    assert float(pl_state.learning_rate) < 0.1  # val accuracy on 8 examples stalls
    np.testing.assert_allclose(state.lr_scale, float(pl_state.learning_rate) / 0.1, rtol=1e-6)


# --------------------------------------------------------------------------- sweeps


def test_sweep_members_equal_separate_runs_and_values_do_not_retrace():
    traces = []

    def model(hp):
        traces.append(1)
        return MLP(rate=hp["dropout"])

    tr = _trainer(model=model, optimizer=lambda hp: optax.adamw(1e-2, weight_decay=hp["wd"]))
    hp = {"dropout": [0.0, 0.3, 0.5], "wd": [0.0, 1e-3, 1e-1], "label_smoothing": [0, 0.1, 0.2]}
    res = {}
    for mode in ("vmap", "map", "sequential"):
        res[mode] = sweep(
            tr, hp, (X, Y), (X, Y), key=jax.random.key(8), epochs=2, batch_size=16,
            mode=mode, loop=Loop(3, 1),
        )  # fmt: skip
    assert res["vmap"].metrics["val_accuracy"].shape == (2, 3)
    for i in range(3):
        state = tr.init(jax.random.key(8), X[:16], {k: v[i] for k, v in hp.items()})
        state, hist, _, _ = fit(tr, state, (X, Y), (X, Y), epochs=2, batch_size=16, loop=Loop(3, 1))
        for mode in ("vmap", "map", "sequential"):
            member = jax.tree.map(lambda leaf, i=i: leaf[i], res[mode].state.params)
            assert_trees_close(member, state.params, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                res[mode].metrics["val_loss"][-1, i], hist.epochs[-1]["val_loss"], rtol=1e-5
            )
    n = len(traces)
    again = sweep(
        tr, {"dropout": [0.1, 0.2, 0.4], "wd": [1e-2, 0, 0], "label_smoothing": [0.3, 0, 0]},
        (X, Y), (X, Y), key=jax.random.key(8), epochs=2, batch_size=16, mode="vmap",
        loop=Loop(3, 1),
    )  # fmt: skip
    assert len(traces) == n  # new values: the compiled init and epoch programs are reused
    assert not np.allclose(again.metrics["loss"], res["vmap"].metrics["loss"])


def test_sweep_auto_mode_and_seeds():
    tr = _trainer()
    r = sweep(
        tr, {"seed": [0, 1], "l2": [0.0, 1e-2]}, (X, Y), (X, Y), key=jax.random.key(9),
        epochs=1, batch_size=16, loop=Loop(3, 1),
    )  # fmt: skip
    assert r.mode in ("vmap", "map", "sequential") and r.loop
    assert {t.split(":")[0] for t in r.timings} == {"vmap", "map", "sequential"}
    assert r.timings[f"{r.mode}: scan 3 steps, unroll 1"] == min(r.timings.values())
    w = r.state.params["Dense_0"]["kernel"]
    assert not np.allclose(w[0], w[1])  # different seeds, different initialisations
    assert len(r.table()) == 2 and set(r.hparams) == {"seed", "l2"}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: Trainer(model=3, optimizer=optax.sgd(0.1)), TypeError, "model"),
        (lambda: Trainer(model=MLP(), optimizer="adam"), TypeError, "optimizer"),
        (lambda: _trainer(ema_decay=1.0), ValueError, "ema_decay"),
        (lambda: _trainer(penalties={"l2": 0.1}), TypeError, "penalties"),
        (lambda: _trainer(param_sharding=lambda p, x: None), ValueError, "mesh"),
        (
            lambda: fit(
                _trainer(), _trainer().init(jax.random.key(0), X[:8]), (X, Y), (X, Y),
                epochs=1, batch_size=8, loop=Loop(4, 1),
                early_stopping=jaxreg.EarlyStopping(monitor="val_top5", mode="max"),
            ),
            KeyError,
            "val_top5",
        ),
        (
            lambda: _trainer(penalties={"l2": jaxreg.l2_penalty}).init(jax.random.key(0), X),
            ValueError,
            "l2",
        ),
        (
            lambda: _trainer().init(jax.random.key(0), X, {"label_smoothing": [0.1, 0.2]}),
            ValueError,
            "label_smoothing",
        ),
        (lambda: _trainer().init(0, X), TypeError, "key"),
        (lambda: _trainer(freeze_after=-1), ValueError, "freeze_after must be an int >= 0"),
        (lambda: _trainer(freeze={"a": 1}), ValueError, "Trainer: freeze leaves must be"),
        (
            lambda: _trainer(freeze=jaxreg.by_path("nothing")).init(jax.random.key(0), X),
            ValueError,
            "freeze selects no parameter; parameter paths: BatchNorm_0/bias",
        ),
        (
            lambda: _trainer().eval_fn(_trainer().init(jax.random.key(0), X), (X, Y), ema=True),
            ValueError,
            "ema",
        ),
        (
            lambda: fit(_trainer(), None, (X, Y[:5]), epochs=1, batch_size=4),
            ValueError,
            "labels",
        ),
        (
            lambda: fit(_trainer(), None, (X, Y), epochs=1, batch_size=1000),
            ValueError,
            "batch_size",
        ),
        (lambda: sweep(_trainer(), {}, (X, Y), key=jax.random.key(0), epochs=1, batch_size=8),
         ValueError, "hparams"),
        (
            lambda: sweep(
                _trainer(), {"l2": [0, 1], "label_smoothing": [0.1]}, (X, Y),
                key=jax.random.key(0), epochs=1, batch_size=8,
            ),
            ValueError,
            "same length",
        ),
    ],
)  # fmt: skip
def test_bad_arguments_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- sharding

SHARDED = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, PartitionSpec as P
    import jaxreg
    from jaxreg.training import Trainer
    from tests.test_training import MLP, L2, X, Y

    mesh = Mesh(np.array(jax.devices()), ("data",))
    kw = dict(model=MLP(), optimizer=optax.adam(1e-2), penalties={"l2": L2})
    single, sharded = Trainer(**kw), Trainer(**kw, mesh=mesh)
    a = single.init(jax.random.key(0), X[:16])
    b = sharded.init(jax.random.key(0), X[:16])
    for i in range(2):
        batch = (X[16 * i : 16 * i + 16], Y[16 * i : 16 * i + 16])
        a, ma = single.train_step(a, batch)
        b, mb = sharded.train_step(b, sharded.shard_batch(batch))
    err = lambda u, v: max(
        float(np.max(np.abs(np.asarray(p) - np.asarray(q))))
        for p, q in zip(jax.tree.leaves(u), jax.tree.leaves(v))
    )
    # fit on the mesh: the epoch's batches are gathered inside jit and sharded
    from jaxreg.fitting import Loop, fit
    fa, _, _, _ = fit(single, single.init(jax.random.key(1), X[:16]), (X, Y), epochs=1,
                      batch_size=16, loop=Loop(3, 1))
    fb, _, _, _ = fit(sharded, sharded.init(jax.random.key(1), X[:16]), (X, Y), epochs=1,
                      batch_size=16, loop=Loop(3, 1))
    try:
        fit(sharded, fb, (X, Y), epochs=2, batch_size=12, loop=Loop(3, 1))
        fit_error = ""
    except ValueError as e:
        fit_error = str(e)
    placed = sharded.shard_batch((X[:16], Y[:16]))[0].sharding
    try:
        sharded.shard_batch((X[:12], Y[:12]))
        error = ""
    except ValueError as e:
        error = str(e)
    # 4 x 2 mesh: batch over "data", the first kernel's output units over "model"
    mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    rule = lambda path, p: P(None, "model") if path == "Dense_0/kernel" else None
    split = Trainer(**kw, mesh=mesh2, param_sharding=rule)
    c = split.init(jax.random.key(0), X[:16])
    for i in range(2):
        batch = (X[16 * i : 16 * i + 16], Y[16 * i : 16 * i + 16])
        c, _ = split.train_step(c, split.shard_batch(batch))
    kernel = c.params["Dense_0"]["kernel"]
    mu = c.opt_state[0].mu["Dense_0"]["kernel"]
    print("RESULT " + json.dumps({
        "fit_params": err(fa.params, fb.params),
        "fit_error": fit_error,
        "split_params": err(a.params, c.params),
        "split_stats": err(a.batch_stats, c.batch_stats),
        "kernel_spec": kernel.sharding.spec == P(None, "model"),
        "mu_spec": mu.sharding.spec == P(None, "model"),
        "other_replicated": c.params["Dense_1"]["kernel"].sharding.is_fully_replicated,
        "devices": len(jax.devices()),
        "params": err(a.params, b.params),
        "stats": err(a.batch_stats, b.batch_stats),
        "loss": abs(float(ma["loss"]) - float(mb["loss"])),
        "batch_spread": len(placed.device_set),
        "replicated": b.params["Dense_0"]["kernel"].sharding.is_fully_replicated,
        "error": error,
    }))
    """
)


def test_sharded_step_equals_single_device_step():
    r = run_on_cpu_devices(SHARDED, devices=8)
    assert r["devices"] == 8 and r["batch_spread"] == 8 and r["replicated"]
    assert r["params"] < 1e-5 and r["stats"] < 1e-5 and r["loss"] < 1e-5, r
    assert "divisible" in r["error"] and "12" in r["error"]
    assert r["split_params"] < 1e-5 and r["split_stats"] < 1e-5, r
    assert r["kernel_spec"] and r["mu_spec"]  # the kernel and its Adam moment: split
    assert r["other_replicated"]
    assert r["fit_params"] < 1e-5, r
    assert "fit" in r["fit_error"] and "divisible" in r["fit_error"]


def test_sampled_norms_are_the_last_step_of_each_fused_call():
    """log_norms="sampled": a fused call of k steps logs the norms of its last step."""
    every, sampled = _trainer(log_norms=True), _trainer()
    assert sampled.log_norms == "sampled"
    # reference: single steps in the epoch's order, norms logged on every one
    runner = EpochRunner(every, X.shape[0], 16, Loop(1, 1))
    state = every.init(jax.random.key(8), X[:16])
    order = runner.order(state)
    steps = []
    for i in range(runner.steps_per_epoch):  # 6 steps
        single, _ = runner.chunk_at(i, 1)
        state, sums = single(state, (X, Y), order, i, None)
        steps.append({k: float(v) for k, v in sums.items()})
    # sampled, 3 steps per call: two calls, norms of steps 3 and 6
    got, hist, _, _ = fit(
        sampled, sampled.init(jax.random.key(8), X[:16]), (X, Y), epochs=1, batch_size=16,
        loop=Loop(3, 1),
    )  # fmt: skip
    epoch = hist.epochs[0]
    for name in ("grad_norm", "update_norm", "param_norm"):
        want = (steps[2][name] + steps[5][name]) / 2
        assert epoch[name] == pytest.approx(want, rel=1e-5), name
        assert want != pytest.approx(np.mean([s[name] for s in steps]), rel=1e-3)
    assert epoch["loss"] == pytest.approx(np.mean([s["loss"] for s in steps]), rel=1e-5)
    assert_trees_close(got.params, state.params, rtol=1e-6, atol=1e-7)
    # every step's norms with True; none with False; per-call norms with train_step
    _, hist_every, _, _ = fit(
        every, every.init(jax.random.key(8), X[:16]), (X, Y), epochs=1, batch_size=16,
        loop=Loop(3, 1),
    )  # fmt: skip
    assert hist_every.epochs[0]["update_norm"] == pytest.approx(
        np.mean([s["update_norm"] for s in steps]), rel=1e-5
    )
    lean = _trainer(log_norms=False)
    _, hist_lean, _, _ = fit(
        lean, lean.init(jax.random.key(8), X[:16]), (X, Y), epochs=1, batch_size=16,
        loop=Loop(3, 1),
    )  # fmt: skip
    assert not {"grad_norm", "update_norm", "param_norm"} & set(hist_lean.epochs[0])
    _, m = sampled.train_step(sampled.init(jax.random.key(8), X[:16]), (X[:16], Y[:16]))
    assert {"grad_norm", "update_norm", "param_norm"} <= set(m)
    with pytest.raises(ValueError, match="log_norms"):
        _trainer(log_norms="often")
