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

* ``eval`` (JAX only, not in the default cases): a model's forward in eval mode
  (``train=False``, jitted) with jaxreg's convolution, which runs a call that is
  not differentiated as ``lax.conv_general_dilated`` in 2-D and as the im2col
  product in 1-D, against the im2col forward everywhere (the patch matrix and
  one product, what the differentiated call computes): ``SmallCNN`` with batch
  norm on 28x28x1 (batch 500, the experiments' evaluation batch), ``CNN1D`` on
  MNIST-1D's 40x1 signals (batch 1000) and ``Airbench`` 64/256/256 on
  32x32x3 (batch 256); the outputs' largest difference too.

* ``bound`` (retained memory only, not in the default cases): where the
  ``mnist`` task's step loses to PyTorch's. The task's whole train step
  (``jaxreg.experiments.runner.build`` with its recipe: ``SmallCNN`` with batch
  norm, 2-px shifts, dropout 0.3, label smoothing 0.1, EMA, Adam; random data of
  MNIST's shapes) with conv 2 (the 32->64 3x3 conv at 14x14, the one conv with
  more than one input channel) run four ways, interleaved: jaxreg's im2col conv;
  PyTorch's own convolution (oneDNN) inside the step through
  ``jax.pure_callback`` (its forward and its backward, one callback each);
  the same two callbacks returning zeros (what the callback mechanism costs);
  and a stand-in of the same shapes that does no convolution (the rest of the
  step). Against PyTorch eager's step of the same recipe with conv 2 and with the
  same kind of stand-in (its input channels twice). Needs torch.

Median ms over ``--repeats`` runs of ``--steps`` calls, compile excluded.

    python benchmarks/bench_conv.py --repeats 5 --steps 5
    python benchmarks/bench_conv.py --cases eval --repeats 9 --steps 10
    python benchmarks/bench_conv.py --cases bound --repeats 11 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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


def _interleaved_ms(runs: dict, repeats: int, steps: int) -> dict:
    """Median ms per call of each of ``runs`` (name -> callable), timed in
    ``repeats`` interleaved rounds of ``steps`` calls."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(_median_ms(run, 1, steps))
    return {name: float(np.median(t)) for name, t in times.items()}


@contextlib.contextmanager
def _models_conv(conv):
    """``jaxreg.models``' convolution swapped for ``conv`` (read when a module is
    traced: compile inside), restored on exit."""
    from jaxreg import models

    original = models.CONV
    models.CONV = conv
    try:
        yield
    finally:
        models.CONV = original


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
        with _models_conv(conv):
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

        def run():
            box[0] = step(*box[0][:2])
            return box[0][2]

        return run

    runs = {"im2col": make(models.CONV), "lax": make(lax.conv_general_dilated)}
    ms = _interleaved_ms(runs, args.repeats, args.steps)
    return {
        "ms": ms["im2col"],
        "lax conv ms": ms["lax"],
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


def _im2col_forward(lhs, rhs, *args, **kwargs):
    """The im2col conv's forward (patch matrix + product): the primal output of
    ``jaxreg.functional.conv_general_dilated`` under ``jax.vjp`` (its custom VJP's
    forward rule), i.e. what a differentiated call computes."""
    import jax

    from jaxreg.functional import conv_general_dilated

    return jax.vjp(lambda a, b: conv_general_dilated(a, b, *args, **kwargs), lhs, rhs)[0]


#: eval case: model name, fields, input shape (batch first)
EVAL_MODELS = (
    ("cnn", {"batch_norm": True}, (500, 28, 28, 1)),
    ("cnn1d", {"batch_norm": True}, (1000, 40, 1)),
    ("airbench", {"widths": (64, 256, 256)}, (256, 32, 32, 3)),
)


def _eval_apply(model, variables, x):
    return model.apply(variables, x, train=False)


def jax_eval(args):
    import jax
    import jax.numpy as jnp

    from jaxreg import models

    rng = np.random.default_rng(0)
    out = {}
    chosen = args.eval_models.split(",")
    for name, fields, shape in EVAL_MODELS:
        if name not in chosen:
            continue
        if args.eval_batch:
            shape = (args.eval_batch, *shape[1:])
        x = jnp.asarray(rng.random(shape, np.float32))
        model = models.get_model(name, num_classes=10, **fields)
        variables = model.init(jax.random.key(0), x[:2], train=False)
        runs, outputs = {}, {}
        for label, conv in (("jaxreg", models.CONV), ("im2col", _im2col_forward)):
            with _models_conv(conv):
                fn = jax.jit(functools.partial(_eval_apply, model))
                outputs[label] = jax.block_until_ready(fn(variables, x))  # compiled here
            runs[label] = functools.partial(fn, variables, x)
        ms = _interleaved_ms(runs, args.repeats, args.steps)
        out[f"{name} batch"] = shape[0]
        out[f"{name} jaxreg ms"] = ms["jaxreg"]
        out[f"{name} im2col ms"] = ms["im2col"]
        out[f"{name} im2col / jaxreg"] = round(ms["im2col"] / ms["jaxreg"], 2)
        out[f"{name} max abs diff"] = float(jnp.max(jnp.abs(outputs["jaxreg"] - outputs["im2col"])))
    return out


# ------------------------------------------------------------------- bound

#: the ``mnist`` task's recipe (``benchmarks/bench_accuracy.py``)
BOUND_RECIPE = "augmentation=0.5+dropout=0.3+label_smoothing=0.1+batchnorm+ema"
BOUND_VARIANTS = ("im2col", "oneDNN callback", "no-op callback", "no conv 2")


@functools.cache
def _conv2_standin():
    """Conv 2's output shape and gradients of its arguments' shapes, with next
    to no work (one input channel broadcast; the gradients likewise): a lower
    bound on what conv 2 adds to a step is the step with it less the step with this."""
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def standin(x, k):
        return jnp.broadcast_to(x[..., :1], (*x.shape[:3], k.shape[-1])) * k[1, 1, 0, 0]

    def fwd(x, k):
        return standin(x, k), (x, k)

    def bwd(res, ct):
        x, k = res
        return jnp.broadcast_to(ct[..., :1], x.shape), jnp.zeros_like(k) + ct[0, 0, 0, 0]

    standin.defvjp(fwd, bwd)
    return standin


def _callback_conv(fwd_host, bwd_host):
    """A 3x3 stride-1 SAME NHWC/HWIO conv whose forward and backward are one
    ``jax.pure_callback`` each, to host functions of NumPy arrays."""
    import jax

    @jax.custom_vjp
    def conv(x, k):
        return conv_fwd(x, k)[0]

    def conv_fwd(x, k):
        out = jax.ShapeDtypeStruct((*x.shape[:3], k.shape[-1]), x.dtype)
        return jax.pure_callback(fwd_host, out, x, k), (x, k)

    def conv_bwd(res, ct):
        x, k = res
        shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype))
        return jax.pure_callback(bwd_host, shapes, x, k, ct)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


def _onednn_host():
    """PyTorch's conv (oneDNN on the CPU) on NHWC / HWIO NumPy arrays: forward
    and backward (input and kernel gradients), channels-last views, no copies in."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*not writable.*")  # read-only views

    def nchw(a):  # an NHWC array as a channels-last NCHW tensor, no copy
        return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2)

    def oihw(k):
        return torch.from_numpy(np.asarray(k)).permute(3, 2, 0, 1)

    def fwd(x, k):
        with torch.no_grad():
            y = torch.conv2d(nchw(x), oihw(k), None, 1, 1)
        return y.permute(0, 2, 3, 1).numpy()

    def bwd(x, k, ct):
        with torch.no_grad():
            dx, dk, _ = torch.ops.aten.convolution_backward(
                nchw(ct), nchw(x), oihw(k), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, True, False],
            )  # fmt: skip
        return (
            dx.permute(0, 2, 3, 1).contiguous().numpy(),
            dk.permute(2, 3, 1, 0).contiguous().numpy(),
        )

    return fwd, bwd


def _noop_host():
    def fwd(x, k):
        return np.zeros((*x.shape[:3], k.shape[-1]), x.dtype)

    def bwd(x, k, ct):
        return np.zeros(x.shape, x.dtype), np.zeros(k.shape, k.dtype)

    return fwd, bwd


def _bound_data(n=4900):
    import jax.numpy as jnp

    from jaxreg.experiments import runner

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    return runner.Data("mnist", (x, y), None, (x[:500], y[:500]), 10)


def jax_bound(args):
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxreg import models
    from jaxreg.experiments import runner
    from jaxreg.experiments.configs import parse_config

    data = _bound_data()
    x, y = data.train
    batches = [(x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]) for i in range(8)]
    dn = ("NHWC", "HWIO", "NHWC")
    default = models.CONV
    onednn = _callback_conv(*_onednn_host())
    convs = {
        "im2col": None,
        "oneDNN callback": onednn,
        "no-op callback": _callback_conv(*_noop_host()),
        "no conv 2": _conv2_standin(),
    }

    # the callback conv computes conv 2 and its gradients as lax's does
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((4, 14, 14, 32), np.float32))
    ks = jnp.asarray(rng.standard_normal((3, 3, 32, 64), np.float32))

    def loss(conv, a, b):
        return jnp.sum(conv(a, b) ** 2)

    lax_conv = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                                 dimension_numbers=dn)  # fmt: skip
    want = jax.value_and_grad(functools.partial(loss, lax_conv), (0, 1))(xs, ks)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, onednn), (0, 1)))(xs, ks)
    err = max(
        float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w)))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )

    def make(conv2):
        def conv(lhs, rhs, *a, **kw):  # conv 2: the one with more than one input channel
            if conv2 is None or rhs.shape[2] == 1:
                return default(lhs, rhs, *a, **kw)
            return conv2(lhs, rhs)

        reg = parse_config(BOUND_RECIPE)
        lr = runner.learning_rate_schedule(3e-3, "cosine", 1500)
        trainer, hp, _ = runner.build(reg, "cnn", data, learning_rate=lr)
        with _models_conv(conv):
            state = trainer.init(jax.random.key(0), x[:BATCH], hp)
            box = [trainer.train_step(state, batches[0])]
            jax.block_until_ready(box[0])
        count = [0]

        def run():
            count[0] += 1
            box[0] = trainer.train_step(box[0][0], batches[count[0] % len(batches)])
            return box[0][1]["loss"]

        return run

    runs = {name: make(conv) for name, conv in convs.items()}
    ms = _interleaved_ms(runs, args.repeats, args.steps)
    out = {f"{name} ms": value for name, value in ms.items()}
    out["oneDNN callback max rel err"] = err
    return out


def torch_bound(args):
    import torch
    import torch.nn.functional as F
    from bench_accuracy import _torch_augment, torch_cnn  # a child runs from here
    from torch import nn

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)

    class Repeat(nn.Module):  # conv 2's stand-in: its output shape, no convolution
        def forward(self, v):
            return torch.cat([v, v], 1)  # channels-last kept (``repeat`` drops it)

    def net(standin):  # the task's network, bench_accuracy's PyTorch peer
        model = torch_cnn(1, (28, 28), 10, bn=True, dropout=0.3)
        if standin:
            model[4] = Repeat()  # conv 2
        return model.to(memory_format=torch.channels_last)

    rng = np.random.default_rng(0)
    n = 4900
    xs = torch.from_numpy(rng.random((n, 1, 28, 28), np.float32)).contiguous(
        memory_format=torch.channels_last
    )
    ys = torch.from_numpy(rng.integers(0, 10, n).astype(np.int64))

    def make(standin):
        model = net(standin)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

        def run():  # bench_accuracy's PyTorch step: 2-px shifts, smoothing, EMA
            idx = torch.from_numpy(rng.integers(0, n, BATCH))
            xb = _torch_augment(xs[idx], rng, 2, None, idx, 0)  # its per-image shifts
            loss = F.cross_entropy(model(xb), ys[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(0.99).add_(v, alpha=0.01)
                    else:
                        ema[k].copy_(v)

        return run

    runs = {"torch": make(False), "torch no conv 2": make(True)}
    return {
        f"{name} ms": ms for name, ms in _interleaved_ms(runs, args.repeats, args.steps).items()
    }


CHILDREN = {
    "jax_step": jax_step,
    "torch_step": torch_step,
    "jax_parts": jax_parts,
    "torch_parts": torch_parts,
    "jax_eval": jax_eval,
    "jax_bound": jax_bound,
    "torch_bound": torch_bound,
}
CASES = ("step", "parts", "eval", "bound")


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
        "--torch-threads", str(args.torch_threads), "--eval-batch", str(args.eval_batch),
        "--eval-models", args.eval_models,
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


def _bound_summary(row: dict) -> dict:
    """Conv 2's share of each step and what a step with PyTorch's conv 2 at no
    callback cost would take (the rest of jaxreg's step plus PyTorch's conv 2)."""
    rest = row["no conv 2 ms"]
    jax_conv2 = row["im2col ms"] - rest
    torch_conv2 = row["torch ms"] - row["torch no conv 2 ms"]
    callback = row["no-op callback ms"] - rest
    return {
        "conv 2 in the jax step ms": round(jax_conv2, 2),
        "conv 2 in the torch step ms": round(torch_conv2, 2),
        "the rest: jax / torch": round(rest / row["torch no conv 2 ms"], 2),
        "callback cost ms": round(callback, 2),
        "jax step with oneDNN's conv 2 less the callback cost ms": round(
            row["oneDNN callback ms"] - callback, 2
        ),
        "im2col / torch": round(row["im2col ms"] / row["torch ms"], 2),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true", help="JAX only")
    ap.add_argument(
        "--cases", default="step,parts", help="comma-separated: step, parts, eval, bound"
    )
    ap.add_argument(
        "--eval-batch", type=int, default=0, help="eval case: one batch for every model"
    )
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--retain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--eval-models",
        default=",".join(m[0] for m in EVAL_MODELS),
        help="eval case: comma-separated models (default all)",
    )
    args = ap.parse_args(argv)
    unknown = set(args.eval_models.split(",")) - {m[0] for m in EVAL_MODELS}
    if unknown:
        ap.error(
            f"--eval-models takes {', '.join(m[0] for m in EVAL_MODELS)}, got {sorted(unknown)}"
        )
    if args.child:  # one measurement in this process
        if args.retain:
            from jaxreg.cpu import retain_freed_memory

            assert retain_freed_memory()
        print(json.dumps(CHILDREN[args.child](args)))
        return []
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or set(cases) - set(CASES):
        ap.error(f"--cases takes {', '.join(CASES)}, got {args.cases!r}")
    results = []
    for case in cases:
        names = [n for n in (f"jax_{case}", f"torch_{case}") if n in CHILDREN]
        if case == "bound" and args.no_torch:
            ap.error("the bound case needs torch (its callback conv is PyTorch's)")
        for retain in (True,) if case == "bound" else (False, True):
            row = {"case": case, "malloc": "retain_freed_memory" if retain else "glibc default"}
            for name in names:
                if name.startswith("torch") and args.no_torch:
                    continue
                out = _child(name, retain, args)
                prefix = (
                    "jax " if name == "jax_step" else ("torch " if name == "torch_step" else "")
                )
                row.update({prefix + key: value for key, value in out.items()})
            if case == "bound":
                row.update(_bound_summary(row))
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
