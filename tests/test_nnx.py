"""jaxreg.nnx wrappers give the same outputs as the linen modules and follow nnx's modes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxreg.nn
import jaxreg.nnx


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_dropout_matches_linen_for_the_same_key(rate):
    x = jax.random.normal(jax.random.key(0), (8, 16))
    key = jax.random.key(42)
    linen = jaxreg.nn.Dropout(rate, broadcast_dims=(0,)).apply({}, x, deterministic=False, rng=key)
    layer = jaxreg.nnx.Dropout(rate, broadcast_dims=(0,))
    np.testing.assert_array_equal(layer(x, rngs=key), linen)


def test_drop_path_matches_linen_for_the_same_key():
    x = jax.random.normal(jax.random.key(0), (16, 4, 4, 3))
    key = jax.random.key(7)
    linen = jaxreg.nn.DropPath(0.5).apply({}, x, deterministic=False, rng=key)
    got = jaxreg.nnx.DropPath(0.5)(x, rngs=key)
    np.testing.assert_array_equal(got, linen)
    assert 0 < int(jnp.sum(jnp.all(got == 0, axis=(1, 2, 3)))) < 16


def test_dropout_stream_train_eval_and_missing_rngs():
    x = jnp.ones((4, 32))
    layer = jaxreg.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    a, b = layer(x), layer(x)
    assert not np.array_equal(a, b)  # the stream advances between calls
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    layer.train()
    assert not np.array_equal(layer(x), x)
    with pytest.raises(ValueError, match="no rngs were given"):
        jaxreg.nnx.Dropout(0.5)(x)
    with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\]"):
        jaxreg.nnx.Dropout(1.5)


class _LinenNet(nn.Module):
    vbs: int | None = None

    @nn.compact
    def __call__(self, x, train):
        return jaxreg.nn.BatchNorm(
            use_running_average=not train, momentum=0.8, virtual_batch_size=self.vbs
        )(x)


@pytest.mark.parametrize("vbs", [None, 4])
def test_batch_norm_matches_linen(vbs):
    x1 = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (8, 5, 5, 6))
    x2 = -1.0 + 0.5 * jax.random.normal(jax.random.key(2), (8, 5, 5, 6))
    net = _LinenNet(vbs)
    variables = net.init(jax.random.key(0), x1, train=False)
    bn = jaxreg.nnx.BatchNorm(6, momentum=0.8, virtual_batch_size=vbs, rngs=nnx.Rngs(0))
    for x in (x1, x2):  # two training steps
        y_linen, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
        np.testing.assert_allclose(bn(x), y_linen, rtol=1e-6, atol=1e-6)
        stats = variables["batch_stats"]["BatchNorm_0"]
        np.testing.assert_allclose(bn.mean[...], stats["mean"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(bn.var[...], stats["var"], rtol=1e-6, atol=1e-7)
    bn.eval()
    mean_before = bn.mean[...]
    np.testing.assert_allclose(bn(x1), net.apply(variables, x1, train=False), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(bn.mean[...], mean_before)  # eval leaves stats alone


def test_batch_norm_under_nnx_jit_updates_stats_and_matches_flax_nnx():
    x = 1.0 + jax.random.normal(jax.random.key(3), (16, 6))
    ours = jaxreg.nnx.BatchNorm(6, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(6, rngs=nnx.Rngs(0))

    @nnx.jit
    def step(model, x):
        return model(x)

    for _ in range(2):
        np.testing.assert_allclose(step(ours, x), step(ref, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-6)
    assert set(nnx.state(ours, nnx.BatchStat).keys()) == {"mean", "var"}
    with pytest.raises(ValueError, match="virtual_batch_size"):
        jaxreg.nnx.BatchNorm(6, virtual_batch_size=5, rngs=nnx.Rngs(0))(x)
