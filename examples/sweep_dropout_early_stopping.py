"""A dropout-rate sweep with early stopping, in one compiled program, on real MNIST.

Trains K copies of an MLP (784-256-256-10, BatchNorm, jaxreg Dropout) that
differ only in their dropout rate, as one ``jaxreg.sweep``: the rate is a
float32 array in the train state, the members run batched (``vmap``) or one
after another (``lax.map``) in the same program, whichever measured faster.
Each member stops on its own when its validation loss stops improving
(``jaxreg.EarlyStopping``, Keras semantics) and keeps its best weights while the
others train on. Validation is a 1,000-image slice of the 5k training subset;
the table reports the official 10k test set, evaluated with the best weights.

    python examples/sweep_dropout_early_stopping.py               # about a minute on 2 CPU cores
    python examples/sweep_dropout_early_stopping.py --rates 0 0.5 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_optax_chain import load_mnist  # the sibling example's reader

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


class MLP(nn.Module):
    rate: float | jax.Array = 0.0

    @nn.compact
    def __call__(self, x, train: bool):
        for width in (256, 256):
            x = nn.Dense(width, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = jaxreg.nn.Dropout(self.rate)(nn.relu(x), deterministic=not train)
        return nn.Dense(10)(x)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="auto", help="sweep mode: auto, vmap, map, sequential")
    ap.add_argument("--fuse", type=int, default=0, help="steps per scan call (0: measured)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    x, y, x_test, y_test = load_mnist(args.data_dir, args.train_size, args.seed)
    n_val = min(1000, len(x) // 5)
    train, val = (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])

    trainer = jaxreg.Trainer(
        model=lambda hp: MLP(rate=hp["dropout"]),
        optimizer=optax.adam(1e-3),
    )
    es = jaxreg.EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True)
    t0 = time.perf_counter()
    result = jaxreg.sweep(
        trainer,
        {"dropout": args.rates},
        train,
        val,
        key=jax.random.key(args.seed),
        epochs=args.epochs,
        batch_size=args.batch_size,
        early_stopping=es,
        mode=args.mode,
        loop=jaxreg.Loop(args.fuse, 1) if args.fuse else "auto",
    )
    seconds = time.perf_counter() - t0

    @jax.jit
    def test_accuracy(state):
        def one(member):
            return trainer.evaluate_fn(member, batches)["accuracy"]

        return jax.vmap(one)(state)

    n = (len(x_test) // 1000) * 1000
    batches = (
        jnp.asarray(x_test[:n]).reshape(-1, 1000, x_test.shape[1]),
        jnp.asarray(y_test[:n]).reshape(-1, 1000),
    )
    test_acc = np.asarray(test_accuracy(result.state))

    rows = []
    for i, row in enumerate(result.table()):
        rows.append(
            {
                "dropout": row["dropout"],
                "best_epoch": row["best_epoch"],
                "stopped_epoch": row["stopped_epoch"],
                "train_acc": row["best_accuracy"],
                "val_acc": row["best_val_accuracy"],
                "test_acc": float(test_acc[i]),
            }
        )
    print(f"sweep: {len(rows)} members, mode {result.mode}, loop {result.loop}, {seconds:.1f} s")
    print("| dropout | best epoch | stopped at | train acc | val acc | test acc |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        stopped = r["stopped_epoch"] if r["stopped_epoch"] >= 0 else "-"
        print(
            f"| {r['dropout']:.2f} | {r['best_epoch']} | {stopped} | {r['train_acc']:.4f} | "
            f"{r['val_acc']:.4f} | {r['test_acc']:.4f} |"
        )
    results = {
        "members": rows,
        "mode": result.mode,
        "loop": result.loop,
        "seconds": seconds,
        "settings": vars(args) | {"data_dir": str(args.data_dir), "json": None},
    }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
