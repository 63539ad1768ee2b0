"""airbench's CIFAR-10 train step under three glibc ``malloc`` settings, JAX and PyTorch.

A step of airbench94's net frees more than 1 GiB of temporaries at the top of
glibc's heap. With the heap's trim threshold at 1 GiB (what
``jaxreg.cpu.retain_freed_memory`` set until 2026-12-02) glibc hands that memory
back to the kernel after every step and the next step faults it in again. Each
setting runs in its own child process (``mallopt`` is process-wide):

* ``default``: glibc's own settings;
* ``trim 1 GiB``: ``retain_freed_memory(1 << 30, trim_threshold_bytes=1 << 30)``
  (the earlier setting: mmap and trim thresholds at 1 GiB);
* ``retain``: ``retain_freed_memory()`` (heap never trimmed; mmap threshold
  2 GiB - 1 since 2026-12-02, 1 GiB before).

Per setting, the jitted ``jaxreg.Trainer.train_step`` of
``jaxreg.models.Airbench(widths=...)`` with its frozen whitening stem (SGD with
Nesterov momentum, batch 512 of random 32x32x3 images, ``fast_convolutions()``:
the CIFAR-10 task's settings; ``--conv-methods`` picks its 3x3 convs: XLA's,
``auto``, or Winograd's, ``winograd``) and, unless ``--no-torch``, the same net in
PyTorch eager (``bench_accuracy``'s build, 2 threads, channels-last). After
``--warmup`` steps (compile excluded) it times ``--steps`` single steps: mean and
median ms, minor page faults per step and the peak resident memory.

    python benchmarks/bench_malloc.py --steps 10
    python benchmarks/bench_malloc.py --steps 10 --settings retain --conv-methods auto,winograd
    python benchmarks/bench_malloc.py --widths 32,128,128 --no-torch
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_conv import _machine, run_child  # noqa: E402  (the sibling benchmark's helpers)
from bench_xla_conv import _images  # noqa: E402

SETTINGS = ("default", "trim 1 GiB", "retain")
CONV_METHODS = ("auto", "winograd")  # Airbench's conv_method values benchmarked here


def _apply(setting: str) -> None:
    from jaxreg.cpu import retain_freed_memory

    if setting == "trim 1 GiB":
        # the earlier defaults: mmap threshold and trim threshold both 1 GiB
        assert retain_freed_memory(1 << 30, trim_threshold_bytes=1 << 30)
    elif setting == "retain":
        assert retain_freed_memory()


def _time_steps(step, warmup: int, steps: int) -> dict:
    """``step()`` runs one step to completion; mean/median ms and faults per step."""
    for _ in range(warmup):
        step()
    times, faults = [], []
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {
        "mean ms": round(1e3 * float(np.mean(times)), 1),
        "median ms": round(1e3 * float(np.median(times)), 1),
        "faults per step": round(float(np.mean(faults))),
        # one-off bursts of ~1,300-1,800 faults land in a random step now and
        # then under every setting (seen at tiny widths; strace shows a brk
        # growing the heap by 5-7 MiB when a step's buffers do not fit the free
        # chunks, mostly in the first few steps); the median skips them
        "median faults per step": round(float(np.median(faults))),
        "steps that faulted": sum(f > 1000 for f in faults),
        "ms per step": [round(1e3 * t) for t in times],
        # ru_maxrss is in KiB on Linux
        "peak RSS MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def jax_child(args) -> dict:
    _apply(args.setting)
    from jaxreg.cpu import fast_convolutions

    fast_convolutions()  # before JAX starts its backend
    import jax
    import optax

    from jaxreg import Trainer, models

    x, y = _images("airbench", args.batch)
    model = models.Airbench(
        widths=args.widths,
        whitening=models.whitening_init(x[:256]),
        conv_method=args.conv_method,
    )
    trainer = Trainer(model=model, optimizer=optax.sgd(0.1, momentum=0.85, nesterov=True))
    box = [trainer.init(jax.random.key(0), x)]

    def step():
        box[0], metrics = trainer.train_step(box[0], (x, y))
        jax.block_until_ready(metrics)

    return _time_steps(step, args.warmup, args.steps)


def torch_child(args) -> dict:
    _apply(args.setting)
    import torch
    from bench_accuracy import _torch_airbench
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, y = _images("airbench", args.batch)
    net, scale = _torch_airbench({"fields": {"widths": args.widths}}, x[:256], 3, 10)
    opt = torch.optim.SGD(
        [p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.85, nesterov=True
    )
    net = net.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(xt) * scale, yt).backward()
        opt.step()

    return _time_steps(step, args.warmup, args.steps)


def _child(kind: str, setting: str, args, conv: str = "auto") -> dict:
    argv = [
        "--child", kind, "--setting", setting, "--widths", ",".join(map(str, args.widths)),
        "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
        "--conv-method", conv,
    ]  # fmt: skip
    return run_child(__file__, argv, f"bench_malloc child {kind} {setting!r} {conv}")


def _choices(allowed: tuple[str, ...], what: str):
    def parse(text: str) -> tuple[str, ...]:
        got = tuple(t.strip() for t in text.split(","))
        bad = [t for t in got if t not in allowed]
        if bad or not got:
            raise argparse.ArgumentTypeError(
                f"{what} takes a comma-separated list of {', '.join(allowed)}; got {text!r}"
            )
        return got

    return parse


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"--widths takes three positive ints, got {text!r}")
    return widths


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=_widths, default=(64, 256, 256),
                    help="Airbench widths (default airbench94's 64,256,256)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true", help="JAX only")
    ap.add_argument(
        "--settings",
        type=_choices(SETTINGS, "--settings"),
        default=SETTINGS,
        help=f"malloc settings to run (default all: {','.join(SETTINGS)})",
    )
    ap.add_argument(
        "--conv-methods",
        type=_choices(CONV_METHODS, "--conv-methods"),
        default=("auto",),
        help="the JAX net's Airbench(conv_method=...), each "
        "a row per setting (default auto: XLA's convolutions)",
    )
    ap.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--setting", choices=SETTINGS, default="retain", help=argparse.SUPPRESS)
    ap.add_argument("--conv-method", choices=CONV_METHODS, default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 1:
        ap.error("--batch, --steps and --warmup must be >= 1")
    if args.child:
        print(json.dumps((jax_child if args.child == "jax" else torch_child)(args)))
        return []
    rows = []
    runs = [("jax", conv) for conv in args.conv_methods]
    runs += [] if args.no_torch else [("torch", "oneDNN")]
    for kind, conv in runs:
        for setting in args.settings:
            row = {"framework": kind, "conv": conv, "malloc": setting}
            row.update(_child(kind, setting, args, conv if kind == "jax" else "auto"))
            row.update(widths=list(args.widths), batch=args.batch, steps=args.steps)
            row.update(_machine())
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
