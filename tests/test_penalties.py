"""Penalties: values against direct formulas, gradients, masks, jit/vmap, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg
from tests.conftest import assert_trees_close, model_params


def _flat(params):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(params)])


def test_l1_l2_elastic_net_match_formulas(params):
    w = _flat(params)
    np.testing.assert_allclose(jaxreg.l1_penalty(params), np.abs(w).sum(), rtol=1e-6)
    np.testing.assert_allclose(jaxreg.l2_penalty(params), 0.5 * (w**2).sum(), rtol=1e-6)
    en = jaxreg.elastic_net_penalty(params, l1_ratio=0.3)
    np.testing.assert_allclose(en, 0.3 * np.abs(w).sum() + 0.35 * (w**2).sum(), rtol=1e-6)


def test_l2_gradient_is_params(params):
    assert_trees_close(jax.grad(jaxreg.l2_penalty)(params), params)


def test_group_lasso_sums_column_and_filter_norms(params):
    dense = np.asarray(params["Dense_0"]["kernel"])
    conv = np.asarray(params["Conv_0"]["kernel"])
    mask = jaxreg.by_ndim(2)
    expected = (
        np.linalg.norm(dense, axis=0).sum()
        + np.linalg.norm(conv.reshape(-1, conv.shape[-1]), axis=0).sum()
    )
    np.testing.assert_allclose(jaxreg.group_lasso_penalty(params, mask=mask), expected, rtol=1e-6)
    rows = np.linalg.norm(dense, axis=1).sum()
    got = jaxreg.group_lasso_penalty({"k": params["Dense_0"]["kernel"]}, axis="per_input")
    np.testing.assert_allclose(got, rows, rtol=1e-6)


def test_group_lasso_gradient_finite_at_zero_group():
    w = jnp.array([[0.0, 3.0], [0.0, 4.0]])
    g = jax.grad(jaxreg.group_lasso_penalty)({"k": w})["k"]
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g[:, 0], 0.0)
    np.testing.assert_allclose(g[:, 1], [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("mode", ["columns", "rows"])
def test_orthogonal_penalty_matches_gram(mode):
    w = np.asarray(jax.random.normal(jax.random.key(3), (6, 4)))
    gram = w.T @ w if mode == "columns" else w @ w.T
    expected = ((gram - np.eye(gram.shape[0])) ** 2).sum()
    got = jaxreg.orthogonal_penalty({"k": jnp.asarray(w), "b": jnp.ones(4)}, mode=mode)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    q, _ = np.linalg.qr(w)  # orthonormal columns
    assert float(jaxreg.orthogonal_penalty({"k": jnp.asarray(q)})) < 1e-10


def test_spectral_penalty_matches_svd_and_gradient():
    w = jax.random.normal(jax.random.key(4), (8, 5))
    u, s, vt = np.linalg.svd(np.asarray(w))
    np.testing.assert_allclose(jaxreg.spectral_penalty({"k": w}, n_iter=100), s[0] ** 2, rtol=1e-4)
    grad = jax.grad(lambda p: jaxreg.spectral_penalty(p, n_iter=100))({"k": w})["k"]
    expected = 2 * s[0] * np.outer(u[:, 0], vt[0])
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-4)


def test_conv_kernel_viewed_as_fan_in_by_units():
    k = jax.random.normal(jax.random.key(5), (3, 3, 2, 4))
    m = np.asarray(k).reshape(18, 4)
    s = np.linalg.svd(m, compute_uv=False)
    np.testing.assert_allclose(jaxreg.spectral_penalty({"k": k}, n_iter=200), s[0] ** 2, rtol=1e-3)


ALL_PENALTIES = [
    jaxreg.l1_penalty,
    jaxreg.l2_penalty,
    jaxreg.elastic_net_penalty,
    jaxreg.group_lasso_penalty,
    jaxreg.orthogonal_penalty,
    jaxreg.spectral_penalty,
]


@pytest.mark.parametrize("penalty", ALL_PENALTIES, ids=lambda f: f.__name__)
def test_penalty_mask_selects_leaves(penalty, params):
    kernels = {"Dense_0": {"kernel": params["Dense_0"]["kernel"]}}
    only_dense = jaxreg.by_path(r"^Dense_0/kernel$")
    np.testing.assert_allclose(penalty(params, mask=only_dense), penalty(kernels), rtol=1e-6)


@pytest.mark.parametrize("penalty", ALL_PENALTIES, ids=lambda f: f.__name__)
def test_penalty_jit_grad_vmap_and_dtypes(penalty):
    p32 = model_params(1)
    value = penalty(p32)
    assert value.dtype == jnp.float32 and value.shape == ()
    np.testing.assert_allclose(jax.jit(penalty)(p32), value, rtol=1e-5)
    grads = jax.grad(penalty)(p32)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p32, model_params(2))
    both = jax.vmap(penalty)(stacked)
    np.testing.assert_allclose(both[0], value, rtol=1e-4)
    np.testing.assert_allclose(both[1], penalty(model_params(2)), rtol=1e-4)
    bf16 = penalty(model_params(1, dtype=jnp.bfloat16))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, value, rtol=5e-2)


def test_elastic_net_ratio_can_be_traced(params):
    ratios = jnp.array([0.0, 0.5, 1.0])
    vals = jax.vmap(lambda r: jaxreg.elastic_net_penalty(params, l1_ratio=r))(ratios)
    np.testing.assert_allclose(vals[0], jaxreg.l2_penalty(params), rtol=1e-6)
    np.testing.assert_allclose(vals[2], jaxreg.l1_penalty(params), rtol=1e-6)


def test_strength_scaled_l2_gradient_equals_add_l2_decay(params):
    lam = 0.3
    g = jax.tree.map(jnp.ones_like, params)
    tx = jaxreg.add_l2_decay(lam)
    u, _ = tx.update(g, tx.init(params), params)
    expected = jax.tree.map(
        lambda a, b: a + b, g, jax.grad(lambda p: lam * jaxreg.l2_penalty(p))(params)
    )
    assert_trees_close(u, expected)
