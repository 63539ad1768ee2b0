"""Statistical properties of the dropout family's masks and noise.

Every bound is a 4-sigma bound for the stated sample size, with fixed keys: a
correct sampler passes with probability > 0.9999 per check, a biased or
correlated one (wrong keep fraction, neighbouring elements, channels or
consecutive keys related) fails.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg.functional as F
from jaxreg.functional import _bits

KEY = jax.random.key(42)


def corr(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def kept(key, shape, rate, **kw):
    return np.asarray(F.dropout(key, jnp.ones(shape), rate, **kw) != 0)


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_keep_fraction_within_4_sigma(rate, seed):
    m = kept(jax.random.key(seed), (1000, 1000), rate)
    p = 1 - rate
    assert abs(m.mean() - p) < 4 * math.sqrt(p * (1 - p) / m.size)


def test_keep_fraction_under_vmap_over_rates():
    rates = jnp.array([0.1, 0.5, 0.9])
    ys = jax.vmap(lambda r: F.dropout(KEY, jnp.ones((500, 1000)), r))(rates)
    for y, rate in zip(ys, rates.tolist(), strict=True):
        p, n = 1 - rate, y.size
        assert abs(float((y != 0).mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("rate", [0.3, 0.8])
def test_inverted_scaling_preserves_the_mean(rate):
    x = jax.random.normal(jax.random.key(5), (1000, 1000)) + 1.0
    y = F.dropout(KEY, x, rate)
    _, q = _bits.keep_threshold(rate)
    q = float(q)
    # Var(y - x) = x^2 (1 - q) / q per element
    sigma = math.sqrt(float(jnp.sum(x * x)) * (1 - q) / q) / x.size
    assert abs(float(jnp.mean(y - x))) < 4 * sigma


@pytest.mark.parametrize("lag", [1, 2, 3, 64, 999])
def test_no_correlation_between_neighbours_along_the_last_axis(lag):
    m = kept(KEY, (1000, 1000), 0.5)
    a, b = m[:, :-lag], m[:, lag:]
    assert abs(corr(a, b)) < 4 / math.sqrt(a.size)


@pytest.mark.parametrize("lag", [1, 2, 16])
def test_no_correlation_between_neighbouring_examples(lag):
    m = kept(KEY, (1000, 1000), 0.5)
    a, b = m[:-lag], m[lag:]
    assert abs(corr(a, b)) < 4 / math.sqrt(a.size)


def test_no_correlation_between_channels():
    m = kept(KEY, (64, 32, 32, 16), 0.5).reshape(-1, 16)
    c = np.corrcoef(m.T.astype(np.float64))
    off = np.abs(c[~np.eye(16, dtype=bool)])
    assert off.max() < 4 / math.sqrt(m.shape[0])


@pytest.mark.parametrize("step", [0, 1, 999])
def test_no_correlation_between_consecutive_keys(step):
    a = kept(jax.random.fold_in(KEY, step), (1000, 1000), 0.5)
    b = kept(jax.random.fold_in(KEY, step + 1), (1000, 1000), 0.5)
    assert abs(corr(a, b)) < 4 / math.sqrt(a.size)
    # nor a shifted copy of each other (checked at a few offsets along the flat index)
    fa, fb = a.ravel(), b.ravel()
    for shift in (1, 1000, 4096):
        assert abs(corr(fa[shift:], fb[:-shift])) < 4 / math.sqrt(fa.size)


def test_keep_counts_vary_across_keys_like_a_binomial():
    # 256 keys, 4096 elements each: the count's variance must be n p (1 - p)
    # (masks of different keys are independent, not permutations of one another).
    keys = jax.random.split(KEY, 256)
    counts = np.asarray(
        jax.vmap(lambda k: jnp.sum(F.dropout(k, jnp.ones(4096), 0.5) != 0))(keys), np.float64
    )
    ratio = counts.var(ddof=1) / (4096 * 0.25)
    assert abs(ratio - 1) < 4 * math.sqrt(2 / 255)
    assert abs(counts.mean() - 2048) < 4 * math.sqrt(4096 * 0.25 / 256)


def test_hash_bits_are_balanced_and_top_byte_uniform():
    h = np.asarray(_bits.hash_bits(KEY, (1000, 1000)), np.uint64).ravel()
    n = h.size
    for bit in range(32):
        ones = ((h >> np.uint64(bit)) & np.uint64(1)).mean()
        assert abs(ones - 0.5) < 4 * 0.5 / math.sqrt(n), f"bit {bit}"
    hist = np.bincount((h >> np.uint64(24)).astype(np.int64), minlength=256)
    chi2 = float((((hist - n / 256) ** 2) / (n / 256)).sum())
    assert abs(chi2 - 255) < 4 * math.sqrt(2 * 255)


# --------------------------------------------------------------------------- structured


def test_drop_path_drops_whole_examples():
    x = jnp.ones((20_000, 3, 4))
    y = np.asarray(F.drop_path(KEY, x, 0.2))
    rows = y.reshape(20_000, -1)
    dropped = (rows == 0).all(axis=1)
    assert np.all(dropped | (rows != 0).all(axis=1))  # all-or-nothing per example
    _, q = _bits.keep_threshold(0.2)
    np.testing.assert_allclose(rows[~dropped], 1 / float(q), rtol=1e-6)
    assert abs(dropped.mean() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20_000)
    assert abs(corr(dropped[:-1], dropped[1:])) < 4 / math.sqrt(20_000)


def test_spatial_dropout_drops_whole_channels():
    y = np.asarray(F.spatial_dropout(KEY, jnp.ones((512, 4, 4, 32)), 0.3))
    dropped = (y == 0).all(axis=(1, 2))  # (512, 32)
    assert np.all(dropped | (y != 0).all(axis=(1, 2)))  # all-or-nothing per channel
    n = dropped.size
    assert abs(dropped.mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    assert abs(corr(dropped[:, :-1], dropped[:, 1:])) < 4 / math.sqrt(dropped[:, 1:].size)
    assert abs(corr(dropped[:-1], dropped[1:])) < 4 / math.sqrt(dropped[1:].size)


def _fully_covered(dropped, b):
    """Union of the b x b windows (fully inside the map) that are entirely dropped."""
    h, w = dropped.shape
    out = np.zeros_like(dropped)
    for i in range(h - b + 1):
        for j in range(w - b + 1):
            if dropped[i : i + b, j : j + b].all():
                out[i : i + b, j : j + b] = True
    return out


@pytest.mark.parametrize("block", [3, 5])
def test_drop_block_drops_contiguous_blocks(block):
    y = np.asarray(F.drop_block(KEY, jnp.ones((6, 16, 16, 2)), 0.2, block_size=block))
    assert (y == 0).any()
    for n in range(6):
        for c in range(2):
            dropped = y[n, :, :, c] == 0
            # every dropped pixel lies in a whole dropped block inside the map
            np.testing.assert_array_equal(_fully_covered(dropped, block), dropped)


@pytest.mark.parametrize(("rate", "block"), [(0.1, 3), (0.1, 7), (0.3, 5)])
def test_drop_block_drops_the_requested_fraction(rate, block):
    y = np.asarray(F.drop_block(KEY, jnp.ones((256, 16, 16, 4)), rate, block_size=block))
    per_map = (y == 0).mean(axis=(1, 2)).ravel()  # 1024 independent feature maps
    sigma = per_map.std(ddof=1) / math.sqrt(per_map.size)
    assert abs(per_map.mean() - rate) < 4 * sigma
    # kept values are scaled by the realised kept fraction: the total is preserved
    np.testing.assert_allclose(y.sum(), y.size, rtol=1e-5)


def test_drop_block_seed_rate_solves_the_coverage_equation():
    from jaxreg.functional.dropouts import _coverage, _seed_rate

    np.testing.assert_allclose(_seed_rate(0.3, (10, 10), (1, 1)), 0.3, rtol=1e-6)
    cover = np.multiply.outer(_coverage(16, 5), _coverage(16, 5))
    gamma = float(_seed_rate(0.2, (16, 16), (5, 5)))
    np.testing.assert_allclose((1 - (1 - gamma) ** cover).mean(), 0.2, rtol=1e-5)
    paper = 0.2 / 25 * 256 / 144  # Ghiasi et al.'s closed form, ignoring overlaps
    assert gamma > paper


def test_drop_block_shared_across_channels():
    x = jnp.ones((8, 12, 12, 5))
    y = np.asarray(F.drop_block(KEY, x, 0.3, block_size=3, broadcast_dims=(-1,)))
    assert np.all((y == 0) == (y[..., :1] == 0))


# --------------------------------------------------------------------------- noise


def test_gaussian_dropout_moments_and_independence():
    rate = 0.3
    y = np.asarray(F.gaussian_dropout(KEY, jnp.ones((1000, 1000)), rate), np.float64)
    var = rate / (1 - rate)
    n = y.size
    assert abs(y.mean() - 1) < 4 * math.sqrt(var / n)
    assert abs(y.var() / var - 1) < 4 * math.sqrt(2 / n)
    assert abs(corr(y[:, :-1], y[:, 1:])) < 4 / math.sqrt(n)
    assert abs(corr(y[:-1], y[1:])) < 4 / math.sqrt(n)


def test_gaussian_noise_is_standard_normal_scaled():
    z = np.asarray(F.gaussian_noise(KEY, jnp.zeros((1000, 1000)), 2.0), np.float64) / 2.0
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    for k, p in ((1, 0.682689492), (2, 0.954499736), (3, 0.997300204)):
        assert abs((np.abs(z) < k).mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    other = np.asarray(F.gaussian_noise(jax.random.fold_in(KEY, 1), jnp.zeros((1000, 1000)), 1.0))
    assert abs(corr(z, other)) < 4 / math.sqrt(n)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_alpha_dropout_keeps_zero_mean_unit_variance(rate):
    x = jax.random.normal(jax.random.key(9), (1000, 1000))
    y = np.asarray(F.alpha_dropout(KEY, x, rate), np.float64)
    n = y.size
    assert abs(y.mean()) < 4 * y.std() / math.sqrt(n)
    # Var of the sample variance <= (kurtosis - 1) / n; kurtosis of y stays below 6 here
    assert abs(y.var() - 1) < 4 * math.sqrt(5 / n)
