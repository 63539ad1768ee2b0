"""Smoke tests for examples/cnn_dropout_batchnorm.py and examples/early_stopping_in_scan.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason="shared MNIST data directory not present"
)


def load_example(name, monkeypatch):
    path = REPO / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # flax resolves the module's string annotations through sys.modules
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cnn(monkeypatch):
    return load_example("cnn_dropout_batchnorm", monkeypatch)


@pytest.fixture
def scan(monkeypatch):
    return load_example("early_stopping_in_scan", monkeypatch)


@needs_mnist
def test_cnn_example_runs_tiny(cnn, tmp_path, capsys):
    out = tmp_path / "cnn.json"
    # 800 images: 160 val, 640 train, batch 64, 2 epochs = 20 steps per config
    argv = ["--epochs", "2", "--train-size", "800", "--batch-size", "64", "--seed", "0"]
    results = cnn.main([*argv, "--json", str(out)])

    runs = results["runs"]
    assert list(runs) == ["plain CNN", "CNN + dropout 0.3 + BatchNorm"]
    assert results["sizes"] == {"train": 640, "val": 160, "test": 10000}
    for name, r in runs.items():
        assert r["epochs"] == 2 and r["steps"] == 20, name
        for key in ("train_acc", "val_acc", "test_acc"):
            assert 0.5 < r[key] <= 1.0, (name, key, r[key])  # chance is 0.1
        assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["wall_time_s"] > 0.0
        assert r["loop"] == "python loop"
    # only the regularized net has BatchNorm layers (evaluated on running statistics)
    assert runs["plain CNN"]["batch_norm_layers"] == 0
    assert runs["CNN + dropout 0.3 + BatchNorm"]["batch_norm_layers"] == 2

    assert json.loads(out.read_text()) == results
    printed = capsys.readouterr().out
    assert "| config | train acc | val acc | test acc |" in printed
    assert "| plain CNN |" in printed and "| CNN + dropout 0.3 + BatchNorm |" in printed


@needs_mnist
def test_early_stopping_in_scan_stops_freezes_and_restores(scan, tmp_path, capsys):
    out = tmp_path / "scan.json"
    # min_delta 10: only the first epoch counts as an improvement, so with patience 1
    # every member stops at epoch 1, trains 2 of the 4 epochs and returns epoch 0's params
    argv = ["--l2", "0", "0.001", "--epochs", "4", "--patience", "1", "--min-delta", "10"]
    argv += ["--train-size", "1000", "--batch-size", "50", "--seed", "0"]
    results = scan.main([*argv, "--json", str(out)])

    members = results["members"]
    assert [m["l2"] for m in members] == [0.0, 0.001]
    for m in members:
        assert m["stopped_epoch"] == 1 and m["best_epoch"] == 0
        assert m["trained_per_epoch"] == [True, True, False, False]
        assert m["epochs_trained"] == 2
        norms = m["param_norm_per_epoch"]
        assert norms[2] == norms[3] == norms[1] != norms[0]  # frozen after the stop
        assert m["frozen_after_stop"] is True
        assert m["val_loss_per_epoch"][0] == pytest.approx(m["best_val_loss"])
        # the returned params are epoch 0's, not the last (trained) ones
        assert m["returned_is_best"] is True
        assert m["returned_param_norm"] == pytest.approx(norms[0], rel=1e-5)
        assert m["last_param_norm"] == pytest.approx(norms[1], rel=1e-5)
        assert m["returned_val_loss"] == pytest.approx(m["best_val_loss"], rel=1e-5)
        assert 0.5 < m["test_acc"] <= 1.0  # one epoch of 16 steps; chance is 0.1
    assert results["stop_epochs_differ"] is False

    assert json.loads(out.read_text()) == results
    printed = capsys.readouterr().out
    assert "| L2 strength | stopped epoch | best epoch |" in printed
    assert "| 0 | 1 | 0 | 2 |" in printed and "| 0.001 | 1 | 0 | 2 |" in printed


@needs_mnist
def test_early_stopping_in_scan_members_in_range(scan):
    # no forced stop: each member either runs all 3 epochs or stops at epoch 1 or 2
    argv = ["--l2", "0", "0.01", "--epochs", "3", "--patience", "0"]
    results = scan.main([*argv, "--train-size", "1000", "--batch-size", "50"])
    for m in results["members"]:
        stop, best = m["stopped_epoch"], m["best_epoch"]
        assert stop in (-1, 1, 2) and 0 <= best < 3
        if stop >= 0:
            assert best < stop and m["epochs_trained"] == stop + 1
            assert m["frozen_after_stop"] is True
        else:
            assert m["epochs_trained"] == 3 and m["frozen_after_stop"] is None
        assert m["returned_is_best"] is True
        assert min(m["val_loss_per_epoch"][: m["epochs_trained"]]) == pytest.approx(
            m["best_val_loss"]
        )
        assert m["test_acc"] > 0.5


@pytest.mark.parametrize("name", ["cnn_dropout_batchnorm", "early_stopping_in_scan"])
def test_missing_data_dir_exits_with_message(name, tmp_path, monkeypatch):
    example = load_example(name, monkeypatch)
    missing = tmp_path / "no_mnist_here"
    with pytest.raises(SystemExit) as exc:
        example.main(["--data-dir", str(missing), "--epochs", "1"])
    assert isinstance(exc.value.code, str)
    assert str(missing) in exc.value.code and "--data-dir" in exc.value.code


@pytest.mark.parametrize("name", ["cnn_dropout_batchnorm", "early_stopping_in_scan"])
def test_missing_data_file_exits_with_message(name, tmp_path, monkeypatch):
    example = load_example(name, monkeypatch)
    with pytest.raises(SystemExit) as exc:
        example.main(["--data-dir", str(tmp_path), "--epochs", "1"])
    assert isinstance(exc.value.code, str)
    assert str(tmp_path) in exc.value.code and "t10k-images-idx3-ubyte" in exc.value.code
