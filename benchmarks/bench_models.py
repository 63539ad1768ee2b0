"""Train-step time of the experiment models' pooling: jaxreg's reshape max-pool vs ``nn.max_pool``.

``jaxreg.models`` pools with a reshape and a max (elementwise gradient) instead of
``flax.linen.max_pool`` (whose gradient XLA lowers to select-and-scatter). This
times one jitted, donated Adam step of ``SmallCNN`` on MNIST-shaped batches with
each pooling, compile excluded, median of ``--repeats`` runs of ``--steps`` steps,
interleaved, and prints one JSON line per case with the ratio.

    python benchmarks/bench_models.py                      # 16/32 and 32/64 channels, batch 128
    python benchmarks/bench_models.py --channels 16,32 --repeats 3 --steps 5
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


def make_step(channels: tuple[int, ...], pool, x, y):
    """A jitted, donated Adam step of SmallCNN traced with ``pool`` as its max-pool."""
    model = models.SmallCNN(channels=channels)
    tx = optax.adam(1e-3)
    original = models._max_pool2
    models._max_pool2 = pool  # read when the module is traced
    try:
        params = model.init(jax.random.key(0), x, train=False)["params"]

        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def step(p, s):
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, loss

        fn = jax.jit(step, donate_argnums=(0, 1))
        state = [params, tx.init(params)]
        p, s, loss = fn(*state)  # compile + warm-up (traced while the pool is patched)
        jax.block_until_ready(loss)
        state[:] = [p, s]
    finally:
        models._max_pool2 = original

    def run(steps):
        p, s = state
        t0 = time.perf_counter()
        for _ in range(steps):
            p, s, loss = fn(p, s)
        jax.block_until_ready(loss)
        state[:] = [p, s]
        return (time.perf_counter() - t0) / steps

    return run


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--channels", nargs="+", default=["16,32", "32,64"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((args.batch, args.size, args.size, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
    results = []
    for spec in args.channels:
        channels = tuple(int(c) for c in spec.split(","))
        runs = {
            "jaxreg reshape max-pool": make_step(channels, models._max_pool2, x, y),
            "nn.max_pool": make_step(channels, _flax_pool, x, y),
        }
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved
            for name, run in runs.items():
                times[name].append(run(args.steps))
        best = {name: float(np.median(t)) for name, t in times.items()}
        r = {
            "case": f"SmallCNN{channels} step, batch {args.batch}x{args.size}x{args.size}x1",
            **{f"{name} ms": round(sec * 1e3, 3) for name, sec in best.items()},
            "speedup": round(best["nn.max_pool"] / best["jaxreg reshape max-pool"], 2),
            "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__,
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(r))
        results.append(r)
    return results


if __name__ == "__main__":
    main()
