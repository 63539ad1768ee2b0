"""Proximal steps: exact zeros, convergence to the lasso solution, group sparsity."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg


def _lasso_problem(n=200, d=50, k=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w_true = np.zeros(d, np.float32)
    w_true[:k] = rng.choice([-2.0, 2.0], k) * rng.uniform(0.5, 1.5, k)
    y = x @ w_true + 0.5 * rng.standard_normal(n).astype(np.float32)
    return x, y, w_true


def _lasso_coordinate_descent(x, y, lam, iters=2000):
    """Reference solution of 1/(2n)||Xw - y||^2 + lam ||w||_1 in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n, d = x.shape
    w = np.zeros(d)
    col_sq = (x**2).sum(0) / n
    r = y - x @ w
    for _ in range(iters):
        for j in range(d):
            r += x[:, j] * w[j]
            rho = x[:, j] @ r / n
            w[j] = np.sign(rho) * max(abs(rho) - lam, 0.0) / col_sq[j]
            r -= x[:, j] * w[j]
    return w


def _fit(tx, x, y, steps):
    def loss(w):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    @jax.jit
    def run(w):
        def step(carry, _):
            w, s = carry
            u, s = tx.update(jax.grad(loss)(w), s, w)
            return (optax.apply_updates(w, u), s), None

        (w, _), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=steps)
        return w

    return run(jnp.zeros(x.shape[1]))


def test_prox_l1_gives_exact_zeros_and_the_lasso_solution():
    x, y, _ = _lasso_problem()
    lam = 0.1
    lr = 1.0 / float(np.linalg.eigvalsh(x.T @ x / len(y)).max())
    prox = _fit(optax.chain(optax.sgd(lr), jaxreg.prox_l1(lam, lr)), x, y, 3000)
    reference = _lasso_coordinate_descent(x, y, lam)
    np.testing.assert_allclose(prox, reference, atol=2e-3)
    zeros = int(jnp.sum(prox == 0.0))
    assert zeros == int(np.sum(reference == 0.0))
    assert zeros >= 40
    assert bool(jnp.all(prox[:5] != 0.0))  # the true support survives


def test_subgradient_l1_gives_no_exact_zeros_where_prox_does():
    x, y, _ = _lasso_problem(seed=1)
    lam = 0.1
    lr = 1.0 / float(np.linalg.eigvalsh(x.T @ x / len(y)).max())

    def subgradient_l1():
        def update(g, s, w):
            g = jax.tree.map(lambda gi, wi: gi + lam * jnp.sign(wi), g, w)
            return optax.sgd(lr).update(g, s, w)

        return optax.GradientTransformation(optax.sgd(lr).init, update)

    w_sub = _fit(subgradient_l1(), x, y, 3000)
    w_prox = _fit(optax.chain(optax.sgd(lr), jaxreg.prox_l1(lam, lr)), x, y, 3000)
    assert int(jnp.sum(w_sub == 0.0)) <= 5
    assert int(jnp.sum(w_prox == 0.0)) >= 40


def test_prox_elastic_net_limits_and_closed_form():
    z = jnp.array([-3.0, -0.2, 0.0, 0.4, 2.0])
    zero = jnp.zeros_like(z)
    pure_l1 = jaxreg.prox_elastic_net(0.5, 1.0, l1_ratio=1.0)
    l1 = jaxreg.prox_l1(0.5, 1.0)
    np.testing.assert_allclose(
        pure_l1.update(zero, pure_l1.init(z), z)[0], l1.update(zero, l1.init(z), z)[0]
    )
    ridge = jaxreg.prox_elastic_net(0.5, 1.0, l1_ratio=0.0)
    u, _ = ridge.update(zero, ridge.init(z), z)
    np.testing.assert_allclose(z + u, z / 1.5, rtol=1e-6)
    # prox is the argmin of t*P(w) + 1/2 (w - z)^2: check against a fine grid
    t, r = 0.7, 0.4
    tx = jaxreg.prox_elastic_net(t, 1.0, l1_ratio=r)
    w = np.asarray(z + tx.update(zero, tx.init(z), z)[0])
    grid = np.linspace(-4, 4, 80001)
    for zi, wi in zip(np.asarray(z), w, strict=True):
        obj = t * (r * np.abs(grid) + (1 - r) / 2 * grid**2) + 0.5 * (grid - zi) ** 2
        assert abs(grid[obj.argmin()] - wi) < 2e-4


def test_prox_group_lasso_zeroes_whole_units():
    scale = jnp.array([0.05] * 3 + [1.0] * 3).reshape(1, 1, 1, 6)
    k = jax.random.normal(jax.random.key(0), (3, 3, 2, 6)) * scale
    p = {"conv": k}
    tx = jaxreg.prox_group_lasso(0.5, 1.0)
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    new = optax.apply_updates(p, u)["conv"]
    norms_before = jnp.linalg.norm(k.reshape(-1, 6), axis=0)
    norms_after = jnp.linalg.norm(new.reshape(-1, 6), axis=0)
    assert bool(jnp.all(new[..., :3] == 0.0))
    np.testing.assert_allclose(norms_after[3:], norms_before[3:] - 0.5, rtol=1e-5)
    # direction of surviving filters is unchanged
    dots = jnp.sum(new[..., 3:] * k[..., 3:], axis=(0, 1, 2))
    cos = dots / (norms_before[3:] * norms_after[3:])
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_prox_learning_rate_schedule_is_followed():
    p = {"w": jnp.array([1.0])}
    zero = {"w": jnp.zeros(1)}
    lr = optax.piecewise_constant_schedule(0.5, {1: 0.2})
    tx = jaxreg.prox_l1(1.0, lr)
    s = tx.init(p)
    u, s = tx.update(zero, s, p)
    p = optax.apply_updates(p, u)
    u, s = tx.update(zero, s, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p["w"], [1.0 - 0.5 - 0.1], rtol=1e-6)
