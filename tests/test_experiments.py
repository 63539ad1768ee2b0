"""The experiment configs, runner and reports behind ``jaxreg compare`` / ``jaxreg sweep``."""

from __future__ import annotations

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import data as data_lib
from jaxreg.augment import flip_views, random_crop
from jaxreg.experiments import configs, report, runner
from jaxreg.experiments.configs import Regularization, parse_config
from jaxreg.fitting import Loop
from jaxreg.models import whitening_init
from tests.conftest import assert_trees_close


def test_parse_config_names_values_and_all():
    assert parse_config("none").active() == {}
    r = parse_config("dropout=0.5+batchnorm")
    assert r.name == "dropout=0.5+batchnorm"
    assert r.active() == {"dropout": 0.5, "batchnorm": True}
    assert parse_config("l2").l2 == configs.DEFAULTS["l2"]
    every = parse_config("all")
    assert set(every.active()) == set(configs.ALL)
    # a value given before or after "all" wins over the default
    assert parse_config("all+l2=1e-4").l2 == 1e-4
    assert parse_config("l2=1e-4+all").l2 == 1e-4
    assert parse_config("early-stopping=3").early_stopping == 3
    assert parse_config("label_smoothing").label_smoothing == 0.1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("dropuot", r"unknown config 'dropuot'.*known: none, all, l2"),
        ("dropout=abc", "not a number"),
        ("dropout=1.5", r"dropout must lie in \[0, 1\)"),
        ("l2=-1", "must be >= 0"),
        ("batchnorm=1", "takes no value"),
        ("lookahead=0.5", "takes no value"),
        ("early_stopping=2.5", "patience must be an int"),
        ("", "non-empty"),
    ],
)
def test_parse_config_errors_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_config(spec)


def _fake_loader(n_train=230, n_test=57, shape=(8, 8, 1), name="fake"):
    rng = np.random.default_rng(0)

    def load(dataset, data_dir=None):
        del dataset, data_dir
        x = rng.integers(0, 256, (n_train, *shape), dtype=np.uint8)
        xt = rng.integers(0, 256, (n_test, *shape), dtype=np.uint8)
        y = np.arange(n_train, dtype=np.int32) % 10
        yt = np.arange(n_test, dtype=np.int32) % 10
        return data_lib.Dataset(name, (x, y), (xt, yt), 10)

    return load


def test_prepare_splits_are_disjoint_seeded_and_scaled():
    raw = _fake_loader()("fake")
    d = runner.prepare("fake", loader=_fake_loader(), seed=3, val_fraction=0.2, train_size=100)
    assert d.val[0].shape == (46, 8, 8, 1) and d.train[0].shape == (100, 8, 8, 1)
    assert d.test[0].shape == (57, 8, 8, 1) and d.is_image
    assert d.train[0].dtype == jnp.float32 and float(d.train[0].max()) <= 1.0
    # the rows come from the raw training split, with no example in both train and val
    rows = {r.tobytes(): i for i, r in enumerate(raw.train[0])}
    tr = {rows[np.asarray(np.rint(a * 255), np.uint8).tobytes()] for a in np.asarray(d.train[0])}
    va = {rows[np.asarray(np.rint(a * 255), np.uint8).tobytes()] for a in np.asarray(d.val[0])}
    assert len(tr) == 100 and len(va) == 46 and not tr & va
    again = runner.prepare("fake", loader=_fake_loader(), seed=3, val_fraction=0.2, train_size=100)
    np.testing.assert_array_equal(d.train[1], again.train[1])
    with pytest.raises(ValueError, match=r"train_size must lie in \[2, 184\]"):
        runner.prepare("fake", loader=_fake_loader(), train_size=500)
    with pytest.raises(ValueError, match="val_fraction"):
        runner.prepare("fake", loader=_fake_loader(), val_fraction=1.0)


def test_prepare_folds_cut_one_permutation_into_disjoint_validation_blocks():
    def load(dataset, data_dir=None):  # the label is the row's index
        x = np.zeros((103, 8, 8, 1), np.uint8)
        y = np.arange(103, dtype=np.int32)
        return data_lib.Dataset("idx", (x, y), (x[:5], y[:5]), 103)

    folds = [runner.prepare("idx", loader=load, seed=1, folds=4, fold=i) for i in range(4)]
    vals = [set(np.asarray(d.val[1]).tolist()) for d in folds]
    for d, val in zip(folds, vals, strict=True):
        train = set(np.asarray(d.train[1]).tolist())
        assert len(val) == 25 and len(train) == 78 and not train & val  # 103 // 4 validate
        assert train | val == set(range(103))
    assert len(set().union(*vals)) == 100  # disjoint: each example validates at most once
    again = runner.prepare("idx", loader=load, seed=1, folds=4, fold=2)
    np.testing.assert_array_equal(again.val[1], folds[2].val[1])
    for bad in ({"folds": 1}, {"folds": 3, "fold": 3}, {"folds": 3, "fold": -1}):
        with pytest.raises(ValueError, match="folds must be >= 2 and fold in"):
            runner.prepare("idx", loader=load, **bad)
    with pytest.raises(ValueError, match="folds=200 exceeds the 103 training examples"):
        runner.prepare("idx", loader=load, folds=200)


def test_prepare_standardizes_signals():
    def load(dataset, data_dir=None):
        rng = np.random.default_rng(1)
        x = rng.normal(3.0, 2.0, (100, 40, 1)).astype(np.float32)
        y = np.arange(100, dtype=np.int32) % 10
        return data_lib.Dataset("sig", (x, y), (x[:10], y[:10]), 10)

    d = runner.prepare("sig", loader=load)
    assert not d.is_image
    assert abs(float(d.train[0].mean())) < 1e-5 and abs(float(d.train[0].std()) - 1) < 1e-5


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return runner.prepare("digits", seed=0, train_size=256)


def test_evaluate_counts_the_tail_batch(digits):
    trainer, hp, _ = runner.build(parse_config("none"), "mlp", digits)
    state = trainer.init(jax.random.key(0), digits.train[0][:8], hp)
    x, y = digits.test  # 359 examples: no batch of 500 divides them
    got = runner.evaluate(trainer, state, x, y)
    logits = trainer.module(state.hparams).apply({"params": state.params}, x, train=False)
    want = float(jnp.mean(jnp.argmax(logits, -1) == y))
    assert got["accuracy"] == pytest.approx(want, abs=1e-6)
    big = jnp.concatenate([x] * 8), jnp.concatenate([y] * 8)  # 2872: batches of 500 + a tail
    assert runner.evaluate(trainer, state, *big)["accuracy"] == pytest.approx(want, abs=1e-6)


def test_build_turns_each_regularizer_on(digits):
    reg = parse_config("l2+dropout=0.4+batchnorm+label_smoothing+max_norm=0.5+clipping+ema")
    trainer, hp, es = runner.build(reg, "mlp", digits)
    assert hp == {
        "l2": 1e-3,
        "dropout": 0.4,
        "label_smoothing": 0.1,
        "max_norm": 0.5,
        "clipping": 1.0,
    }
    assert set(trainer.penalties) == {"l2"} and trainer.ema_decay == 0.99 and es is None
    state = trainer.init(jax.random.key(0), digits.train[0][:32], hp)
    assert state.batch_stats  # BatchNorm is in the model
    batch = digits.train[0][:32], digits.train[1][:32]
    state, metrics = trainer.train_step(state, batch)
    assert float(metrics["penalty/l2"]) > 0 and "clipped" in metrics
    # max-norm keeps every output unit's incoming weights within 0.5
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        if "kernel" in jax.tree_util.keystr(path):
            assert float(jnp.linalg.norm(leaf, axis=0).max()) <= 0.5 + 1e-5
    _, _, es = runner.build(parse_config("early_stopping=2"), "mlp", digits)
    assert es.patience == 2 and es.restore_best_weights and es.monitor == "val_loss"


def test_build_lookahead_pulls_the_params_to_airbench_slow_weights(digits):
    reg = parse_config("lookahead")
    with pytest.raises(ValueError, match="lookahead needs total_steps"):
        runner.build(reg, "mlp", digits, optimizer="sgd", learning_rate=0.1)
    trainer, hp, _ = runner.build(
        reg, "mlp", digits, optimizer="sgd", learning_rate=0.1, total_steps=10
    )
    plain, _, _ = runner.build(
        parse_config("none"), "mlp", digits, optimizer="sgd", learning_rate=0.1
    )
    key = jax.random.key(0)
    state, ref = (
        trainer.init(key, digits.train[0][:32], hp),
        plain.init(key, digits.train[0][:32], {}),
    )
    start = jax.tree.map(np.array, state.params)  # the step donates the state
    for i in range(5):
        batch = digits.train[0][32 * i : 32 * (i + 1)], digits.train[1][32 * i : 32 * (i + 1)]
        state, _ = trainer.train_step(state, batch)
        ref, _ = plain.train_step(ref, batch)
        if i < 4:  # between syncs: the plain optimizer's fast weights
            assert_trees_close(state.params, ref.params, rtol=1e-6, atol=1e-7)
    # the 5th update syncs: slow = start + a * (fast - start), a = 1 - 0.95**5 * (5/10)**3
    a = 1 - 0.95**5 * 0.5**3
    assert float(runner.lookahead_step_size(10)(4)) == pytest.approx(a)
    want = jax.tree.map(lambda s0, f: s0 + a * (f - s0), start, ref.params)
    assert_trees_close(state.params, want, rtol=1e-5, atol=1e-6)
    assert float(runner.lookahead_step_size(10)(0)) == pytest.approx(1 - 0.95**5 * 1e-3)


def test_augmentation_shifts_signals_and_images():
    sig = runner.Data("s", (jnp.arange(40.0).reshape(1, 40, 1),) * 2, None, None, 10)
    aug = runner._augment(sig, 1.0)
    out, _ = aug(jax.random.key(1), jnp.tile(sig.train[0], (64, 1, 1)), jnp.zeros(64), {})
    shifts = np.asarray(out[:, 20, 0] - 20.0)
    assert set(shifts) <= set(range(-4, 5)) and len(set(shifts)) > 3  # shifts of up to 40/10
    img = runner.Data("digits", (jnp.ones((8, 8, 8, 1)),) * 2, None, None, 10)
    out, _ = runner._augment(img, 1.0)(jax.random.key(2), img.train[0], jnp.zeros(8), {})
    assert out.shape == img.train[0].shape and float(out.min()) == 0.0  # zero-padded shifts


def test_run_config_records_a_consistent_result(digits):
    reg = parse_config("early_stopping=1")
    r = runner.run_config(reg, digits, model="mlp", epochs=6, batch_size=64, loop=runner.Loop(1, 1))
    assert r["config"] == "early_stopping=1" and r["regularizers"] == {"early_stopping": 1}
    assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
    assert r["epochs_run"] == len(r["history"]) <= 6
    assert 0 <= r["best_epoch"] < r["epochs_run"]
    if r["stopped_epoch"] is not None:
        assert r["stopped_epoch"] == r["epochs_run"] - 1
    assert r["test_acc"] > 0.5  # chance is 0.1
    losses = [h["val_loss"] for h in r["history"]]
    assert r["best_epoch"] == int(np.argmin(losses))


def test_run_sweep_members_and_bad_param(digits):
    r = runner.run_sweep(
        parse_config("batchnorm"), "dropout", [0.0, 0.5], digits,
        model="mlp", epochs=2, batch_size=64, mode="sequential", loop=runner.Loop(1, 1),
    )  # fmt: skip
    assert [m["dropout"] for m in r["members"]] == [0.0, 0.5]
    assert r["mode"] == "sequential" and len(r["history"]["val_accuracy"]) == 2
    for m in r["members"]:
        assert m["gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
        assert m["test_acc"] > 0.3
    with pytest.raises(ValueError, match="cannot sweep 'batchnorm'"):
        runner.run_sweep(Regularization(), "batchnorm", [0, 1], digits, model="mlp", epochs=1)


def test_cross_validated_sweep_equals_its_folds_run_alone():
    pytest.importorskip("sklearn")
    folds = [runner.prepare("digits", seed=0, train_size=256, folds=3, fold=i) for i in range(3)]
    kw = dict(model="mlp", epochs=2, batch_size=64, mode="sequential", loop=runner.Loop(1, 1))
    seen = []
    show = lambda epoch, metrics: seen.append(epoch)
    cv = runner.run_sweep(parse_config("none"), "dropout", [0.0, 0.5], folds, callback=show, **kw)
    assert seen == list(range(6)) and cv["folds"] == 3  # epochs count on across folds
    alone = [runner.run_sweep(parse_config("none"), "dropout", [0.0, 0.5], d, **kw) for d in folds]
    for j, m in enumerate(cv["members"]):
        per = [a["members"][j] for a in alone]
        assert m["val_acc_folds"] == pytest.approx([p["val_acc"] for p in per], abs=1e-6)
        for key in ("val_acc", "test_acc", "train_acc", "val_loss", "gap"):
            assert m[key] == pytest.approx(np.mean([p[key] for p in per]), abs=1e-6)
        assert m["test_acc_std"] == pytest.approx(np.std([p["test_acc"] for p in per]), abs=1e-6)
    want = np.mean([a["history"]["val_accuracy"] for a in alone], axis=0)
    np.testing.assert_allclose(cv["history"]["val_accuracy"], want, atol=1e-6)
    assert cv["picked"] == runner._pick(cv["members"], "dropout")
    assert alone[0]["folds"] is None and alone[0]["picked"] in (0.0, 0.5)
    assert "(mean over 3 folds)" in report.picked_line(cv)
    with pytest.raises(ValueError, match="validation splits of one shape"):
        runner.run_sweep(
            parse_config("none"), "dropout", [0.0], [folds[0], runner.prepare("digits")], **kw
        )


def test_sweep_pick_is_the_best_validation_accuracy_then_the_lower_loss():
    rows = [
        {"l2": 0.0, "val_acc": 0.90, "val_loss": 0.30},
        {"l2": 1e-3, "val_acc": 0.95, "val_loss": 0.25},
        {"l2": 1e-2, "val_acc": 0.95, "val_loss": 0.20},
        {"l2": 1e-1, "val_acc": 0.80, "val_loss": 0.10},
    ]
    assert runner._pick(rows, "l2") == 1e-2  # tie at 0.95: the lower loss
    rows[2]["val_acc"] = 0.94
    assert runner._pick(rows, "l2") == 1e-3
    assert runner._pick([{"l2": 0.0, "val_acc": None, "val_loss": None}], "l2") is None
    line = report.picked_line({"param": "l2", "members": rows, "picked": 1e-3})
    assert line == "Picked l2=0.001: val acc 0.9500 (validation split); next l2=0.01: 0.9400."


def test_progress_bar_redraws_on_a_terminal_and_prints_once_otherwise():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    plain, tty = io.StringIO(), Tty()
    for stream in (plain, tty):
        bar = report.Progress(4, "cfg", stream=stream, width=8)
        for i in range(4):
            bar.update(i + 1, f"loss {i}")
        bar.close("done")
    assert plain.getvalue().count("\n") == 1 and "\r" not in plain.getvalue()
    assert "[########] 4/4 done" in plain.getvalue()
    assert tty.getvalue().count("\r") == 6 and "[##......] 1/4 loss 0" in tty.getvalue()


def test_run_config_repeats_are_seed_members_summarized(digits):
    r = runner.run_config(
        parse_config("dropout"), digits, model="mlp", epochs=2, batch_size=64,
        loop=runner.Loop(1, 1), repeats=3, mode="vmap",
    )  # fmt: skip
    rows = r["repeats"]
    assert [row["seed"] for row in rows] == [0.0, 1.0, 2.0]
    assert len({row["test_acc"] for row in rows}) > 1  # different keys, different runs
    for key in runner.SUMMARIZED:
        vals = [row[key] for row in rows]
        assert r[key] == pytest.approx(np.mean(vals))
        assert r[f"{key}_std"] == pytest.approx(np.std(vals, ddof=1))
    assert len(r["history"]) == r["epochs_run"] == 2 and r["stopped_epoch"] is None
    assert "±" in report.compare_table([r])
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        runner.run_config(parse_config("none"), digits, model="mlp", epochs=1, repeats=0)


def test_cosine_schedule_decays_to_zero_over_the_run(digits, monkeypatch):
    assert runner.learning_rate_schedule(3e-3, "constant", 100) == 3e-3
    cos = runner.learning_rate_schedule(3e-3, "cosine", 100)
    assert float(cos(0)) == pytest.approx(3e-3) and float(cos(50)) == pytest.approx(1.5e-3)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        runner.learning_rate_schedule(3e-3, "step", 100)
    # run_config hands build the schedule over the run's steps
    seen = []
    real_build = runner.build

    def spy(*args, **kwargs):
        seen.append(kwargs["learning_rate"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(runner, "build", spy)
    runner.run_config(
        parse_config("none"), digits, model="mlp", epochs=3, batch_size=50,
        learning_rate=1e-2, loop=Loop(1, 1), schedule="cosine",
    )  # fmt: skip
    steps = 3 * (digits.train[0].shape[0] // 50)
    (lr,) = seen
    assert float(lr(0)) == pytest.approx(1e-2) and float(lr(steps)) == pytest.approx(0, abs=1e-12)
    assert float(lr(steps - 1)) > 0


def test_triangle_schedule_and_sgd_optimizer(digits):
    tri = runner.learning_rate_schedule(0.4, "triangle", 100)
    assert float(tri(0)) == pytest.approx(0.08)  # starts at 0.2x
    assert float(tri(25)) == pytest.approx(0.4)  # peak at a quarter of the run
    assert float(tri(62)) == pytest.approx(0.4 * (1 - 37 / 75), rel=1e-5)
    assert float(tri(100)) == pytest.approx(0.0, abs=1e-12)
    # sgd is Nesterov momentum 0.9: one step from zero momentum moves by lr * (1 + 0.9) * grad
    tx = runner.base_optimizer("sgd", 0.1)
    grads = {"w": jnp.ones(3)}
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], -0.1 * 1.9 * np.ones(3), rtol=1e-6)
    r = runner.run_config(
        parse_config("l2"), digits, model="mlp", epochs=3, batch_size=64,
        learning_rate=0.05, optimizer="sgd", schedule="triangle", loop=Loop(1, 1),
    )  # fmt: skip
    assert r["test_acc"] > 0.5  # chance is 0.1
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, got 'rmsprop'"):
        runner.build(parse_config("none"), "mlp", digits, optimizer="rmsprop")
    # momentum is sgd's: 0.5 moves the first step by lr * (1 + 0.5) * grad
    tx = runner.base_optimizer("sgd", 0.1, momentum=0.5)
    updates, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(updates["w"], -0.1 * 1.5 * np.ones(3), rtol=1e-6)
    trainer, hp, _ = runner.build(
        parse_config("none"), "mlp", digits, optimizer="sgd", momentum=0.5, learning_rate=0.1
    )
    params = {"w": jnp.ones(3)}
    updates, _ = trainer.tx(hp).update(grads, trainer.tx(hp).init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * 1.5 * np.ones(3), rtol=1e-6)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\), got 1.0"):
        runner.build(parse_config("none"), "mlp", digits, optimizer="sgd", momentum=1.0)


def test_airbench_gets_its_whitening_stem_from_the_training_images():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((12, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 12), jnp.int32)
    data = runner.Data("cifar10", (x, y), None, (x, y), 10)
    fields = {"widths": (4,)}
    trainer, hp, _ = runner.build(parse_config("none"), "airbench", data, model_fields=fields)
    assert trainer.module(hp).whitening == whitening_init(x)
    assert fields == {"widths": (4,)}  # the caller's dict is left alone
    given = whitening_init(x[:, ::-1])
    trainer, hp, _ = runner.build(
        parse_config("none"), "airbench", data, model_fields={"widths": (4,), "whitening": given}
    )
    assert trainer.module(hp).whitening == given


def test_tta_averages_the_logits_of_the_image_and_its_mirror(monkeypatch):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((12, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 12), jnp.int32)
    data = runner.Data("cifar10", (x, y), None, (x, y), 10)
    trainer, hp, _ = runner.build(parse_config("none"), "cnn", data, tta=True)
    state = trainer.init(jax.random.key(0), x, hp)
    module = trainer.module(state.hparams)
    logits = lambda v: module.apply({"params": state.params}, v, train=False)
    mean = (logits(x) + logits(x[:, :, ::-1])) / 2
    assert not np.allclose(logits(x), mean, atol=1e-4)  # the mirror changes the logits
    got = trainer.eval_fn(state, (x, y))
    want = float(jnp.sum(jnp.argmax(mean, -1) == y))
    assert float(got["correct"]) == pytest.approx(want)
    loss = -jnp.sum(jax.nn.log_softmax(mean)[jnp.arange(12), y])
    assert float(got["loss_sum"]) == pytest.approx(float(loss), rel=1e-5)
    # the final figures: the train split on its plain images, the test split with views
    plain = runner.evaluate(dataclasses.replace(trainer, tta=None), state, x, y)
    views = runner.evaluate(trainer, state, x, y)
    assert views["loss"] != pytest.approx(plain["loss"])
    final = runner._final(trainer, state, data, ema=False)
    assert final["train_loss"] == pytest.approx(plain["loss"])
    assert final["test_loss"] == pytest.approx(views["loss"])
    # the train figures cover the first TRAIN_EVAL_SIZE images of the split
    monkeypatch.setattr(runner, "TRAIN_EVAL_SIZE", 5)
    head = runner.evaluate(dataclasses.replace(trainer, tta=None), state, x[:5], y[:5])
    assert head["loss"] != pytest.approx(plain["loss"])
    assert runner._final(trainer, state, data, ema=False)["train_loss"] == pytest.approx(
        head["loss"]
    )
    bad = dataclasses.replace(trainer, tta=lambda v: (v[:, :4],))
    with pytest.raises(ValueError, match="tta must return a non-empty sequence"):
        bad.eval_fn(state, (x, y))
    mnist = runner.Data("mnist", (x, y), None, None, 10)
    with pytest.raises(ValueError, match=r"tta \(mirrored test views\) needs natural images"):
        runner.build(parse_config("none"), "cnn", mnist, tta=True)


def test_tta_flip_translate_averages_six_views():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((6, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 6), jnp.int32)
    data = runner.Data("cifar10", (x, y), None, (x, y), 10)
    trainer, hp, _ = runner.build(parse_config("none"), "cnn", data, tta="flip_translate")
    state = trainer.init(jax.random.key(0), x, hp)
    module = trainer.module(state.hparams)
    logits = lambda v: module.apply({"params": state.params}, v, train=False)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = (x, padded[:, :8, :8], padded[:, 2:, 2:])
    mean = sum(logits(v) + logits(v[:, :, ::-1]) for v in shifted) / 6
    got = trainer.eval_logits(state.hparams, state.params, state.batch_stats, x)
    np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-6)
    flip, _, _ = runner.build(parse_config("none"), "cnn", data, tta="flip")
    assert flip.tta is flip_views
    with pytest.raises(ValueError, match="tta must be one of flip, flip_translate"):
        runner.build(parse_config("none"), "cnn", data, tta="mirror")


def test_alternating_flip_mirrors_each_example_in_every_other_epoch():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.random((40, 8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 40), jnp.int32)
    data = runner.Data("cifar10", (x, y), None, (x, y), 10)
    reg = parse_config("augmentation=0.5")
    trainer, hp, _ = runner.build(reg, "cnn", data, flip="alternating", seed=3)
    assert trainer.augment_index
    key, index = jax.random.key(0), jnp.arange(40)
    out = [trainer.augment(key, x, y, hp, index=index, epoch=e)[0] for e in range(3)]
    # the same crop (same step key) mirrored: epoch 1 is epoch 0's mirror, epoch 2 is epoch 0
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(out[0])[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(out[2]), np.asarray(out[0]))
    crop = random_crop(key, x, padding=1, mode="reflect")
    mirrored = np.all(np.asarray(out[0]) == np.asarray(crop)[:, :, ::-1], axis=(1, 2, 3))
    assert 0 < mirrored.sum() < 40  # some examples start mirrored, some do not
    np.testing.assert_array_equal(np.asarray(out[0])[~mirrored], np.asarray(crop)[~mirrored])
    other, _, _ = runner.build(reg, "cnn", data, flip="alternating", seed=4)
    assert not np.array_equal(other.augment(key, x, y, hp, index=index, epoch=0)[0], out[0])
    plain, _, _ = runner.build(reg, "cnn", data)  # random flips: the default
    assert not plain.augment_index
    r = runner.run_config(
        reg, data, model="mlp", epochs=2, batch_size=8, loop=Loop(1, 1), flip="alternating"
    )
    assert r["epochs_run"] == 2 and np.isfinite(r["test_loss"])
    with pytest.raises(ValueError, match="flip must be one of random, alternating, got 'mirror'"):
        runner.build(reg, "cnn", data, flip="mirror")
    mnist = runner.Data("mnist", (x, y), None, None, 10)
    with pytest.raises(ValueError, match=r"flip='alternating' needs natural images"):
        runner.build(reg, "cnn", mnist, flip="alternating")


def test_val_fraction_zero_trains_on_the_whole_split(digits, tmp_path):
    data = runner.prepare("digits", val_fraction=0.0)
    assert data.val is None and data.train[0].shape[0] == len(data_lib.load("digits").train[1])
    r = runner.run_config(
        parse_config("none"), data, model="mlp", epochs=2, batch_size=64, loop=Loop(1, 1)
    )
    assert r["val_acc"] is None and r["val_loss"] is None and r["test_acc"] > 0.3
    assert r["best_epoch"] == 1 and "val_accuracy" not in r["history"][0]
    assert "| - |" in report.compare_table([r])
    rep = runner.run_config(
        parse_config("none"), data, model="mlp", epochs=1, batch_size=64, loop=Loop(1, 1),
        repeats=2, mode="sequential",
    )  # fmt: skip
    assert rep["val_acc"] is None and rep["test_acc_std"] >= 0
    s = runner.run_sweep(
        parse_config("none"), "dropout", [0.0, 0.3], data, model="mlp", epochs=1,
        batch_size=64, mode="sequential", loop=Loop(1, 1),
    )  # fmt: skip
    assert [m["val_acc"] for m in s["members"]] == [None, None]
    settings = {"dataset": "digits", "model": "mlp"}
    report.write(tmp_path / "c", {"command": "compare", "results": [r], "settings": settings})
    report.write(tmp_path / "s", {"command": "sweep", "results": s, "settings": settings})
    assert (tmp_path / "c" / "accuracy.png").exists() and (tmp_path / "s" / "report.md").exists()
    with pytest.raises(ValueError, match=r"val_fraction must lie in \[0, 1\), got 1.0"):
        runner.prepare("digits", val_fraction=1.0)


def test_describe_cpu_tells_cpu_generations_apart_by_family_model_and_isa():
    zen = "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\n"
    older = zen.replace("26", "25").replace("model\t\t: 2", "model\t\t: 1")
    second = "\nprocessor\t: 1\nmodel name\t: Other CPU\nflags\t\t: avx512f\n"
    assert (
        report.describe_cpu(zen + "flags\t\t: fpu avx2 avx512f avx512bw\n" + second)
        == "AMD EPYC (family 26, model 2, AVX-512)"
    )
    assert (
        report.describe_cpu(older + "flags\t\t: fpu avx avx2 fma\n")
        == "AMD EPYC (family 25, model 1, AVX2)"
    )
    assert report.describe_cpu("model name\t: X\nflags\t: sse2\n") == "X (SSE/AVX)"
    assert report.describe_cpu("flags\t: avx2\n") == ""
    assert report.cpu_model()  # this machine's, never empty
