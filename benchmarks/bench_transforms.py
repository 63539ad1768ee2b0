"""Overhead of jaxreg's transforms against the optax (or hand-written) equivalent.

Each case runs a jitted, buffer-donating update step on the parameter tree of the
seed MLP (784-512-256-10, 535k parameters) with fixed gradients: jaxreg's
transform and its baseline, compiled once, then timed in interleaved repeats.
Reported: median seconds per step of each and the ratio jaxreg / baseline (1.0
means no overhead).

Command (the table in benchmarks/README.md):

    python benchmarks/bench_transforms.py --repeats 7 --steps 200

Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import jaxreg

SIZES = {"mlp": (784, 512, 256, 10), "small": (32, 16, 8)}


def mlp_params(widths, key=0):
    keys = jax.random.split(jax.random.key(key), len(widths))
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(keys[i], (a, b)) / jnp.sqrt(a),
            "bias": jnp.zeros(b),
        }
    return params


def _soft_threshold_params(params, t):
    return jax.tree.map(lambda w: jnp.sign(w) * jnp.maximum(jnp.abs(w) - t, 0.0), params)


def _max_norm_params(params, c):
    def leaf(w):
        if w.ndim < 2:
            return w
        n = jnp.linalg.norm(w, axis=0, keepdims=True)
        return w * jnp.minimum(1.0, c / jnp.maximum(n, 1e-12))

    return jax.tree.map(leaf, params)


def cases():
    """(name, jaxreg transform, baseline transform, baseline post-projection or None)."""
    lr, wd = 1e-3, 1e-4
    kernels = jaxreg.by_kernels()
    return [
        (
            "decoupled_weight_decay(adam) vs optax.adamw",
            jaxreg.decoupled_weight_decay(optax.adam(lr), wd, lr),
            optax.adamw(lr, weight_decay=wd),
            None,
        ),
        (
            "decoupled_weight_decay(adam, mask) vs optax.adamw(mask)",
            jaxreg.decoupled_weight_decay(optax.adam(lr), wd, lr, mask=kernels),
            optax.adamw(lr, weight_decay=wd, mask=kernels),
            None,
        ),
        (
            "clip_by_global_norm vs optax",
            jaxreg.clip_by_global_norm(1.0),
            optax.clip_by_global_norm(1.0),
            None,
        ),
        (
            "adaptive_grad_clip vs optax",
            jaxreg.adaptive_grad_clip(0.01),
            optax.adaptive_grad_clip(0.01),
            None,
        ),
        (
            "adam + keep_max_norm vs adam + hand-written projection",
            optax.chain(optax.adam(lr), jaxreg.keep_max_norm(2.0, mask=kernels)),
            optax.adam(lr),
            lambda p: _max_norm_params(p, 2.0),
        ),
        (
            "sgd + prox_l1 vs sgd + hand-written soft-threshold",
            optax.chain(optax.sgd(0.1), jaxreg.prox_l1(1e-4, 0.1)),
            optax.sgd(0.1),
            lambda p: _soft_threshold_params(p, 1e-5),
        ),
        (
            "skip_non_finite(adam) vs optax.apply_if_finite(adam)",
            jaxreg.skip_non_finite(optax.adam(lr)),
            optax.apply_if_finite(optax.adam(lr), max_consecutive_errors=10**9),
            None,
        ),
        (
            "skip_non_finite(adam, check_updates=True) vs optax.apply_if_finite(adam)",
            jaxreg.skip_non_finite(optax.adam(lr), check_updates=True),
            optax.apply_if_finite(optax.adam(lr), max_consecutive_errors=10**9),
            None,
        ),
    ]


def make_step(tx, post=None):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if post is not None:
            params = post(params)
        return params, state

    return jax.jit(step, donate_argnums=(0, 1))


def time_steps(step, params, state, grads, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        params, state = step(params, state, grads)
    jax.block_until_ready((params, state))
    return (time.perf_counter() - t0) / steps, params, state


def run_case(name, ours, base, post, widths, repeats, steps):
    grads = mlp_params(widths, key=1)
    runners = []
    for tx, pp in ((ours, None), (base, post)):
        params = mlp_params(widths)
        state = tx.init(params)
        step = make_step(tx, pp)
        params, state = step(params, state, grads)  # compile + warm-up
        jax.block_until_ready(params)
        runners.append([step, params, state])
    times = ([], [])
    for _ in range(repeats):  # interleaved: ours, baseline, ours, baseline, ...
        for i, r in enumerate(runners):
            dt, r[1], r[2] = time_steps(r[0], r[1], r[2], grads, steps)
            times[i].append(dt)
    ours_s, base_s = statistics.median(times[0]), statistics.median(times[1])
    return {
        "case": name,
        "jaxreg_us_per_step": round(ours_s * 1e6, 2),
        "baseline_us_per_step": round(base_s * 1e6, 2),
        "ratio_jaxreg_over_baseline": round(ours_s / base_s, 3),
        "params": sum(x.size for x in jax.tree.leaves(mlp_params(widths))),
        "repeats": repeats,
        "steps_per_repeat": steps,
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="mlp")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", default="", help="run cases whose name contains this")
    args = ap.parse_args(argv)
    results = []
    for name, ours, base, post in cases():
        if args.only and args.only not in name:
            continue
        res = run_case(name, ours, base, post, SIZES[args.size], args.repeats, args.steps)
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
