"""A run's start: ``Trainer.init`` (one compiled program) against flax's and optax's
own init, op by op.

What a ``jaxreg compare`` run pays before its first step. For each experiment
model of the accuracy tasks (``jaxreg.models``: the MNIST-1D ``mlp1d`` and
``cnn1d`` at batch 100, the MNIST ``cnn`` with BatchNorm at batch 128,
airbench94's ``airbench`` at batch 512 with its whitening stem given), a fresh
child process times, from a built model and optimizer (Adam) to parameters,
batch statistics and optimizer moments on the device:

* ``eager``: ``module.init(...)`` then ``tx.init(params)`` called as they are
  (JAX runs them op by op, compiling each new op): what ``Trainer.init`` did
  before it compiled the two as one program;
* ``jaxreg``: ``jaxreg.Trainer(model, optimizer).init(...)`` (one ``jax.jit``
  of both; the values are the same bit for bit, ``tests/test_training.py``).

Each measurement is cold (a new process: the compilation is what a run pays);
median of ``--repeats`` processes, seconds.

    python benchmarks/bench_startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_conv import _machine, run_child  # noqa: E402  (the sibling benchmark's helpers)

#: model -> (input shape of one batch, extra model fields)
MODELS = {
    "mlp1d": ((100, 40, 1), {}),
    "cnn1d": ((100, 40, 1), {}),
    "cnn": ((128, 28, 28, 1), {"batch_norm": True}),
    "airbench": ((512, 32, 32, 3), {"widths": (64, 256, 256)}),
}
KINDS = ("eager", "jaxreg")


def child(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxreg import Trainer
    from jaxreg.models import get_model, whitening_init

    shape, fields = MODELS[args.model]
    fields = dict(fields)
    if args.model == "airbench":  # the stem as the runner gives it (not timed)
        images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), np.uint8)
        fields["whitening"] = whitening_init(images)
    model = get_model(args.model, num_classes=10, dropout=0.1, **fields)
    tx = optax.adam(1e-3)
    key = jax.random.key(0)
    jnp.zeros(()).block_until_ready()  # the backend is up before the clock starts
    t0 = time.perf_counter()
    if args.child == "eager":
        variables = model.init({"params": key, "dropout": key}, jnp.zeros(shape), train=False)
        out = (variables, tx.init(variables["params"]))
    else:
        out = Trainer(model=model, optimizer=tx).init(key, jax.ShapeDtypeStruct(shape, "float32"))
    jax.block_until_ready(out)
    return {"seconds": time.perf_counter() - t0}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    ap.add_argument("--repeats", type=int, default=3, help="processes per model and kind")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        ap.error(f"--models must name some of {', '.join(MODELS)}, got {args.models!r}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    rows = []
    for model in models:
        times = {kind: [] for kind in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:  # interleaved
                argv = ["--child", kind, "--model", model]
                times[kind].append(run_child(__file__, argv, f"bench_startup {kind} {model}"))
        row = {"model": model, "batch": MODELS[model][0][0]}
        for kind in KINDS:
            row[f"{kind} s"] = round(statistics.median(t["seconds"] for t in times[kind]), 3)
        row["speedup"] = round(row["eager s"] / row["jaxreg s"], 2)
        row.update(_machine(), repeats=args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
