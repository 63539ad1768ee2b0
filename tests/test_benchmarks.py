"""Smoke test: the quick benchmarks run on a tiny setting and print well-formed results."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_transforms_smoke(capsys):
    bench = _load("bench_transforms")
    results = bench.main(
        ["--size", "small", "--repeats", "1", "--steps", "2", "--only", "vs optax"]
    )
    assert len(results) >= 3
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["case"] for r in lines] == [r["case"] for r in results]
    for r in results:
        assert r["jaxreg_us_per_step"] > 0 and r["baseline_us_per_step"] > 0
        assert r["device_kind"] and r["jax"]


def test_bench_dropout_smoke(capsys):
    bench = _load("bench_dropout")
    results = bench.main(
        ["--batch", "4", "--features", "32", "--repeats", "1", "--steps", "2", "--rates", "0.5"]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["case"] for r in lines] == [r["case"] for r in results]
    assert len(results) == 1
    (r,) = results
    expected = {"jaxreg", "flax"} | {f"variant: {v}" for v in bench.VARIANTS}
    if bench.torch is not None:  # optional baseline (pip install torch==2.13.0)
        expected.add("torch")
    assert set(r["ms_per_step"]) == expected
    assert all(t > 0 for t in r["ms_per_step"].values())
    assert r["ratio_flax_over_jaxreg"] > 0
    assert r["device_kind"] and r["jax"] and r["device_count"] >= 1


def test_bench_augment_smoke(capsys):
    bench = _load("bench_augment")
    argv = ["--batch", "4", "--size", "8", "--repeats", "1", "--steps", "1"]
    results = bench.main([*argv, "--only", "crop+flip,erasing", "--no-variants"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["case"] for r in lines] == [r["case"] for r in results]
    assert [r["case"].split()[0] for r in results] == ["crop+flip", "erasing"]
    crop_flip, erasing = results
    expected = {"jaxreg", "numpy loop", "numpy vectorised"}
    for lib, module in (("dm-pix", bench.pix), ("augmax", bench.augmax)):  # optional baselines
        if module is not None:
            expected.add(lib)
        else:
            assert lib in crop_flip["not_measured"]
    assert set(crop_flip["ms_per_batch"]) == expected
    assert set(erasing["ms_per_batch"]) == {"jaxreg", "numpy loop"}
    for r in results:
        assert all(t > 0 for t in r["ms_per_batch"].values())
        assert r["ratio_numpy loop_over_jaxreg"] > 0
        assert "torchvision" in r["not_measured"]
        assert r["device_kind"] and r["jax"] and r["device_count"] >= 1
        assert r["shape"] == [4, 8, 8, 3]


def test_bench_train_smoke(capsys):
    bench = _load("bench_train")
    only = "jaxreg,jaxreg lean,flax+optax jit donated,flax+optax scan"
    results = bench.main(["--tiny", "--only", only])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["case"] for r in lines] == [r["case"] for r in results]
    step, sweep, cnn = results
    assert set(step["ms_per_step"]) == set(only.split(","))
    assert all(t > 0 for t in step["ms_per_step"].values())
    assert step["ratio_best_flax+optax_over_jaxreg"] > 0
    assert set(step["jaxreg_loops"]) == {"jaxreg", "jaxreg lean"}
    assert set(sweep["ms_per_member_step"]) == {
        "sweep vmap",
        "sweep map",
        "sweep sequential",
        "separate runs",
    }
    assert sweep["sweep_auto_mode"] in ("vmap", "map", "sequential")
    assert step["device_kind"] and sweep["device_count"] >= 1
    assert set(cnn["ms_per_step"]) == {
        "python loop",
        "scan 2 steps, unroll 1",
        "scan 2 steps, unroll 2",
    }
    assert cnn["chosen"] in cnn["ms_per_step"]


def test_bench_models_smoke(capsys):
    bench = _load("bench_models")
    argv = ["--batch", "4", "--size", "8", "--channels", "2,4", "--repeats", "1", "--steps", "1"]
    results = bench.main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results and len(results) == 2
    pool, bn = results
    assert pool["jaxreg reshape max-pool ms"] > 0 and pool["nn.max_pool ms"] > 0
    ratio = pool["nn.max_pool ms"] / pool["jaxreg reshape max-pool ms"]
    assert abs(pool["speedup"] - ratio) < 0.05 * ratio
    assert "+ BN" in bn["case"] and "+ BN" not in pool["case"]
    ratio = bn["flax BatchNorm ms"] / bn["fused BN-relu-pool ms"]
    assert abs(bn["speedup"] - ratio) < 0.05 * ratio
    from jaxreg import models

    assert models._max_pool2.__name__ == "_max_pool2"  # the patch was undone


def test_bench_conv_smoke(capsys):
    bench = _load("bench_conv")
    results = bench.main(["--cases", "parts", "--no-torch", "--repeats", "1", "--steps", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results and [r["malloc"] for r in results] == [
        "glibc default",
        "retain_freed_memory",
    ]
    for r in results:
        assert r["kernel gradient (XLA) ms"] > 0 and r["forward ms"] > 0
        assert r["gemm_vs_xla_max_rel_err"] < 1e-5  # the GEMM is the same gradient
    assert results[1]["kernel gradient faults_per_call"] < 100


def test_bench_conv_eval_smoke(capsys):
    bench = _load("bench_conv")
    argv = ["--cases", "eval", "--repeats", "1", "--steps", "1", "--eval-batch", "3"]
    results = bench.main([*argv, "--eval-models", "cnn,cnn1d"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == results
    for r in results:
        for name in ("cnn", "cnn1d"):
            assert r[f"{name} batch"] == 3
            assert r[f"{name} jaxreg ms"] > 0 and r[f"{name} im2col ms"] > 0
            assert r[f"{name} max abs diff"] < 1e-4  # the same forward either way
        assert "airbench batch" not in r
    with pytest.raises(SystemExit):
        bench.main([*argv, "--eval-models", "vgg"])


def test_bench_conv_bound_smoke(capsys):
    pytest.importorskip("torch")
    bench = _load("bench_conv")
    with pytest.raises(SystemExit):  # its callback conv is PyTorch's
        bench.main(["--cases", "bound", "--no-torch"])
    (row,) = bench.main(["--cases", "bound", "--repeats", "1", "--steps", "1"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [row]
    assert row["malloc"] == "retain_freed_memory"  # the task's setting only
    for name in (*bench.BOUND_VARIANTS, "torch", "torch no conv 2"):
        assert row[f"{name} ms"] > 0
    assert row["oneDNN callback max rel err"] < 1e-5  # PyTorch's conv is conv 2, gradients too
    assert row["conv 2 in the jax step ms"] == round(row["im2col ms"] - row["no conv 2 ms"], 2)
    torch_conv2 = row["torch ms"] - row["torch no conv 2 ms"]
    assert row["conv 2 in the torch step ms"] == round(torch_conv2, 2)
    callback = row["no-op callback ms"] - row["no conv 2 ms"]
    without = row["jax step with oneDNN's conv 2 less the callback cost ms"]
    assert without == round(row["oneDNN callback ms"] - callback, 2)
    from jaxreg import models

    assert models.CONV is models.conv_general_dilated  # the swap was undone


MNIST_DIR = BENCH.parent / ".." / "shared" / "data" / "mnist"


def test_bench_accuracy_peer_schedules_equal_the_runners():
    import pytest

    from jaxreg.experiments import runner

    bench = _load("bench_accuracy")
    for name in runner.SCHEDULES:
        want = runner.learning_rate_schedule(0.4, name, 120)
        got = bench._schedule(0.4, name, 120)
        for t in (0, 7, 30, 31, 77, 119, 120):
            expected = want if isinstance(want, float) else float(want(t))
            assert got(t) == pytest.approx(expected, rel=1e-5, abs=1e-7), (name, t)


def test_bench_accuracy_cifar10_freezes_the_stem_bias(tmp_path):
    """The cifar10 task passes airbench's 3-epoch whitening-bias training to
    ``jaxreg compare``; the Keras peer freezes nothing but airbench's stem bias."""
    import pytest

    bench = _load("bench_accuracy")
    task = bench.TASKS["cifar10"]
    args = bench.cli_args(task, task["recipe"], 0, tmp_path)
    assert args[args.index("--freeze") + 1] == "stem_bias=3"
    assert "--freeze" not in bench.cli_args(bench.TASKS["cifar10_small"], "none", 0, tmp_path)
    with pytest.raises(NotImplementedError, match=r"stem_bias only, got .*Conv_0.* on airbench"):
        bench._run_keras({**task, "freeze": ("Conv_0", 3)}, task["recipe"], 0)
    mnist = bench.TASKS["mnist"]
    with pytest.raises(NotImplementedError, match="on cnn"):
        bench._run_keras({**mnist, "freeze": ("stem_bias", 1)}, mnist["recipe"], 0)


@pytest.mark.parametrize("epochs", [0, 1, 2])
def test_bench_accuracy_keras_peer_freezes_the_stem_bias(monkeypatch, epochs):
    """The Keras peer trains airbench's stem bias for the task's first epochs only:
    it fits them, turns the stem layer's ``trainable`` off, compiles again and fits
    the rest, which still trains the other weights."""
    import numpy as np

    bench = _load("bench_accuracy")  # sets KERAS_BACKEND=jax
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    monkeypatch.setattr(bench, "_prepared", lambda task, seed: (True, (x, y), (x, y), 10))
    seen, starts, ends, fit = [], [], [], keras.Model.fit

    def weights(model):
        conv = next(lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D))
        value = keras.ops.convert_to_numpy
        return value(model.get_layer("whiten").bias.value), value(conv.kernel.value)

    def momentum(model):  # the SGD momentum of the first conv's kernel, if built
        opt, conv = model.optimizer, next(lay for lay in model.layers if "conv" in lay.name)
        if not opt.built:
            return None
        i = next(i for i, v in enumerate(model.trainable_variables) if v is conv.kernel)
        return int(opt.iterations), keras.ops.convert_to_numpy(opt.momentums[i].value)

    def recorded(self, *args, **kwargs):
        if not seen:
            seen.append(weights(self))
        during, start = self.get_layer("whiten").trainable, momentum(self)
        out = fit(self, *args, **kwargs)
        seen.append((*weights(self), during, (kwargs.get("initial_epoch", 0), kwargs["epochs"])))
        starts.append(start)
        ends.append(momentum(self))
        return out

    monkeypatch.setattr(keras.Model, "fit", recorded)
    task = {**bench.TASKS["cifar10"], "fields": {"widths": (4, 8, 8)}, "epochs": 2}
    task.update(batch_size=16, freeze=("stem_bias", epochs))
    r = bench.run_keras(task, task["recipe"], 0)
    assert 0.0 <= r["test_acc"] <= 1.0
    (bias0, kernel0), *calls = seen
    # a fit of the first `epochs` epochs with the stem trainable (none for 0), then
    # one of the rest without it (none for 2)
    want = [(True, (0, epochs)), (False, (epochs, 2))]
    assert [c[2:] for c in calls] == [w for w in want if w[1][0] < w[1][1]]
    bias, kernel, _, _ = calls[-1]
    assert not np.array_equal(kernel, kernel0)  # the other weights trained throughout
    if epochs:  # the bias moved in the first fit and never after it
        assert not np.array_equal(calls[0][0], bias0)
        np.testing.assert_array_equal(bias, calls[0][0])
    else:
        np.testing.assert_array_equal(bias, bias0)
    if epochs == 1:  # the second fit still trained the rest, from the first's state
        assert not np.array_equal(kernel, calls[0][1])
        assert starts[1][0] == ends[0][0] == 2  # the step count (2 steps per epoch)
        assert np.abs(ends[0][1]).max() > 0
        np.testing.assert_array_equal(starts[1][1], ends[0][1])  # the kernel's momentum


def test_bench_accuracy_torch_views_and_lookahead_are_jaxregs():
    """The PyTorch peer's test views and Lookahead compute what jaxreg's do."""
    import jax.numpy as jnp
    import numpy as np
    import optax
    import pytest

    torch = pytest.importorskip("torch")
    import jaxreg
    from jaxreg.experiments import runner

    bench = _load("bench_accuracy")
    x = np.random.default_rng(0).random((3, 6, 5, 2), dtype=np.float32)
    for name, fn in runner.TTA_VIEWS.items():
        got = bench._torch_views(torch.from_numpy(x).permute(0, 3, 1, 2), name)
        want = fn(jnp.asarray(x))
        assert len(got) == len(want) == (2 if name == "flip" else 6)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.permute(0, 2, 3, 1).numpy(), np.asarray(w))
    # Lookahead over plain SGD on a quadratic, 12 steps of 12 in total
    w0 = np.array([2.0, -1.0, 0.5], np.float32)
    curv = np.array([1.0, 0.3, 3.0], np.float32)
    tx = optax.chain(optax.sgd(0.1), jaxreg.lookahead(5, runner.lookahead_step_size(12)))
    params = jnp.asarray(w0)
    state = tx.init(params)
    p = torch.tensor(w0, requires_grad=True)
    slow = [p.detach().clone()]
    for step in range(12):
        u, state = tx.update(curv * params, state, params)
        params = optax.apply_updates(params, u)
        with torch.no_grad():
            p -= 0.1 * torch.from_numpy(curv) * p
        bench._torch_lookahead(slow, [p], step, 12)
        np.testing.assert_allclose(p.detach().numpy(), np.asarray(params), rtol=1e-5)
    assert not np.allclose(np.asarray(params), w0 * (1 - 0.1 * curv) ** 12)  # it pulled


def test_bench_accuracy_torch_alternating_flip_is_jaxregs_rule():
    """The PyTorch peer mirrors example i in epoch e iff first[i] XOR (e odd)."""
    import numpy as np
    import pytest

    torch = pytest.importorskip("torch")
    bench = _load("bench_accuracy")
    x = torch.from_numpy(np.random.default_rng(0).random((8, 3, 6, 6), dtype=np.float32))
    first = torch.tensor([True, False] * 10)
    idx = torch.tensor([3, 0, 7, 12, 5, 19, 2, 8])

    def out(flip, epoch):
        gen = np.random.default_rng(1)  # the same crops in every call
        return bench._torch_augment(x, gen, 2, flip, idx, epoch)

    plain = out(torch.zeros(20, dtype=torch.bool), 0)  # the crops, no mirror
    e0, e1, e2 = (out(first, e) for e in range(3))
    for n, i in enumerate(idx.tolist()):
        want = plain[n].flip(2) if first[i] else plain[n]
        assert torch.equal(e0[n], want)
    assert torch.equal(e1, e0.flip(3)) and torch.equal(e2, e0)
    random = out("random", 0)
    assert random.shape == plain.shape and not torch.equal(random, e0)


@pytest.mark.parametrize("epochs", [0, 1])
def test_bench_accuracy_torch_peer_freezes_the_stem_bias(monkeypatch, epochs):
    """The PyTorch peer stops training airbench's stem bias at the task's epoch."""
    import numpy as np

    torch = pytest.importorskip("torch")
    bench = _load("bench_accuracy")
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    monkeypatch.setattr(bench, "_prepared", lambda task, seed: (True, (x, y), (x, y), 10))
    nets, real = [], bench._torch_airbench

    def spy(*args):
        body, scale = real(*args)
        nets.append((body, body[0].bias.detach().clone()))
        return body, scale

    monkeypatch.setattr(bench, "_torch_airbench", spy)
    after, step = [], torch.optim.SGD.step

    def recorded(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        after.append(nets[0][0][0].bias.detach().clone())
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", recorded)
    task = {**bench.TASKS["cifar10"], "fields": {"widths": (4, 8, 8)}, "epochs": 2}
    task.update(batch_size=16, freeze=("stem_bias", epochs))
    r = bench.run_torch(task, task["recipe"], 0)
    assert 0.0 <= r["test_acc"] <= 1.0
    ((body, start),) = nets
    assert not body[0].bias.requires_grad and len(after) == 4  # 2 epochs of 2 steps
    moved = [not torch.equal(b, a) for a, b in zip([start, *after], after, strict=False)]
    assert moved == [True] * (2 * epochs) + [False] * (4 - 2 * epochs)  # still from its epoch


def test_bench_accuracy_smoke(tmp_path, capsys):
    import importlib.util

    import pytest

    if not MNIST_DIR.is_dir():
        pytest.skip("../shared/data/mnist not available")
    bench = _load("bench_accuracy")
    fws = ["jaxreg"] + [fw for fw in ("torch", "keras") if importlib.util.find_spec(fw)]
    results = tmp_path / "accuracy.json"
    # a recipe without BatchNorm and EMA: their running averages need more than 16 steps
    spec = "augmentation=0.5+dropout=0.3+label_smoothing=0.1+l2"
    argv = ["--task", "mnist", "--framework", *fws, "--config", spec, "none"]
    argv += ["--epochs", "2", "--train-size", "1024", "--results", str(results)]
    new = bench.main(argv)
    assert [(r["framework"], r["config"]) for r in new] == [
        (fw, c) for c in ("recipe", "none") for fw in fws
    ]
    for r in new:
        assert r["test_acc"] > 0.3, r  # 16 steps of Adam on 1,024 digits; chance is 0.1
        assert r["seconds"] > 0 and r["machine"]["cores"] >= 1
        assert (r["model"], r["fields"]) == ("cnn", {})  # what was trained is on record
    assert json.loads(results.read_text()) == json.loads(json.dumps(new))
    recipe = next(r for r in new if r["framework"] == "jaxreg" and r["config"] == "recipe")
    assert f'--configs "{spec}"' in recipe["command"] and recipe["spec"] == spec
    assert bench.main(["--plot", "--results", str(results)]) == json.loads(results.read_text())
    assert (tmp_path / "accuracy_vs_time.png").stat().st_size > 0


def _peer_airbench_case():
    """Small correlated images, jaxreg's Airbench on them (BN shifts made non-zero),
    and its eval-mode logits."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxreg.models import Airbench, whitening_init

    rng = np.random.default_rng(0)
    base = rng.random((8, 13, 13, 1))
    x = np.clip(base[:, 1:, 1:] + 0.2 * rng.random((8, 12, 12, 3)), 0, 1).astype(np.float32)
    model = Airbench(widths=(4, 8), whitening=whitening_init(x))
    variables = model.init(jax.random.key(0), jnp.asarray(x), train=False)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 if "_ShiftNorm" in jax.tree_util.keystr(p) else v,
        variables["params"],
    )
    variables = {**variables, "params": params}
    return x, params, np.asarray(model.apply(variables, jnp.asarray(x), train=False))


def test_bench_accuracy_torch_airbench_is_jaxregs_net():
    """The PyTorch peer's Airbench computes jaxreg's logits given jaxreg's weights;
    its whitening kernel is frozen and computed from the same images."""
    import numpy as np
    import pytest

    torch = pytest.importorskip("torch")
    bench = _load("bench_accuracy")
    x, params, want = _peer_airbench_case()
    body, scale = bench._torch_airbench({"fields": {"widths": (4, 8)}}, x, 3, 10)
    stem = body[0]
    assert not stem.weight.requires_grad and stem.bias.requires_grad
    convs = [m for m in body if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    eye = convs[1].weight.detach().numpy()[:, :, 1, 1]  # 4 -> 8: first 4 filters identity
    np.testing.assert_array_equal(eye[:4, :4], np.eye(4))
    shifts = [m for m in body if hasattr(m, "norm")]
    with torch.no_grad():
        for i, c in enumerate(convs):
            c.weight.copy_(
                torch.from_numpy(
                    np.asarray(params[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1).copy()
                )
            )
        for i, s in enumerate(shifts):
            s.bias.copy_(torch.from_numpy(np.array(params[f"_ShiftNorm_{i}"]["bias"])))
        stem.bias.copy_(torch.from_numpy(np.array(params["stem_bias"])))
        body[-1].weight.copy_(torch.from_numpy(np.array(params["Dense_0"]["kernel"]).T.copy()))
        body.eval()
        got = body(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy() * scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bench_accuracy_keras_airbench_is_jaxregs_net():
    import jax
    import numpy as np
    import pytest

    keras = pytest.importorskip("keras")
    bench = _load("bench_accuracy")
    x, params, want = _peer_airbench_case()
    with jax.numpy_rank_promotion("allow"):
        inputs = keras.Input(x.shape[1:])
        model = keras.Model(
            inputs, bench._keras_airbench({"fields": {"widths": (4, 8)}}, x, inputs, 10, None)
        )
        convs = [lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)]
        shifts = [lay for lay in model.layers if type(lay).__name__ == "Shift"]
        (whiten,) = [lay for lay in model.layers if type(lay).__name__ == "Whiten"]
        assert len(whiten.trainable_weights) == 1  # the bias; the kernel is a constant
        for i, c in enumerate(convs):
            c.kernel.assign(np.asarray(params[f"Conv_{i}"]["kernel"]))
        for i, s in enumerate(shifts):
            s.bias.assign(np.asarray(params[f"_ShiftNorm_{i}"]["bias"]))
        whiten.bias.assign(np.asarray(params["stem_bias"]))
        (dense,) = [lay for lay in model.layers if isinstance(lay, keras.layers.Dense)]
        dense.kernel.assign(np.asarray(params["Dense_0"]["kernel"]))
        got = np.asarray(model(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bench_accuracy_mnist1d_smoke(tmp_path):
    """Both MNIST-1D tasks, every installed framework, the recipe and the baseline,
    on a tiny setting (the data come from the mnist1d package's generator)."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("mnist1d") is None:
        pytest.skip("mnist1d not installed")
    bench = _load("bench_accuracy")
    fws = ["jaxreg"] + [fw for fw in ("torch", "keras") if importlib.util.find_spec(fw)]
    results = tmp_path / "accuracy.json"
    # the MLP's recipe without EMA: Keras's EMA has no warm-up, 60 steps leave it near init
    specs = {"mnist1d_cnn": "recipe", "mnist1d_mlp": "augmentation=0.75+batchnorm+l2"}
    for task, spec in specs.items():
        argv = ["--task", task, "--framework", *fws, "--config", spec, "none"]
        new = bench.main(
            [*argv, "--epochs", "3", "--train-size", "2000", "--results", str(results)]
        )
        assert [(r["task"], r["framework"], r["config"]) for r in new] == [
            (task, fw, c) for c in ("recipe", "none") for fw in fws
        ]
        for r in new:
            assert r["test_acc"] > 0.2, r  # 60 Adam steps on 2,000 signals; chance is 0.1
        jaxreg_recipe = next(
            r for r in new if r["framework"] == "jaxreg" and r["config"] == "recipe"
        )
        assert "--dataset mnist1d" in jaxreg_recipe["command"]
        assert "--data-dir" not in jaxreg_recipe["command"]


def test_bench_xla_conv_smoke(capsys):
    bench = _load("bench_xla_conv")
    have_torch = importlib.util.find_spec("torch") is not None  # optional peer
    argv = ["--models", "cnn", "--batch", "4", "--repeats", "1", "--steps", "1"]
    results = bench.main(argv if have_torch else [*argv, "--no-torch"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results and len(results) == 1
    (r,) = results
    assert r["model"] == "cnn" and r["batch"] == 4
    for key in ("default flags: im2col ms", "default flags: lax ms",
                "fast_convolutions: im2col ms", "fast_convolutions: lax ms"):  # fmt: skip
        assert r[key] > 0
    assert r["speed-up of fast_convolutions (auto)"] == pytest.approx(
        r["default flags: im2col ms"] / r["fast_convolutions: lax ms"], abs=0.01
    )
    if have_torch:
        assert r["torch ms"] > 0 and r["torch / jaxreg fast"] > 0
    else:
        assert "torch ms" not in r


def test_bench_malloc_smoke(capsys):
    bench = _load("bench_malloc")
    # five warm-up steps: the heap still grows (brk, ~5-7 MiB) in some of the
    # first few steps, when a step's buffers do not fit the free chunks
    argv = ["--widths", "8,16,16", "--batch", "16", "--warmup", "5", "--steps", "9", "--no-torch"]
    results = bench.main([*argv, "--settings", "retain", "--conv-methods", "auto,winograd"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results
    assert [(r["framework"], r["conv"], r["malloc"]) for r in results] == [
        ("jax", "auto", "retain"),
        ("jax", "winograd", "retain"),
    ]
    for r in results:
        assert r["mean ms"] > 0 and r["median ms"] > 0 and r["peak RSS MiB"] > 0
        assert r["widths"] == [8, 16, 16] and r["steps"] == 9
        # the heap is reused: no fresh pages in a typical step (a one-off heap
        # growth of ~1,300-1,800 faults lands in a random step now and then,
        # so the mean is not asserted)
        assert r["median faults per step"] < 100
    for bad in (["--widths", "8,16"], ["--settings", "retain,none"], ["--conv-methods", "fft"]):
        with pytest.raises(SystemExit):
            bench.main(bad)
    assert "--settings takes a comma-separated list" in capsys.readouterr().err


def test_bench_conv_layers_smoke(capsys):
    bench = _load("bench_conv_layers")
    assert bench.layers((64, 256, 256)) == [
        (31, 24, 64), (15, 64, 64), (15, 64, 256), (7, 256, 256), (7, 256, 256), (3, 256, 256),
    ]  # fmt: skip
    have_torch = importlib.util.find_spec("torch") is not None  # optional peer
    argv = ["--widths", "4,8,8", "--batch", "2", "--repeats", "1"]
    results = bench.main(argv if have_torch else [*argv, "--no-torch"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results
    assert [r["layer"] for r in results][-1] == "all" and len(results) == 7
    parts = ("forward", "input gradient", "kernel gradient")
    for p in parts:  # the last row sums the layers
        for kind in ("xla", "winograd"):
            assert results[-1][f"{p}: {kind} ms"] == pytest.approx(
                sum(r[f"{p}: {kind} ms"] for r in results[:-1]), abs=0.05
            )
            for r in results:
                assert r[f"{p}: {kind} ms"] > 0
                assert (f"{p}: {kind} / torch" in r) is have_torch


def test_bench_startup_smoke(capsys):
    bench = _load("bench_startup")
    results = bench.main(["--models", "mlp1d", "--repeats", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == results and [r["model"] for r in results] == ["mlp1d"]
    row = results[0]
    assert row["eager s"] > 0 and row["jaxreg s"] > 0
    assert row["speedup"] == pytest.approx(row["eager s"] / row["jaxreg s"], abs=0.01)
    for bad in (["--models", "resnet9"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            bench.main(bad)
