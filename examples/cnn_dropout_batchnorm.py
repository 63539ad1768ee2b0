"""A small CNN on real MNIST, plain vs with dropout + batch norm, trained with jaxreg.fit.

The same conv-pool-conv-pool-dense network (16 and 32 channels, defined below)
is trained twice with ``jaxreg.Trainer`` + ``jaxreg.fit`` (Adam 1e-3): once
plain, once with ``flax.linen.BatchNorm`` after each convolution and
``jaxreg.nn.Dropout`` before and after the hidden dense layer. Training uses
the batch statistics and fresh dropout masks every step (the ``dropout`` rng
stream, ``fold_in(key, step)``); every accuracy in the table is measured with
``train=False``: dropout off and BatchNorm on its running statistics.

Data: the real 5k MNIST training subset (shuffled with ``--seed``; its first
1,000 images, or a fifth of ``--train-size`` if smaller, are the validation
set) and the official 10k test set, read with ``jaxreg.data.load("mnist")``
from ``../shared/data/mnist`` (or ``--data-dir``); uint8 images are scaled to
float32 in [0, 1] on the device.

Steps run as a Python loop of jitted steps (``loop=jaxreg.Loop(1, 1)``): on a
2-core CPU shared with other jobs, 8 epochs took 71 s in all that way, 234 s as
``lax.scan`` over the 31 steps of an epoch (``--fuse 31``) and 350 s with
``loop="auto"`` (``--fuse 0``), whose measurement compiles every candidate.

    python examples/cnn_dropout_batchnorm.py               # under a minute on 2 CPU cores
    python examples/cnn_dropout_batchnorm.py --epochs 3 --train-size 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


class CNN(nn.Module):
    """conv(16) - [BN] - relu - pool - conv(32) - [BN] - relu - pool - dense(64) - dense(10)."""

    rate: float | None = None  # dropout rate before and after the hidden dense layer
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        for channels in (16, 32):
            x = nn.Conv(channels, (3, 3), use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = self.dropout(x, train)
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(self.dropout(x, train))

    def dropout(self, x, train: bool):
        if self.rate is None:  # the plain CNN has no dropout layers at all
            return x
        return jaxreg.nn.Dropout(self.rate)(x, deterministic=not train)


CONFIGS = {
    "plain CNN": CNN(rate=None, batch_norm=False),
    "CNN + dropout 0.3 + BatchNorm": CNN(rate=0.3, batch_norm=True),
}


def load_data(data_dir: Path, train_size: int, seed: int):
    """``(train, val, test)`` pairs of device arrays: float32 NHWC images in [0, 1], int32."""
    try:
        ds = jaxreg.data.load("mnist", data_dir=data_dir)
    except (jaxreg.data.DatasetUnavailableError, FileNotFoundError) as e:
        raise SystemExit(f"error: cannot read MNIST from {data_dir} (see --data-dir): {e}") from e
    (x, y), (x_test, y_test) = ds.train, ds.test
    # the 5k subset is sorted by class: shuffle (seeded) before taking a subset
    idx = np.random.default_rng(seed).permutation(len(x))[:train_size]
    x, y = x[idx], y[idx]
    n_val = min(1000, len(x) // 5)

    @jax.jit
    def scale(images):  # uint8 -> float32 on the device
        return images.astype(jnp.float32) / 255.0

    def put(images, labels):
        return scale(jnp.asarray(images)), jnp.asarray(labels)

    return put(x[n_val:], y[n_val:]), put(x[:n_val], y[:n_val]), put(x_test, y_test)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fuse",
        type=int,
        default=1,
        help="steps per jitted call: 1 = Python loop of jitted steps (fastest here), "
        "k > 1 = lax.scan of k steps, 0 = let fit measure (compiles every candidate)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    train, val, test = load_data(args.data_dir, args.train_size, args.seed)
    loop = jaxreg.Loop(args.fuse, 1) if args.fuse > 0 else "auto"

    splits = {"train": train, "val": val, "test": test}
    # one evaluation batch size that divides every split: each example counts once and
    # the three splits share one compiled program (1000 for the defaults)
    common = math.gcd(*(len(x) for x, _ in splits.values()))
    eval_batch = max(d for d in range(1, min(1000, common) + 1) if common % d == 0)
    runs = {}
    for name, model in CONFIGS.items():
        trainer = jaxreg.Trainer(model=model, optimizer=optax.adam(1e-3), log_norms=False)
        t0 = time.perf_counter()
        state = trainer.init(jax.random.key(args.seed), train[0][:1])
        state, history, _, _ = jaxreg.fit(
            trainer,
            state,
            train,
            val,
            epochs=args.epochs,
            batch_size=args.batch_size,
            loop=loop,
        )
        # deterministic evaluation: dropout off, BatchNorm on its running statistics
        acc = {split: accuracy(trainer, state, data, eval_batch) for split, data in splits.items()}
        seconds = time.perf_counter() - t0
        runs[name] = {
            "train_acc": acc["train"],
            "val_acc": acc["val"],
            "test_acc": acc["test"],
            "gap": acc["train"] - acc["test"],
            "wall_time_s": seconds,
            "epochs": len(history.epochs),
            "steps": int(state.step),
            "loop": history.loop,
            "final_train_loss": history.epochs[-1]["loss"],
            "final_val_loss": history.epochs[-1]["val_loss"],
            "batch_norm_layers": len(state.batch_stats),
        }

    print(f"MNIST: {len(train[0])} train / {len(val[0])} val / {len(test[0])} test images")
    print("| config | train acc | val acc | test acc | gap (train - test) | wall time (s) |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['train_acc']:.4f} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | "
            f"{r['gap']:+.4f} | {r['wall_time_s']:.1f} |"
        )
    results = {
        "runs": runs,
        "sizes": {"train": len(train[0]), "val": len(val[0]), "test": len(test[0])},
        "settings": vars(args) | {"data_dir": str(args.data_dir), "json": None},
    }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def accuracy(trainer, state, data, batch_size: int) -> float:
    """Accuracy with ``train=False`` (``Trainer.eval_step``: dropout off, running statistics)."""
    x, y = data
    correct = sum(
        trainer.eval_step(state, (x[i : i + batch_size], y[i : i + batch_size]))["correct"]
        for i in range(0, len(x), batch_size)
    )
    return float(correct) / len(x)


if __name__ == "__main__":
    main()
