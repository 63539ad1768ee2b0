"""Tests for jaxreg.losses: equivalence with optax's one-hot route, reductions, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxreg.losses import confidence_penalty, soft_target_cross_entropy, softmax_cross_entropy


def _data(seed=0, n=6, k=5, dtype=jnp.float32):
    # NumPy test data: every new shape of an eager jax.random call costs a compile
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(3.0 * rng.standard_normal((n, k)), dtype)
    labels = jnp.asarray(rng.integers(0, k, (n,)), jnp.int32)
    return logits, labels


def _optax_route(logits, labels, a):
    k = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, k), a)
    return optax.softmax_cross_entropy(logits, targets)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 1000),
    a=st.floats(0.0, 1.0),
    k=st.sampled_from([1, 5]),  # few shapes: each new shape recompiles every eager op
)
def test_smoothed_integer_loss_equals_optax_one_hot_route(seed, a, k):
    logits, labels = _data(seed, k=k)
    ours = softmax_cross_entropy(logits, labels, label_smoothing=a, reduction="none")
    ref = _optax_route(logits, labels, a)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda z: softmax_cross_entropy(z, labels, label_smoothing=a))(logits)
    g_ref = jax.grad(lambda z: jnp.mean(_optax_route(z, labels, a)))(logits)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_no_smoothing_equals_optax_integer_labels():
    logits, labels = _data(1, n=4, k=3)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-6
    )


def test_builds_no_one_hot_matrix():
    logits, labels = _data(0, n=8, k=1000)
    jaxpr = str(
        jax.make_jaxpr(lambda z: softmax_cross_entropy(z, labels, label_smoothing=0.1))(logits)
    )
    # a one-hot would appear as an (8, 1000) integer/bool comparison against an iota
    assert "iota" not in jaxpr and "eq" not in jaxpr.replace("eqn", "")


def test_leading_axes_and_soft_target_route():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, (2, 3)), jnp.int32)
    a = 0.2
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 4), a)
    ours = softmax_cross_entropy(logits, labels, label_smoothing=a, reduction="none")
    assert ours.shape == (2, 3)
    np.testing.assert_allclose(
        ours, soft_target_cross_entropy(logits, targets, reduction="none"), rtol=1e-6
    )


def test_reductions_and_weighted_mean():
    logits, labels = _data(2, n=5)
    per = softmax_cross_entropy(logits, labels, reduction="none")
    np.testing.assert_allclose(softmax_cross_entropy(logits, labels), per.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels, reduction="sum"), per.sum(), rtol=1e-6
    )
    w = jnp.array([1.0, 0.0, 2.0, 0.0, 1.0])
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels, weights=w),
        jnp.sum(w * per) / jnp.sum(w),
        rtol=1e-6,
    )
    # 0/1 weights are a mask: the masked mean equals the mean over kept examples
    m = jnp.array([1.0, 1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels, weights=m),
        per[jnp.array([0, 1, 4])].mean(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        softmax_cross_entropy(logits, labels, weights=w, reduction="none"), w * per, rtol=1e-6
    )
    zero = softmax_cross_entropy(logits, labels, weights=jnp.zeros(5))
    assert float(zero) == 0.0
    g = jax.grad(lambda z: softmax_cross_entropy(z, labels, weights=jnp.zeros(5)))(logits)
    assert np.all(np.isfinite(g))


def test_bf16_logits_computed_in_float32():
    logits, labels = _data(4, n=16, k=10, dtype=jnp.bfloat16)
    out = softmax_cross_entropy(logits, labels, label_smoothing=0.1)
    assert out.dtype == jnp.float32
    ref = softmax_cross_entropy(logits.astype(jnp.float32), labels, label_smoothing=0.1)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    assert soft_target_cross_entropy(logits, jax.nn.one_hot(labels, 10)).dtype == jnp.float32
    assert confidence_penalty(logits).dtype == jnp.float32


def test_traced_label_smoothing_vmap_and_jit():
    logits, labels = _data(5)
    alphas = jnp.array([0.0, 0.1, 0.5])
    swept = jax.vmap(lambda a: softmax_cross_entropy(logits, labels, label_smoothing=a))(alphas)
    for i, a in enumerate([0.0, 0.1, 0.5]):
        np.testing.assert_allclose(swept[i], jnp.mean(_optax_route(logits, labels, a)), rtol=1e-5)
    jitted = jax.jit(lambda z, a: softmax_cross_entropy(z, labels, label_smoothing=a))
    np.testing.assert_allclose(
        jitted(logits, 0.3), jnp.mean(_optax_route(logits, labels, 0.3)), rtol=1e-5
    )


def test_out_of_range_label_gives_nan():
    logits = jnp.zeros((3, 4))
    out = softmax_cross_entropy(logits, jnp.array([0, 4, -1]), reduction="none")
    assert np.isfinite(out[0]) and np.isnan(out[1]) and np.isnan(out[2])


def test_soft_target_cross_entropy_matches_optax():
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    targets = jax.nn.softmax(jnp.asarray(rng.standard_normal((4, 6)), jnp.float32))
    np.testing.assert_allclose(
        soft_target_cross_entropy(logits, targets, reduction="none"),
        optax.softmax_cross_entropy(logits, targets),
        rtol=1e-6,
    )


def test_confidence_penalty_is_negative_entropy():
    logits = jnp.asarray(np.random.default_rng(7).standard_normal((5, 4)), jnp.float32)
    p = jax.nn.softmax(logits)
    np.testing.assert_allclose(
        confidence_penalty(logits, reduction="none"), jnp.sum(p * jnp.log(p), -1), rtol=1e-5
    )
    # minimum -log K at uniform, close to 0 for a confident prediction
    np.testing.assert_allclose(confidence_penalty(jnp.zeros((1, 4))), -np.log(4), rtol=1e-6)
    assert -1e-3 < float(confidence_penalty(jnp.array([[30.0, 0.0, 0.0]]))) <= 0.0
    # the penalty's gradient pushes a confident prediction towards lower confidence
    g = jax.grad(lambda z: confidence_penalty(z))(jnp.array([[2.0, 0.0, 0.0]]))
    assert g[0, 0] > 0  # gradient descent lowers the top logit


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2)), TypeError, "labels"),
        (lambda: softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(3, int)), ValueError, "labels"),
        (
            lambda: softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 3), int)),
            ValueError,
            "labels",
        ),
        (
            lambda: softmax_cross_entropy(
                jnp.zeros((2, 3)), jnp.zeros(2, int), label_smoothing=1.5
            ),
            ValueError,
            "label_smoothing",
        ),
        (
            lambda: softmax_cross_entropy(
                jnp.zeros((2, 3)), jnp.zeros(2, int), label_smoothing=-0.1
            ),
            ValueError,
            "label_smoothing",
        ),
        (
            lambda: softmax_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, int), reduction="avg"),
            ValueError,
            "reduction",
        ),
        (
            lambda: softmax_cross_entropy(
                jnp.zeros((2, 3)), jnp.zeros(2, int), weights=jnp.ones(3)
            ),
            ValueError,
            "weights",
        ),
        (
            lambda: softmax_cross_entropy(jnp.zeros((2, 3), int), jnp.zeros(2, int)),
            TypeError,
            "logits",
        ),
        (
            lambda: soft_target_cross_entropy(jnp.zeros((2, 3)), jnp.zeros(2, int)),
            ValueError,
            "targets",
        ),
        (lambda: confidence_penalty(jnp.zeros((2, 3)), reduction="max"), ValueError, "reduction"),
    ],
)
def test_bad_input_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
