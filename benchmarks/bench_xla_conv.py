"""Conv-net train steps under XLA's default CPU flags and under ``jaxreg.cpu.fast_convolutions``.

jaxlib 0.10's CPU backend hands work to YNNPACK library fusions by default; on
this CPU that made XLA's own convolution slow, and jaxreg's im2col convolution
(``jaxreg.functional.conv_general_dilated``) was the faster path.
:func:`jaxreg.cpu.fast_convolutions` turns those fusions off (an XLA flag, read
once when JAX's backend starts, so every flag setting runs in its own child
process). Per setting this times one jitted train step with each convolution
path (``method="im2col"`` and ``"lax"``, interleaved in the same process), and
the same network in PyTorch eager (2 threads, channels-last):

* ``airbench``: ``jaxreg.models.Airbench(widths=(32, 128, 128))`` with its frozen
  whitening stem, gelu and scale-free batch norm, batch 512 of 32x32x3, SGD
  with Nesterov momentum (the CIFAR-10 task of ``bench_accuracy.py``); PyTorch:
  ``bench_accuracy``'s build of the same net.
* ``cnn``: ``jaxreg.models.SmallCNN(channels=(32, 64), dense=128)``, batch 128 of
  28x28x1, Adam (the MNIST task's net).
* ``cnn1d``: ``jaxreg.models.CNN1D(batch_norm=True)``, batch 100 of 40x1, Adam
  (the MNIST-1D task's tiny 1-D net; no PyTorch run).

Median ms over ``--repeats`` runs of ``--steps`` steps, compile excluded, with
:func:`jaxreg.cpu.retain_freed_memory` in every child (as the accuracy runs).
``auto`` is what ``jaxreg.models`` uses under that setting: im2col with the
default flags, lax with ``fast_convolutions``.

    python benchmarks/bench_xla_conv.py --repeats 5 --steps 3
    python benchmarks/bench_xla_conv.py --models cnn1d --repeats 5 --steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_conv import _machine, _median_ms, run_child  # noqa: E402  (the sibling benchmark's helpers)

SHAPES = {"airbench": (512, 32, 32, 3), "cnn": (128, 28, 28, 1), "cnn1d": (100, 40, 1)}


def _images(model: str, batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch or SHAPES[model][0], *SHAPES[model][1:])
    x = rng.random(shape, np.float32)
    return x, rng.integers(0, 10, shape[0]).astype(np.int32)


# ------------------------------------------------------------------- children


def jax_child(args) -> dict:
    from jaxreg.cpu import fast_convolutions, native_convolutions, retain_freed_memory

    if args.flags == "fast":
        fast_convolutions()  # before JAX starts its backend
    retain_freed_memory()
    import functools

    import jax
    import optax

    from jaxreg import Trainer, models
    from jaxreg.functional import conv_general_dilated

    x, y = _images(args.model, args.batch)
    if args.model == "airbench":
        white = models.whitening_init(x[:256])
        make_model = lambda: models.Airbench(widths=(32, 128, 128), whitening=white)
        tx = optax.sgd(0.1, momentum=0.85, nesterov=True)
    elif args.model == "cnn":
        make_model = lambda: models.SmallCNN(channels=(32, 64), dense=128)
        tx = optax.adam(1e-3)
    else:
        make_model = lambda: models.CNN1D(batch_norm=True)
        tx = optax.adam(1e-3)

    original = models.CONV
    models.CONV = functools.partial(conv_general_dilated, method=args.method)
    try:  # the module reads CONV when it is traced: init and the first step
        trainer = Trainer(model=make_model(), optimizer=tx)
        box = [trainer.init(jax.random.key(0), x)]
        box[0], metrics = trainer.train_step(box[0], (x, y))
        jax.block_until_ready(metrics)
    finally:
        models.CONV = original

    def run():
        box[0], metrics = trainer.train_step(box[0], (x, y))
        return metrics["loss"]

    return {
        "native_convolutions": native_convolutions(),
        "ms": _median_ms(run, args.repeats, args.steps),
    }


def torch_child(args) -> dict:
    import torch
    from torch import nn

    from jaxreg.cpu import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    x, y = _images(args.model, args.batch)
    if args.model == "airbench":
        from bench_accuracy import _torch_airbench

        net, scale = _torch_airbench({"fields": {"widths": (32, 128, 128)}}, x[:256], 3, 10)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.85, nesterov=True)
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
        )  # fmt: skip
        scale, opt = 1.0, torch.optim.Adam(net.parameters(), 1e-3)
    net = net.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y.astype(np.int64))

    def run():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(xt) * scale, yt)
        loss.backward()
        opt.step()
        return None

    run()
    return {"torch ms": _median_ms(run, args.repeats, args.steps), "threads": args.torch_threads}


# ------------------------------------------------------------------- driver


def _child(kind: str, model: str, flags: str, args, method: str = "auto") -> dict:
    argv = [
        "--child", kind, "--models", model, "--flags", flags, "--method", method,
        "--repeats", str(args.repeats), "--steps", str(args.steps),
        "--torch-threads", str(args.torch_threads),
    ]  # fmt: skip
    if args.batch:
        argv += ["--batch", str(args.batch)]
    return run_child(__file__, argv, f"bench_xla_conv child {kind} {model}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default="airbench,cnn,cnn1d", help="comma-separated: airbench, cnn, cnn1d"
    )
    ap.add_argument("--batch", type=int, default=None, help="default: 512 airbench, 128 cnn")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true", help="JAX only")
    ap.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--flags", choices=("default", "fast"), default="default",
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--method", choices=("auto", "im2col", "lax"), default="auto",
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or set(names) - set(SHAPES):
        ap.error(f"--models takes airbench, cnn, cnn1d, got {args.models!r}")
    if args.child:
        child = jax_child if args.child == "jax" else torch_child
        args.model = names[0]
        print(json.dumps(child(args)))
        return []
    rows = []
    for model in names:
        row = {"model": model, "batch": args.batch or SHAPES[model][0]}
        for flags, label in (("default", "default flags"), ("fast", "fast_convolutions")):
            for method in ("im2col", "lax"):
                out = _child("jax", model, flags, args, method)
                assert out["native_convolutions"] is (flags == "fast")
                row[f"{label}: {method} ms"] = out["ms"]
        # auto = im2col under the default flags, lax under fast_convolutions
        row["speed-up of fast_convolutions (auto)"] = round(
            row["default flags: im2col ms"] / row["fast_convolutions: lax ms"], 2
        )
        if not args.no_torch and model != "cnn1d":
            row["torch ms"] = _child("torch", model, "default", args)["torch ms"]
            row["torch / jaxreg fast"] = round(
                row["torch ms"] / row["fast_convolutions: lax ms"], 2
            )
        row.update(_machine(), repeats=args.repeats, steps=args.steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
