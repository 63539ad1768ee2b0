"""Tests for jaxreg.augment mix, color and policies: properties, references, errors."""

import colorsys
import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxreg.augment import policies
from jaxreg.augment.color import color_jitter, gaussian_noise, hsv_to_rgb, rgb_to_hsv
from jaxreg.augment.mix import cutmix, mixup
from jaxreg.augment.policies import rand_augment, trivial_augment
from tests.conftest import run_on_cpu_devices


def _images(n=6, h=8, w=8, c=3, dtype=jnp.float32, seed=1):
    # NumPy test data: every new shape of an eager jax.random call costs a compile
    x = jnp.asarray(np.random.default_rng(seed).uniform(size=(n, h, w, c)), jnp.float32)
    return (x * 255).astype(jnp.uint8) if dtype == jnp.uint8 else x.astype(dtype)


# --------------------------------------------------------------------------- mixup


@pytest.mark.parametrize("mode", ["batch", "example"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.uint8])
def test_mixup_labels_sum_to_one_and_images_are_the_convex_combination(mode, dtype):
    n = 6
    x = _images(n, dtype=dtype)
    xm, ym = mixup(jax.random.key(0), x, jnp.arange(n), num_classes=n, alpha=0.4, mode=mode)
    assert xm.dtype == dtype and xm.shape == x.shape
    assert ym.dtype == jnp.float32 and ym.shape == (n, n)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
    lam = ym[jnp.arange(n), jnp.arange(n)]  # weight of the example's own class
    np.testing.assert_allclose(ym[jnp.arange(n), jnp.arange(n)[::-1]], 1.0 - lam, atol=1e-6)
    xf = x.astype(jnp.float32)
    lx = lam[:, None, None, None]
    expected = lx * xf + (1.0 - lx) * xf[::-1]
    atol = 0.5 + 1e-3 if dtype == jnp.uint8 else 1e-6
    np.testing.assert_allclose(xm.astype(jnp.float32), expected, atol=atol)
    if mode == "batch":
        np.testing.assert_allclose(lam, lam[0], atol=1e-6)
    else:
        assert len(np.unique(np.round(np.asarray(lam), 6))) == n  # one draw per example


def test_mixup_soft_labels_and_p():
    x = _images(4)
    soft = jax.nn.softmax(
        jnp.asarray(np.random.default_rng(2).standard_normal((4, 5)), jnp.float32)
    )
    _xm, ym = mixup(jax.random.key(1), x, soft, alpha=1.0)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
    x0, y0 = mixup(jax.random.key(1), x, soft, p=0.0)
    np.testing.assert_array_equal(x0, x)
    np.testing.assert_allclose(y0, soft, rtol=1e-6)


def test_mixup_lambda_distribution_follows_beta():
    # the own-class weight over many examples ~ Beta(alpha, alpha): mean 1/2, var 1/(4(2a+1))
    n, alpha = 2000, 0.5
    x = jnp.zeros((n, 1, 1, 1))
    _, ym = mixup(
        jax.random.key(3), x, jnp.arange(n) % 2, num_classes=2, alpha=alpha, mode="example"
    )
    own = np.asarray(ym[jnp.arange(n), jnp.arange(n) % 2])[: n // 2 - 1]
    var = 1.0 / (4 * (2 * alpha + 1))
    assert abs(own.mean() - 0.5) < 4 * np.sqrt(var / own.size)
    assert abs(own.var() - var) < 0.2 * var


# --------------------------------------------------------------------------- cutmix


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    alpha=st.sampled_from([0.3, 1.0, 3.0]),
    mode=st.sampled_from(["batch", "example"]),
)
def test_cutmix_label_weight_equals_pasted_area(seed, alpha, mode):
    n, h, w = 6, 7, 10
    x = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None], (n, h, w, 2))
    xm, ym = cutmix(jax.random.key(seed), x, jnp.eye(n), alpha=alpha, mode=mode)
    np.testing.assert_allclose(ym.sum(-1), 1.0, rtol=1e-6)
    partner = np.arange(n)[::-1]
    for i in range(n):
        pasted = np.asarray(xm[i, :, :, 0] == partner[i])
        np.testing.assert_allclose(ym[i, partner[i]], pasted.mean(), atol=1e-6)
        np.testing.assert_allclose(ym[i, i], 1.0 - pasted.mean(), atol=1e-6)
        if pasted.any():  # the pasted region is one axis-aligned rectangle
            rows, cols = np.nonzero(pasted)
            assert pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    if mode == "batch":
        np.testing.assert_allclose(ym[0, partner[0]], ym[1, partner[1]], atol=1e-6)


def test_cutmix_example_mode_draws_per_example_and_keeps_dtype():
    x = _images(16, dtype=jnp.uint8)
    xm, ym = cutmix(jax.random.key(5), x, jnp.arange(16), num_classes=16, mode="example")
    assert xm.dtype == jnp.uint8
    assert len(np.unique(np.asarray(ym[jnp.arange(16), jnp.arange(16)]))) > 4


def test_cutmix_area_follows_one_minus_lambda_on_average():
    # without clipping the box area is ~ (1 - lam) HW; clipping only shrinks it
    n = 4000
    x = jnp.zeros((n, 32, 32, 1))
    _, ym = cutmix(jax.random.key(9), x, jnp.arange(n) % 2, num_classes=2, mode="example")
    pasted = 1.0 - np.asarray(ym[jnp.arange(n), jnp.arange(n) % 2])[: n // 2 - 1]
    assert 0.25 < pasted.mean() < 0.5  # E[1 - lam] = 0.5 before clipping


# --------------------------------------------------------------------------- colour


def test_hsv_round_trip_matches_colorsys():
    rgb = np.random.default_rng(0).uniform(size=(64, 3)).astype(np.float32)
    hsv = np.asarray(rgb_to_hsv(jnp.asarray(rgb)))
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, ref, atol=1e-5)
    np.testing.assert_allclose(hsv_to_rgb(jnp.asarray(hsv)), rgb, atol=1e-5)


def test_brightness_factors_per_example_within_range():
    x = jnp.full((8, 8, 8, 3), 0.4)
    y = color_jitter(jax.random.key(0), x, brightness=0.5)
    f = np.asarray(y[:, 0, 0, 0] / 0.4)
    np.testing.assert_allclose(y, f[:, None, None, None] * x, rtol=1e-5)
    assert f.min() >= 0.5 - 1e-6 and f.max() <= 1.5 + 1e-6
    assert len(np.unique(np.round(f, 5))) == 8 and f.std() > 0.1


def test_contrast_and_saturation_are_blends_with_gray():
    x = _images(8, seed=3) * 0.5 + 0.25  # stays inside [0, 1] after the blends
    gray = x @ jnp.array([0.299, 0.587, 0.114])
    yc = color_jitter(jax.random.key(1), x, contrast=0.5)
    m = gray.mean(axis=(1, 2))[:, None, None, None]
    c = (yc - m) / (x - m)
    np.testing.assert_allclose(c, c[:, :1, :1, :1] * jnp.ones_like(c), rtol=1e-3, atol=1e-4)
    ys = color_jitter(jax.random.key(1), x, saturation=0.5)
    np.testing.assert_allclose(ys @ jnp.array([0.299, 0.587, 0.114]), gray, atol=1e-5)


def test_hue_shift_keeps_value_and_saturation():
    x = _images(8, seed=4)
    y = color_jitter(jax.random.key(2), x, hue=jnp.float32(0.3))
    hx, hy = rgb_to_hsv(x), rgb_to_hsv(y)
    np.testing.assert_allclose(hy[..., 1:], hx[..., 1:], atol=1e-4)
    d = np.asarray(jnp.mod(hy[..., 0] - hx[..., 0] + 0.5, 1.0) - 0.5)
    per_image = d.reshape(8, -1)
    sat = np.asarray(hx[..., 1] > 0.05).reshape(8, -1)
    for i in range(8):
        np.testing.assert_allclose(per_image[i][sat[i]], np.median(per_image[i][sat[i]]), atol=2e-3)
    assert np.abs(np.median(per_image, axis=1)).max() <= 0.3 + 1e-3


def _np_color_jitter(x, b, c, s, d, top):
    """torchvision's ColorJitter rules on one HWC float image, hue through colorsys."""
    luma = np.array([0.299, 0.587, 0.114])
    x = np.clip(b * x, 0, top)
    x = np.clip(c * x + (1 - c) * (x @ luma).mean(), 0, top)
    x = np.clip(s * x + (1 - s) * (x @ luma)[..., None], 0, top)
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in x.reshape(-1, 3) / top])
    hsv[:, 0] = np.mod(hsv[:, 0] + d, 1.0)
    rgb = np.array([colorsys.hsv_to_rgb(*px) for px in hsv]) * top
    return rgb.reshape(x.shape)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.uint8])
def test_color_jitter_equals_per_pixel_reference(dtype):
    x = _images(4, h=6, w=5, dtype=dtype, seed=7)
    key = jax.random.key(11)
    y = color_jitter(key, x, brightness=0.4, contrast=0.5, saturation=0.6, hue=0.2)
    # the kernel's draw: one uniform row per parameter, one column per example
    u = np.asarray(jax.random.uniform(key, (5, 4), jnp.float32), np.float64)
    top = 255.0 if dtype == jnp.uint8 else 1.0
    for i in range(4):
        ref = _np_color_jitter(
            np.asarray(x[i], np.float64),
            0.6 + 0.8 * u[0, i],
            0.5 + 1.0 * u[1, i],
            0.4 + 1.2 * u[2, i],
            0.2 * (2 * u[3, i] - 1),
            top,
        )
        if dtype == jnp.uint8:  # rounding may flip by one level
            assert np.abs(np.asarray(y[i], np.int32) - np.round(ref)).max() <= 1
        else:
            np.testing.assert_allclose(y[i], ref, atol=2e-5)


def test_color_jitter_identity_cases_and_dtypes():
    x = _images(8)
    np.testing.assert_array_equal(color_jitter(jax.random.key(0), x), x)
    np.testing.assert_array_equal(
        color_jitter(jax.random.key(0), x, brightness=0.9, hue=jnp.float32(0.2), p=0.0), x
    )
    # a traced hue of 0 (conversion runs) equals the static 0 (conversion skipped)
    np.testing.assert_allclose(
        color_jitter(jax.random.key(0), x, saturation=0.3, hue=jnp.float32(0.0)),
        color_jitter(jax.random.key(0), x, saturation=0.3),
        atol=1e-5,
    )
    xu = _images(8, dtype=jnp.uint8)
    yu = color_jitter(jax.random.key(0), xu, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    assert yu.dtype == jnp.uint8 and yu.shape == xu.shape
    g = _images(8, c=1)
    assert (
        color_jitter(jax.random.key(0), g, contrast=0.4, saturation=0.4, hue=0.1).shape == g.shape
    )


def test_gaussian_noise_scale_clipping_and_p():
    shape = (64, 8, 8, 3)
    xu = jnp.full(shape, 128, jnp.uint8)
    yu = np.asarray(gaussian_noise(jax.random.key(0), xu, stddev=10.0), np.float32)
    assert abs(yu.std() - 10.0) < 0.5
    edge = gaussian_noise(jax.random.key(0), jnp.full(shape, 250, jnp.uint8), stddev=50.0)
    assert edge.dtype == jnp.uint8 and int(edge.max()) == 255  # clipped, not wrapped
    assert int(edge.min()) < 250
    xf = jnp.zeros(shape)
    yf = np.asarray(gaussian_noise(jax.random.key(0), xf, stddev=0.03))
    assert abs(yf.std() - 0.03) < 0.002 and yf.min() < 0  # floats are not clipped
    np.testing.assert_array_equal(gaussian_noise(jax.random.key(0), xf, stddev=1.0, p=0.0), xf)
    half = np.asarray(gaussian_noise(jax.random.key(1), xf, stddev=1.0, p=0.5))
    frac = np.mean(np.any(half != 0, axis=(1, 2, 3)))
    assert abs(frac - 0.5) < 4 * 0.0625  # 4 sigma for 64 examples


# --------------------------------------------------------------------------- policies


def _ref_equalize(img):
    """torchvision's _scale_channel / equalize, transcribed to NumPy, one uint8 HWC image."""
    out = np.empty_like(img)
    for c in range(img.shape[-1]):
        ch = img[..., c].astype(np.int64)
        hist = np.bincount(ch.ravel(), minlength=256)
        nonzero = hist[hist != 0]
        step = nonzero[:-1].sum() // 255
        if step == 0:
            out[..., c] = ch
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
        out[..., c] = lut[ch]
    return out


@functools.partial(jax.jit, static_argnames="wide")
def _op_jit(x, idx, level, sign, wide):
    return jax.vmap(lambda im: policies._apply_one(im, idx, level, sign, wide))(x)


def _op(name, x, level, sign=1.0, wide=0):
    idx = jnp.int32(policies.OPS.index(name))
    return _op_jit(x.astype(jnp.float32), idx, jnp.float32(level), jnp.float32(sign), wide)


def test_equalize_posterize_solarize_autocontrast_match_references():
    x = np.array(_images(3, h=12, w=12, dtype=jnp.uint8, seed=7))
    x[1] = x[1] // 4 + 30  # low-contrast image
    x[2, ..., 0] = 9  # a constant channel
    eq = np.asarray(_op("equalize", jnp.asarray(x), 0.0))
    np.testing.assert_array_equal(eq, np.stack([_ref_equalize(im) for im in x]))
    post = np.asarray(_op("posterize", jnp.asarray(x), 1.0))  # 8 -> 4 bits
    np.testing.assert_array_equal(post, x & 0xF0)
    sol = np.asarray(_op("solarize", jnp.asarray(x), 0.5))
    np.testing.assert_array_equal(sol, np.where(x >= 127.5, 255 - x, x))
    ac = np.asarray(_op("autocontrast", jnp.asarray(x), 0.0))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    ref = np.where(hi > lo, (x - lo) * 255.0 / np.maximum(hi - lo, 1), x)
    np.testing.assert_allclose(ac, ref, atol=1e-3)


def test_geometric_ops_translate_and_rotate_direction():
    x = jnp.arange(3 * 12 * 12 * 3, dtype=jnp.float32).reshape(3, 12, 12, 3) % 251 + 1
    # TrivialAugment wide: translate 32 * level pixels; level 1/16 -> 2 pixels right
    t = _op("translate_x", x, 1 / 16, 1.0, wide=1)
    np.testing.assert_array_equal(t[:, :, 2:], x[:, :, :-2])
    np.testing.assert_array_equal(t[:, :, :2], 0.0)
    # rotate 90 degrees (wide: 135 * 2/3) counter-clockwise == np.rot90
    r = _op("rotate", x, 2 / 3, 1.0, wide=1)
    np.testing.assert_array_equal(r, np.rot90(np.asarray(x), k=1, axes=(1, 2)))
    assert np.array_equal(_op("identity", x, 0.7), x)


@pytest.mark.parametrize(
    ("fn", "dtype"), [(rand_augment, jnp.uint8), (trivial_augment, jnp.float32)]
)
def test_policies_dtype_determinism_and_per_example_draws(fn, dtype):
    x = jnp.broadcast_to(_images(1, h=10, w=10, dtype=dtype), (16, 10, 10, 3))
    y = fn(jax.random.key(0), x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, fn(jax.random.key(0), x))
    assert not np.array_equal(y, fn(jax.random.key(1), x))
    distinct = {np.asarray(im).tobytes() for im in y}
    assert len(distinct) >= 6  # identical inputs, different draws per example
    if dtype == jnp.float32:
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_rand_augment_zero_ops_is_identity_and_traced_magnitude():
    x = _images(4, dtype=jnp.uint8)
    np.testing.assert_array_equal(rand_augment(jax.random.key(0), x, num_ops=0), x)
    swept = jax.vmap(lambda m: rand_augment(jax.random.key(0), x, num_ops=1, magnitude=m))(
        jnp.array([0.0, 9.0])
    )
    np.testing.assert_array_equal(
        swept[1], rand_augment(jax.random.key(0), x, num_ops=1, magnitude=9)
    )


# --------------------------------------------------------------------------- transforms


def _all_ops(key, x, labels):
    k = jax.random.split(key, 6)
    y = color_jitter(k[0], x, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    y = gaussian_noise(k[1], y, stddev=4.0)
    y = rand_augment(k[2], y, num_ops=2, magnitude=9)
    y = trivial_augment(k[5], y)
    y, lab = mixup(k[3], y, labels, num_classes=5)
    y, lab = cutmix(k[4], y, lab, mode="example")
    return y, lab


def test_composed_ops_under_vmap_and_scan_match_single_calls():
    # the public functions run jitted kernels; here they nest in one jit(scan(vmap(...)))
    x = _images(4, dtype=jnp.uint8)
    labels = jnp.array([0, 1, 2, 3])
    key = jax.random.key(0)

    def step(carry, i):
        keys = jax.random.split(jax.random.fold_in(key, i), 2)
        y, lab = jax.vmap(_all_ops, in_axes=(0, None, None))(keys, x, labels)
        return carry + jnp.sum(lab), y

    total, ys = jax.jit(lambda: jax.lax.scan(step, jnp.float32(0.0), jnp.arange(2)))()
    np.testing.assert_allclose(total, 16.0, rtol=1e-5)  # soft labels sum to 1 per example
    for i in range(2):
        keys = jax.random.split(jax.random.fold_in(key, i), 2)
        for j in range(2):
            single = np.asarray(_all_ops(keys[j], x, labels)[0], np.float32)
            # same draws; fusion may move a value across a uint8 rounding boundary
            np.testing.assert_allclose(np.asarray(ys[i, j], np.float32), single, atol=1.0)
    assert not np.array_equal(ys[0, 0], ys[0, 1])  # different keys, different draws


SHARDED = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxreg.augment.color import color_jitter
    from jaxreg.augment.mix import cutmix, mixup
    from jaxreg.augment.policies import rand_augment, trivial_augment

    def f(key, x, lab):
        k = jax.random.split(key, 5)
        a = color_jitter(k[0], x, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
        d, ld = mixup(k[1], x, lab, num_classes=8, mode="example")
        e, le = cutmix(k[2], x, lab, num_classes=8, mode="example")
        r = rand_augment(k[3], x, num_ops=2, magnitude=9)
        t = trivial_augment(k[4], x)
        return a, d, ld, e, le, r, t

    x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3)), jnp.uint8)
    lab = jnp.arange(16) % 8
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
    ls = jax.device_put(lab, NamedSharding(mesh, P("batch")))
    ref = jax.jit(f)(jax.random.key(0), x, lab)
    out = jax.jit(f)(jax.random.key(0), xs, ls)
    equal = [bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(ref, out)]
    print("RESULT " + json.dumps({"devices": len(jax.devices()), "equal": equal}))
    """
)


def test_sharded_batch_equals_single_device():
    report = run_on_cpu_devices(SHARDED, devices=4)
    assert report["devices"] == 4
    assert all(report["equal"]), report


# --------------------------------------------------------------------------- errors

_X = jnp.zeros((2, 4, 4, 3))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: mixup(jax.random.key(0), jnp.zeros((4, 4, 3)), jnp.eye(4)), ValueError, "images"),
        (lambda: mixup(jax.random.key(0), _X.astype(jnp.int32), jnp.eye(2)), TypeError, "images"),
        (lambda: mixup(jax.random.key(0), _X, jnp.array([0, 1])), ValueError, "num_classes"),
        (lambda: mixup(jax.random.key(0), _X, jnp.eye(3)), ValueError, "labels"),
        (lambda: mixup(jax.random.key(0), _X, jnp.eye(2), alpha=0.0), ValueError, "alpha"),
        (lambda: mixup(jax.random.key(0), _X, jnp.eye(2), p=1.5), ValueError, "p"),
        (lambda: mixup(jax.random.key(0), _X, jnp.eye(2), mode="elem"), ValueError, "mode"),
        (lambda: cutmix(jax.random.key(0), _X, jnp.eye(2), p=-0.1), ValueError, "p"),
        (lambda: cutmix(jax.random.key(0), _X, jnp.eye(2), alpha=-1.0), ValueError, "alpha"),
        (lambda: cutmix(jax.random.key(0), _X, jnp.ones((2, 2, 2))), ValueError, "labels"),
        (lambda: color_jitter(jax.random.key(0), jnp.zeros((2, 4, 4, 4))), ValueError, "channels"),
        (lambda: color_jitter(jax.random.key(0), jnp.zeros((4, 4, 3))), ValueError, "images"),
        (lambda: color_jitter(jax.random.key(0), _X.astype(jnp.int8)), TypeError, "images"),
        (lambda: color_jitter(jax.random.key(0), _X, p=2.0), ValueError, "p"),
        (lambda: color_jitter(jax.random.key(0), _X, hue=0.6), ValueError, "hue"),
        (lambda: color_jitter(jax.random.key(0), _X, brightness=-0.1), ValueError, "brightness"),
        (lambda: color_jitter(jax.random.key(0), _X, saturation=-1), ValueError, "saturation"),
        (lambda: gaussian_noise(jax.random.key(0), _X, stddev=-1.0), ValueError, "stddev"),
        (lambda: gaussian_noise(jax.random.key(0), _X, stddev=0.1, p=1.1), ValueError, "p"),
        (lambda: gaussian_noise(jax.random.key(0), _X[0], stddev=0.1), ValueError, "images"),
        (lambda: rand_augment(jax.random.key(0), _X, magnitude=31), ValueError, "magnitude"),
        (lambda: rand_augment(jax.random.key(0), _X, num_ops=-1), ValueError, "num_ops"),
        (lambda: rand_augment(jax.random.key(0), jnp.zeros((2, 4, 4, 2))), ValueError, "channels"),
        (lambda: trivial_augment(jax.random.key(0), _X.astype(jnp.int32)), TypeError, "images"),
        (lambda: trivial_augment(jax.random.key(0), _X, num_magnitude_bins=1), ValueError, "bins"),
    ],
)
def test_bad_input_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
