"""Weight decay: each flavour against its update rule and against optax/PyTorch semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from tests.conftest import assert_trees_close, model_params


def _train(tx, params, steps=5, grad_fn=None):
    grad_fn = grad_fn or (lambda p, i: jax.tree.map(lambda x: jnp.sin(x + i), p))
    state = tx.init(params)
    for i in range(steps):
        u, state = tx.update(grad_fn(params, i), state, params)
        params = optax.apply_updates(params, u)
    return params


@pytest.mark.parametrize("with_mask", [False, True])
def test_decoupled_with_adam_equals_optax_adamw(with_mask):
    p = model_params()
    mask = jaxreg.by_kernels() if with_mask else None
    lr = optax.linear_schedule(1e-2, 1e-3, 5)
    ours = jaxreg.decoupled_weight_decay(optax.adam(lr), 0.05, learning_rate=lr, mask=mask)
    ref = optax.adamw(lr, weight_decay=0.05, mask=mask)
    assert_trees_close(_train(ours, p), _train(ref, p), rtol=1e-5, atol=1e-6)


def test_coupled_with_sgd_equals_l2_penalty_in_the_loss():
    p = model_params()
    lam, lr = 0.1, 0.05

    def loss(params, i):
        return sum(jnp.sum(jnp.sin(x + i) * x) for x in jax.tree.leaves(params))

    grad_plain = jax.grad(loss)
    ours = _train(
        jaxreg.coupled_weight_decay(optax.sgd(lr), lam), p, grad_fn=lambda q, i: grad_plain(q, i)
    )
    grad_pen = jax.grad(lambda q, i: loss(q, i) + lam * jaxreg.l2_penalty(q))
    ref = _train(optax.sgd(lr), p, grad_fn=grad_pen)
    assert_trees_close(ours, ref, rtol=1e-5)


def test_coupled_decay_is_preconditioned_by_adam():
    """Coupled decay goes through Adam's normalisation: with zero gradients the step
    is about lr per coordinate whatever the weight's size; decoupled is lr*lam*w."""
    p = {"w": jnp.array([0.01, 100.0])}
    zero = lambda q, i: jax.tree.map(jnp.zeros_like, q)
    coupled = _train(jaxreg.coupled_weight_decay(optax.adam(0.1), 0.01), p, 1, zero)
    np.testing.assert_allclose(p["w"] - coupled["w"], [0.1, 0.1], rtol=1e-3)
    decoupled = _train(jaxreg.decoupled_weight_decay(optax.adam(0.1), 0.01, 0.1), p, 1, zero)
    np.testing.assert_allclose(p["w"] - decoupled["w"], [1e-5, 0.1], rtol=1e-4)


def test_independent_decay_ignores_the_base_learning_rate():
    p = {"w": jnp.array([1.0, -2.0])}
    zero = lambda q, i: jax.tree.map(jnp.zeros_like, q)
    eta = optax.cosine_decay_schedule(1.0, 4)
    runs = [
        _train(jaxreg.independent_weight_decay(optax.adam(lr), 0.1, schedule=eta), p, 4, zero)
        for lr in (1e-1, 1e-4)
    ]
    assert_trees_close(runs[0], runs[1])
    factor = np.prod([1 - 0.1 * float(eta(t)) for t in range(4)])
    np.testing.assert_allclose(runs[0]["w"], np.array([1.0, -2.0]) * factor, rtol=1e-6)


def test_decoupled_decay_scales_with_learning_rate_schedule():
    p = {"w": jnp.array([2.0])}
    zero = lambda q, i: jax.tree.map(jnp.zeros_like, q)
    lr = optax.piecewise_constant_schedule(0.5, {2: 0.1})
    out = _train(jaxreg.decoupled_weight_decay(optax.sgd(lr), 0.2, lr), p, 3, zero)
    expected = 2.0 * (1 - 0.5 * 0.2) ** 2 * (1 - 0.5 * 0.1 * 0.2)
    np.testing.assert_allclose(out["w"], [expected], rtol=1e-6)


def test_masked_leaves_are_not_decayed():
    p = model_params()
    zero = lambda q, i: jax.tree.map(jnp.zeros_like, q)
    tx = jaxreg.decoupled_weight_decay(optax.sgd(0.1), 0.5, 0.1, mask=jaxreg.by_kernels())
    out = _train(tx, p, 2, zero)
    np.testing.assert_array_equal(out["Dense_0"]["bias"], p["Dense_0"]["bias"])
    np.testing.assert_array_equal(out["BatchNorm_0"]["scale"], p["BatchNorm_0"]["scale"])
    np.testing.assert_allclose(
        out["Dense_0"]["kernel"], p["Dense_0"]["kernel"] * 0.95**2, rtol=1e-6
    )


def test_decay_needs_params_and_an_optimizer():
    with pytest.raises(TypeError, match=r"optimizer must be an optax\.GradientTransformation"):
        jaxreg.decoupled_weight_decay(0.1, 0.1, 0.1)
    tx = jaxreg.coupled_weight_decay(optax.sgd(0.1), 0.1)
    p = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="coupled_weight_decay needs the current parameters"):
        tx.update(p, tx.init(p))
