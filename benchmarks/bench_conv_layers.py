"""airbench's 3x3 convolutions one by one: XLA's CPU convolution against PyTorch's.

Where the CIFAR-10 step's gap to PyTorch lies. For each 3x3 conv of
``jaxreg.models.Airbench(widths=...)`` (SAME padding, stride 1, batch 512 by
default; the layer shapes the train step runs), this times the forward, the
input gradient and the kernel gradient:

* JAX: ``lax.conv_general_dilated`` (NHWC, HWIO) and its two VJPs, each jitted on
  its own, under ``jaxreg.cpu.fast_convolutions()`` (XLA's own convolution, the
  CIFAR-10 task's setting) and ``retain_freed_memory()``; and the same three for
  ``jaxreg.functional.winograd_conv3x3`` (Winograd's F(4x4, 3x3));
* PyTorch: ``conv2d`` and ``aten.convolution_backward`` with one output at a time
  (oneDNN; 2 threads, channels-last), under ``retain_freed_memory()`` too.

Each framework runs in its own child process; best of ``--repeats`` calls
(compile excluded), ms.

    python benchmarks/bench_conv_layers.py --repeats 5
    python benchmarks/bench_conv_layers.py --widths 32,128,128 --no-torch
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_conv import _machine, run_child  # noqa: E402  (the sibling benchmark's helpers)
from bench_malloc import _widths  # noqa: E402

PARTS = ("forward", "input gradient", "kernel gradient")


def layers(widths: tuple[int, ...], size: int = 32, stem: int = 24) -> list[tuple[int, int, int]]:
    """(spatial size, in channels, out channels) of Airbench's 3x3 convs: the 2x2
    VALID stem takes 32 to 31; each width's first conv runs before its pooling
    (size // 2 after it), the second one after it."""
    out, h, c = [], size - 1, stem
    for w in widths:
        out.append((h, c, w))
        h, c = h // 2, w
        out.append((h, c, w))
    return out


def _best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1e3 * min(times), 2)


def jax_child(args) -> dict[str, list[list[float]]]:
    from jaxreg.cpu import fast_convolutions, retain_freed_memory

    fast_convolutions()
    retain_freed_memory()
    import jax
    from jax import lax

    from jaxreg.functional import winograd_conv3x3

    convs = {
        "xla": lambda x, w: lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ),
        "winograd": winograd_conv3x3,
    }

    def parts(conv, x, w, g):
        fwd = jax.jit(conv)
        dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
        dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
        return [
            _best_ms(lambda: fwd(x, w).block_until_ready(), args.repeats),
            _best_ms(lambda: dx(x, w, g).block_until_ready(), args.repeats),
            _best_ms(lambda: dw(x, w, g).block_until_ready(), args.repeats),
        ]

    rng = np.random.default_rng(0)
    rows = {name: [] for name in convs}
    for h, ci, co in layers(args.widths):
        x = jax.device_put(rng.standard_normal((args.batch, h, h, ci), np.float32))
        w = jax.device_put(0.1 * rng.standard_normal((3, 3, ci, co), np.float32))
        g = jax.device_put(rng.standard_normal((args.batch, h, h, co), np.float32))
        for name, conv in convs.items():
            rows[name].append(parts(conv, x, w, g))
    return rows


def torch_child(args) -> list[list[float]]:
    from jaxreg.cpu import retain_freed_memory

    retain_freed_memory()
    import torch

    torch.set_num_threads(2)
    cl = torch.channels_last

    def parts(x, w, g):
        def backward(mask):
            return torch.ops.aten.convolution_backward(
                g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )

        with torch.no_grad():
            return [
                _best_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1), args.repeats),
                _best_ms(lambda: backward([True, False, False]), args.repeats),
                _best_ms(lambda: backward([False, True, False]), args.repeats),
            ]

    rows = []
    for h, ci, co in layers(args.widths):
        x = torch.randn(args.batch, ci, h, h).contiguous(memory_format=cl)
        w = (0.1 * torch.randn(co, ci, 3, 3)).contiguous(memory_format=cl)
        g = torch.randn(args.batch, co, h, h).contiguous(memory_format=cl)
        rows.append(parts(x, w, g))
    return rows


def _child(kind: str, args) -> list[list[float]]:
    argv = [
        "--child", kind, "--widths", ",".join(map(str, args.widths)),
        "--batch", str(args.batch), "--repeats", str(args.repeats),
    ]  # fmt: skip
    return run_child(__file__, argv, f"bench_conv_layers child {kind}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=_widths, default=(64, 256, 256),
                    help="Airbench widths (default airbench94's 64,256,256)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="XLA only")
    ap.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")
    if args.child:
        print(json.dumps((jax_child if args.child == "jax" else torch_child)(args)))
        return []
    times = _child("jax", args)
    if not args.no_torch:
        times["torch"] = _child("torch", args)
    rows = []
    named = [f"{h}x{h}, {ci} -> {co}" for h, ci, co in layers(args.widths)] + ["all"]
    for t in times.values():
        t.append([round(sum(col), 2) for col in zip(*t, strict=True)])
    for i, name in enumerate(named):
        row = {"layer": name, "batch": args.batch}
        for j, part in enumerate(PARTS):
            for kind, t in times.items():
                row[f"{part}: {kind} ms"] = t[i][j]
            if "torch" in times:
                for kind in ("xla", "winograd"):
                    row[f"{part}: {kind} / torch"] = round(
                        times[kind][i][j] / times["torch"][i][j], 2
                    )
        row.update(_machine(), repeats=args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
