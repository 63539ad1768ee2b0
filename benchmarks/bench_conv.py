"""Where a conv net's CPU train step goes: JAX/XLA against PyTorch eager.

Two cases, each run in fresh child processes with glibc's default ``malloc``
settings and with :func:`jaxreg.cpu.retain_freed_memory` (the setting is
process-wide, so every variant gets its own process):

* ``step``: one Adam step of a small CNN (conv3x3 1->32, relu, 2x2 max-pool,
  conv3x3 32->64, relu, pool, dense 128, dense 10; batch 128 of 28x28x1):
  ``jaxreg.models.SmallCNN`` under ``jax.jit`` with its convolution
  (``jaxreg.functional.conv_general_dilated``: im2col) and, interleaved in the
  same process, with ``lax.conv_general_dilated``; against the same network in
  PyTorch eager (2 threads, channels-last).
* ``parts``: the 3x3 conv 14x14x32 -> 64 at batch 128 alone: forward, input
  gradient, kernel gradient as XLA differentiates it, the same kernel gradient
  as one matrix product on a patch matrix that already exists, and PyTorch's
  forward and forward+backward; plus minor page faults per call of the XLA
  kernel gradient (the fewest of three rounds of 10 calls).

Median ms over ``--repeats`` runs of ``--steps`` calls, compile excluded.

    python benchmarks/bench_conv.py --repeats 5 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

BATCH = 128


def _median_ms(fn, repeats, steps):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            out = fn()
        _block(out)
        times.append((time.perf_counter() - t0) / steps)
    return round(float(np.median(times)) * 1e3, 3)


def _block(out):
    import jax

    if isinstance(out, jax.Array) or (isinstance(out, tuple) and out):
        jax.block_until_ready(out)


def _faults_per_call(fn, calls=10, rounds=3):
    """Minor page faults per call: the fewest over ``rounds`` rounds of ``calls``
    calls (a round in which the heap happens to grow, e.g. under load from other
    processes, does not stand for the steady state)."""
    _block(fn())
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(calls):
            out = fn()
        _block(out)
        counts.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls)
    return min(counts)


# ------------------------------------------------------------------- children


def jax_step(args):
    """jaxreg.models.SmallCNN's step with its im2col conv and with lax's, interleaved."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    from jaxreg import models

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((BATCH, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH).astype(np.int32))
    tx = optax.adam(1e-3)

    def make(conv):
        model = models.SmallCNN(channels=(32, 64), dense=128)
        original = models.CONV
        models.CONV = conv  # read when the module is traced
        try:
            params = model.init(jax.random.key(0), x, train=False)["params"]

            def loss_fn(p):
                logits = model.apply({"params": p}, x, train=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            @jax.jit
            def step(p, s):
                loss, g = jax.value_and_grad(loss_fn)(p)
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s, loss

            box = [step(params, tx.init(params))]  # compiled while the conv is swapped
            jax.block_until_ready(box[0])
        finally:
            models.CONV = original

        def run():
            box[0] = step(*box[0][:2])
            return box[0][2]

        return run

    runs = {"im2col": make(models.CONV), "lax": make(lax.conv_general_dilated)}
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved
        for name, run in runs.items():
            times[name].append(_median_ms(run, 1, args.steps))
    return {
        "ms": float(np.median(times["im2col"])),
        "lax conv ms": float(np.median(times["lax"])),
        "faults_per_call": _faults_per_call(runs["im2col"]),
    }


def torch_step(args):
    import torch
    from torch import nn

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(memory_format=torch.channels_last)  # fmt: skip
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((BATCH, 1, 28, 28), np.float32)).to(
        memory_format=torch.channels_last
    )
    y = torch.from_numpy(rng.integers(0, 10, BATCH).astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return None

    return {
        "ms": _median_ms(run, args.repeats, args.steps),
        "faults_per_call": _faults_per_call(run),
        "torch_threads": args.torch_threads,
    }


def jax_parts(args):
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((BATCH, 14, 14, 32), np.float32))
    k = jnp.asarray(rng.random((3, 3, 32, 64), np.float32))
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)

    ct = jnp.ones_like(conv(x, k))
    fwd = jax.jit(conv)
    d_input = jax.jit(lambda x, k, ct: jax.vjp(lambda x: conv(x, k), x)[1](ct)[0])
    d_kernel = jax.jit(lambda x, k, ct: jax.vjp(lambda k: conv(x, k), k)[1](ct)[0])
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.asarray(
        np.concatenate([xp[:, i : i + 14, j : j + 14] for i in range(3) for j in range(3)], -1)
    ).reshape(-1, 9 * 32)
    gemm = jax.jit(lambda p, c: (p.T @ c.reshape(-1, 64)).reshape(3, 3, 32, 64))
    err = float(jnp.max(jnp.abs(gemm(patches, ct) - d_kernel(x, k, ct))))
    scale = float(jnp.max(jnp.abs(d_kernel(x, k, ct))))
    r, s = args.repeats, args.steps
    return {
        "forward ms": _median_ms(lambda: fwd(x, k), r, s),
        "input gradient ms": _median_ms(lambda: d_input(x, k, ct), r, s),
        "kernel gradient (XLA) ms": _median_ms(lambda: d_kernel(x, k, ct), r, s),
        "kernel gradient as one GEMM on existing patches ms": _median_ms(
            lambda: gemm(patches, ct), r, s
        ),
        "gemm_vs_xla_max_rel_err": err / scale,
        "kernel gradient faults_per_call": _faults_per_call(lambda: d_kernel(x, k, ct)),
    }


def torch_parts(args):
    import torch

    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((BATCH, 32, 14, 14), np.float32)).requires_grad_()
    k = torch.from_numpy(rng.random((64, 32, 3, 3), np.float32)).requires_grad_()
    conv = torch.nn.functional.conv2d
    ct = torch.ones_like(conv(x, k, padding=1))
    r, s = args.repeats, args.steps
    with torch.no_grad():
        fwd = _median_ms(lambda: conv(x, k, padding=1), r, s)
    both = _median_ms(lambda: torch.autograd.grad(conv(x, k, padding=1), (x, k), ct), r, s)
    return {"torch forward ms": fwd, "torch forward+backward ms": both}


CHILDREN = {
    "jax_step": jax_step,
    "torch_step": torch_step,
    "jax_parts": jax_parts,
    "torch_parts": torch_parts,
}


# ------------------------------------------------------------------- driver


def run_child(script: str, argv: list[str], label: str, timeout: int = 3600):
    """Run ``python script *argv`` (a benchmark's ``--child`` mode: one setting per
    process) and return the JSON of its last output line; ``label`` names it in
    the error raised when it fails."""
    cmd = [sys.executable, script, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(name, retain, args):
    argv = [
        "--child", name, "--repeats", str(args.repeats), "--steps", str(args.steps),
        "--torch-threads", str(args.torch_threads),
    ]  # fmt: skip
    if retain:
        argv.append("--retain")
    return run_child(__file__, argv, f"bench_conv child {name}", timeout=1200)


def _machine():
    import jax

    from jaxreg.experiments.report import cpu_model

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "jax": jax.__version__,
        "torch": torch_version,
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true", help="JAX only")
    ap.add_argument("--cases", default="step,parts", help="comma-separated: step, parts")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--retain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:  # one measurement in this process
        if args.retain:
            from jaxreg.cpu import retain_freed_memory

            assert retain_freed_memory()
        print(json.dumps(CHILDREN[args.child](args)))
        return []
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or set(cases) - {"step", "parts"}:
        ap.error(f"--cases takes step and/or parts, got {args.cases!r}")
    results = []
    for case in cases:
        names = (f"jax_{case}", f"torch_{case}")
        for retain in (False, True):
            row = {"case": case, "malloc": "retain_freed_memory" if retain else "glibc default"}
            for name in names:
                if name.startswith("torch") and args.no_torch:
                    continue
                out = _child(name, retain, args)
                prefix = (
                    "jax " if name == "jax_step" else ("torch " if name == "torch_step" else "")
                )
                row.update({prefix + key: value for key, value in out.items()})
            if case == "step":
                row["lax conv / im2col"] = round(row["jax lax conv ms"] / row["jax ms"], 2)
                if "torch ms" in row:
                    row["jax / torch"] = round(row["jax ms"] / row["torch ms"], 2)
            row.update(_machine(), repeats=args.repeats, steps=args.steps)
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


if __name__ == "__main__":
    main()
