"""Per-unit constraints: Keras rules on hand-computed cases, properties after every step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg

KERAS_EPS = 1e-7  # keras.backend.epsilon()


def keras_max_norm(w, max_value, axis):
    """The Keras MaxNorm rule, written out in NumPy."""
    norms = np.sqrt(np.sum(w**2, axis=axis, keepdims=True))
    desired = np.clip(norms, 0, max_value)
    return w * (desired / (KERAS_EPS + norms))


def keras_min_max_norm(w, min_value, max_value, rate, axis):
    norms = np.sqrt(np.sum(w**2, axis=axis, keepdims=True))
    desired = rate * np.clip(norms, min_value, max_value) + (1 - rate) * norms
    return w * (desired / (KERAS_EPS + norms))


def _project(tx, w):
    p = {"k": jnp.asarray(w)}
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    return np.asarray(optax.apply_updates(p, u)["k"])


def test_keep_max_norm_hand_computed_dense_columns():
    w = np.array([[3.0, 0.6], [4.0, 0.8]], np.float32)  # column norms 5 and 1
    out = _project(jaxreg.keep_max_norm(2.0), w)
    np.testing.assert_allclose(out, [[1.2, 0.6], [1.6, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(out, keras_max_norm(w, 2.0, axis=0), rtol=1e-6)
    # units inside the bound are left bit-for-bit
    np.testing.assert_array_equal(out[:, 1], w[:, 1])


@pytest.mark.parametrize(
    ("shape", "keras_axis"), [((5, 3), 0), ((3, 3, 2, 4), (0, 1, 2)), ((2, 4, 3), (0, 1))]
)
def test_keep_max_norm_equals_keras_for_dense_and_conv(shape, keras_axis):
    w = 2.0 * np.asarray(jax.random.normal(jax.random.key(1), shape))
    np.testing.assert_allclose(
        _project(jaxreg.keep_max_norm(1.5), w), keras_max_norm(w, 1.5, keras_axis), rtol=1e-5
    )
    np.testing.assert_allclose(
        _project(jaxreg.keep_max_norm(1.5, axis=keras_axis), w),
        keras_max_norm(w, 1.5, keras_axis),
        rtol=1e-5,
    )


def test_axis_presets_rows_and_whole():
    w = np.array([[3.0, 4.0], [0.3, 0.4]], np.float32)  # row norms 5 and 0.5
    np.testing.assert_allclose(
        _project(jaxreg.keep_max_norm(1.0, axis="per_input"), w),
        [[0.6, 0.8], [0.3, 0.4]],
        rtol=1e-6,
    )
    whole = _project(jaxreg.keep_max_norm(1.0, axis="whole"), w)
    np.testing.assert_allclose(np.linalg.norm(whole), 1.0, rtol=1e-6)


def test_keep_min_max_norm_equals_keras():
    w = np.asarray(jax.random.normal(jax.random.key(2), (6, 5))) * np.array([0.01, 0.1, 1, 3, 10])
    for rate in (1.0, 0.3):
        np.testing.assert_allclose(
            _project(jaxreg.keep_min_max_norm(0.5, 2.0, rate), w),
            keras_min_max_norm(w, 0.5, 2.0, rate, 0),
            rtol=1e-5,
        )


def test_keep_unit_norm_and_zero_units():
    w = np.array([[3.0, 0.0], [4.0, 0.0]], np.float32)
    out = _project(jaxreg.keep_unit_norm(), w)
    np.testing.assert_allclose(out, [[0.6, 0.0], [0.8, 0.0]], rtol=1e-6)


def test_keep_non_negative_exact():
    w = np.array([-1.0, 0.0, 2.5], np.float32)
    np.testing.assert_array_equal(_project(jaxreg.keep_non_negative(), w), [0.0, 0.0, 2.5])


shapes = st.sampled_from([(4,), (6, 3), (2, 2, 3, 5), (8, 1)])


@settings(max_examples=25, deadline=None)
@given(
    shape=shapes,
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 100.0),
    max_value=st.floats(0.1, 5.0),
)
def test_constraints_hold_after_every_step(shape, seed, scale, max_value):
    p = {"k": jnp.zeros(shape)}
    axes = tuple(range(len(shape) - 1))
    chains = {
        "max": optax.chain(optax.sgd(1.0), jaxreg.keep_max_norm(max_value)),
        "unit": optax.chain(optax.sgd(1.0), jaxreg.keep_unit_norm()),
        "minmax": optax.chain(optax.sgd(1.0), jaxreg.keep_min_max_norm(0.5 * max_value, max_value)),
        "nonneg": optax.chain(optax.sgd(1.0), jaxreg.keep_non_negative()),
    }
    for name, tx in chains.items():
        params, state = p, tx.init(p)
        for i in range(3):
            g = {"k": scale * jax.random.normal(jax.random.key(seed + i), shape)}
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
            w = np.asarray(params["k"], np.float64)
            norms = np.sqrt((w**2).sum(axis=axes)) if axes else np.abs(w)
            if name == "max":
                assert np.all(norms <= max_value * (1 + 1e-5))
            elif name == "unit":
                np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
            elif name == "minmax":
                nz = norms[norms > 0]
                assert np.all(nz <= max_value * (1 + 1e-5))
                assert np.all(nz >= 0.5 * max_value * (1 - 1e-5))
            else:
                assert np.all(w >= 0.0)


def test_constraint_ignores_masked_bias():
    p = {"Dense_0": {"kernel": 10 * jnp.ones((2, 2)), "bias": 10 * jnp.ones(2)}}
    tx = jaxreg.keep_max_norm(1.0, mask=jaxreg.by_kernels())
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    new = optax.apply_updates(p, u)
    np.testing.assert_array_equal(new["Dense_0"]["bias"], p["Dense_0"]["bias"])
    np.testing.assert_allclose(jnp.linalg.norm(new["Dense_0"]["kernel"], axis=0), 1.0, rtol=1e-6)
