"""The ``jaxreg`` console script: ``jaxreg compare`` and ``jaxreg sweep``.

    jaxreg compare                                   # digits, MLP, the 8 default configs
    jaxreg compare --dataset mnist --data-dir DIR --configs none all --epochs 10
    jaxreg sweep --param dropout --values 0 0.2 0.4 0.6
    jaxreg sweep --dataset mnist1d --param weight_decay --values 0 1e-4 1e-3 1e-2

Both print a markdown table, show a progress bar on stderr, and write
``results.json``, ``report.md`` and PNG plots into ``--out``. Bad arguments, an
unknown dataset / model / config, a missing data directory and a corrupt or
truncated file end the command with one line ``jaxreg: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

from . import data as data_lib
from .cpu import fast_convolutions, retain_freed_memory
from .data import DATASETS, DatasetUnavailableError
from .experiments import configs, report, runner
from .models import MODELS

#: per-dataset defaults of the flags left out. digits: 100 training images (10 per
#: class) so the unregularized CNN overfits visibly within a minute or two on a CPU.
DATASET_DEFAULTS = {
    "digits": {
        "model": "cnn",
        "epochs": 80,
        "batch_size": 16,
        "train_size": 100,
        "repeats": 3,
        "mode": "vmap",
    },
    "mnist1d": {"model": "cnn1d", "epochs": 40, "batch_size": 100, "lr": 1e-2},
    "cifar10": {"epochs": 20},
    "cifar100": {"epochs": 20},
}
FALLBACK = {
    "lr": 1e-3,
    "epochs": 10,
    "batch_size": 128,
    "train_size": None,
    "repeats": 1,
    "loop": "python",  # "auto" also times a rolled scan, which is slow for conv nets on CPU
    "mode": "auto",
}
SIGNAL_MODELS = ("cnn1d", "mlp1d")


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{self.prog.split()[-1]}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="dataset name (default: digits, offline)")
    p.add_argument("--data-dir", default=None, help="directory (or file) with the dataset's files")
    p.add_argument(
        "--model", default=None, help=f"one of {', '.join(MODELS)} (default per dataset)"
    )
    p.add_argument(
        "--model-field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a field of the model, e.g. widths=32,128,128 or dense=256 (repeatable)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default per dataset)")
    p.add_argument("--batch-size", type=int, default=None, help="(default per dataset)")
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default per dataset)"
    )
    p.add_argument(
        "--optimizer",
        choices=runner.OPTIMIZERS,
        default="adam",
        help="adam, or sgd with Nesterov momentum (default adam)",
    )
    p.add_argument(
        "--momentum",
        type=float,
        default=0.9,
        help="sgd's Nesterov momentum, in [0, 1) (default 0.9)",
    )
    p.add_argument(
        "--schedule",
        choices=runner.SCHEDULES,
        default="constant",
        help="learning rate: constant, cosine decay to 0, or triangle (0.2x lr up to lr "
        "over the first quarter, then linear to 0) (default constant)",
    )
    p.add_argument(
        "--tta",
        nargs="?",
        const="flip",
        default=False,
        choices=tuple(runner.TTA_VIEWS),
        help="evaluate natural images as the mean logits over test views: flip (the "
        "image and its mirror, the value when the flag is bare) or flip_translate "
        "(also two copies shifted by a pixel, each with its mirror: six views)",
    )
    p.add_argument(
        "--flip",
        choices=runner.FLIPS,
        default="random",
        help="the augmentation config's horizontal flips on natural images: random "
        "(default) or alternating (airbench: each example's mirror alternates per epoch)",
    )
    p.add_argument(
        "--freeze",
        default=None,
        metavar="REGEX=EPOCHS",
        help="stop training the parameters whose path matches REGEX after EPOCHS epochs, "
        "and skip their gradients (airbench: stem_bias=3)",
    )
    p.add_argument(
        "--retain-memory",
        action="store_true",
        help="keep freed memory for reuse (glibc): faster conv-net steps on CPU, slower "
        "compilation (jaxreg.cpu.retain_freed_memory)",
    )
    p.add_argument(
        "--fast-conv",
        action="store_true",
        help="turn XLA's YNNPACK fusions off and run convolutions through XLA's own: "
        "2x faster airbench steps on CPU (opt-in: process-wide, set at start) "
        "(jaxreg.cpu.fast_convolutions)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="train on a random subset (default per dataset)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of the training split held out for validation; 0 trains on all of it "
        "(default 0.2)",
    )
    p.add_argument(
        "--loop", default=None, help="auto (measured), python, or scan:K (default per dataset)"
    )
    p.add_argument(
        "--mode",
        default=None,
        help="members (sweep, repeats): auto, vmap, map or sequential (default per dataset)",
    )
    p.add_argument("--out", default=None, help="output directory (default jaxreg-out/<command>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jaxreg", description="Regularization experiments on real data.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("compare", help="train one model under several regularization configs")
    _common(c)
    c.add_argument(
        "--configs",
        nargs="+",
        default=list(configs.DEFAULT_CONFIGS),
        help="configs such as none l2 dropout=0.5+batchnorm all (see jaxreg.experiments.configs)",
    )
    c.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="train each config this many times (seeds as members of one program); "
        "the table gives mean ± std (default per dataset)",
    )
    s = sub.add_parser("sweep", help="one hyperparameter over values, as one compiled program")
    _common(s)
    s.add_argument("--param", required=True, help=f"one of {', '.join(configs.SWEEPABLE)}")
    s.add_argument("--values", type=float, nargs="+", required=True)
    s.add_argument("--config", default="none", help="base config the swept value is added to")
    s.add_argument(
        "--folds",
        type=int,
        default=None,
        help="K-fold cross-validation: each fold's 1/K of the training split validates "
        "(replaces --val-fraction); the table gives means ± std over the folds and the pick "
        "is the highest mean validation accuracy",
    )
    return ap


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _model_fields(items: list[str], model: str) -> dict:
    """``["widths=32,128,128", "scale=0.1"]`` -> ``{"widths": (32, 128, 128), "scale": 0.1}``;
    fields whose default is a string (``activation=relu``) keep the text, boolean
    ones (``fused_norm=false``) take true/false/1/0."""
    defaults = {f.name: f.default for f in dataclasses.fields(MODELS[model])}
    fields = set(defaults) - {"parent", "name", "num_classes", "dropout", "batch_norm"}
    fields -= {"whitening"}  # computed from the training images
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise UsageError(
                f"--model-field must be NAME=VALUE with NAME one of {', '.join(sorted(fields))} "
                f"(model {model}), got {item!r}"
            )
        if isinstance(defaults[name], str):
            out[name] = text.strip()
            continue
        if isinstance(defaults[name], bool):
            flag = text.strip().lower()
            if flag not in _BOOLS:
                raise UsageError(
                    f"--model-field {name}: expected true or false (or 1 or 0), got {text!r}"
                )
            out[name] = _BOOLS[flag]
            continue
        try:
            values = tuple(_number(v) for v in text.split(","))
        except ValueError:
            raise UsageError(
                f"--model-field {name}: {text!r} is not a number or a list of numbers"
            ) from None
        out[name] = values if "," in text else values[0]
    return out


def _freeze(text: str | None) -> tuple[str, float] | None:
    """``"stem_bias=3"`` -> ``("stem_bias", 3.0)``."""
    if text is None:
        return None
    regex, sep, epochs = text.rpartition("=")
    try:
        value = float(epochs)
    except ValueError:
        value = -1.0
    if not sep or not regex or not value >= 0:
        raise UsageError(f"--freeze must be REGEX=EPOCHS with EPOCHS a number >= 0, got {text!r}")
    try:
        re.compile(regex)
    except re.error as e:
        raise UsageError(f"--freeze: {regex!r} is not a regular expression: {e}") from None
    return regex, value


def _loop(text: str):
    if text in ("auto", "python"):
        return "auto" if text == "auto" else runner.Loop(1, 1)
    if text.startswith("scan:") and text[5:].isdigit() and int(text[5:]) > 0:
        return runner.Loop(int(text[5:]), 1)
    raise UsageError(f"--loop must be auto, python or scan:K, got {text!r}")


def _check(args) -> tuple[str, int]:
    """Validate the flags and fill in the dataset's defaults (in ``args``)."""
    if args.dataset not in DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
    defaults = {**FALLBACK, **DATASET_DEFAULTS.get(args.dataset, {})}
    for name in ("lr", "epochs", "batch_size", "train_size", "repeats", "loop", "mode"):
        if getattr(args, name, 0) is None:
            setattr(args, name, defaults[name])
    model = args.model or defaults.get("model") or runner.DEFAULT_MODEL[args.dataset]
    args.model = model
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if (model in SIGNAL_MODELS) != (args.dataset == "mnist1d") and model != "mlp":
        raise UsageError(f"model {model!r} does not fit dataset {args.dataset!r}")
    if args.epochs < 1 or args.batch_size < 1 or getattr(args, "repeats", 1) < 1 or args.lr <= 0:
        raise UsageError("--epochs, --batch-size and --repeats must be >= 1 and --lr > 0")
    if args.mode not in ("auto", "vmap", "map", "sequential"):
        raise UsageError(f"--mode must be auto, vmap, map or sequential, got {args.mode!r}")
    folds = getattr(args, "folds", None)
    if folds is not None and (folds < 2 or args.val_fraction is not None):
        raise UsageError(
            f"--folds takes K >= 2 and replaces --val-fraction, got --folds {folds}"
            + ("" if args.val_fraction is None else f" with --val-fraction {args.val_fraction}")
        )
    if args.val_fraction is None:
        args.val_fraction = 0.0 if folds else 0.2
    return model, args.epochs


def _progress(args, total: int, label: str):
    if args.no_progress:
        return None
    return report.Progress(total, label)


def _setup(args, model: str, epochs: int) -> tuple[runner.Data | list[runner.Data], dict]:
    """The prepared data and the keyword arguments every run of the command shares."""
    if args.fast_conv:
        fast_convolutions()
    if args.retain_memory:
        retain_freed_memory()
    run = {
        "model": model,
        "epochs": epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "schedule": args.schedule,
        "optimizer": args.optimizer,
        "momentum": args.momentum,
        "tta": args.tta,
        "flip": args.flip,
        "freeze": _freeze(args.freeze),
        "seed": args.seed,
        "model_fields": _model_fields(args.model_field, model),
        "loop": _loop(args.loop),
        "mode": args.mode,
    }
    split = dict(data_dir=args.data_dir, seed=args.seed, train_size=args.train_size)
    folds = getattr(args, "folds", None)
    if folds:  # same seed: the folds cut one permutation of the dataset, loaded once
        ds = data_lib.load(args.dataset, data_dir=args.data_dir)
        split["loader"] = lambda name, data_dir=None: ds
        data = [runner.prepare(args.dataset, folds=folds, fold=i, **split) for i in range(folds)]
    else:
        data = runner.prepare(args.dataset, val_fraction=args.val_fraction, **split)
    return data, run


def _compare(args, argv) -> dict:
    model, epochs = _check(args)
    regs = [configs.parse_config(c) for c in args.configs]  # all errors before any training
    data, run = _setup(args, model, epochs)
    results = []
    for i, reg in enumerate(regs):
        bar = _progress(args, epochs, f"[{i + 1}/{len(regs)}] {reg.name:<16}")

        def show(epoch, m, bar=bar):
            if bar is not None:
                val = "val_accuracy" in m
                name, key = ("val_acc", "val_accuracy") if val else ("train_acc", "accuracy")
                bar.update(epoch + 1, f"loss {m['loss']:.3f} {name} {m[key]:.4f}")

        r = runner.run_config(reg, data, repeats=args.repeats, callback=show, **run)
        if bar is not None:
            bar.close(f"test_acc {r['test_acc']:.4f} gap {r['gap']:+.4f}")
        results.append(r)
    print(report.compare_table(results))
    return {"command": "compare", "results": results, "model": model, "epochs": epochs}


def _sweep(args, argv) -> dict:
    model, epochs = _check(args)
    if args.param not in configs.SWEEPABLE:
        raise UsageError(f"cannot sweep {args.param!r}; sweepable: {', '.join(configs.SWEEPABLE)}")
    reg = configs.parse_config(args.config)
    data, run = _setup(args, model, epochs)
    folds = f", {args.folds} folds" if args.folds else ""
    total = epochs * (args.folds or 1)
    bar = _progress(args, total, f"{args.param} sweep, {len(args.values)} members{folds}")

    def show(epoch, m):
        if bar is not None:
            val = "val_accuracy" in m
            name, key = ("val_acc", "val_accuracy") if val else ("train_acc", "accuracy")
            bar.update(epoch + 1, f"best {name} {float(m[key].max()):.4f}")

    r = runner.run_sweep(reg, args.param, args.values, data, callback=show, **run)
    if bar is not None:
        bar.close(f"{r['mode']}, {r['seconds']:.0f}s")
    print(report.sweep_table(r))
    if r["picked"] is not None:
        print(report.picked_line(r))
    return {"command": "sweep", "results": r, "model": model, "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxreg`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = make_parser().parse_args(argv)
        run = _compare if args.command == "compare" else _sweep
        record = run(args, argv)
    except (UsageError, ValueError, FileNotFoundError, DatasetUnavailableError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"jaxreg: error: {msg}", file=sys.stderr)
        return 2
    settings = {k: v for k, v in vars(args).items() if k != "no_progress"}
    settings.update(model=record.pop("model"), epochs=record.pop("epochs"))
    out = Path(args.out or Path("jaxreg-out") / args.command)
    paths = report.write(out, {**record, "settings": settings, "argv": argv})
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
