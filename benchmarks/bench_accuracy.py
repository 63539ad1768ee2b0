"""Accuracy per CPU-minute on real data: jaxreg's recipes against PyTorch and Keras 3.

Each task is a dataset, a model and a regularization recipe (the README's
"Results" section). ``--framework jaxreg`` runs the ``jaxreg compare`` command
the README quotes (the same code path as the command line); ``torch`` (PyTorch
eager, 2 threads, channels-last) and ``keras`` (Keras 3 on the jax backend,
``model.fit``) train the same network with the same recipe on the same split:

* data: :func:`jaxreg.experiments.runner.prepare` (same seeded split, [0, 1] pixels,
  standardized MNIST-1D signals);
* augmentation: random translation by up to ``round(strength * H / 8)`` pixels
  (reflect padding and horizontal flips for natural images, zero padding else;
  the task's ``flip``: random, or airbench's alternating flips, which the Keras
  peer refuses; :func:`_torch_augment`),
  or shifts by up to ``round(strength * L / 10)`` steps repeating the edge values
  for MNIST-1D signals;
* dropout, batch norm (momentum 0.9 in flax's convention), label smoothing, L2 on
  conv/dense kernels (``l2 * ||w||^2 / 2``), parameter EMA, airbench's Lookahead
  (:func:`_torch_lookahead`; the Keras peer refuses it), the task's test views
  (``tta``: ``flip`` or ``flip_translate``, :func:`_torch_views`);
* optimizer and schedule (Adam or SGD with the task's Nesterov momentum;
  constant, cosine or triangle), batch size, epochs;
* the Airbench net as jaxreg's (:func:`_torch_airbench`, :func:`_keras_airbench`):
  the same frozen whitening stem, gelu, identity-started convs, scale-free batch
  norm with momentum 0.6 and 8x-scaled shifts, uniform kernels; a test checks
  that both compute jaxreg's logits from jaxreg's weights;
* a task's ``freeze`` (``cifar10``: airbench's whitening bias trains for the first
  3 epochs only): ``jaxreg compare --freeze stem_bias=3``; PyTorch turns the
  bias's ``requires_grad`` off at that step; Keras fits the first epochs, sets the
  stem layer's ``trainable`` off and compiles again (``model.fit``'s compiled step
  keeps its trainable set) with a new SGD that inherits the step count and the
  other weights' momenta, then fits the rest;
* the final evaluation: the test split with the task's test views, the first
  10,000 images of the train split on their plain images (as ``jaxreg compare``).

Known differences: the other nets keep each framework's default initialisers;
Keras's EMA (``SGD(use_ema=True)``) averages the trainable weights only, without
jaxreg's warm-up, and ``model.fit`` also trains on the last partial batch;
PyTorch's EMA follows jaxreg (warm-up ``min(decay, (1 + t) / (10 + t))``, batch
statistics averaged too). ``seconds`` is the wall time from the prepared data to
the end: compilation, training and the final evaluation of the train and test
splits (what ``jaxreg compare`` reports). A task with ``retain_memory`` calls
:func:`jaxreg.cpu.retain_freed_memory` once for the whole process, so every
framework of the invocation runs with it.

    python benchmarks/bench_accuracy.py --task mnist --framework torch
    python benchmarks/bench_accuracy.py --task cifar10 --framework jaxreg torch
    python benchmarks/bench_accuracy.py --task mnist1d_cnn --framework jaxreg torch keras
    python benchmarks/bench_accuracy.py --plot

Each run appends one record to ``--results`` (default
``benchmarks/results/accuracy.json``); ``--plot`` draws test accuracy against wall
time for every task and framework from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RESULTS = HERE / "results" / "accuracy.json"

#: settings a task leaves at their defaults.
_DEFAULTS = {
    "fields": {},
    "optimizer": "adam",
    "momentum": 0.9,
    "schedule": "cosine",
    "val_fraction": 0.02,
    "tta": False,  # or jaxreg compare's --tta views: "flip", "flip_translate"
    "flip": "random",  # jaxreg compare's --flip: "random" or "alternating" (airbench)
    "retain_memory": False,
    "fast_conv": False,
    "freeze": None,  # (path regex, epochs): `jaxreg compare --freeze REGEX=EPOCHS`
}

#: the CIFAR-10 tasks' common settings (airbench's recipe, see the README).
_CIFAR10 = {
    **_DEFAULTS,
    "dataset": "cifar10",
    "data_dir": DATA / "cifar10-jpeg",
    "model": "airbench",
    "recipe": "augmentation=0.5+label_smoothing=0.2+l2=1.36e-3+ema",
    "batch_size": 512,
    "lr": 0.75,
    "optimizer": "sgd",
    "momentum": 0.85,
    "schedule": "triangle",
    "val_fraction": 0.0,
    "tta": "flip",
    "retain_memory": True,
    "fast_conv": True,
}

#: task -> the settings of ``jaxreg compare`` (and of the peers).
TASKS = {
    # glibc's freed memory retained for all three frameworks (process-wide): the
    # jaxreg run 158 s -> 103 s, PyTorch's 77 s -> 62 s on the family 25 machine
    "mnist": {
        **_DEFAULTS,
        "dataset": "mnist",
        "data_dir": DATA / "mnist",
        "model": "cnn",
        "recipe": "augmentation=0.5+dropout=0.3+label_smoothing=0.1+batchnorm+ema",
        "epochs": 40,
        "batch_size": 128,
        "lr": 3e-3,
        "retain_memory": True,
    },
    # airbench94's net (its widths and kernel init), its whitening bias trained for 3
    # epochs, its six test views, no EMA (the final weights at the end of the
    # triangle); 10 epochs (airbench94's 9.9) take 24 minutes with --fast-conv on an
    # AVX-512 CPU; on the earlier AVX2 machine 7 epochs filled 45. Random flips: one
    # run with airbench's alternating flips ("flip": "alternating") scored 0.34 lower.
    # Its 256-wide convs run by Winograd's F(4x4, 3x3) (conv_method; the peers run
    # their own convolutions, which the field does not change). L2 6.8e-4: picked by
    # a jaxreg sweep on the 32/128/128 net (README; airbench's 1.36e-3 scored 90.12%).
    "cifar10": {
        **_CIFAR10,
        "recipe": "augmentation=0.5+label_smoothing=0.2+l2=6.8e-4",
        "fields": {"widths": (64, 256, 256), "conv_method": "winograd"},
        "epochs": 10,
        "freeze": ("stem_bias", 3),
        "tta": "flip_translate",
    },
    # a quarter of its FLOPs with flax's default kernel init, 23 epochs (the earlier best)
    "cifar10_small": {
        **_CIFAR10,
        "fields": {"widths": (32, 128, 128), "kernel_init": "lecun"},
        "epochs": 23,
    },
    "mnist1d_cnn": {
        **_DEFAULTS,
        "dataset": "mnist1d",
        "data_dir": None,  # generated by the mnist1d package (its default arguments)
        "model": "cnn1d",
        "recipe": "augmentation=0.75+dropout=0.1+batchnorm",
        "epochs": 40,
        "batch_size": 100,
        "lr": 1e-2,
    },
    "mnist1d_mlp": {
        **_DEFAULTS,
        "dataset": "mnist1d",
        "data_dir": None,
        "model": "mlp1d",
        "recipe": "augmentation=0.75+batchnorm+l2+ema",
        "epochs": 200,
        "batch_size": 100,
        "lr": 3e-3,
    },
}
FRAMEWORKS = ("jaxreg", "torch", "keras")


def cli_args(task: dict, config: str, seed: int, out: Path) -> list[str]:
    """The ``jaxreg compare`` arguments of one task and config."""
    args = ["compare", "--dataset", task["dataset"]]
    if task["data_dir"] is not None:
        args += ["--data-dir", str(task["data_dir"])]
    args += [
        "--model", task["model"], "--configs", config, "--epochs", str(task["epochs"]),
        "--batch-size", str(task["batch_size"]), "--lr", str(task["lr"]),
        "--optimizer", task["optimizer"], "--momentum", str(task["momentum"]),
        "--schedule", task["schedule"],
        "--val-fraction", str(task["val_fraction"]), "--seed", str(seed),
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    if task.get("train_size"):
        args += ["--train-size", str(task["train_size"])]
    for name, value in task["fields"].items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        args += ["--model-field", f"{name}={text}"]
    if task["tta"] and config != "none":
        args += ["--tta", task["tta"]]
    if task["flip"] != "random":
        args += ["--flip", task["flip"]]
    if task["retain_memory"]:
        args.append("--retain-memory")
    if task["fast_conv"]:
        args.append("--fast-conv")
    if task["freeze"]:
        args += ["--freeze", "{}={}".format(*task["freeze"])]
    return args


def portable(argv: list[str]) -> str:
    """``jaxreg ...`` as typed from the repository root: data paths relative, no ``--out``."""
    out, skip = ["jaxreg"], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if i > 0 and argv[i - 1] == "--data-dir":
            a = os.path.relpath(a, HERE.parent)
        out.append(a if a and all(c not in a for c in " +=") else f'"{a}"')
    return " ".join(out)


def run_jaxreg(task: dict, config: str, seed: int, out: Path) -> dict:
    from jaxreg.cli import main

    args = cli_args(task, config, seed, out)
    if main(args) != 0:
        raise RuntimeError(f"jaxreg {' '.join(args)} failed")
    r = json.loads((out / "results.json").read_text())["results"][0]
    return {
        "test_acc": r["test_acc"],
        "train_acc": r["train_acc"],
        "seconds": r["seconds"],
        "command": portable(args),
    }


# --------------------------------------------------------------------------- peers


def _prepared(task: dict, seed: int):
    from jaxreg.experiments import runner

    data = runner.prepare(
        task["dataset"],
        data_dir=None if task["data_dir"] is None else str(task["data_dir"]),
        seed=seed,
        train_size=task.get("train_size"),
        val_fraction=task["val_fraction"],
    )
    host = lambda split: (np.array(split[0]), np.array(split[1]))  # writable copies
    return data.name in runner.NATURAL_IMAGES, host(data.train), host(data.test), data.num_classes


def _schedule(lr: float, schedule: str, total: int):
    """The runner's schedules as a plain function of the step."""
    peak = max(1, total // 4)

    def rate(step: int) -> float:
        if schedule == "constant":
            return lr
        if schedule == "cosine":
            return lr * 0.5 * (1 + np.cos(np.pi * min(step, total) / total))
        if step < peak:
            return lr * (0.2 + 0.8 * step / peak)
        return lr * max(0.0, 1 - (step - peak) / max(1, total - peak))

    return rate


def _recipe(config: str) -> dict:
    from jaxreg.experiments.configs import parse_config

    reg = parse_config(config).active()
    unsupported = set(reg) - {
        "augmentation",
        "dropout",
        "batchnorm",
        "label_smoothing",
        "l2",
        "ema",
        "lookahead",
    }
    if unsupported:
        raise ValueError(f"the peers do not implement {sorted(unsupported)}")
    return reg


def _finish(accuracy, train, test, t0: float, versions: dict) -> dict:
    """A peer's record: final test accuracy (with the task's test-time views) and
    train accuracy (plain images of the first ``TRAIN_EVAL_SIZE``, as jaxreg's),
    wall time since ``t0``."""
    from jaxreg.experiments.runner import TRAIN_EVAL_SIZE as n

    test_acc, train_acc = accuracy(*test), accuracy(train[0][:n], train[1][:n], views=False)
    return {
        "test_acc": test_acc,
        "train_acc": train_acc,
        "seconds": time.perf_counter() - t0,
        "versions": versions,
    }


def torch_cnn(c_in: int, hw: tuple[int, int], k: int, bn: bool, dropout: float):
    """jaxreg's ``SmallCNN`` (32/64 3x3 convs, each with batch norm if ``bn``,
    relu and a 2x2 max-pool; dense 128, dropout, dense ``k``) as a PyTorch
    ``nn.Sequential``: conv 2 is item 4 with ``bn``, item 3 without."""
    from torch import nn

    layers, prev = [], c_in
    for w in (32, 64):
        layers += [nn.Conv2d(prev, w, 3, padding=1, bias=not bn)]
        layers += [nn.BatchNorm2d(w, momentum=0.1, eps=1e-5)] if bn else []
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        prev = w
    layers += [nn.Flatten(), nn.Linear(64 * (hw[0] // 4) * (hw[1] // 4), 128, bias=not bn)]
    layers += [nn.BatchNorm1d(128, momentum=0.1, eps=1e-5)] if bn else []
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, k)]
    return nn.Sequential(*layers)


def run_torch(task: dict, config: str, seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    reg = _recipe(config)
    natural, (x, y), (xt, yt), k = _prepared(task, seed)
    t0 = time.perf_counter()  # like jaxreg's figure: from prepared data to the final evaluation
    bn = task["model"] == "airbench" or bool(reg.get("batchnorm"))
    c_in = x.shape[-1]

    def norm(c, dims=2):
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(c, momentum=0.1, eps=1e-5)

    if task["model"] == "airbench":
        body, scale = _torch_airbench(task, x, c_in, k)
    elif task["model"] == "cnn":
        body = torch_cnn(c_in, x.shape[1:3], k, bn, reg.get("dropout", 0.0))
        scale = 1.0
    elif task["model"] == "cnn1d":  # the MNIST-1D paper's ConvBase, as jaxreg's CNN1D
        layers, prev = [], c_in
        for i in range(3):
            layers += [nn.Conv1d(prev, 25, 5 if i == 0 else 3, stride=2, padding=1, bias=not bn)]
            layers += ([norm(25, 1)] if bn else []) + [nn.ReLU()]
            prev = 25
        layers += [nn.Flatten(), nn.Dropout(reg.get("dropout", 0.0)), nn.Linear(25 * 5, k)]
        body, scale = nn.Sequential(*layers), 1.0
    elif task["model"] == "mlp1d":  # 40-100-100-10, as jaxreg's MLP1D
        layers, prev = [nn.Flatten()], x.shape[1] * c_in
        for w in (100, 100):
            layers += [nn.Linear(prev, w, bias=not bn)] + ([norm(w, 1)] if bn else [])
            layers += [nn.ReLU(), nn.Dropout(reg.get("dropout", 0.0))]
            prev = w
        layers += [nn.Linear(prev, k)]
        body, scale = nn.Sequential(*layers), 1.0
    else:
        raise ValueError(f"no PyTorch network for model {task['model']!r}")
    model = body.to(memory_format=torch.channels_last)
    forward = (lambda v: model(v) * scale) if scale != 1.0 else model
    trained = [p for p in model.parameters() if p.requires_grad]
    kernels = [p for p in trained if p.ndim > 1]
    others = [p for p in trained if p.ndim <= 1]
    l2 = reg.get("l2", 0.0)
    groups = [{"params": kernels, "weight_decay": l2}, {"params": others, "weight_decay": 0.0}]
    steps_per_epoch = x.shape[0] // task["batch_size"]
    total = task["epochs"] * steps_per_epoch
    rate = _schedule(task["lr"], task["schedule"], total)
    if task["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=rate(0), momentum=task["momentum"], nesterov=True)
    else:
        opt = torch.optim.Adam(groups, lr=rate(0))
    ema_decay = reg.get("ema")
    ema = {n: v.detach().clone() for n, v in model.state_dict().items()} if ema_decay else None
    pad = 0
    if "augmentation" in reg:  # the runner's shift: H / 8 for images, L / 10 for signals
        pad = max(1, round(reg["augmentation"] * x.shape[1] / (10 if x.ndim == 3 else 8)))
    smoothing = reg.get("label_smoothing", 0.0)

    signal = x.ndim == 3  # MNIST-1D: (N, L, C)

    def to_torch(a):
        if signal:
            return torch.from_numpy(a).permute(0, 2, 1).contiguous()
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

    xs, ys = to_torch(x), torch.from_numpy(y.astype(np.int64))
    gen = np.random.default_rng(seed)
    flip = "random" if natural else None
    if natural and task["flip"] == "alternating":  # each example's epoch-0 orientation
        flip = torch.from_numpy(gen.random(x.shape[0]) < 0.5)

    slow = [p.detach().clone() for p in trained] if reg.get("lookahead") else None
    freeze_at = None  # airbench: the stem's bias stops training (requires_grad off)
    if task["freeze"]:
        if task["model"] != "airbench" or task["freeze"][0] != "stem_bias":
            raise ValueError(
                f"the PyTorch peer freezes airbench's stem_bias only: {task['freeze']}"
            )
        freeze_at = round(task["freeze"][1] * steps_per_epoch)
    step = 0
    for epoch in range(task["epochs"]):
        model.train()
        perm = torch.from_numpy(gen.permutation(x.shape[0]))
        for i in range(steps_per_epoch):
            idx = perm[i * task["batch_size"] : (i + 1) * task["batch_size"]]
            xb, yb = xs[idx], ys[idx]
            if pad:
                xb = _torch_augment(xb, gen, pad, flip, idx, epoch)
            if step == freeze_at:
                model[0].bias.requires_grad_(False)  # SGD then skips it (grad None)
            for g in opt.param_groups:
                g["lr"] = rate(step)
            loss = F.cross_entropy(forward(xb), yb, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if slow is not None:
                _torch_lookahead(slow, trained, step, total)
            if ema is not None:
                d = min(ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for n, v in model.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[n].mul_(d).add_(v, alpha=1 - d)
                        else:
                            ema[n].copy_(v)
            step += 1
    if ema is not None:
        model.load_state_dict(ema)
    model.eval()

    @torch.no_grad()
    def accuracy(a, labels, views=True):
        correct = 0
        for i in range(0, a.shape[0], 1000):
            xb = to_torch(a[i : i + 1000])
            if views and task["tta"] and config != "none":
                logits = torch.stack([forward(v) for v in _torch_views(xb, task["tta"])]).mean(0)
            else:
                logits = forward(xb)
            correct += int((logits.argmax(1).numpy() == labels[i : i + 1000]).sum())
        return correct / a.shape[0]

    return _finish(accuracy, (x, y), (xt, yt), t0, {"torch": torch.__version__})


def _torch_augment(batch, gen, pad: int, flip, idx, epoch: int):
    """The runner's augmentation of a PyTorch batch (NCHW images or NCL signals).

    Images: a random crop of the batch padded by ``pad`` (reflect padding for
    natural images, zeros else); ``flip`` None (no flips), ``"random"`` (each
    image with probability 1/2) or a bool tensor ``first`` (alternating flips):
    example ``idx[n]`` mirrored iff ``first[idx[n]] XOR (epoch odd)``, as
    :func:`jaxreg.augment.alternating_flip`. Signals: shifts by ``U{-pad..pad}``
    repeating the edge values. Draws come from the NumPy generator ``gen``.
    """
    import torch
    import torch.nn.functional as F

    if batch.ndim == 3:  # MNIST-1D signals (N, C, L)
        n, c, length = batch.shape
        shift = torch.from_numpy(gen.integers(-pad, pad + 1, n))
        pos = (torch.arange(length)[None] + shift[:, None]).clamp(0, length - 1)
        return batch.gather(2, pos[:, None, :].expand(n, c, length))
    n, _, h, w = batch.shape
    mode = "constant" if flip is None else "reflect"
    padded = F.pad(batch, (pad, pad, pad, pad), mode=mode)
    dy = torch.from_numpy(gen.integers(0, 2 * pad + 1, n))
    dx = torch.from_numpy(gen.integers(0, 2 * pad + 1, n))
    rows = dy[:, None] + torch.arange(h)[None]
    cols = dx[:, None] + torch.arange(w)[None]
    if flip is not None:
        if isinstance(flip, str):
            mirror = torch.from_numpy(gen.random(n) < 0.5)
        else:
            mirror = flip[idx] ^ bool(epoch % 2)
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _torch_lookahead(slow: list, params: list, step: int, total: int) -> None:
    """After update ``step`` (0-based): airbench's Lookahead as ``jaxreg.lookahead``
    with :func:`jaxreg.experiments.runner.lookahead_step_size`. Every 5th update
    the slow weights move toward the params, which take their value (a frozen
    param, ``requires_grad`` off, keeps its own, as jaxreg's frozen leaves)."""
    import torch

    from jaxreg.experiments.runner import lookahead_step_size

    if (step + 1) % 5:
        return
    a = float(lookahead_step_size(total)(step))
    with torch.no_grad():
        for s, p in zip(slow, params, strict=True):
            s.lerp_(p, a)
            if p.requires_grad:
                p.copy_(s)


def _torch_views(xb, tta: str) -> list:
    """jaxreg's test views (:data:`jaxreg.experiments.runner.TTA_VIEWS`) of an
    NCHW batch: the image and its mirror, for ``flip_translate`` also those of
    the copies shifted one pixel down-right and up-left (reflect padding)."""
    import torch.nn.functional as F

    base = [xb]
    if tta == "flip_translate":
        h, w = xb.shape[2:]
        padded = F.pad(xb, (1, 1, 1, 1), mode="reflect")
        base += [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
    return [v for b in base for v in (b, b.flip(3))]


def _torch_airbench(task: dict, x: np.ndarray, c_in: int, k: int):
    """jaxreg's Airbench in PyTorch: the same frozen whitening stem (computed by
    ``jaxreg.models.whitening_init`` from the same 5,000 images), gelu (tanh form,
    flax's default), identity-started 3x3 convs, scale-free batch norm (torch
    momentum 0.4 = flax 0.6, eps 1e-12) whose shift is stored / 8, kernels drawn
    as the task's ``kernel_init`` (jaxreg's default ``uniform``: U(+-1/sqrt(fan_in)),
    airbench94's; or ``lecun``: flax's lecun-normal)."""
    import torch
    from torch import nn

    from jaxreg.models import whitening_init

    def kernel_(w):
        fan_in = w[0].numel()
        if task["fields"].get("kernel_init", "uniform") == "lecun":
            std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
        else:
            nn.init.uniform_(w, -(fan_in**-0.5), fan_in**-0.5)

    class ShiftNorm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm = nn.BatchNorm2d(c, momentum=0.4, eps=1e-12, affine=False)
            self.bias = nn.Parameter(torch.zeros(c))

        def forward(self, v):
            return self.norm(v) + 8.0 * self.bias.view(1, -1, 1, 1)

    def conv(cin, cout):
        c = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        with torch.no_grad():
            kernel_(c.weight)
            nn.init.dirac_(c.weight[: min(cin, cout)])
        return c

    white = whitening_init(x[:5000])
    stem = nn.Conv2d(c_in, white.shape[-1], 2)
    with torch.no_grad():
        kernel = white.kernel_array()
        stem.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
        stem.bias.copy_(torch.tensor(white.bias))
    stem.weight.requires_grad_(False)  # frozen, as in jaxreg (a constant there)
    layers, prev = [stem, nn.GELU(approximate="tanh")], white.shape[-1]
    for w in task["fields"].get("widths", (64, 256, 256)):
        layers += [conv(prev, w), nn.MaxPool2d(2), ShiftNorm(w), nn.GELU(approximate="tanh")]
        layers += [conv(w, w), ShiftNorm(w), nn.GELU(approximate="tanh")]
        prev = w
    dense = nn.Linear(prev, k, bias=False)
    with torch.no_grad():
        kernel_(dense.weight)
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), dense]
    return nn.Sequential(*layers), 1.0 / 9.0


def run_keras(task: dict, config: str, seed: int) -> dict:
    import jax

    with jax.numpy_rank_promotion("allow"):  # Keras relies on implicit rank promotion
        return _run_keras(task, config, seed)


def _run_keras(task: dict, config: str, seed: int) -> dict:
    if task["freeze"] and (task["model"] != "airbench" or task["freeze"][0] != "stem_bias"):
        raise NotImplementedError(
            f"the Keras peer freezes airbench's stem_bias only, got {task['freeze']} "
            f"on {task['model']}"
        )
    reg = _recipe(config)
    if reg.get("lookahead"):  # Keras 3 has no Lookahead optimizer
        raise NotImplementedError("the Keras peer has no lookahead")
    if task["flip"] != "random":  # its augmentation layers do not see example indices
        raise NotImplementedError(f"the Keras peer has no {task['flip']} flip")
    import keras
    from keras import layers

    from jaxreg.experiments.runner import TTA_VIEWS

    keras.utils.set_random_seed(seed)
    natural, (x, y), (xt, yt), k = _prepared(task, seed)
    t0 = time.perf_counter()
    bn = task["model"] == "airbench" or bool(reg.get("batchnorm"))
    l2 = reg.get("l2", 0.0)
    kr = keras.regularizers.L2(l2 / 2) if l2 else None  # keras: l * sum(w^2)

    def norm():
        return [layers.BatchNormalization(momentum=0.9, epsilon=1e-5)] if bn else []

    inputs = keras.Input(x.shape[1:])
    h = inputs
    if "augmentation" in reg and x.ndim == 3:  # MNIST-1D signals
        h = _keras_shift_1d(max(1, round(reg["augmentation"] * x.shape[1] / 10)), seed)(h)
    elif "augmentation" in reg:
        pad = max(1, round(reg["augmentation"] * x.shape[1] / 8))
        fill = "reflect" if natural else "constant"
        if natural:
            h = layers.RandomFlip("horizontal", seed=seed)(h)
        h = layers.RandomTranslation(
            pad / x.shape[1], pad / x.shape[2], fill_mode=fill, interpolation="nearest", seed=seed
        )(h)
    if task["model"] == "airbench":
        outputs = _keras_airbench(task, x, h, k, kr)
    elif task["model"] == "cnn":
        for w in (32, 64):
            h = layers.Conv2D(w, 3, padding="same", use_bias=not bn, kernel_regularizer=kr)(h)
            for layer in [*norm(), layers.ReLU(), layers.MaxPooling2D(2)]:
                h = layer(h)
        h = layers.Dense(128, use_bias=not bn, kernel_regularizer=kr)(layers.Flatten()(h))
        for layer in [*norm(), layers.ReLU(), layers.Dropout(reg.get("dropout", 0.0))]:
            h = layer(h)
        outputs = layers.Dense(k, kernel_regularizer=kr)(h)
    elif task["model"] == "cnn1d":
        for i in range(3):
            h = layers.ZeroPadding1D(1)(h)
            kernel = 5 if i == 0 else 3
            h = layers.Conv1D(25, kernel, strides=2, use_bias=not bn, kernel_regularizer=kr)(h)
            for layer in [*norm(), layers.ReLU()]:
                h = layer(h)
        h = layers.Dropout(reg.get("dropout", 0.0))(layers.Flatten()(h))
        outputs = layers.Dense(k, kernel_regularizer=kr)(h)
    elif task["model"] == "mlp1d":
        h = layers.Flatten()(h)
        for w in (100, 100):
            h = layers.Dense(w, use_bias=not bn, kernel_regularizer=kr)(h)
            for layer in [*norm(), layers.ReLU(), layers.Dropout(reg.get("dropout", 0.0))]:
                h = layer(h)
        outputs = layers.Dense(k, kernel_regularizer=kr)(h)
    else:
        raise ValueError(f"no Keras network for model {task['model']!r}")
    model = keras.Model(inputs, outputs)
    steps_per_epoch = -(-x.shape[0] // task["batch_size"])  # fit trains the partial batch too

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            total = task["epochs"] * steps_per_epoch
            s = keras.ops.cast(step, "float32")
            if task["schedule"] == "constant":
                return keras.ops.convert_to_tensor(task["lr"], "float32")
            if task["schedule"] == "cosine":
                return (
                    task["lr"]
                    * 0.5
                    * (1 + keras.ops.cos(np.pi * keras.ops.minimum(s, total) / total))
                )
            peak = max(1, total // 4)
            up = task["lr"] * (0.2 + 0.8 * s / peak)
            down = task["lr"] * keras.ops.maximum(0.0, 1 - (s - peak) / max(1, total - peak))
            return keras.ops.where(s < peak, up, down)

    ema = reg.get("ema")
    if task["freeze"] and (ema or task["optimizer"] != "sgd"):
        raise NotImplementedError("the Keras peer freezes under SGD without EMA only")
    kw = {"use_ema": True, "ema_momentum": ema} if ema else {}

    def optimizer():
        if task["optimizer"] == "sgd":
            return keras.optimizers.SGD(Schedule(), momentum=task["momentum"], nesterov=True, **kw)
        return keras.optimizers.Adam(Schedule(), **kw)

    opt = optimizer()
    smoothing = reg.get("label_smoothing", 0.0)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    model.compile(optimizer=opt, loss=loss)
    onehot = np.eye(k, dtype=np.float32)[y]
    fit = {"batch_size": task["batch_size"], "verbose": 0}
    done = min(task["freeze"][1], task["epochs"]) if task["freeze"] else 0
    if done:  # airbench: the stem's bias trains for the first epochs only
        model.fit(x, onehot, epochs=done, **fit)
    if task["freeze"]:  # fit's compiled step keeps its trainable set: compile again
        before = list(model.trainable_variables)
        model.get_layer("whiten").trainable = False
        # on the jax backend an optimizer's state is one slot per variable it was built
        # with: a new SGD inherits the step count and the other variables' momenta
        new = optimizer()
        if opt.built:  # (not before a first fit)
            new.build(model.trainable_variables)
            new.iterations.assign(opt.iterations)
            for slot, v in zip(new.momentums, model.trainable_variables, strict=True):
                slot.assign(opt.momentums[next(i for i, b in enumerate(before) if b is v)])
        opt = new
        model.compile(optimizer=opt, loss=loss)
    if done < task["epochs"]:
        model.fit(x, onehot, initial_epoch=done, epochs=task["epochs"], **fit)
    if ema:
        opt.finalize_variable_values(model.trainable_variables)

    def accuracy(a, labels, views=True):
        logits = model.predict(a, batch_size=1000, verbose=0)
        if views and task["tta"] and config != "none":
            views_ = [np.asarray(v) for v in TTA_VIEWS[task["tta"]](a)]
            logits = np.mean([model.predict(v, batch_size=1000, verbose=0) for v in views_], 0)
        return float((logits.argmax(1) == labels).mean())

    return _finish(accuracy, (x, y), (xt, yt), t0, {"keras": keras.__version__})


# --------------------------------------------------------------------------- report


def _keras_shift_1d(max_shift: int, seed: int):
    """A Keras layer: in training, shift each signal ``(N, L, C)`` by
    ``U{-max_shift..max_shift}`` steps, repeating the edge values (the runner's
    ``random_shift_1d``); the identity in inference."""
    import keras

    class Shift1D(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.seeds = keras.random.SeedGenerator(seed)

        def call(self, v, training=False):
            if not training:
                return v
            n, length = keras.ops.shape(v)[0], v.shape[1]
            s = keras.random.randint((n, 1), -max_shift, max_shift + 1, seed=self.seeds)
            idx = keras.ops.clip(keras.ops.arange(length)[None, :] + s, 0, length - 1)
            return keras.ops.take_along_axis(v, idx[..., None], axis=1)

    return Shift1D()


def _keras_airbench(task: dict, x: np.ndarray, h, k: int, kr):
    """jaxreg's Airbench in Keras 3 (see :func:`_torch_airbench`)."""
    import keras
    from keras import layers

    from jaxreg.models import whitening_init

    white = whitening_init(x[:5000])
    kernel = white.kernel_array()
    if task["fields"].get("kernel_init", "uniform") == "lecun":
        base = keras.initializers.LecunNormal()
    else:  # U(+-1/sqrt(fan_in))
        base = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")

    class Whiten(layers.Layer):  # frozen kernel, trained bias
        def build(self, shape):
            self.bias = self.add_weight(
                shape=(kernel.shape[-1],),
                initializer=keras.initializers.Constant(np.asarray(white.bias, np.float32)),
            )

        def call(self, v):
            return keras.ops.conv(v, kernel, padding="valid") + self.bias

    class Shift(layers.Layer):  # batch norm's shift, stored / 8
        def build(self, shape):
            self.bias = self.add_weight(shape=(shape[-1],), initializer="zeros")

        def call(self, v):
            return v + 8.0 * self.bias

    def dirac(shape, dtype=None):
        w = np.array(base(shape))
        n = min(shape[-2], shape[-1])
        w[..., :n] = 0.0
        w[shape[0] // 2, shape[1] // 2, np.arange(n), np.arange(n)] = 1.0
        return keras.ops.convert_to_tensor(w, dtype)

    def gelu(v):
        return keras.activations.gelu(v, approximate=True)

    def norm(v):
        v = layers.BatchNormalization(momentum=0.6, epsilon=1e-12, center=False, scale=False)(v)
        return layers.Activation(gelu)(Shift()(v))

    h = layers.Activation(gelu)(Whiten(name="whiten")(h))
    for w in task["fields"].get("widths", (64, 256, 256)):
        conv = dict(padding="same", use_bias=False, kernel_regularizer=kr, kernel_initializer=dirac)
        h = norm(layers.MaxPooling2D(2)(layers.Conv2D(w, 3, **conv)(h)))
        h = norm(layers.Conv2D(w, 3, **conv)(h))
    h = layers.GlobalMaxPooling2D()(h)
    h = layers.Dense(k, use_bias=False, kernel_regularizer=kr, kernel_initializer=base)(h)
    return layers.Rescaling(1.0 / 9.0)(h)


def machine() -> dict:
    """Where the run happened: :func:`jaxreg.experiments.report.machine` (the CPU's
    model, family and vector ISA, cores, devices, versions, XLA flags)."""
    from jaxreg.experiments.report import machine as where

    return where()


def plot(records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in records})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False)
    colors = {"jaxreg": "tab:blue", "torch": "tab:orange", "keras": "tab:green"}

    # one marker per machine (records from different CPUs are not one time axis)
    def cpu(r):
        return r.get("machine", {}).get("cpu", "?")

    cpus = list(dict.fromkeys(map(cpu, records)))
    markers = dict(zip(cpus, "o^Dvp*", strict=False))
    for ax, name in zip(axes[0], tasks, strict=True):
        for r in (r for r in records if r["task"] == name):
            base = r["config"] == "none"
            ax.scatter(
                r["seconds"] / 60,
                100 * r["test_acc"],
                marker=markers.get(cpu(r), "x"),
                facecolors="none" if base else colors[r["framework"]],
                edgecolors=colors[r["framework"]],
                s=40,
            )
        for fw, c in colors.items():
            ax.scatter([], [], color=c, label=fw)
        ax.scatter([], [], facecolors="none", edgecolors="gray", label="no regularization")
        seen = {cpu(r) for r in records if r["task"] == name}
        for c in (c for c in cpus if c in seen and len(cpus) > 1):
            ax.scatter([], [], marker=markers.get(c, "x"), color="gray", label=c)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("wall time (min, 2-core CPU)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _without_results(argv: list[str]) -> list[str]:
    """The benchmark's arguments minus ``--results PATH`` (a machine path)."""
    out = list(argv)
    if "--results" in out:
        i = out.index("--results")
        del out[i : i + 2]
    return out


def recorded(task: str, path: Path) -> list[dict]:
    """Records of the configs of one ``jaxreg compare`` run from its ``results.json``."""
    run = json.loads(Path(path).read_text())
    if run.get("command") != "compare":
        raise ValueError(f"{path}: not a `jaxreg compare` results.json")
    out = []
    for r in run["results"]:
        out.append(
            {
                "task": task,
                "framework": "jaxreg",
                "config": "none" if r["config"] == "none" else "recipe",
                "spec": r["config"],
                "seed": run["settings"]["seed"],
                "epochs": run["settings"]["epochs"],
                "train_size": run["settings"].get("train_size"),
                "test_acc": r["test_acc"],
                "train_acc": r["train_acc"],
                "seconds": r["seconds"],
                "command": portable(run["argv"]),
                "machine": run["machine"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default=None)
    ap.add_argument("--framework", nargs="+", choices=FRAMEWORKS, default=["jaxreg"])
    ap.add_argument(
        "--config", nargs="+", default=["recipe"], help="recipe (the task's) and/or none"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="override (smoke tests)")
    ap.add_argument("--train-size", type=int, default=None, help="override (smoke tests)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--plot", action="store_true", help="draw accuracy_vs_time.png and exit")
    ap.add_argument(
        "--record",
        type=Path,
        nargs="+",
        default=None,
        help="append the runs of these `jaxreg compare` results.json files (for --task) and exit",
    )
    args = ap.parse_args(argv)
    stored = json.loads(args.results.read_text()) if args.results.exists() else []
    if args.plot:
        print(plot(stored, args.results.with_name("accuracy_vs_time.png")))
        return stored
    if args.task is None:
        ap.error("--task is required unless --plot")
    if args.record:
        new = [rec for path in args.record for rec in recorded(args.task, path)]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(stored + new, indent=1) + "\n")
        return new
    task = dict(TASKS[args.task])
    if args.epochs is not None:
        task["epochs"] = args.epochs
    if args.train_size is not None:
        task["train_size"] = args.train_size
    if task["fast_conv"]:  # process-wide (XLA's flags): Keras on JAX gets it too
        from jaxreg.cpu import fast_convolutions

        fast_convolutions()
    if task["retain_memory"]:  # process-wide: every framework of this run gets it
        from jaxreg.cpu import retain_freed_memory

        retain_freed_memory()
    new = []
    for config in args.config:
        spec = task["recipe"] if config == "recipe" else config
        for fw in args.framework:
            out = args.results.parent / f"{args.task}-{fw}-{config}-seed{args.seed}"
            if fw == "jaxreg":
                r = run_jaxreg(task, spec, args.seed, out)
            else:
                r = (run_torch if fw == "torch" else run_keras)(task, spec, args.seed)
            record = {
                "task": args.task,
                "framework": fw,
                "config": "none" if spec == "none" else "recipe",
                "spec": spec,
                "seed": args.seed,
                "epochs": task["epochs"],
                "train_size": task.get("train_size"),
                "model": task["model"],
                "fields": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in task["fields"].items()
                },
                **r,
                "machine": machine(),
                "argv": _without_results(sys.argv[1:] if argv is None else argv),
            }
            print(
                f"{args.task} {fw:6s} {record['config']:6s} test {r['test_acc']:.4f} "
                f"train {r['train_acc']:.4f} {r['seconds']:.0f} s",
                flush=True,
            )
            new.append(record)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(stored + new, indent=1) + "\n")
    return new


if __name__ == "__main__":
    main()
