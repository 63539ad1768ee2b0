"""jaxreg.functional.conv_general_dilated == lax.conv_general_dilated, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxreg.functional import conv_general_dilated
from tests.conftest import assert_trees_close

DN = {3: ("NWC", "WIO", "NWC"), 4: ("NHWC", "HWIO", "NHWC")}

CASES = [
    # input shape, kernel shape, strides, padding
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((2, 8, 7, 5), (3, 3, 5, 6), (1, 1), "VALID"),
    ((3, 10, 10, 2), (5, 5, 2, 3), (2, 2), "SAME"),
    ((2, 9, 8, 4), (3, 2, 4, 3), (2, 1), ((1, 2), (0, 1))),
    ((2, 6, 6, 3), (1, 1, 3, 7), (1, 1), "VALID"),
    ((2, 7, 7, 1), (3, 3, 1, 8), (3, 2), "SAME_LOWER"),
    ((2, 40, 1), (5, 1, 4), (2,), ((1, 1),)),  # the MNIST-1D ConvBase's first layer
    ((3, 11, 4), (3, 4, 5), (1,), "SAME"),
    ((2, 12, 3), (4, 3, 2), (3,), "VALID"),
]


@pytest.mark.parametrize("x_shape, k_shape, strides, padding", CASES)
def test_values_and_gradients_equal_lax(x_shape, k_shape, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    dn = DN[len(x_shape)]

    def loss(conv):
        def f(x, k):
            y = conv(x, k, strides, padding, dimension_numbers=dn)
            w = jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size
            return jnp.sum(jnp.sin(y) * w), y

        return f

    (_, y1), g1 = jax.jit(jax.value_and_grad(loss(conv_general_dilated), (0, 1), has_aux=True))(
        x, k
    )
    (_, y2), g2 = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1), has_aux=True)(x, k)
    assert y1.shape == y2.shape
    assert_trees_close(y1, y2, rtol=1e-5, atol=1e-5)
    assert_trees_close(g1, g2, rtol=1e-4, atol=1e-5)
    # not differentiated (the evaluation path): the same values
    y0 = jax.jit(lambda x, k: conv_general_dilated(x, k, strides, padding, dimension_numbers=dn))
    assert_trees_close(y0(x, k), y2, rtol=1e-5, atol=1e-5)


def test_flax_conv_with_it_equals_flax_conv_and_vmaps():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 10, 10, 3)), jnp.float32)
    plain = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME")
    fast = nn.Conv(
        8, (3, 3), strides=(2, 2), padding="SAME", conv_general_dilated=conv_general_dilated
    )
    params = plain.init(jax.random.key(0), x)

    def loss(m):
        return lambda p, x: jnp.sum(m.apply(p, x) ** 2)

    assert_trees_close(fast.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
    assert_trees_close(
        jax.grad(loss(fast))(params, x), jax.grad(loss(plain))(params, x), rtol=1e-4, atol=1e-4
    )
    # vmapped over a leading axis of inputs (a sweep's members)
    xs = jnp.stack([x, 2 * x])
    got = jax.vmap(lambda x: jax.grad(loss(fast))(params, x))(xs)
    want = jax.vmap(lambda x: jax.grad(loss(plain))(params, x))(xs)
    assert_trees_close(got, want, rtol=1e-4, atol=1e-4)


def test_other_layouts_and_options_fall_back_to_lax():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 3, 9, 9)), jnp.float32)  # NCHW
    k = jnp.asarray(rng.normal(size=(4, 3, 3, 3)), jnp.float32)  # OIHW
    for kw in (
        {},  # lax's default layout
        {"rhs_dilation": (2, 2)},
    ):
        got = conv_general_dilated(x, k, (1, 1), "SAME", **kw)
        want = lax.conv_general_dilated(x, k, (1, 1), "SAME", **kw)
        np.testing.assert_array_equal(got, want)
    xg = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
    kg = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    np.testing.assert_array_equal(
        conv_general_dilated(xg, kg, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2),
        lax.conv_general_dilated(
            xg, kg, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2
        ),
    )


def test_im2col_path_is_taken_for_flax_layout():
    """Differentiated, the im2col products run (no XLA convolution, forward or
    backward); a call that is not differentiated runs XLA's convolution in 2-D
    (no patch matrix to keep) and the im2col product in 1-D."""
    conv = lambda x, k: conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN[x.ndim])
    for x_shape, k_shape in (((2, 6, 6, 3), (3, 3, 3, 4)), ((2, 9, 3), (3, 3, 4))):
        x, k = jnp.ones(x_shape), jnp.ones(k_shape)
        grad = str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(conv(x, k)), (0, 1)))(x, k))
        assert "conv_general_dilated" not in grad and "dot_general" in grad
        plain = str(jax.make_jaxpr(conv)(x, k))
        if len(x_shape) == 4:
            assert "conv_general_dilated" in plain and "dot_general" not in plain
        else:
            assert "conv_general_dilated" not in plain and "dot_general" in plain


def test_evaluation_under_vmap_equals_lax():
    """Not differentiated and vmapped: over kernels (a sweep's members) the im2col
    products run (lax would batch them as a grouped convolution), over inputs
    only XLA's convolution on the joined batch; nested maps too. Values equal
    the vmapped lax convolution's."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 2, 7, 7, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 5)), jnp.float32)
    dn = DN[4]
    ours = lambda x, k: conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
    for axes, has_conv in (((0, 0), False), ((None, 0), False), ((0, None), True)):
        xs = x if axes[0] == 0 else x[0]
        ks = k if axes[1] == 0 else k[0]
        f = jax.jit(jax.vmap(ours, in_axes=axes))
        np.testing.assert_allclose(f(xs, ks), jax.vmap(ref, in_axes=axes)(xs, ks), 1e-5, 1e-5)
        jaxpr = str(jax.make_jaxpr(jax.vmap(ours, in_axes=axes))(xs, ks))
        assert ("conv_general_dilated" in jaxpr) == has_conv, axes
    # members over kernels, and inside each member a map over input groups
    nested = jax.vmap(jax.vmap(ours, in_axes=(0, None)), in_axes=(None, 0))
    want = jax.vmap(jax.vmap(ref, in_axes=(0, None)), in_axes=(None, 0))(x, k)
    np.testing.assert_allclose(jax.jit(nested)(x, k), want, rtol=1e-5, atol=1e-5)


def test_bad_padding_is_named():
    x, k = jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 1))
    with pytest.raises(ValueError, match="padding"):
        conv_general_dilated(x, k, (1, 1), "FULL", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_method_forces_a_path_and_bad_method_is_named():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    dn = ("NHWC", "HWIO", "NHWC")

    def primitives(method):
        f = lambda x, k: conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=dn, method=method
        )
        return {e.primitive.name for e in jax.make_jaxpr(f)(x, k).eqns}, f(x, k)

    (p_lax, y_lax), (p_im2col, y_im2col) = primitives("lax"), primitives("im2col")
    assert p_lax == {"conv_general_dilated"} and "conv_general_dilated" not in p_im2col
    np.testing.assert_allclose(y_im2col, y_lax, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="method must be one of 'auto', 'im2col', 'lax', 'wino"):
        conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn, method="fft")
