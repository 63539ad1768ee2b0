"""Early stopping inside one compiled program: scan over epochs, vmap over L2 strengths.

The whole multi-epoch training of an MLP (784-256-10) on real MNIST is ONE
``jax.jit`` call: epochs are the outer ``jax.lax.scan``, the steps of an epoch
an inner ``lax.scan`` (``jaxreg.Trainer.epoch_fn``) over batches gathered on the
device, and ``jaxreg.EarlyStopping(monitor="val_loss",
restore_best_weights=True)`` is plain state carried by the epoch scan::

    es_state = es.init(params)
    for each epoch (inside lax.scan):
        state = lax.cond(es_state.should_stop, keep, train_one_epoch, state)
        es_state = es.update(es_state, {"val_loss": val_loss(state)}, state.params)
    params = es.final_params(es_state, state.params)   # the best epoch's params

The run is ``jax.vmap``-ed over several L2 penalty strengths (the penalty
weight is a float32 array in the train state), so the members train in one
program and each stops at its own epoch: under ``vmap`` the ``lax.cond`` becomes
a select, a stopped member's state is carried through unchanged while the
others train on (``lax.while_loop(lambda c: ~c.es.should_stop, ...)`` would do
the same for a single run and skip the remaining work).

Per epoch the program records the validation loss, the parameter norm and
whether the member trained; the table checks that the parameters stayed frozen
after the stop (same norm at every later epoch) and that the returned best
parameters are those of the best epoch (their validation loss equals the
recorded best). Data: the real 5k MNIST training subset (shuffled with
``--seed``; the first 1,000 images, or a fifth of ``--train-size``, are the
validation set) and the official 10k test set from ``../shared/data/mnist``.

    python examples/early_stopping_in_scan.py               # under 30 s on 2 CPU cores
    python examples/early_stopping_in_scan.py --l2 0 1e-3 --epochs 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        del train  # no dropout or batch norm: the L2 strength is what differs
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def load_data(data_dir: Path, train_size: int, seed: int):
    """``(train, val, test)`` pairs of uint8 NHWC images and int32 labels (NumPy)."""
    try:
        ds = jaxreg.data.load("mnist", data_dir=data_dir)
    except (jaxreg.data.DatasetUnavailableError, FileNotFoundError) as e:
        raise SystemExit(f"error: cannot read MNIST from {data_dir} (see --data-dir): {e}") from e
    (x, y), test = ds.train, ds.test
    # the 5k subset is sorted by class: shuffle (seeded) before taking a subset
    idx = np.random.default_rng(seed).permutation(len(x))[:train_size]
    x, y = x[idx], y[idx]
    n_val = min(1000, len(x) // 5)
    return (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), test


def _divisor(n: int, limit: int) -> int:
    """The largest batch size up to ``limit`` that divides ``n`` (evaluation counts all)."""
    return max(d for d in range(1, min(limit, n) + 1) if n % d == 0)


def make_run(trainer, es, *, epochs: int, batch_size: int):
    """``run(l2, key, train, val, test) -> dict`` for ONE member; jit(vmap(run)) runs all."""

    def stack(data, b):  # uint8 images -> float32 in [0, 1] on the device, stacked batches
        x, y = data
        x = x.astype(jnp.float32) / 255.0
        return x.reshape((-1, b, *x.shape[1:])), y.reshape(-1, b)

    def run(l2, key, train, val, test):
        n = train[0].shape[0]
        steps = n // batch_size
        val_b = stack(val, _divisor(val[0].shape[0], 1000))
        test_b = stack(test, _divisor(test[0].shape[0], 1000))
        state = trainer.init(key, train[0][:1].astype(jnp.float32), {"l2": l2})
        es_state = es.init(state.params)

        def train_one_epoch(state, epoch):
            # the same data order for every member (the key is not vmapped)
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
            idx = perm[: steps * batch_size]
            batches = stack((train[0][idx], train[1][idx]), batch_size)
            state, metrics = trainer.epoch_fn(state, batches)  # inner lax.scan over steps
            return state, jnp.mean(metrics["data_loss"])

        def keep(state, epoch):
            del epoch
            return state, jnp.float32(0.0)

        def epoch_body(carry, epoch):
            state, es_state = carry
            stopped = es_state.should_stop
            # a stopped member skips training: its state (params included) is unchanged
            state, train_loss = jax.lax.cond(stopped, keep, train_one_epoch, state, epoch)
            val_loss = trainer.evaluate_fn(state, val_b)["loss"]
            es_state = es.update(es_state, {"val_loss": val_loss}, state.params)
            record = {
                "trained": ~stopped,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "param_norm": jaxreg.global_norm(state.params),
            }
            return (state, es_state), record

        (state, es_state), per_epoch = jax.lax.scan(
            epoch_body, (state, es_state), jnp.arange(epochs)
        )
        last_params = state.params
        state = state.replace(params=es.final_params(es_state, state.params))
        best = trainer.evaluate_fn(state, val_b)
        return {
            "stopped_epoch": es_state.stopped_epoch,
            "best_epoch": es_state.best_step,
            "best_val_loss": es_state.best_value,
            "returned_val_loss": best["loss"],  # val loss of the params we return
            "returned_param_norm": jaxreg.global_norm(state.params),
            "last_param_norm": jaxreg.global_norm(last_params),
            "test_acc": trainer.evaluate_fn(state, test_b)["accuracy"],
            "per_epoch": per_epoch,
        }

    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--l2", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 3e-3])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--min-delta", type=float, default=0.0, help="EarlyStopping min_delta")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    train, val, test = load_data(args.data_dir, args.train_size, args.seed)
    if not 1 <= args.batch_size <= len(train[0]):
        raise SystemExit(f"error: --batch-size must lie in [1, {len(train[0])}].")
    trainer = jaxreg.Trainer(
        model=MLP(),
        optimizer=optax.adam(1e-3),
        penalties={"l2": lambda p: jaxreg.l2_penalty(p, mask=jaxreg.by_kernels())},
        log_norms=False,
    )
    es = jaxreg.EarlyStopping(
        monitor="val_loss",
        min_delta=args.min_delta,
        patience=args.patience,
        restore_best_weights=True,
    )
    run = make_run(trainer, es, epochs=args.epochs, batch_size=args.batch_size)
    program = jax.jit(jax.vmap(run, in_axes=(0, None, None, None, None)))

    strengths = jnp.asarray(args.l2, jnp.float32)
    data = jax.device_put((train, val, test))  # uint8 on the device; scaled inside
    t0 = time.perf_counter()
    compiled = program.lower(strengths, jax.random.key(args.seed), *data).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(strengths, jax.random.key(args.seed), *data))
    run_s = time.perf_counter() - t0
    out = jax.tree.map(np.asarray, out)

    members = []
    for i, l2 in enumerate(args.l2):
        ep = {k: v[i] for k, v in out["per_epoch"].items()}
        stop, best = int(out["stopped_epoch"][i]), int(out["best_epoch"][i])
        norms = ep["param_norm"]
        # after the stop epoch the params never change: every later norm is bit-equal
        frozen = bool(np.all(norms[stop:] == norms[stop])) if stop >= 0 else None
        # the returned params are the best epoch's: same norm, same validation loss
        returned_is_best = bool(
            np.isclose(out["returned_param_norm"][i], norms[best], rtol=1e-5, atol=0)
            and np.isclose(out["returned_val_loss"][i], out["best_val_loss"][i], rtol=1e-5, atol=0)
        )
        members.append(
            {
                "l2": l2,
                "stopped_epoch": stop,
                "best_epoch": best,
                "epochs_trained": int(ep["trained"].sum()),
                "best_val_loss": float(out["best_val_loss"][i]),
                "returned_val_loss": float(out["returned_val_loss"][i]),
                "test_acc": float(out["test_acc"][i]),
                "frozen_after_stop": frozen,
                "returned_is_best": returned_is_best,
                "best_param_norm_recorded": float(norms[best]),
                "returned_param_norm": float(out["returned_param_norm"][i]),
                "last_param_norm": float(out["last_param_norm"][i]),
                "val_loss_per_epoch": [float(v) for v in ep["val_loss"]],
                "param_norm_per_epoch": [float(v) for v in norms],
                "trained_per_epoch": [bool(t) for t in ep["trained"]],
            }
        )

    stops = [m["stopped_epoch"] for m in members]
    print(
        f"{len(members)} members x {args.epochs} epochs in one jit(vmap(scan)) program: "
        f"compile {compile_s:.1f} s, run {run_s:.1f} s "
        f"({len(train[0])} train / {len(val[0])} val / {len(test[0])} test images)"
    )
    print(
        "| L2 strength | stopped epoch | best epoch | epochs trained | best val loss | "
        "val loss of returned params | frozen after stop | returned = best epoch | test acc |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m in members:
        stop = m["stopped_epoch"] if m["stopped_epoch"] >= 0 else "- (ran all)"
        frozen = {True: "yes", False: "NO", None: "-"}[m["frozen_after_stop"]]
        print(
            f"| {m['l2']:g} | {stop} | {m['best_epoch']} | {m['epochs_trained']} | "
            f"{m['best_val_loss']:.4f} | {m['returned_val_loss']:.4f} | {frozen} | "
            f"{'yes' if m['returned_is_best'] else 'NO'} | {m['test_acc']:.4f} |"
        )
    print(f"stop epochs differ across members: {len(set(stops)) > 1} ({stops})")
    results = {
        "members": members,
        "stop_epochs_differ": len(set(stops)) > 1,
        "compile_s": compile_s,
        "run_s": run_s,
        "sizes": {"train": len(train[0]), "val": len(val[0]), "test": len(test[0])},
        "settings": vars(args) | {"data_dir": str(args.data_dir), "json": None},
    }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
