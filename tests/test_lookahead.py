"""Lookahead as a chain element: the paper's rule written out in NumPy, edge cases, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg


def _grad(w):
    """Gradient of the quadratic ``sum(c * w**2) / 2`` with uneven curvature."""
    return np.array([1.0, 0.3, 3.0], np.float32) * w


def _run(tx, w0, steps):
    params = {"w": jnp.asarray(w0)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        g = {"w": jnp.asarray(_grad(np.asarray(params["w"])))}
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(params["w"]))
    return np.stack(out), state


def _reference(w0, steps, lr, momentum, k, alpha):
    """Lookahead over SGD with heavy-ball momentum (kept across syncs), by hand."""
    w, slow, m = w0.copy(), w0.copy(), np.zeros_like(w0)
    out = []
    for i in range(steps):
        m = momentum * m + _grad(w)
        w = w - lr * m
        if (i + 1) % k == 0:
            a = alpha(i) if callable(alpha) else alpha
            slow = slow + a * (w - slow)
            w = slow.copy()
        out.append(w.copy())
    return np.stack(out)


@pytest.mark.parametrize(
    "k, alpha", [(3, 0.5), (5, 0.2), (2, lambda i: 1.0 - 0.77 * ((i + 1) / 12) ** 3)]
)
def test_lookahead_matches_the_rule_written_out(k, alpha):
    w0 = np.array([2.0, -1.0, 0.5], np.float32)
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), jaxreg.lookahead(k, alpha))
    got, state = _run(tx, w0, 12)
    want = _reference(w0, 12, 0.1, 0.9, k, alpha)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(state[1].count) == 12
    # after a sync the params are the slow weights (up to the rounding of w + (slow - w))
    np.testing.assert_allclose(state[1].slow["w"], got[(12 // k) * k - 1], rtol=1e-6)


def test_lookahead_step_size_one_is_the_inner_optimizer():
    w0 = np.array([2.0, -1.0, 0.5], np.float32)
    plain, _ = _run(optax.sgd(0.1, momentum=0.9), w0, 7)
    la, _ = _run(optax.chain(optax.sgd(0.1, momentum=0.9), jaxreg.lookahead(2, 1.0)), w0, 7)
    np.testing.assert_allclose(la, plain, rtol=1e-6)


def test_lookahead_step_size_zero_returns_to_the_start_at_every_sync():
    w0 = np.array([2.0, -1.0, 0.5], np.float32)
    got, _ = _run(optax.chain(optax.sgd(0.1), jaxreg.lookahead(3, 0.0)), w0, 9)
    for i in (2, 5, 8):
        np.testing.assert_array_equal(got[i], w0)
    assert not np.allclose(got[3], w0)  # the fast weights move in between


def test_lookahead_keeps_bfloat16_updates_with_float32_slow_weights():
    tx = optax.chain(optax.sgd(0.5), jaxreg.lookahead(2, 0.5))
    params = {"w": jnp.ones((4,), jnp.bfloat16)}
    state = tx.init(params)
    assert state[1].slow["w"].dtype == jnp.float32
    u, state = tx.update({"w": jnp.full((4,), 0.25, jnp.bfloat16)}, state, params)
    assert u["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("period", [0, -2, 1.5, True])
def test_lookahead_rejects_bad_sync_period(period):
    with pytest.raises(ValueError, match="lookahead: sync_period"):
        jaxreg.lookahead(period)


def test_lookahead_rejects_bad_step_size_and_missing_params():
    with pytest.raises(ValueError, match="lookahead: slow_step_size"):
        jaxreg.lookahead(5, 1.5)
    with pytest.raises(TypeError, match="lookahead: slow_step_size"):
        jaxreg.lookahead(5, "half")
    tx = jaxreg.lookahead()
    p = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match="lookahead needs the current parameters"):
        tx.update(p, tx.init(p), None)


def test_lookahead_slow_weights_do_not_alias_the_params():
    """A train step donates the params: the state must hold its own buffers."""
    p = {"w": jnp.ones(3)}
    slow = jaxreg.lookahead().init(p).slow["w"]
    assert slow.unsafe_buffer_pointer() != p["w"].unsafe_buffer_pointer()
