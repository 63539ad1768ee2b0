"""Learning tests on real data: regularization must pay off on held-out test sets.

* MNIST (the real 5k training subset, the official 10k test set): a SmallCNN
  with dropout, label smoothing and random 2-pixel shifts reaches 97% test
  accuracy and beats the same CNN trained without them (same epochs, optimizer,
  seed).
* MNIST-1D (Greydanus 2020; 4000 train / 1000 test): the paper's ConvBase with
  batch norm, dropout and random shifts reaches the paper's CNN score, 94%, and
  beats the plain ConvBase trained with the same optimizer and epochs.

* ``jaxreg compare``'s default experiment (100 digits, 3 seeds): all the
  regularizers combined shrink the train-test gap and raise test accuracy.

Fixed epochs, no early stopping, no selection on the test set. About a minute on
a 2-core CPU. ``JAXREG_LEARNING_SEED`` (default 0) sets the seed, to check that
the thresholds hold for other seeds.
"""

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxreg
from jaxreg.augment import random_crop
from jaxreg.experiments import runner
from jaxreg.models import get_model

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / ".." / "shared" / "data" / "mnist"
SEED = int(os.environ.get("JAXREG_LEARNING_SEED", "0"))


def _test_accuracy(trainer, state, x, y):
    return runner.evaluate(trainer, state, x, y)["accuracy"]


def _train(trainer, hparams, train, *, epochs, batch_size):
    state = trainer.init(jax.random.key(SEED), train[0][:1], hparams)
    state, _, _, _ = jaxreg.fit(
        trainer, state, train, epochs=epochs, batch_size=batch_size, loop=jaxreg.Loop(1, 1)
    )
    return state


# --------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST data not found in {MNIST_DIR}")
    ds = jaxreg.data.load("mnist", data_dir=MNIST_DIR)
    (x, y), (x_test, y_test) = ds.train, ds.test
    scale = lambda a: jnp.asarray(a, jnp.float32) / 255.0
    return (scale(x), jnp.asarray(y)), (scale(x_test), jnp.asarray(y_test))


def test_regularized_cnn_beats_unregularized_on_mnist(mnist):
    (x, y), (x_test, y_test) = mnist
    cnn = functools.partial(get_model, "cnn", channels=(16, 32), dense=128)
    settings = dict(epochs=8, batch_size=128)

    plain = jaxreg.Trainer(model=cnn(), optimizer=optax.adam(3e-3), log_norms=False)
    plain_acc = _test_accuracy(plain, _train(plain, {}, (x, y), **settings), x_test, y_test)

    shift = functools.partial(random_crop, padding=2, mode="constant")  # +-2 px, black border
    reg = jaxreg.Trainer(
        model=cnn(dropout=0.3),
        optimizer=optax.adam(3e-3),
        augment=jaxreg.image_augment(shift),
        log_norms=False,
    )
    reg_state = _train(reg, {"label_smoothing": 0.1}, (x, y), **settings)
    reg_acc = _test_accuracy(reg, reg_state, x_test, y_test)

    print(f"MNIST test accuracy: unregularized {plain_acc:.4f}, regularized {reg_acc:.4f}")
    assert reg_acc >= 0.97, f"regularized CNN: {reg_acc:.4f} < 0.97 (unregularized {plain_acc:.4f})"
    assert reg_acc > plain_acc, f"regularized {reg_acc:.4f} <= unregularized {plain_acc:.4f}"


# --------------------------------------------------------------------------- MNIST-1D


def test_regularized_cnn1d_reaches_the_paper_score_on_mnist1d():
    pytest.importorskip("mnist1d")
    ds = jaxreg.data.load("mnist1d")
    (x, y), (x_test, y_test) = [tuple(map(jnp.asarray, split)) for split in (ds.train, ds.test)]
    epochs, batch_size = 40, 100
    steps = epochs * (len(x) // batch_size)
    adam = lambda: optax.adam(optax.cosine_decay_schedule(1e-2, steps))

    plain = jaxreg.Trainer(model=get_model("cnn1d"), optimizer=adam(), log_norms=False)
    plain_state = _train(plain, {}, (x, y), epochs=epochs, batch_size=batch_size)
    plain_acc = _test_accuracy(plain, plain_state, x_test, y_test)

    reg = jaxreg.Trainer(
        model=get_model("cnn1d", dropout=0.2, batch_norm=True),
        optimizer=adam(),
        augment=jaxreg.image_augment(functools.partial(runner.random_shift_1d, max_shift=3)),
        log_norms=False,
    )
    reg_state = _train(reg, {}, (x, y), epochs=epochs, batch_size=batch_size)
    reg_acc = _test_accuracy(reg, reg_state, x_test, y_test)

    print(f"MNIST-1D test accuracy: unregularized {plain_acc:.4f}, regularized {reg_acc:.4f}")
    assert reg_acc >= 0.94, f"regularized CNN1D: {reg_acc:.4f} < 0.94 (paper's CNN: 0.94)"
    assert reg_acc > plain_acc, f"regularized {reg_acc:.4f} <= unregularized {plain_acc:.4f}"


def test_default_compare_shows_the_gap_shrinking(tmp_path, capsys):
    """``jaxreg compare``'s default experiment (digits, 100 training images, 3 seeds):
    the combined regularizers close the train-test gap and raise test accuracy."""
    pytest.importorskip("sklearn")
    from jaxreg import cli

    assert (
        cli.main(["compare", "--configs", "none", "all", "--no-progress", "--out", str(tmp_path)])
        == 0
    )
    none, every = json.loads((tmp_path / "results.json").read_text())["results"]
    print(capsys.readouterr().out)
    assert none["gap"] > 0.08  # unregularized, the CNN overfits its 100 images
    assert every["gap"] < none["gap"] - 0.02
    assert every["test_acc"] > none["test_acc"] + 0.02
