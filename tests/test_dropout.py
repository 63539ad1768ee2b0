"""The dropout family: kernels and linen modules (behaviour, transforms, errors).

Statistical properties of the masks are in ``test_dropout_stats.py``; sharding
invariance in ``test_dropout_sharded.py``.
"""

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg.functional as F
import jaxreg.nn as jnn
from jaxreg.functional import _bits

KEY = jax.random.key(0)
X2 = jax.random.normal(jax.random.key(1), (8, 16)) + 2.0  # no exact zeros
X4 = jax.random.normal(jax.random.key(2), (4, 8, 8, 3)) + 2.0

# name -> (kernel called as f(key, x, rate, deterministic=...), input, max rate allowed)
KERNELS = {
    "dropout": (F.dropout, X2, 1.0),
    "dropout_bcast": (lambda k, x, r, **kw: F.dropout(k, x, r, broadcast_dims=(0,), **kw), X2, 1.0),
    "spatial_dropout": (F.spatial_dropout, X4, 1.0),
    "drop_path": (F.drop_path, X4, 1.0),
    "drop_block": (lambda k, x, r, **kw: F.drop_block(k, x, r, block_size=3, **kw), X4, 1.0),
    "gaussian_dropout": (F.gaussian_dropout, X2, 0.9),
    "gaussian_noise": (F.gaussian_noise, X2, 1.0),
    "alpha_dropout": (F.alpha_dropout, X2, 1.0),
}
ZEROING = ["dropout", "dropout_bcast", "spatial_dropout", "drop_path", "drop_block"]


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_deterministic_is_identity_without_key(name):
    f, x, _ = KERNELS[name]
    assert f(None, x, 0.5, deterministic=True) is x


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_same_key_same_output_other_key_other_output(name):
    f, x, _ = KERNELS[name]
    a, b = f(KEY, x, 0.5), f(KEY, x, 0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, f(jax.random.key(7), x, 0.5))
    assert a.shape == x.shape and a.dtype == x.dtype


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_jit_equals_eager(name):
    f, x, _ = KERNELS[name]
    # same masks; values may differ in the last bit where XLA fuses a multiply-add
    np.testing.assert_allclose(jax.jit(f)(KEY, x, 0.3), f(KEY, x, 0.3), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_vmap_over_rate(name):
    f, x, top = KERNELS[name]
    rates = jnp.array([0.0, 0.25, 0.5, top], jnp.float32)
    swept = jax.jit(jax.vmap(lambda r: f(KEY, x, r)))(rates)
    for i, r in enumerate(rates.tolist()):
        np.testing.assert_allclose(swept[i], f(KEY, x, r), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(swept[0], x)  # rate (or stddev) 0 is the identity


@pytest.mark.parametrize("name", [*ZEROING, "alpha_dropout"])
def test_rate_one_gives_zeros_with_finite_gradients(name):
    f, x, _ = KERNELS[name]
    w = jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)

    def loss(x, rate):
        return jnp.sum(f(KEY, x, rate) * w)

    np.testing.assert_array_equal(f(KEY, x, 1.0), jnp.zeros_like(x))  # static rate
    np.testing.assert_array_equal(jax.jit(f)(KEY, x, jnp.float32(1.0)), jnp.zeros_like(x))
    g = jax.jit(jax.grad(loss))(x, jnp.float32(1.0))  # traced rate
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_array_equal(g, jnp.zeros_like(x))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_rate_zero_is_identity_with_unit_gradient(name):
    f, x, _ = KERNELS[name]
    w = jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)
    np.testing.assert_array_equal(f(KEY, x, 0.0), x)
    g = jax.jit(jax.grad(lambda x: jnp.sum(f(KEY, x, 0.0) * w)))(x)
    np.testing.assert_array_equal(g, w)


def _value_and_vjp(fn, x):
    y, vjp = jax.vjp(fn, x)
    return y, vjp(jnp.ones_like(y))[0]


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_gradient_is_the_same_mask_and_scale(name):
    f, x, _ = KERNELS[name]
    y, g = jax.jit(lambda x: _value_and_vjp(lambda x: f(KEY, x, 0.3), x))(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    if name in ZEROING:  # y = x * s on kept elements, 0 elsewhere; dy/dx = s or 0
        np.testing.assert_allclose(y, x * g, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_bfloat16_stays_bfloat16(name):
    f, x, _ = KERNELS[name]
    xb = x.astype(jnp.bfloat16)
    y = f(KEY, xb, 0.25)
    assert y.dtype == jnp.bfloat16
    g = jax.jit(jax.grad(lambda x: jnp.sum(f(KEY, x, 0.25).astype(jnp.float32))))(xb)
    assert g.dtype == jnp.bfloat16


def test_bfloat16_scale_is_applied_in_float32():
    # 1/q with q = 0.9 is not representable in bf16; multiplying in f32 first keeps
    # each kept value the correctly rounded x/q instead of x * bf16(1/q).
    x = jnp.full((64, 64), 3.0, jnp.bfloat16)
    y = F.dropout(KEY, x, 0.1)
    _, q = _bits.keep_threshold(0.1)
    expected = (jnp.float32(3.0) / q).astype(jnp.bfloat16)
    kept = y[y != 0]
    assert kept.size > 0
    np.testing.assert_array_equal(kept, jnp.full(kept.shape, expected))


def test_dropout_values_are_x_over_realised_keep():
    _, q = _bits.keep_threshold(1 / 3)
    assert abs(float(q) - 2 / 3) <= 2**-17  # 16-bit threshold
    y = F.dropout(KEY, X2, 1 / 3)
    kept = y != 0
    np.testing.assert_allclose(y[kept], (X2 / q)[kept], rtol=1e-6)


def test_broadcast_dims_share_the_mask():
    y = F.dropout(KEY, jnp.ones((6, 32)), 0.5, broadcast_dims=(0,))
    assert bool(jnp.all(y == y[:1]))  # every row has the same mask
    y = F.alpha_dropout(KEY, jnp.zeros((6, 32)), 0.5, broadcast_dims=(-1,))
    assert bool(jnp.all(y == y[:, :1]))


def test_spatial_dropout_channel_axis_nchw():
    x = jnp.ones((4, 6, 5, 5))
    y = F.spatial_dropout(KEY, x, 0.5, channel_axis=1)
    assert bool(jnp.all(y == y[:, :, :1, :1]))
    assert len(set(np.asarray(y[:, :, 0, 0]).ravel().tolist())) == 2  # some 0, some 2


def test_drop_path_rates_follow_timm():
    np.testing.assert_allclose(F.drop_path_rates(12, 0.1), np.linspace(0.0, 0.1, 12))
    assert F.drop_path_rates(1, 0.3) == [0.0]
    assert F.drop_path_rates(0, 0.3) == []
    assert all(isinstance(r, float) for r in F.drop_path_rates(4, 0.2))
    traced = jax.jit(lambda r: F.drop_path_rates(5, r))(jnp.float32(0.2))
    np.testing.assert_allclose(traced, np.linspace(0.0, 0.2, 5), rtol=1e-6)


def test_gaussian_noise_adds_scaled_normals():
    y = F.gaussian_noise(KEY, X2, 0.5)
    z = F.gaussian_noise(KEY, X2, 1.0) - X2
    np.testing.assert_allclose(y - X2, 0.5 * z, rtol=1e-5, atol=1e-6)


def test_alpha_dropout_matches_keras_formula():
    rate = 0.25  # exact in 16 bits, so the realised keep is 0.75
    x = jax.random.normal(jax.random.key(3), (64, 64))
    y = F.alpha_dropout(KEY, x, rate)
    alpha_p = -1.0507009873554804934193349852946 * 1.6732632423543772848170429916717
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    kept = np.isclose(np.asarray(y), np.asarray(a * x + b), rtol=1e-6, atol=1e-6)
    assert 0.6 < kept.mean() < 0.9
    np.testing.assert_allclose(np.asarray(y)[~kept], a * alpha_p + b, rtol=1e-6)


def test_drop_block_block_larger_than_map_is_clipped():
    y = F.drop_block(KEY, jnp.ones((64, 3, 3, 1)), 0.5, block_size=7)
    per_map = np.asarray(y[..., 0] == 0).reshape(64, 9)
    assert set(per_map.mean(axis=1).tolist()) <= {0.0, 1.0}  # the whole 3x3 map or nothing


def test_drop_block_one_dimensional_and_per_axis_block_size():
    y = F.drop_block(KEY, jnp.ones((8, 32, 2)), 0.3, block_size=4)
    assert y.shape == (8, 32, 2)
    y = F.drop_block(KEY, jnp.ones((2, 12, 10, 1)), 0.3, block_size=(3, 1))
    assert y.shape == (2, 12, 10, 1)


def test_large_arrays_hash_leading_axes_into_an_offset():
    lo, hi = _bits.positions((3, 4))
    np.testing.assert_array_equal(lo, np.arange(12).reshape(3, 4))
    assert hi is None
    lo, hi = _bits.positions((8, 4, 4), limit=20)
    np.testing.assert_array_equal(lo[0], np.arange(16).reshape(4, 4))
    np.testing.assert_array_equal(hi[:, 0, 0], np.arange(8))
    h = np.asarray(_bits.hash_bits(KEY, (64, 32, 32), limit=2**11))
    assert len(np.unique(h)) > h.size - 10  # rows are not copies of one another
    assert not np.array_equal(h[0], h[1])
    with pytest.raises(ValueError, match="too long for 32-bit positions"):
        _bits.positions((40,), limit=32)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", [n for n in sorted(KERNELS) if n != "gaussian_noise"])
@pytest.mark.parametrize("rate", [1.5, -0.1])
def test_static_rate_outside_unit_interval(name, rate):
    f, x, _ = KERNELS[name]
    with pytest.raises(ValueError, match=rf"^rate must lie in \[0, 1[\])], got {rate}"):
        f(KEY, x, rate)
    with pytest.raises(ValueError, match="rate must lie in"):  # also when deterministic
        f(None, x, rate, deterministic=True)


def test_gaussian_dropout_rate_one_and_negative_stddev():
    with pytest.raises(ValueError, match=r"^rate must lie in \[0, 1\), got 1.0"):
        F.gaussian_dropout(KEY, X2, 1.0)
    with pytest.raises(ValueError, match=r"^stddev must be >= 0, got -1\.0"):
        F.gaussian_noise(KEY, X2, -1.0)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_missing_key_in_training(name):
    f, x, _ = KERNELS[name]
    fn = {"dropout_bcast": "dropout"}.get(name, name)
    with pytest.raises(ValueError, match=rf"^{fn} needs a key when deterministic=False"):
        f(None, x, 0.5)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="rate must be a scalar"):
        F.dropout(KEY, X2, jnp.array([0.1, 0.2]))
    with pytest.raises(TypeError, match="rate must be a number"):
        F.dropout(KEY, X2, lambda step: 0.1)
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        F.dropout(KEY, jnp.ones(3, jnp.int32), 0.1)
    with pytest.raises(ValueError, match=r"broadcast_dims=.*out of range"):
        F.dropout(KEY, X2, 0.1, broadcast_dims=(2,))
    with pytest.raises(TypeError, match="deterministic must be a Python bool"):
        F.dropout(KEY, X2, 0.1, deterministic=jnp.array(True))
    with pytest.raises(ValueError, match="channel_axis must not be the batch axis"):
        F.spatial_dropout(KEY, X4, 0.1, channel_axis=0)
    with pytest.raises(ValueError, match="rank >= 3"):
        F.drop_block(KEY, X2, 0.1)
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        F.drop_block(KEY, X4, 0.1, block_size=0)
    with pytest.raises(ValueError, match="broadcast_dims may hold only"):
        F.drop_block(KEY, X4, 0.1, broadcast_dims=(1,))
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        F.drop_path_rates(-1, 0.1)
    with pytest.raises(ValueError, match=r"max_rate must lie in \[0, 1\], got 2.0"):
        F.drop_path_rates(3, 2.0)


# --------------------------------------------------------------------------- modules

MODULES = {
    "Dropout": (jnn.Dropout(0.4), F.dropout, X2),
    "Dropout_bcast": (
        jnn.Dropout(0.4, broadcast_dims=(1,)),
        lambda k, x, r: F.dropout(k, x, r, broadcast_dims=(1,)),
        X2,
    ),
    "SpatialDropout": (jnn.SpatialDropout(0.4), F.spatial_dropout, X4),
    "DropPath": (jnn.DropPath(0.4), F.drop_path, X4),
    "DropBlock": (
        jnn.DropBlock(0.4, block_size=3),
        lambda k, x, r: F.drop_block(k, x, r, block_size=3),
        X4,
    ),
    "GaussianDropout": (jnn.GaussianDropout(0.4), F.gaussian_dropout, X2),
    "GaussianNoise": (jnn.GaussianNoise(0.4), F.gaussian_noise, X2),
    "AlphaDropout": (jnn.AlphaDropout(0.4), F.alpha_dropout, X2),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_equals_kernel_with_explicit_rng(name):
    module, kernel, x = MODULES[name]
    y = module.apply({}, x, deterministic=False, rng=KEY)
    np.testing.assert_array_equal(y, kernel(KEY, x, 0.4))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_deterministic_flag_merged_like_flax(name):
    module, _, x = MODULES[name]
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    fixed = module.clone(deterministic=True)
    np.testing.assert_array_equal(fixed.apply({}, x), x)
    with pytest.raises(ValueError, match="deterministic"):
        module.apply({}, x)  # neither field nor argument
    with pytest.raises(ValueError, match="deterministic"):
        fixed.apply({}, x, deterministic=False)  # both


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_missing_rng_is_a_clear_error(name):
    module, _, x = MODULES[name]
    with pytest.raises(flax.errors.InvalidRngError, match=r"needs a 'dropout' rng.*rngs="):
        module.apply({}, x, deterministic=False)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_vmap_over_rate(name):
    module, _, x = MODULES[name]
    rates = jnp.array([0.1, 0.3, 0.6])

    def run(r):
        return module.clone(**{_rate_field(module): r}).apply(
            {}, x, deterministic=False, rngs={"dropout": KEY}
        )

    swept = jax.jit(jax.vmap(run))(rates)
    for i, r in enumerate(rates.tolist()):
        np.testing.assert_allclose(swept[i], run(r), rtol=1e-6, atol=1e-6)


def _rate_field(module):
    return "stddev" if isinstance(module, jnn.GaussianNoise) else "rate"


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        a = jnn.Dropout(0.5, deterministic=not train)(x)
        b = jnn.Dropout(0.5, deterministic=not train)(x)
        return a, b


def test_keys_fold_in_the_module_path_and_repeat_per_rng():
    net = _Net()
    x = jnp.ones((16, 32))
    variables = net.init(jax.random.key(0), x, train=True)  # falls back to 'params' in init
    a, b = net.apply(variables, x, train=True, rngs={"dropout": KEY})
    assert not np.array_equal(a, b)  # per-layer keys
    a2, b2 = net.apply(variables, x, train=True, rngs={"dropout": KEY})
    np.testing.assert_array_equal(a, a2)  # reproducible
    np.testing.assert_array_equal(b, b2)
    a3, _ = net.apply(variables, x, train=True, rngs={"dropout": jax.random.fold_in(KEY, 1)})
    assert not np.array_equal(a, a3)  # per-step keys
    a4, b4 = net.apply(variables, x, train=False)
    np.testing.assert_array_equal(a4, x)
    np.testing.assert_array_equal(b4, x)


def test_module_static_rate_zero_needs_no_rng_like_flax():
    x = jnp.ones((2, 3))
    for module in (jnn.Dropout(0.0), jnn.DropPath(0), jnn.GaussianNoise(0.0)):
        np.testing.assert_array_equal(module.apply({}, x, deterministic=False), x)
        np.testing.assert_array_equal(
            nn.Dropout(0.0).apply({}, x, deterministic=False), x
        )  # flax's behaviour, kept


def test_module_drop_in_for_flax_dropout():
    fields = {f for f in nn.Dropout.__dataclass_fields__ if not f.startswith("_")}
    ours = {f for f in jnn.Dropout.__dataclass_fields__ if not f.startswith("_")}
    assert fields <= ours
    x = jnp.ones((4, 256))
    y_flax = nn.Dropout(0.5, broadcast_dims=(0,)).apply(
        {}, x, deterministic=False, rngs={"dropout": KEY}
    )
    y_ours = jnn.Dropout(0.5, broadcast_dims=(0,)).apply(
        {}, x, deterministic=False, rngs={"dropout": KEY}
    )
    for y in (y_flax, y_ours):  # same semantics: values {0, 2}, rows share the mask
        assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}
        assert bool(jnp.all(y == y[:1]))


def test_module_bad_rate_named():
    with pytest.raises(ValueError, match=r"^rate must lie in \[0, 1\], got 1.5"):
        jnn.Dropout(1.5).apply({}, X2, deterministic=False, rngs={"dropout": KEY})
    with pytest.raises(ValueError, match=r"^rate must lie in \[0, 1\], got 1.5"):
        jnn.Dropout(1.5).apply({}, X2, deterministic=True)
