"""Clipping never increases a norm; state logs; the non-finite guard protects params and state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg
from tests.conftest import assert_trees_close, model_params


def _grads(seed, scale):
    leaves, treedef = jax.tree.flatten(model_params())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten(
        [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def _unit_norms(x):
    return np.sqrt((np.asarray(x, np.float64) ** 2).sum(axis=tuple(range(x.ndim - 1))))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3), c=st.floats(0.0, 10.0))
def test_clipping_never_increases_a_norm(seed, scale, c):
    g = _grads(seed, scale)
    p = model_params()
    before = float(jaxreg.global_norm(g))
    tx = jaxreg.clip_by_global_norm(c)
    u, state = tx.update(g, tx.init(g))
    after = float(jaxreg.global_norm(u))
    assert after <= min(before, c) * (1 + 1e-5) + 1e-7
    np.testing.assert_allclose(float(state.norm), before, rtol=1e-5)
    assert bool(state.clipped) == (before > c)
    for tx in (jaxreg.clip_by_unit_norm(c), jaxreg.clip_by_leaf_norm(c)):
        u, _ = tx.update(g, tx.init(g))
        for gl, ul in zip(jax.tree.leaves(g), jax.tree.leaves(u), strict=True):
            assert np.all(_unit_norms(ul) <= np.minimum(_unit_norms(gl), c) * (1 + 1e-5) + 1e-7)
    tx = jaxreg.adaptive_grad_clip(min(c, 1.0))
    u, _ = tx.update(g, tx.init(p), p)
    assert float(jaxreg.global_norm(u)) <= before * (1 + 1e-5)


def test_clip_by_global_norm_equals_optax():
    g = _grads(0, 10.0)
    ours, _ = jaxreg.clip_by_global_norm(2.0).update(g, jaxreg.clip_by_global_norm(2.0).init(g))
    ref, _ = optax.clip_by_global_norm(2.0).update(g, optax.clip_by_global_norm(2.0).init(g))
    assert_trees_close(ours, ref, rtol=1e-6)


def test_leaf_clip_is_per_leaf():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    tx = jaxreg.clip_by_leaf_norm(1.0)
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(u["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(u["b"], g["b"])


@pytest.mark.parametrize("check_updates", [False, True])
def test_skip_non_finite_protects_params_and_optimizer_state(check_updates):
    p = {"w": jnp.array([1.0, 2.0])}
    tx = jaxreg.skip_non_finite(optax.adam(0.1), check_updates=check_updates)
    good = {"w": jnp.array([0.5, -0.5])}
    s = tx.init(p)
    u, s = tx.update(good, s, p)
    p = optax.apply_updates(p, u)
    s_before = s
    for bad in ({"w": jnp.array([jnp.nan, 1.0])}, {"w": jnp.array([jnp.inf, 1.0])}):
        u, s = tx.update(bad, s, p)
        np.testing.assert_array_equal(u["w"], [0.0, 0.0])
        assert_trees_close(s.inner_state, s_before.inner_state)
    assert int(s.skipped) == 2 and int(s.consecutive) == 2 and not bool(s.last_finite)
    # the next finite step equals the step an unguarded Adam takes from the pre-NaN state
    u, s = tx.update(good, s, p)
    u_ref, _ = optax.adam(0.1).update(good, s_before.inner_state, p)
    assert_trees_close(u, u_ref)
    assert int(s.skipped) == 2 and int(s.consecutive) == 0 and bool(s.last_finite)


@pytest.mark.parametrize("check_updates", [False, True])
def test_skip_non_finite_under_jit_and_vmap(check_updates):
    p = {"w": jnp.ones(3)}
    tx = jaxreg.skip_non_finite(optax.sgd(1.0), check_updates=check_updates)
    g = {"w": jnp.array([[1.0, 1.0, 1.0], [jnp.nan, 0.0, 0.0]])}

    @jax.jit
    def one(gi):
        return tx.update({"w": gi}, tx.init(p), p)

    u, s = jax.vmap(one)(g["w"])
    np.testing.assert_array_equal(u["w"][0], [-1.0, -1.0, -1.0])
    np.testing.assert_array_equal(u["w"][1], [0.0, 0.0, 0.0])
    assert s.skipped.tolist() == [0, 1]


def test_overflow_inside_the_optimizer_is_caught_with_check_updates():
    """Finite gradients whose update or state overflows are skipped with check_updates."""
    p = {"w": jnp.ones(2)}
    g = {"w": jnp.array([10.0, 1.0])}
    tx = jaxreg.skip_non_finite(optax.scale(3e38), check_updates=True)
    u, s = tx.update(g, tx.init(p), p)
    np.testing.assert_array_equal(u["w"], [0.0, 0.0])
    assert int(s.skipped) == 1
    # Adam's second moment overflows for |g| ~ 1e20 although g is finite
    adam = jaxreg.skip_non_finite(optax.adam(0.1), check_updates=True)
    s0 = adam.init(p)
    u, s = adam.update({"w": jnp.array([1e20, 1.0])}, s0, p)
    assert int(s.skipped) == 1
    assert_trees_close(s.inner_state, s0.inner_state)
    # the default checks the gradients only, and lets this one through
    plain = jaxreg.skip_non_finite(optax.adam(0.1))
    _, s = plain.update({"w": jnp.array([1e20, 1.0])}, plain.init(p), p)
    assert int(s.skipped) == 0
