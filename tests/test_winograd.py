"""jaxreg.functional.winograd_conv3x3 == lax's SAME 3x3 convolution, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxreg import models
from jaxreg.functional import conv_general_dilated, winograd_conv3x3
from tests.conftest import assert_trees_close

DN = ("NHWC", "HWIO", "NHWC")


def _lax(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)


def _data(x_shape, c_out, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, x_shape[-1], c_out)) / np.sqrt(9 * x_shape[-1]))
    return x, k.astype(jnp.float32)


def _assert_close(got, want, rtol):
    """Each leaf's largest error relative to its largest entry: Winograd's rounding
    is relative to the scale of the sums, not to each entry."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape
        err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        assert err < rtol, err


def _value_and_grads(conv, x, k):
    def f(x, k):
        y = conv(x, k)
        w = jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))
        return jnp.sum(jnp.sin(y) * w), y

    (_, y), g = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(x, k)
    return y, g


@pytest.mark.parametrize("tile, rtol", [(2, 2e-6), (4, 3e-5)])
@pytest.mark.parametrize(
    "x_shape, c_out",
    [
        ((2, 8, 8, 3), 4),  # sizes a multiple of both tiles
        ((3, 7, 5, 6), 2),  # odd, not square: the last blocks are cropped
        ((2, 1, 1, 2), 3),  # a single pixel (only the kernel's centre tap)
        ((1, 9, 10, 16), 16),
    ],
)
def test_values_and_gradients_equal_lax(x_shape, c_out, tile, rtol):
    x, k = _data(x_shape, c_out)
    y1, g1 = _value_and_grads(lambda x, k: winograd_conv3x3(x, k, tile=tile), x, k)
    y2, g2 = _value_and_grads(_lax, x, k)
    assert y1.shape == y2.shape == (*x_shape[:3], c_out)
    _assert_close((y1, g1), (y2, g2), rtol)  # Winograd's rounding grows with the tile


def test_it_vmaps_and_differentiates_twice_in_reverse_mode_like_lax():
    x, k = _data((2, 6, 6, 3), 4, seed=1)
    xs = jnp.stack([x, x**2])
    loss = lambda conv: lambda k, x: jnp.sum(conv(x, k) ** 2)
    got = jax.vmap(jax.grad(loss(winograd_conv3x3)), (None, 0))(k, xs)
    want = jax.vmap(jax.grad(loss(_lax)), (None, 0))(k, xs)
    _assert_close(got, want, 3e-5)
    # reverse over reverse goes through the custom VJP's own (Winograd) gradient
    # (forward mode does not: a custom VJP has no JVP)
    gg = lambda conv: jax.grad(lambda k: jnp.sum(jnp.tanh(jax.grad(loss(conv))(k, x))))(k)
    _assert_close(gg(winograd_conv3x3), gg(_lax), 3e-5)


def test_bad_arguments_are_named():
    x, k = _data((1, 4, 4, 2), 3)
    with pytest.raises(ValueError, match=r"tile must be one of \(2, 4\), got 3"):
        winograd_conv3x3(x, k, tile=3)
    with pytest.raises(ValueError, match=r"x must be \(N, H, W, C\)"):
        winograd_conv3x3(x[0], k)
    with pytest.raises(ValueError, match=r"kernel must be \(3, 3, 2, C_out\)"):
        winograd_conv3x3(x, jnp.ones((5, 5, 2, 3)))
    with pytest.raises(ValueError, match=r"kernel must be \(3, 3, 2, C_out\)"):
        winograd_conv3x3(x, jnp.ones((3, 3, 4, 3)))
    with pytest.raises(ValueError, match="one floating dtype"):
        winograd_conv3x3(x.astype(jnp.int32), k.astype(jnp.int32))
    with pytest.raises(ValueError, match="one floating dtype"):
        winograd_conv3x3(x, k.astype(jnp.bfloat16))


def test_dispatcher_runs_eligible_convs_by_winograd_and_the_rest_as_auto():
    x, k = _data((2, 6, 6, 3), 4, seed=2)

    def run(k, strides=(1, 1), padding="SAME", **kw):
        f = lambda x, k: conv_general_dilated(
            x, k, strides, padding, dimension_numbers=DN, method="winograd", **kw
        )
        return f(x, k), jax.make_jaxpr(f)(x, k)

    # 3x3, stride 1, SAME (as the string or as explicit pads): Winograd, same numbers
    for padding in ("SAME", ((1, 1), (1, 1))):
        y, jaxpr = run(k, padding=padding)
        np.testing.assert_array_equal(y, winograd_conv3x3(x, k))
        assert "conv_general_dilated" not in str(jaxpr)
    # anything else: what method="auto" runs
    others = [
        (k, {"strides": (2, 2)}),
        (k, {"padding": "VALID"}),
        (jnp.ones((5, 5, 3, 4)), {}),
        (jnp.ones((3, 3, 1, 6)), {"feature_group_count": 3}),
        (k, {"rhs_dilation": (2, 2)}),
    ]
    for kk, kw in others:
        y, _ = run(kk, **kw)
        strides, padding = kw.pop("strides", (1, 1)), kw.pop("padding", "SAME")
        want = conv_general_dilated(x, kk, strides, padding, dimension_numbers=DN, **kw)
        np.testing.assert_array_equal(y, want)


def test_airbench_conv_method_winograd_matches_and_bad_method_is_named():
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
    y = jax.random.randint(jax.random.key(1), (4,), 0, 10)
    nets = {
        m: models.Airbench(widths=(4, 8, 8), conv_method=m, winograd_min_width=4)
        for m in ("auto", "winograd")
    }
    params = nets["auto"].init(jax.random.key(2), x, train=False)

    def calls(min_width):  # (Winograd convs, im2col convs): the stem is always im2col
        net = models.Airbench(
            widths=(4, 8, 8), conv_method="winograd", winograd_min_width=min_width
        )
        text = str(jax.make_jaxpr(lambda p: net.apply(p, x, train=False))(params))
        return text.count("name=_winograd"), text.count("name=_conv2d")

    # the widths below winograd_min_width (default 128) run as "auto"
    assert calls(128) == (0, 7) and calls(8) == (4, 3) and calls(4) == (6, 1)

    def loss(net):
        def f(p):
            logits, _ = net.apply(p, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

        return jax.jit(jax.value_and_grad(f))

    (v1, g1), (v2, g2) = loss(nets["winograd"])(params), loss(nets["auto"])(params)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    assert_trees_close(g1, g2, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="conv_method must be one of 'auto'"):
        models.Airbench(widths=(4, 8, 8), conv_method="fft").init(jax.random.key(0), x, train=False)
