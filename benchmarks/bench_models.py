"""Train-step time of SmallCNN's conv blocks: jaxreg's pooling and fused batch norm vs flax's.

Case ``pool``: ``jaxreg.models`` pools with a reshape and a max (elementwise
gradient) instead of ``flax.linen.max_pool`` (whose gradient XLA lowers to
select-and-scatter); SmallCNN without batch norm. Case ``bn``: SmallCNN with
batch norm, its BN-relu-maxpool blocks as one custom-VJP kernel (the default,
``fused_norm=True``) vs flax's ``BatchNorm`` + relu + the same pooling
(``fused_norm=False``). Each times one jitted, donated Adam step (batch
statistics updated) on MNIST-shaped batches, compile excluded, median of
``--repeats`` runs of ``--steps`` steps, interleaved, and prints one JSON line
per case with the ratio.

    python benchmarks/bench_models.py                      # 16/32 and 32/64 channels, batch 128
    python benchmarks/bench_models.py --channels 32,64 --cases bn --repeats 15 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import models


def _flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def make_step(model: models.SmallCNN, pool, x, y):
    """A jitted, donated Adam step of ``model`` traced with ``pool`` as its max-pool."""
    tx = optax.adam(1e-3)
    original = models._max_pool2
    models._max_pool2 = pool  # read when the module is traced
    try:
        variables = model.init(jax.random.key(0), x, train=False)
        params, stats = variables["params"], variables.get("batch_stats", {})

        def loss_fn(p, stats):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd.get("batch_stats", stats)

        def step(p, s, stats):
            (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p, stats)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, stats, loss

        fn = jax.jit(step, donate_argnums=(0, 1, 2))
        *state, loss = fn(params, tx.init(params), stats)  # compile + warm-up (pool patched)
        jax.block_until_ready(loss)
    finally:
        models._max_pool2 = original

    def run(steps):
        t0 = time.perf_counter()
        for _ in range(steps):
            *state[:], loss = fn(*state)
        jax.block_until_ready(loss)
        return (time.perf_counter() - t0) / steps

    return run


def _steps(case: str, channels: tuple[int, ...], x, y):
    """The case's baseline name and its steps to time, by name."""
    if case == "pool":
        plain = models.SmallCNN(channels=channels)
        return "nn.max_pool", {
            "jaxreg reshape max-pool": make_step(plain, models._max_pool2, x, y),
            "nn.max_pool": make_step(plain, _flax_pool, x, y),
        }
    bn = models.SmallCNN(channels=channels, batch_norm=True)
    return "flax BatchNorm", {
        "fused BN-relu-pool": make_step(bn, models._max_pool2, x, y),
        "flax BatchNorm": make_step(bn.clone(fused_norm=False), models._max_pool2, x, y),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", nargs="+", default=["16,32", "32,64"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", nargs="+", choices=["pool", "bn"], default=["pool", "bn"])
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((args.batch, args.size, args.size, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
    results = []
    for spec in args.channels:
        channels = tuple(int(c) for c in spec.split(","))
        for case in args.cases:
            baseline, runs = _steps(case, channels, x, y)
            times = {name: [] for name in runs}
            for _ in range(args.repeats):  # interleaved
                for name, run in runs.items():
                    times[name].append(run(args.steps))
            best = {name: float(np.median(t)) for name, t in times.items()}
            (new,) = set(best) - {baseline}
            r = {
                "case": f"SmallCNN{channels}{' + BN' if case == 'bn' else ''} step, "
                f"batch {args.batch}x{args.size}x{args.size}x1",
                **{f"{name} ms": round(sec * 1e3, 3) for name, sec in best.items()},
                "speedup": round(best[baseline] / best[new], 3),
                "device_kind": jax.devices()[0].device_kind,
                "jax": jax.__version__,
                "cpu_count": os.cpu_count(),
            }
            print(json.dumps(r))
            results.append(r)
    return results


if __name__ == "__main__":
    main()
