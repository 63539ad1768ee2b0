"""Dropout forward+backward: jaxreg against flax.linen.Dropout and torch, plus mask variants.

Each implementation computes, for an activation ``x`` and a cotangent ``g``, the
dropout output ``y`` and the input gradient ``dx`` (one forward and one backward
pass), with a fresh key every step. JAX versions are jitted and compiled before
timing; torch runs eagerly (``F.dropout`` + ``backward``) with as many threads
as CPUs available to the process. Implementations are interleaved within each
repeat; the report gives median milliseconds per step and the speed-up of
jaxreg over each (``ratio_<impl>_over_jaxreg`` = time(impl) / time(jaxreg)).

The ``variant:`` rows are alternative mask generators measured to choose
jaxreg's (see ``jaxreg/functional/_bits.py``): two hash rounds instead of one,
and one 32-bit hash split into two 16-bit draws for neighbouring elements.

Command (the table in benchmarks/README.md):

    python benchmarks/bench_dropout.py --batch 256 --features 4096 --repeats 15 --steps 50

Prints one JSON line per case (dtype x rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxreg
from jaxreg.functional import _bits, dropout

try:  # optional baseline
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None


# --------------------------------------------------------------------------- variants


def _scaled(x, keep, q):
    scale = jnp.where(q > 0, 1.0 / jnp.where(q > 0, q, 1.0), 0.0)
    y = (x.astype(jnp.float32) * scale).astype(x.dtype)
    return jnp.where(keep, y, jnp.zeros((), x.dtype))


def _two_rounds(key, shape):
    b, a = _bits.seed_words(key)
    lo, _ = _bits.positions(shape)
    return _bits.mix32(_bits.mix32(lo ^ b) ^ a)


def _pairs_mask(key, shape, t, rounds):
    """One 32-bit hash per pair of neighbours along the last axis: low and high 16 bits."""
    half = (*shape[:-1], shape[-1] // 2)
    h = _two_rounds(key, half) if rounds == 2 else _bits.hash_bits(key, half)
    return jnp.stack([(h & 0xFFFF) < t, (h >> 16) < t], axis=-1).reshape(shape)


def variant(kind):
    def f(key, x, rate):
        t, q = _bits.keep_threshold(rate)
        if kind == "2 rounds":
            keep = (_two_rounds(key, x.shape) >> 16) < t
        elif kind.startswith("16-bit pairs"):
            keep = _pairs_mask(key, x.shape, t, 2 if "2 rounds" in kind else 1)
        elif kind == "threefry 16-bit":
            keep = jax.random.bits(key, x.shape, jnp.uint16).astype(jnp.uint32) < t
        else:  # pragma: no cover
            raise ValueError(kind)
        return _scaled(x, keep, q)

    return f


VARIANTS = ("2 rounds", "16-bit pairs, 1 round", "16-bit pairs, 2 rounds", "threefry 16-bit")


# --------------------------------------------------------------------------- runners


def jax_runner(fn, rate, x, g, keys):
    @jax.jit
    def step(key, x, g):
        y, vjp = jax.vjp(lambda x: fn(key, x, rate), x)
        return y, vjp(g)[0]

    jax.block_until_ready(step(keys[0], x, g))  # compile + warm-up

    def run():
        out = None
        for k in keys:
            out = step(k, x, g)
        jax.block_until_ready(out)

    return run


def flax_dropout(rate):
    layer = nn.Dropout(rate, deterministic=False)
    return lambda key, x, _rate: layer.apply({}, x, rngs={"dropout": key})


def torch_runner(rate, shape, dtype, steps):
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    x = torch.randn(shape, dtype=tdtype, requires_grad=True)
    g = torch.ones(shape, dtype=tdtype)

    def step():
        x.grad = None
        y = torch.nn.functional.dropout(x, rate, training=True)
        y.backward(g)
        return y, x.grad

    step()  # warm-up

    def run():
        for _ in range(steps):
            step()

    return run


def run_case(args, dtype, rate):
    shape = (args.batch, args.features)
    x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
    g = jnp.ones(shape, dtype)
    keys = [jax.random.fold_in(jax.random.key(1), i) for i in range(args.steps)]
    impls = {
        "jaxreg": jax_runner(dropout, rate, x, g, keys),
        "flax": jax_runner(flax_dropout(rate), rate, x, g, keys),
    }
    if torch is not None and not args.no_torch:
        impls["torch"] = torch_runner(rate, shape, dtype, args.steps)
    if not args.no_variants:
        for kind in VARIANTS:
            if kind.startswith("16-bit pairs") and shape[-1] % 2:
                continue
            impls[f"variant: {kind}"] = jax_runner(variant(kind), rate, x, g, keys)
    times = {name: [] for name in impls}
    for _ in range(args.repeats):  # interleaved
        for name, run in impls.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "case": f"dropout forward+backward {shape} {dtype} rate={rate}",
        "ms_per_step": {name: round(t * 1e3, 4) for name, t in med.items()},
    }
    for name, t in med.items():
        if name != "jaxreg":
            result[f"ratio_{name}_over_jaxreg"] = round(t / med["jaxreg"], 2)
    result.update(
        shape=list(shape),
        dtype=dtype,
        rate=rate,
        repeats=args.repeats,
        steps_per_repeat=args.steps,
        device_kind=jax.devices()[0].device_kind,
        device_count=jax.device_count(),
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        torch_threads=torch.get_num_threads() if "torch" in impls else None,
        jax=jax.__version__,
        flax=flax.__version__,
        jaxreg=jaxreg.__version__,
        torch=torch.__version__ if torch is not None else None,
        numpy=np.__version__,
        python=platform.python_version(),
        jax_threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
    )
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--rates", default="0.5", help="comma-separated drop rates")
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    ap.add_argument("--no-variants", action="store_true", help="skip the mask variants")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: CPUs available")
    args = ap.parse_args(argv)
    if torch is not None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(args.torch_threads or cpus)
        torch.manual_seed(0)
    results = []
    for dtype in args.dtypes.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            res = run_case(args, dtype, rate)
            print(json.dumps(res), flush=True)
            results.append(res)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
