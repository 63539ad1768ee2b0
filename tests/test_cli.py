"""The ``jaxreg`` console script: compare, sweep, their files and their one-line errors."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxreg import cli

pytest.importorskip("sklearn")  # the default dataset, digits, ships with scikit-learn

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
TINY = ["--epochs", "2", "--train-size", "200", "--batch-size", "25", "--loop", "python"]
TINY += ["--model", "mlp"]


def test_compare_prints_table_and_writes_json_report_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--configs", "none", "dropout=0.5+l2", "--repeats", "1", "--out", str(out)]
    argv += TINY
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "| none |" in captured.out and "| dropout=0.5+l2 |" in captured.out
    assert "[1/2] none" in captured.err and "[2/2] dropout=0.5+l2" in captured.err  # progress
    record = json.loads((out / "results.json").read_text())
    assert record["command"] == "compare" and record["argv"] == argv
    assert record["settings"]["dataset"] == "digits" and record["settings"]["model"] == "mlp"
    assert [r["config"] for r in record["results"]] == ["none", "dropout=0.5+l2"]
    for r in record["results"]:
        assert r["epochs_run"] == 2 and len(r["history"]) == 2
        assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["test_acc"] > 0.3  # chance is 0.1
    assert record["results"][1]["regularizers"] == {"l2": 1e-3, "dropout": 0.5}
    md = (out / "report.md").read_text()
    assert "| config | train acc |" in md and "jaxreg compare --configs none" in md
    if HAVE_MPL:
        for name in ("accuracy.png", "loss.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({name})" in md


def test_optimizer_schedule_model_fields_and_no_validation_split(tmp_path, capsys, monkeypatch):
    from jaxreg.experiments import runner

    seen = {}
    real = runner.build

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "build", spy)
    out = tmp_path / "sgd"
    argv = ["compare", "--configs", "l2", "--repeats", "1", "--model", "cnn", "--out", str(out)]
    argv += ["--optimizer", "sgd", "--schedule", "triangle", "--lr", "0.1", "--val-fraction", "0"]
    argv += [
        "--momentum",
        "0.8",
        "--model-field",
        "channels=4,8",
        "--model-field",
        "dense=16",
        "--epochs",
        "4",
    ]
    argv += ["--train-size", "400", "--batch-size", "25", "--loop", "python"]
    argv += ["--freeze", "Dense_1/bias=1.5"]
    assert cli.main(argv) == 0
    assert seen["optimizer"] == "sgd" and seen["tta"] is False and seen["momentum"] == 0.8
    assert seen["flip"] == "random"  # the default
    assert seen["freeze"] == ("Dense_1/bias", 24)  # 1.5 epochs of 16 steps
    assert seen["model_fields"] == {"channels": (4, 8), "dense": 16}
    assert float(seen["learning_rate"](0)) == pytest.approx(0.02)  # triangle: 0.2 x lr at step 0
    (r,) = json.loads((out / "results.json").read_text())["results"]
    assert r["val_acc"] is None and r["test_acc"] > 0.3  # chance is 0.1


def test_sweep_is_one_program_with_a_curve(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--param", "dropout", "--values", "0", "0.3", "0.6", "--mode", "sequential"]
    assert cli.main([*argv, "--out", str(out), "--no-progress", *TINY]) == 0
    captured = capsys.readouterr()
    assert "| dropout |" in captured.out and captured.err == ""  # --no-progress: no bar
    record = json.loads((out / "results.json").read_text())
    result = record["results"]
    assert result["param"] == "dropout" and result["mode"] == "sequential"
    assert [m["dropout"] for m in result["members"]] == [0.0, 0.3, 0.6]
    assert len(result["history"]["val_accuracy"]) == 2  # epochs x members
    assert all(len(row) == 3 for row in result["history"]["val_accuracy"])
    if HAVE_MPL:
        assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_cross_validated_sweep_prints_means_over_folds_and_the_pick(tmp_path, capsys):
    out = tmp_path / "cv"
    argv = ["sweep", "--param", "label_smoothing", "--values", "0", "0.2", "--folds", "2"]
    assert cli.main([*argv, "--mode", "sequential", "--out", str(out), *TINY]) == 0
    captured = capsys.readouterr()
    result = json.loads((out / "results.json").read_text())["results"]
    assert result["folds"] == 2 and result["picked"] in (0.0, 0.2)
    for m in result["members"]:
        assert len(m["val_acc_folds"]) == 2
        assert m["val_acc"] == pytest.approx(np.mean(m["val_acc_folds"]))
        assert "± " in captured.out and m["val_acc_std"] >= 0
    best = max(result["members"], key=lambda m: m["val_acc"])
    if sum(m["val_acc"] == best["val_acc"] for m in result["members"]) == 1:
        assert result["picked"] == best["label_smoothing"]
    assert f"Picked label_smoothing={result['picked']:g}" in captured.out
    assert "(mean over 2 folds)" in captured.out
    assert "4/4" in captured.err  # the bar counts 2 epochs x 2 folds
    assert len(result["history"]["val_accuracy"]) == 2  # epochs, averaged over folds
    assert "run on each of 2 folds" in (out / "report.md").read_text()


def test_defaults_per_dataset_fill_the_flags_left_out():
    args = cli.make_parser().parse_args(["compare"])
    assert cli._check(args) == ("cnn", 80)  # digits: the small CNN on 100 training images
    assert (args.batch_size, args.train_size, args.repeats) == (16, 100, 3)
    assert (args.loop, args.mode) == ("python", "vmap")
    args = cli.make_parser().parse_args(["sweep", "--dataset", "mnist1d", "--param", "dropout",
                                         "--values", "0", "--epochs", "3"])  # fmt: skip
    assert cli._check(args) == ("cnn1d", 3) and (args.batch_size, args.lr) == (100, 1e-2)
    assert (args.loop, args.mode) == ("python", "auto")
    args = cli.make_parser().parse_args(["compare", "--dataset", "cifar10", "--batch-size", "64"])
    assert cli._check(args) == ("resnet", 20) and args.batch_size == 64
    assert args.configs == list(cli.configs.DEFAULT_CONFIGS)


def _corrupt_mnist(tmp_path: Path) -> Path:
    d = tmp_path / "mnist"
    d.mkdir()
    payload = gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (d / f"{name}.gz").write_bytes(payload[: len(payload) // 2])  # truncated
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / f"{name}.gz").write_bytes(payload)
    return d


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["compare", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["compare", "--configs", "none", "dropuot"], "unknown config 'dropuot'"),
        (["compare", "--model", "vgg"], "unknown model 'vgg'"),
        (["compare", "--model", "cnn1d"], "model 'cnn1d' does not fit dataset 'digits'"),
        (["compare", "--epochs", "0"], "--epochs, --batch-size and --repeats must be >= 1"),
        (["compare", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["compare", "--loop", "fast"], "--loop must be auto, python or scan:K"),
        (["compare", "--schedule", "step"], "argument --schedule: invalid choice: 'step'"),
        (["compare", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice"),
        (["compare", "--optimizer", "sgd", "--momentum", "1"], "momentum must lie in [0, 1)"),
        (
            ["compare", "--model-field", "depth=3"],
            "NAME one of channels, dense, fused_norm (model cnn)",
        ),
        (["compare", "--model-field", "dense=wide"], "dense: 'wide' is not a number"),
        (["compare", "--tta"], "tta (mirrored test views) needs natural images"),
        (["compare", "--tta", "flip_translate"], "tta (mirrored test views) needs natural"),
        (["compare", "--tta", "mirror"], "argument --tta: invalid choice: 'mirror'"),
        (["compare", "--flip", "alternating"], "flip='alternating' needs natural images"),
        (["compare", "--flip", "always"], "argument --flip: invalid choice: 'always'"),
        (["compare", "--freeze", "stem"], "--freeze must be REGEX=EPOCHS"),
        (["compare", "--freeze", "a=-1"], "EPOCHS a number >= 0, got 'a=-1'"),
        (["compare", "--freeze", "(=1"], "--freeze: '(' is not a regular expression"),
        (["compare", "--val-fraction", "1"], "val_fraction must lie in [0, 1), got 1.0"),
        (["sweep", "--param", "batchnorm", "--values", "1"], "cannot sweep 'batchnorm'"),
        (["sweep", "--values", "1"], "the following arguments are required: --param"),
        (["sweep", "--param", "l2", "--values", "0", "--folds", "1"], "--folds takes K >= 2"),
        (
            ["sweep", "--param", "l2", "--values", "0", "--folds", "3", "--val-fraction", "0.1"],
            "replaces --val-fraction, got --folds 3 with --val-fraction 0.1",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["compare", "--dataset", "mnist", "--data-dir", "MISSING"], "does not exist"),
        (["compare", "--dataset", "mnist", "--data-dir", "CORRUPT"], "corrupt or truncated"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, needle, tmp_path, capsys):
    args = [
        str(tmp_path / "nowhere") if a == "MISSING" else str(_corrupt_mnist(tmp_path))
        if a == "CORRUPT" else a
        for a in args
    ]  # fmt: skip
    assert cli.main([*args, "--out", str(tmp_path / "out")] if len(args) > 1 else args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxreg: error: "), captured.err
    assert needle in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_python_dash_m_runs_the_script():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxreg", "compare", "--dataset", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "jaxreg: error: unknown dataset 'nope'; known: " + ", ".join(cli.DATASETS)
    )


def test_fast_conv_runs_the_convolutions_through_xla(tmp_path):
    out = tmp_path / "fast"
    argv = [sys.executable, "-m", "jaxreg", "compare", "--fast-conv", "--configs", "none"]
    argv += ["--model", "cnn", "--model-field", "channels=4,8", "--model-field", "dense=16"]
    argv += ["--epochs", "1", "--train-size", "200", "--batch-size", "25", "--loop", "python"]
    argv += ["--no-progress", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert record["settings"]["fast_conv"] is True
    assert record["machine"]["native_convolutions"] is True
    assert "--xla_cpu_experimental_ynn_fusion_type=" in record["machine"]["xla_flags"].split()
    assert record["results"][0]["epochs_run"] == 1


def test_model_fields_parse_numbers_lists_and_strings():
    items = ["widths=4,8", "activation=relu", "scale=0.5", "kernel_init=lecun"]
    items += ["conv_method=winograd", "winograd_min_width=64"]
    assert cli._model_fields(items, "airbench") == {
        "widths": (4, 8),
        "activation": "relu",
        "scale": 0.5,
        "kernel_init": "lecun",
        "conv_method": "winograd",
        "winograd_min_width": 64,
    }
    with pytest.raises(cli.UsageError, match="NAME one of activation, bias_scale, conv_method, ke"):
        cli._model_fields(["whitening=1"], "airbench")  # computed from the data, not a flag


def test_model_fields_parse_booleans():
    assert cli._model_fields(["fused_norm=false"], "cnn") == {"fused_norm": False}
    assert cli._model_fields(["fused_norm=True"], "cnn") == {"fused_norm": True}
    assert cli._model_fields(["fused_norm=0"], "cnn")["fused_norm"] is False
    with pytest.raises(cli.UsageError, match="fused_norm: expected true or false"):
        cli._model_fields(["fused_norm=maybe"], "cnn")
