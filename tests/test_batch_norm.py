"""BatchNorm: equals flax's, ghost batches, init and mutability rules, traced hyperparameters."""

import functools

import flax
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxreg.functional import batch_norm
from jaxreg.nn import BatchNorm
from tests.conftest import assert_trees_close

RANDOM_INIT = {
    "scale_init": jax.nn.initializers.normal(1.0),
    "bias_init": jax.nn.initializers.normal(1.0),
}


def _x(shape, seed=0, dtype=jnp.float32):
    """Inputs whose mean (about 3) and spread vary with position, so the statistics matter."""
    rng = np.random.default_rng(seed)  # NumPy: no compilation per shape
    per_position = (1, *shape[1:])
    loc = 3.0 + rng.standard_normal(per_position)
    spread = rng.uniform(0.5, 2.0, per_position)
    return jnp.asarray((rng.standard_normal(shape) * spread + loc).astype(np.float32), dtype)


_KEY = jax.random.key(1)


def _train(module, variables, x, **kw):
    y, upd = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"], **kw)
    return y, upd["batch_stats"]


def _program(module, call_kw, with_grads):
    """Two training steps, the gradient of the first, then inference: one jitted program."""

    def run(variables, xs, x_inf, w):
        out, v = [], variables
        for x in xs:
            y, stats = _train(module, v, x, **call_kw)
            out.append((y, stats))
            v = {**v, "batch_stats": stats}
        grads = None
        if with_grads:  # batch statistics are differentiated through, as in flax

            def loss(params, x):
                y, _ = _train(module, {**variables, "params": params}, x, **call_kw)
                return jnp.sum(y.astype(jnp.float32) * w)

            grads = jax.grad(loss, (0, 1))(variables.get("params", {}), xs[0])
        return out, grads, module.apply(v, x_inf, use_running_average=True)

    return jax.jit(run)


def _compare_with_flax(kw, shape, dtype=jnp.float32, tol=1e-5, y_tol=None, call_kw=None):
    """Training outputs, updated statistics, gradients and inference: ours vs flax."""
    call_kw = call_kw or {}
    y_tol = tol if y_tol is None else y_tol
    ref, ours = fnn.BatchNorm(**kw), BatchNorm(**kw)
    x0 = _x(shape, 0, dtype)
    v_ours = jax.jit(lambda k, x: ours.init(k, x, use_running_average=False))(_KEY, x0)
    # same collections, names, shapes and dtypes as flax's (traced only, nothing runs), so
    # one set of variables serves both modules
    v_ref = jax.eval_shape(lambda: ref.init(_KEY, x0, use_running_average=False))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(
        lambda a: (a.shape, a.dtype), v_ref
    )
    v_ref = v_ours

    args = ([_x(shape, 10, dtype), _x(shape, 11, dtype)], _x(shape, 20, dtype), _x(shape, 99))
    with_grads = dtype == jnp.float32
    out_ref, g_ref, y_inf_ref = _program(ref, call_kw, with_grads)(v_ref, *args)
    out, g, y_inf = _program(ours, call_kw, with_grads)(v_ours, *args)
    for (y, stats), (y_ref, stats_ref) in zip(out, out_ref, strict=True):
        assert y.shape == y_ref.shape
        np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=y_tol, atol=y_tol)
        assert jax.tree.map(lambda a: a.dtype, stats) == jax.tree.map(lambda a: a.dtype, stats_ref)
        assert_trees_close(stats, stats_ref, rtol=tol, atol=tol)
    if with_grads:
        assert_trees_close(g, g_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(y_inf, np.float32), y_inf_ref, rtol=y_tol, atol=y_tol)
    return y_inf


# ------------------------------------------------------------------ equivalence with flax


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({}, (8, 4, 4, 3)),  # NHWC, channels last
        ({"axis": 1}, (6, 3, 4, 5)),  # NCHW
        ({"use_fast_variance": False}, (8, 4, 4, 3)),
        ({"momentum": 0.9, "epsilon": 1e-3}, (16, 5)),
        ({"use_scale": False, "use_bias": False}, (8, 4, 4, 3)),
        ({"axis": (1, 3)}, (4, 3, 2, 5)),  # several feature axes
        ({"momentum": 0.0, "use_scale": False}, (5, 7)),
    ],
    ids=["nhwc", "nchw", "slow-var", "momentum-eps", "no-affine", "2-axes", "m0-no-scale"],
)
def test_matches_flax_float32(kw, shape):
    _compare_with_flax({**RANDOM_INIT, **kw}, shape)


def test_matches_flax_with_mask():
    mask = jax.random.bernoulli(jax.random.key(7), 0.7, (8, 4, 4, 1))
    mask = jnp.broadcast_to(mask, (8, 4, 4, 3))
    _compare_with_flax(RANDOM_INIT, (8, 4, 4, 3), call_kw={"mask": mask})


def test_bf16_input_float32_statistics():
    # statistics: float32 and equal to flax's (both reduce the same bf16 values in float32)
    y = _compare_with_flax(RANDOM_INIT, (16, 4, 4, 3), dtype=jnp.bfloat16, tol=1e-5, y_tol=5e-2)
    assert y.dtype == jnp.bfloat16  # flax would return float32 here (promotes with params)
    bn = BatchNorm()
    x = _x((16, 3), 0, jnp.bfloat16)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    y, s = _train(bn, v, x)
    assert y.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree.leaves(s)} == {jnp.dtype(jnp.float32)}


def test_dtype_field_matches_flax():
    y = _compare_with_flax({**RANDOM_INIT, "dtype": jnp.bfloat16}, (8, 5), y_tol=5e-2)
    assert y.dtype == jnp.bfloat16


def test_no_float32_reductions_matches_flax():
    kw = {**RANDOM_INIT, "force_float32_reductions": False, "param_dtype": jnp.bfloat16}
    y = _compare_with_flax(kw, (16, 4), dtype=jnp.bfloat16, tol=5e-2)
    assert y.dtype == jnp.bfloat16


# ------------------------------------------------------------------ init and mutability


def test_init_never_updates_statistics():
    x = _x((8, 3))
    bn = BatchNorm(axis_name="batch")  # init runs outside any mapped axis, as in flax
    y, v = bn.init_with_output(jax.random.key(0), x, use_running_average=False)
    np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(3))
    np.testing.assert_array_equal(v["batch_stats"]["var"], np.ones(3))
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)  # normalized with the batch statistics
    y_ref, v_ref = fnn.BatchNorm(axis_name="batch").init_with_output(
        jax.random.key(0), x, use_running_average=False
    )
    np.testing.assert_allclose(y, y_ref, atol=1e-6)
    assert_trees_close(v, v_ref, rtol=0, atol=0)


def test_statistics_change_only_when_mutable():
    x = _x((8, 3))
    for module in (BatchNorm(), fnn.BatchNorm()):  # the same rule and the same error
        v = module.init(jax.random.key(0), x, use_running_average=False)
        with pytest.raises(flax.errors.ModifyScopeVariableError, match="batch_stats"):
            module.apply(v, x, use_running_average=False)
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    # inference with a mutable collection leaves it unchanged
    _, upd = bn.apply(v, x, use_running_average=True, mutable=["batch_stats"])
    assert_trees_close(upd["batch_stats"], v["batch_stats"], rtol=0, atol=0)
    # inference without mutable returns only the output
    y = bn.apply(v, x, use_running_average=True)
    assert isinstance(y, jax.Array)
    # training with everything mutable moves the statistics, never the params
    _, upd = bn.apply(v, x, use_running_average=False, mutable=True)
    assert_trees_close(upd["params"], v["params"], rtol=0, atol=0)
    assert not np.allclose(upd["batch_stats"]["mean"], v["batch_stats"]["mean"])


def test_use_running_average_merged_like_flax():
    x = _x((4, 3))
    for module in (BatchNorm, fnn.BatchNorm):
        v = module(use_running_average=True).init(jax.random.key(0), x)
        with pytest.raises(ValueError, match="use_running_average"):
            module(use_running_average=True).apply(v, x, use_running_average=False)
        with pytest.raises(ValueError, match="use_running_average"):
            module().apply(v, x)
    # a field set at construction works without the call argument
    y, _ = BatchNorm(use_running_average=False).apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)


def test_module_equals_kernel():
    x = _x((8, 4, 3))
    bn = BatchNorm(momentum=0.8, virtual_batch_size=4, **RANDOM_INIT)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    y, s = _train(bn, v, x)
    p = v["params"]
    y_k, m_k, v_k = batch_norm(
        x, v["batch_stats"]["mean"], v["batch_stats"]["var"], scale=p["scale"], bias=p["bias"],
        use_running_average=False, momentum=0.8, virtual_batch_size=4,
    )  # fmt: skip
    np.testing.assert_array_equal(y, y_k)
    np.testing.assert_array_equal(s["mean"], m_k)
    np.testing.assert_array_equal(s["var"], v_k)


# ------------------------------------------------------------------ ghost batch norm


def test_ghost_with_whole_batch_equals_ordinary_bn():
    x = _x((12, 4, 3))
    for kw in ({}, {"use_fast_variance": False}, {"axis": 1}):
        ghost, plain = BatchNorm(virtual_batch_size=12, **kw), BatchNorm(**kw)
        v = plain.init(jax.random.key(0), x, use_running_average=False)
        y_g, s_g = _train(ghost, v, x)
        y, s = _train(plain, v, x)
        np.testing.assert_array_equal(y_g, y)
        assert_trees_close(s_g, s, rtol=0, atol=0)
        y_ref, s_ref = _train(fnn.BatchNorm(**kw), v, x)
        np.testing.assert_allclose(y_g, y_ref, rtol=1e-5, atol=1e-5)
        assert_trees_close(s_g, s_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kw", "shape"), [({}, (12, 4, 3)), ({"axis": 1}, (12, 3, 5))])
def test_ghost_equals_flax_on_each_contiguous_group(kw, shape):
    vbs, momentum = 4, 0.9
    x = _x(shape)
    bn = BatchNorm(virtual_batch_size=vbs, momentum=momentum, **RANDOM_INIT, **kw)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    v = {
        **v,
        "batch_stats": {"mean": v["batch_stats"]["mean"] + 1.0, "var": v["batch_stats"]["var"]},
    }
    y, s = _train(bn, v, x)
    # reference: flax on each group of 4 consecutive examples; momentum 0 gives its statistics
    ref = fnn.BatchNorm(momentum=0.0, **kw)
    outs, stats = zip(
        *[_train(ref, v, x[i : i + vbs]) for i in range(0, shape[0], vbs)], strict=True
    )
    np.testing.assert_allclose(y, jnp.concatenate(outs), rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        group_mean = np.mean([st[name] for st in stats], axis=0)
        expected = momentum * v["batch_stats"][name] + (1 - momentum) * group_mean
        np.testing.assert_allclose(s[name], expected, rtol=1e-5, atol=1e-6)
    # the running variance is the mean group variance, not the whole-batch variance
    _, s_plain = _train(BatchNorm(momentum=momentum, **kw), v, x)
    assert not np.allclose(s["var"], s_plain["var"], rtol=1e-3)
    np.testing.assert_allclose(s["mean"], s_plain["mean"], rtol=1e-5)  # equal-size groups


@functools.partial(jax.jit, static_argnums=3)
def _ghost_kernel(x, mean, var, vbs):
    return batch_norm(
        x, mean, var, use_running_average=False, virtual_batch_size=vbs, epsilon=0.0,
        use_fast_variance=False,
    )  # fmt: skip


@settings(max_examples=10, deadline=None)
@given(
    groups=st.integers(1, 4), vbs=st.integers(2, 5), feat=st.integers(1, 3), seed=st.integers(0, 99)
)
def test_ghost_groups_are_standardized(groups, vbs, feat, seed):
    x = _x((groups * vbs, 2, feat), seed)
    y, _, _ = _ghost_kernel(x, jnp.zeros(feat), jnp.ones(feat), vbs)
    yg = np.asarray(y, np.float64).reshape(groups, vbs * 2, feat)
    np.testing.assert_allclose(yg.mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(yg.var(1), 1.0, atol=1e-3)


def test_ghost_inference_ignores_groups():
    x = _x((10, 3))  # 10 is not a multiple of 4: fine, no groups at inference
    ghost, plain = BatchNorm(virtual_batch_size=4), BatchNorm()
    v = plain.init(jax.random.key(0), x[:8], use_running_average=False)
    v = {**v, "batch_stats": {"mean": jnp.arange(3.0), "var": jnp.arange(1.0, 4.0)}}
    np.testing.assert_array_equal(
        ghost.apply(v, x, use_running_average=True), plain.apply(v, x, use_running_average=True)
    )


def test_ghost_with_mask_equals_masked_groups():
    x = _x((8, 3))
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, (8, 3)).at[::4].set(True)
    bn = BatchNorm(virtual_batch_size=4, momentum=0.0)
    v = bn.init(jax.random.key(0), x, use_running_average=False)
    y, s = _train(bn, v, x, mask=mask)
    ref = fnn.BatchNorm(momentum=0.0)
    outs = [_train(ref, v, x[i : i + 4], mask=mask[i : i + 4]) for i in (0, 4)]
    np.testing.assert_allclose(y, jnp.concatenate([o[0] for o in outs]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["mean"], (outs[0][1]["mean"] + outs[1][1]["mean"]) / 2, rtol=1e-5)


# ------------------------------------------------------------------ axis_name (named vmap axis)


@pytest.mark.parametrize("kw", [{}, {"use_fast_variance": False}, {"virtual_batch_size": 2}])
def test_axis_name_equals_global_batch(kw):
    """A named ``vmap`` axis stands in for devices: pmean over it == the whole batch."""
    n_dev, per_dev = 4, 6
    x = _x((n_dev * per_dev, 3))
    bn_global = BatchNorm(momentum=0.9, **kw, **RANDOM_INIT)
    v = bn_global.init(jax.random.key(0), x, use_running_average=False)
    y_ref, s_ref = _train(bn_global, v, x)
    bn = BatchNorm(momentum=0.9, axis_name="dev", **kw)
    y, s = jax.vmap(lambda xs: _train(bn, v, xs), axis_name="dev")(x.reshape(n_dev, per_dev, 3))
    np.testing.assert_allclose(y.reshape(x.shape), y_ref, rtol=1e-5, atol=1e-5)
    for d in range(n_dev):  # every device holds the same, global, statistics
        assert_trees_close(jax.tree.map(lambda a, d=d: a[d], s), s_ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the kernel


def test_kernel_inference_returns_statistics_unchanged():
    x = _x((4, 3))
    mean, var = jnp.arange(3.0), jnp.arange(1.0, 4.0)
    y, m, v = batch_norm(x, mean, var, use_running_average=True, epsilon=0.0)
    assert m is mean and v is var
    np.testing.assert_allclose(y, (x - mean[None]) / jnp.sqrt(var)[None], rtol=1e-6)


def test_kernel_traced_hyperparameters_jit_and_vmap():
    x = _x((8, 3))
    mean, var = jnp.zeros(3), jnp.ones(3)

    def f(momentum, epsilon):
        return batch_norm(
            x, mean, var, use_running_average=False, momentum=momentum, epsilon=epsilon
        )

    momenta = jnp.array([0.0, 0.5, 0.9, 0.99])
    epsilons = jnp.array([1e-5, 1e-3, 1e-1, 1.0])
    batched = jax.jit(jax.vmap(f))(momenta, epsilons)
    for i in range(4):
        eager = f(float(momenta[i]), float(epsilons[i]))
        for b, e in zip(batched, eager, strict=True):
            np.testing.assert_allclose(b[i], e, rtol=1e-5, atol=1e-6)


def test_kernel_keeps_statistics_dtype_and_promotes_integers():
    x16 = _x((8, 3), dtype=jnp.float16)
    y, m, v = batch_norm(x16, jnp.zeros(3), jnp.ones(3), use_running_average=False)
    assert (y.dtype, m.dtype, v.dtype) == (jnp.float16, jnp.float32, jnp.float32)
    xi = jnp.arange(12).reshape(4, 3)
    y, m, _ = batch_norm(xi, jnp.zeros(3), jnp.ones(3), use_running_average=False, momentum=0.0)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(m, [4.5, 5.5, 6.5])


# ------------------------------------------------------------------ bad input


def _kernel(x=None, mean=None, var=None, **kw):
    x = jnp.ones((8, 4)) if x is None else x
    mean = jnp.zeros(x.shape[-1]) if mean is None else mean
    var = jnp.ones(x.shape[-1]) if var is None else var
    kw.setdefault("use_running_average", False)
    return batch_norm(x, mean, var, **kw)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (
            {"virtual_batch_size": 3},
            ValueError,
            r"virtual_batch_size=3 does not divide the batch size 8",
        ),
        ({"virtual_batch_size": 0}, ValueError, r"virtual_batch_size must be >= 1"),
        ({"virtual_batch_size": 2.0}, TypeError, r"virtual_batch_size must be a Python int"),
        (
            {"virtual_batch_size": 2, "axis": 0, "mean": jnp.zeros(8), "var": jnp.ones(8)},
            ValueError,
            r"virtual_batch_size splits axis 0",
        ),
        ({"mean": jnp.zeros(8)}, ValueError, r"^mean has shape \(8,\), but x of shape \(8, 4\)"),
        ({"var": jnp.ones((1, 4))}, ValueError, r"^var has shape \(1, 4\)"),
        ({"scale": jnp.ones(5)}, ValueError, r"^scale has shape \(5,\)"),
        ({"bias": jnp.ones(3)}, ValueError, r"^bias has shape \(3,\)"),
        ({"axis": 2}, ValueError, r"^axis=2 is out of range"),
        ({"axis": (1, -1)}, ValueError, r"^axis=\(1, -1\) repeats"),
        ({"axis": 1.0}, TypeError, r"^axis must"),
        ({"momentum": 1.5}, ValueError, r"^momentum must lie in \[0, 1\]"),
        ({"momentum": lambda step: 0.9}, TypeError, r"^momentum must be a number or an array"),
        ({"epsilon": -1.0}, ValueError, r"^epsilon must be >= 0"),
        ({"use_running_average": "yes"}, TypeError, r"^use_running_average must be a Python bool"),
        ({"axis_index_groups": [[0]]}, ValueError, r"^axis_index_groups needs axis_name"),
        ({"x": jnp.ones((4, 2), jnp.complex64)}, TypeError, r"real inputs"),
    ],
)
def test_kernel_bad_input(kw, error, match):
    with pytest.raises(error, match=match):
        _kernel(**kw)


def test_module_bad_input():
    bn = BatchNorm(virtual_batch_size=3)
    with pytest.raises(ValueError, match=r"virtual_batch_size=3 does not divide the batch size 8"):
        bn.init(jax.random.key(0), jnp.ones((8, 4)), use_running_average=False)
    # variables built for 16 features, applied to 8
    bn = BatchNorm()
    v16 = bn.init(jax.random.key(0), jnp.ones((4, 16)), use_running_average=False)
    with pytest.raises(ValueError, match=r"batch_stats 'mean' has shape \(16,\).*\(8,\)"):
        bn.apply(v16, jnp.ones((4, 8)), use_running_average=True)
    # statistics right but params wrong: flax's own shape check names the parameter
    v = {**v16, "batch_stats": {"mean": jnp.zeros(8), "var": jnp.ones(8)}}
    with pytest.raises(flax.errors.ScopeParamShapeError, match="scale"):
        bn.apply(v, jnp.ones((4, 8)), use_running_average=True)
