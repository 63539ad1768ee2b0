"""Experiment models: shapes, dropout randomness, batch-statistics updates, traced
dropout rates under vmap, the seed MLP's size, the registry, and training with
the Trainer."""

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg.models import (
    AIRBENCH_INITS,
    CNN1D,
    MLP,
    MLP1D,
    MODELS,
    Airbench,
    ResNet,
    SmallCNN,
    _dirac_init,
    _max_pool2,
    _ShiftNorm,
    get_model,
    whitening_init,
)

# small variants of every model and a representative input shape for each
CASES = {
    "mlp": (dict(hidden=(32, 16)), (3, 28, 28, 1)),
    "cnn": (dict(channels=(4, 8), dense=16), (3, 28, 28, 1)),
    "cnn_rgb": (dict(channels=(4, 8), dense=16), (3, 32, 32, 3)),
    "cnn_digits": (dict(channels=(4, 8), dense=16), (3, 8, 8, 1)),
    "resnet": (dict(widths=(4, 8)), (3, 8, 8, 3)),
    "airbench": (dict(widths=(4, 8), stem=3), (3, 9, 9, 3)),
    "cnn1d": (dict(channels=6), (3, 40, 1)),
    "mlp1d": (dict(hidden=(16,)), (3, 40, 1)),
}


def _model(case, **fields):
    name = case.split("_")[0]
    return get_model(name, **{**CASES[case][0], **fields})


def _input(case, key=0):
    return jax.random.uniform(jax.random.key(key), CASES[case][1])


def _shapes(model, x):
    """Shapes and dtypes of ``model``'s variables (nothing is computed)."""
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _init(model, x):
    """Variables of ``model`` with NumPy-drawn parameters (BN statistics as flax inits
    them): flax's random init compiles one RNG program per parameter shape, about a
    second each on a 2-core CPU; the behaviour tested here does not depend on it."""
    shapes = _shapes(model, x)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return jnp.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 100
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply_train(model, variables, x, key):
    mutable = ["batch_stats"] if "batch_stats" in variables else False
    out = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=mutable)
    return out[0] if mutable else out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_output_shape_and_dtype(case, batch_norm):
    if case in ("resnet", "airbench") and not batch_norm:
        pytest.skip(f"{case} always uses batch norm")
    model = _model(case, num_classes=7, batch_norm=batch_norm)
    x = jax.ShapeDtypeStruct(CASES[case][1], jnp.float32)
    variables = _shapes(model, x)
    assert ("batch_stats" in variables) == batch_norm
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (x.shape[0], 7)
    assert logits.dtype == jnp.float32


def test_default_model_shapes():
    for name, shape in [("cnn", (2, 28, 28, 1)), ("resnet", (2, 32, 32, 3)), ("cnn1d", (2, 40))]:
        model, x = get_model(name), jax.ShapeDtypeStruct(shape, jnp.float32)
        variables = _shapes(model, x)
        logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)  # noqa: B023
        assert logits.shape == (2, 10), name
    x = jax.ShapeDtypeStruct((2, 40, 1), jnp.float32)
    dense = _shapes(CNN1D(), x)["params"]["Dense_0"]["kernel"]
    assert dense.shape == (125, 10)  # the paper's linear_in: 40 -> 19 -> 10 -> 5, 25 channels
    assert MLP1D().hidden == (100, 100)


@pytest.mark.parametrize("case", ["mlp", "cnn", "resnet", "airbench", "cnn1d"])
def test_dropout_uses_the_rng_in_training_only(case):
    model = _model(case, dropout=0.5)
    x = _input(case)
    variables = _init(model, x)
    train = jax.jit(lambda key: _apply_train(model, variables, x, key))
    a, b = train(jax.random.key(1)), train(jax.random.key(2))
    assert not np.allclose(a, b), "different dropout keys gave the same logits"
    # evaluation needs no rng and ignores the rate
    evaluate = jax.jit(lambda m: m.apply(variables, x, train=False), static_argnums=0)
    e1, e0 = evaluate(model), evaluate(_model(case, dropout=0.0))
    np.testing.assert_array_equal(e1, e0)
    assert not np.allclose(a, e1)


@pytest.mark.parametrize("case", ["mlp", "cnn", "resnet", "airbench", "cnn1d"])
def test_batch_stats_change_only_when_mutable_in_training(case):
    model = _model(case, batch_norm=True)
    x = _input(case)
    variables = _init(model, x)
    stats0 = variables["batch_stats"]
    _, upd = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, upd["batch_stats"], stats0)
    _, upd = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
    )
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), upd["batch_stats"], stats0)
    assert all(jax.tree.leaves(changed)), "training did not update every statistic"
    with pytest.raises(flax.errors.ModifyScopeVariableError, match="batch_stats"):
        model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})


def test_traced_dropout_rate_under_vmap():
    x = _input("mlp")
    variables = _init(_model("mlp"), x)
    key = jax.random.key(3)

    def logits(rate):
        return _model("mlp", dropout=rate).apply(variables, x, train=True, rngs={"dropout": key})

    rates = jnp.array([0.0, 0.5], jnp.float32)
    out = jax.jit(jax.vmap(logits))(rates)
    plain = _model("mlp").apply(variables, x, train=False)
    np.testing.assert_allclose(out[0], plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], jax.jit(logits)(rates[1]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_seed_mlp_parameter_count():
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    variables = _shapes(MLP(), x)
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert count == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert "batch_stats" not in variables


def test_registry_and_errors():
    assert MODELS == {
        "mlp": MLP,
        "cnn": SmallCNN,
        "resnet": ResNet,
        "airbench": Airbench,
        "cnn1d": CNN1D,
        "mlp1d": MLP1D,
    }
    assert isinstance(get_model("cnn", dropout=0.1), SmallCNN)
    with pytest.raises(ValueError, match="nope") as info:
        get_model("nope")
    assert all(name in str(info.value) for name in MODELS)
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="batch norm"):
        ResNet(widths=(4,), batch_norm=False).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="pool"):
        ResNet(widths=(4,), pool="min").init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="Airbench: batch norm is always on"):
        Airbench(widths=(4,), batch_norm=False).init(jax.random.key(0), x, train=False)


def test_airbench_shapes_parameters_and_logit_scale():
    """airbench94's layout: 2x2 stem 32 -> 31, then 31 -> 15 -> 7 -> 3 and a global max."""
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    params = _shapes(Airbench(widths=(32, 128, 128)), x)["params"]
    kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
               if "kernel" in jax.tree_util.keystr(path)]  # fmt: skip
    assert kernels == [
        (2, 2, 3, 24), (3, 3, 24, 32), (3, 3, 32, 32), (3, 3, 32, 128), (3, 3, 128, 128),
        (3, 3, 128, 128), (3, 3, 128, 128), (128, 10),
    ]  # fmt: skip
    conv_count = sum(int(np.prod(k)) for k in kernels)
    full = _shapes(Airbench(), x)["params"]
    assert sum(p.size for p in jax.tree.leaves(full)) > 3.5 * conv_count  # airbench94 width
    # the logits are the dense output times ``scale``
    small = Airbench(widths=(4,), stem=3)
    xs = _input("airbench")
    variables = _init(small, xs)
    a = small.apply(variables, xs, train=False)
    b = Airbench(widths=(4,), stem=3, scale=1.0).apply(variables, xs, train=False)
    np.testing.assert_allclose(a, b / 9.0, rtol=1e-6)


def _smooth_images(n=64, size=12, seed=0):
    """Correlated RGB images (neighbouring pixels and channels alike), in [0, 1]."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, size + 1, size + 1, 1))
    smooth = (base[:, 1:, 1:] + base[:, :-1, 1:] + base[:, 1:, :-1]) / 3
    return np.clip(smooth + 0.1 * rng.random((n, size, size, 3)), 0, 1)


def test_whitening_init_decorrelates_and_centres_patches():
    """The stem's outputs on the images' 2x2 patches: zero mean, identity covariance
    on the first 12 channels (eps -> 0), the other 12 their negatives."""
    x = _smooth_images()
    w = whitening_init(x, eps=1e-9)
    assert w.shape == (2, 2, 3, 24) and len(w.kernel) == 2 * 2 * 3 * 24 and len(w.bias) == 24
    kernel = np.asarray(w.kernel).reshape(w.shape)
    out = jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + jnp.asarray(w.bias).reshape(1, 1, 1, -1)  # fmt: skip
    flat = np.asarray(out, np.float64).reshape(-1, 24)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(flat[:, :12].T), np.eye(12), atol=2e-2)
    np.testing.assert_allclose(flat[:, 12:], -flat[:, :12], atol=1e-5)
    # the raw patches were strongly correlated: whitening changed something
    assert np.corrcoef(x[:, :-1, :, 0].ravel(), x[:, 1:, :, 0].ravel())[0, 1] > 0.3
    # a larger eps shrinks the low-variance directions only
    lam = np.diag(np.cov(np.asarray(out).reshape(-1, 24)[:, :12].T))
    shrunk = whitening_init(x, eps=1.0)
    k2 = np.asarray(shrunk.kernel).reshape(shrunk.shape)
    assert np.linalg.norm(k2[..., 11]) < 0.5 * np.linalg.norm(kernel[..., 11])
    assert np.allclose(lam, 1.0, atol=2e-2)


def test_whitening_init_rejects_bad_images():
    with pytest.raises(ValueError, match=r"whitening_init: images must be \(N, H, W, C\)"):
        whitening_init(np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="H, W >= patch=3"):
        whitening_init(np.zeros((4, 2, 8, 3)), patch=3)
    bad = _smooth_images(n=4)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        whitening_init(bad)


def test_airbench_whitening_stem_is_a_frozen_constant():
    x = jnp.asarray(_smooth_images(n=4, size=12), jnp.float32)
    w = whitening_init(x)
    model = Airbench(widths=(4,), whitening=w)
    variables = model.init(jax.random.key(0), x, train=False)
    params = variables["params"]
    # no stem kernel among the parameters: only its bias, which starts at w.bias
    assert "Conv_0" in params and params["Conv_0"]["kernel"].shape == (3, 3, 24, 4)
    np.testing.assert_allclose(params["stem_bias"], np.asarray(w.bias), rtol=1e-6)
    stems = [k for k in jax.tree_util.tree_leaves(params) if k.shape[:2] == (2, 2)]
    assert stems == []
    # the stem's kernel is w's: a different whitening changes the logits
    other = whitening_init(np.asarray(x)[:, ::-1])
    a = model.apply(variables, x, train=False)
    b = Airbench(widths=(4,), whitening=other).apply(variables, x, train=False)
    assert not np.allclose(a, b)
    # the gradient has no entry for the stem kernel
    grads = jax.grad(lambda p: model.apply({**variables, "params": p}, x, train=False).sum())(
        params
    )
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="does not fit stem=16"):
        Airbench(widths=(4,), stem=16, whitening=w).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="activation must be 'gelu' or 'relu', got 'tanh'"):
        Airbench(widths=(4,), activation="tanh").init(jax.random.key(0), x, train=False)


def test_airbench_init_draws_airbench94s_uniform_or_lecun_kernels():
    """kernel_init="uniform" (default) draws the random conv filters and the head from
    U(+-1/sqrt(fan_in)) like PyTorch/airbench94; "lecun" has 3x the variance."""
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)

    def kernels(init):
        p = Airbench(widths=(64, 128), kernel_init=init).init(jax.random.key(0), x, train=False)
        conv = np.asarray(p["params"]["Conv_3"]["kernel"])  # 3x3, 64 -> 128: fan_in 576
        return conv[..., 64:], np.asarray(p["params"]["Dense_0"]["kernel"])  # head: fan_in 128

    (conv_u, head_u), (conv_l, head_l) = kernels("uniform"), kernels("lecun")
    for w, fan_in in ((conv_u, 576), (head_u, 128)):
        assert np.abs(w).max() <= fan_in**-0.5
        np.testing.assert_allclose(w.std(), (3 * fan_in) ** -0.5, rtol=0.05)
    for w, fan_in in ((conv_l, 576), (head_l, 128)):
        np.testing.assert_allclose(w.std(), fan_in**-0.5, rtol=0.1)
    assert Airbench().kernel_init == "uniform"
    zeros = kernels(jax.nn.initializers.zeros)  # any flax initializer
    assert not zeros[0].any() and not zeros[1].any()
    with pytest.raises(ValueError, match="kernel_init must be one of uniform, lecun or an"):
        Airbench(widths=(4,), kernel_init="normal").init(jax.random.key(0), x, train=False)


def test_airbench_batch_norm_and_identity_init():
    """Scale-free BN with momentum 0.6 and a shift stored / bias_scale; 3x3 convs
    start as identities on their first min(C_in, C_out) filters."""
    w = _dirac_init(AIRBENCH_INITS["uniform"])(jax.random.key(0), (3, 3, 4, 6))
    eye = np.zeros((3, 3, 4, 4))
    eye[1, 1] = np.eye(4)
    np.testing.assert_array_equal(w[..., :4], eye)
    assert np.abs(np.asarray(w[..., 4:])).sum() > 0  # the other filters stay random
    x = jnp.asarray(_smooth_images(n=8, size=8), jnp.float32)
    model = Airbench(widths=(4,), stem=3, activation="relu")
    variables = model.init(jax.random.key(0), x, train=False)
    norms = [k for k in variables["params"] if k.startswith("_ShiftNorm")]
    assert len(norms) == 2
    for name in norms:
        assert set(variables["params"][name]) == {"bias"}  # no scale, one shift
        assert variables["params"][name]["bias"].shape == (4,)
    # the shift enters times bias_scale: the same +1 shift with bias_scale 8 vs 1
    shifted = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 1.0 if "_ShiftNorm" in jax.tree_util.keystr(path) else v,
        variables["params"],
    )
    new = {**variables, "params": shifted}
    # the last norm feeds relu -> global max -> dense: shift 8 vs 1 moves the logits
    a = Airbench(widths=(4,), stem=3, activation="relu", bias_scale=8.0).apply(new, x, train=False)
    b = Airbench(widths=(4,), stem=3, activation="relu", bias_scale=1.0).apply(new, x, train=False)
    assert not np.allclose(a, b)


def test_airbench_shift_norm_statistics_and_shift():
    """airbench's batch norm: running stats 0.6 * old + 0.4 * batch, output the
    standardized input plus bias_scale times the stored shift."""
    x = jax.random.normal(jax.random.key(1), (6, 5, 5, 3)) * 2.0 + 1.0
    norm = _ShiftNorm(bias_scale=8.0)
    variables = norm.init(jax.random.key(0), x, train=False)
    params = {"bias": jnp.array([0.5, -1.0, 0.0])}
    y, upd = norm.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    stats = upd["batch_stats"]["BatchNorm_0"]
    mean, var = np.asarray(x).mean((0, 1, 2)), np.asarray(x).var((0, 1, 2))
    np.testing.assert_allclose(stats["mean"], 0.4 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.6 + 0.4 * var, rtol=1e-5)
    expect = (np.asarray(x) - mean) / np.sqrt(var) + 8.0 * np.asarray(params["bias"])
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 5, 2)])
def test_max_pool_equals_flax(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(_max_pool2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


def _tiny_data(case, n=32):
    xs = jax.random.uniform(jax.random.key(4), (n, *CASES[case][1][1:]))
    ys = jax.random.randint(jax.random.key(5), (n,), 0, 10)
    return xs, ys


# SmallCNN and CNN1D train with the Trainer in tests/test_learning.py (CNN1D also below)
def test_resnet_one_epoch_with_trainer_and_fit():
    # one stage: few parameter shapes, as Trainer.init's random init compiles once per shape
    trainer = jaxreg.Trainer(
        model=lambda hp: _model("resnet", widths=(4,), dropout=hp["dropout"]),
        optimizer=optax.adam(1e-2),
        penalties={"l2": (lambda p: jaxreg.l2_penalty(p, mask=jaxreg.by_kernels()), 1e-4)},
        log_norms=False,
    )
    train = _tiny_data("resnet")
    state = trainer.init(jax.random.key(0), train[0][:1], {"dropout": 0.3})
    before = jax.tree.map(jnp.copy, (state.params, state.batch_stats))  # fit donates the state
    new, history, _, _ = jaxreg.fit(
        trainer, state, train, epochs=1, batch_size=16, loop=jaxreg.Loop(1, 1)
    )
    assert int(new.step) == 2
    assert len(history.epochs) == 1
    assert np.isfinite(history.epochs[0]["loss"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params, before[0])
    assert all(jax.tree.leaves(changed))
    assert jax.tree.leaves(new.batch_stats)
    stats = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.batch_stats, before[1])
    assert all(jax.tree.leaves(stats))


def test_sweep_over_dropout_rates_of_a_model():
    trainer = jaxreg.Trainer(
        model=lambda hp: _model("cnn1d", dropout=hp["dropout"]),
        optimizer=optax.sgd(0.1),
    )
    result = jaxreg.sweep(
        trainer,
        {"dropout": [0.0, 0.5]},
        _tiny_data("cnn1d"),
        key=jax.random.key(0),
        epochs=1,
        batch_size=16,
        mode="vmap",
        loop=jaxreg.Loop(1, 1),
    )
    params = result.state.params["Dense_0"]["kernel"]
    assert params.shape[0] == 2
    assert not np.allclose(params[0], params[1]), "members with different rates trained alike"


def _bn_relu_pool_reference(x, scale, bias):
    """flax's BatchNorm (batch statistics) + relu + _max_pool2, autodiffed."""
    norm = nn.BatchNorm(use_running_average=False, momentum=0.9)
    variables = {**norm.init(jax.random.key(0), x), "params": {"scale": scale, "bias": bias}}
    y, _ = norm.apply(variables, x, mutable=["batch_stats"])
    return _max_pool2(nn.relu(y))


@pytest.mark.parametrize("shape", [(3, 6, 8, 4), (2, 7, 5, 3)])
def test_fused_bn_relu_pool_matches_flax(shape):
    """The custom-VJP kernel: flax's values and input/scale/bias gradients, with a
    negative scale, odd sizes (the floored row/column still counts in the
    statistics) and tied maxima (a constant region: the gradient is shared)."""
    from jaxreg.functional._fused import bn_relu_pool

    x = jax.random.normal(jax.random.key(0), shape) * 3.0 + 1.0
    x = x.at[0, :4, :4, :].set(0.25)  # ties in the first 2x2 blocks
    c = shape[-1]
    scale = jnp.linspace(-1.5, 2.0, c)
    bias = jnp.linspace(-0.5, 0.7, c)
    cot = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, c))

    def fused(x, s, b):
        return jnp.sum(bn_relu_pool(x, s, b, 1e-5)[0] * cot)

    def ref(x, s, b):
        return jnp.sum(_bn_relu_pool_reference(x, s, b) * cot)

    y, mean, var = bn_relu_pool(x, scale, bias, 1e-5)
    np.testing.assert_allclose(y, _bn_relu_pool_reference(x, scale, bias), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, np.asarray(x).mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, np.asarray(x).var((0, 1, 2)), rtol=1e-4)
    got = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.grad(ref, argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.abs(w).max()))
    # the tied block's gradient is split equally over its four inputs
    g0 = np.asarray(got[0])[0, :2, :2, :]
    np.testing.assert_allclose(g0, np.broadcast_to(g0[:1, :1], g0.shape), rtol=1e-5)
    # under vmap (the sweeps' batched hyper-parameters), per-member gradients
    xs = jnp.stack([x, x[::-1] * 0.5])
    per = jax.vmap(jax.grad(fused), in_axes=(0, None, None))(xs, scale, bias)
    np.testing.assert_allclose(per[1], jax.grad(fused)(xs[1], scale, bias), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 12, 12, 1), (4, 9, 9, 2)])
def test_small_cnn_fused_norm_equals_flax_batch_norm(shape):
    """SmallCNN(batch_norm=True): the fused blocks have flax's variables and give the
    same loss, gradients, running statistics and inference outputs as
    ``fused_norm=False`` (flax BatchNorm + relu + pooling)."""
    x = jax.random.uniform(jax.random.key(2), shape)
    x = x.at[:, :4].set(0.0)  # a blank band, as MNIST's borders: tied maxima
    y = jnp.arange(shape[0]) % 10
    fused = SmallCNN(channels=(4, 6), dense=8, batch_norm=True)
    plain = fused.clone(fused_norm=False)
    variables = fused.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(
        plain.init(jax.random.key(0), x, train=False)
    )
    params = jax.tree_util.tree_map_with_path(  # non-trivial BN scales (one negative) and shifts
        lambda p, v: (
            v * jnp.linspace(-0.5, 2.0, v.size).reshape(v.shape) + 0.1
            if "BatchNorm" in jax.tree_util.keystr(p)
            else v
        ),
        variables["params"],
    )

    def loss(p, model):
        out, upd = model.apply(
            {"params": p, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd

    (l1, s1), g1 = jax.value_and_grad(loss, has_aux=True)(params, fused)
    (l2, s2), g2 = jax.value_and_grad(loss, has_aux=True)(params, plain)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(s1["batch_stats"]["BatchNorm_0"]["mean"], 0.0)  # they did move
    new = {"params": params, **s1}
    np.testing.assert_allclose(
        fused.apply(new, x, train=False), plain.apply(new, x, train=False), rtol=1e-5, atol=1e-5
    )
