"""Geometric and occlusion augmentation, and the compose pipeline.

Properties (a crop is a shifted window of the padded image, flipping twice is the
identity, an identity affine is the identity, the erased fraction lies in the
requested range), equivalences (fused crop+flip == crop then flip, bilinear
affine == scipy's map_coordinates, jit == eager, vmap over keys, inside
``lax.scan``, a batch sharded over 8 devices == unsharded) and argument errors.
"""

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from jaxreg.augment.erasing import cutout, random_erasing
from jaxreg.augment.geometric import (
    affine_matrices,
    alternating_flip,
    flip_translate_views,
    flip_views,
    random_affine,
    random_crop,
    random_crop_flip,
    random_flip,
)
from jaxreg.augment.pipeline import compose
from tests.conftest import run_on_cpu_devices

KEY = jax.random.key(0)


def _images(n=6, h=8, w=10, c=3, dtype=jnp.uint8, seed=1):
    x = jax.random.randint(jax.random.key(seed), (n, h, w, c), 0, 256)
    return x.astype(jnp.uint8) if dtype == jnp.uint8 else (x / 255.0).astype(dtype)


def _windows(x, padding, mode, fill=0):
    """All crops of the padded image, as {(dy, dx): window}, NumPy reference."""
    pad = ((padding, padding), (padding, padding), (0, 0))
    kw = {"constant_values": fill} if mode == "constant" else {}
    xp = np.pad(np.asarray(x), pad, mode=mode, **kw)
    h, w = x.shape[:2]
    return {
        (dy, dx): xp[dy : dy + h, dx : dx + w]
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
    }


# --------------------------------------------------------------------------- crop


@pytest.mark.parametrize("mode, dtype", [("reflect", jnp.uint8), ("constant", jnp.float32)])
def test_crop_is_a_shifted_window_of_the_padded_image(mode, dtype):
    x = _images(dtype=dtype)
    y = random_crop(KEY, x, padding=3, mode=mode, fill=7 if dtype == jnp.uint8 else 0.5)
    assert y.shape == x.shape and y.dtype == x.dtype
    fill = 7 if dtype == jnp.uint8 else 0.5
    offsets = []
    for n in range(x.shape[0]):
        wins = _windows(x[n], 3, mode, fill)
        hits = [o for o, win in wins.items() if np.array_equal(win, np.asarray(y[n]))]
        assert hits, f"example {n} is not a window of its padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 2  # different examples, different draws


def test_crop_padding_zero_is_identity():
    x = _images()
    np.testing.assert_array_equal(random_crop(KEY, x, padding=0), x)


def test_same_key_same_output_different_key_different_output():
    x = _images()
    a, b = random_crop_flip(KEY, x), random_crop_flip(KEY, x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_crop_flip(jax.random.key(1), x))


@pytest.mark.parametrize(
    "padding, mode, horizontal, vertical",
    [(3, "reflect", True, False), (2, "constant", True, True)],
)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_fused_crop_flip_equals_crop_then_flip(padding, mode, horizontal, vertical, seed):
    x = _images()
    key = jax.random.key(seed)
    k_crop, k_flip = jax.random.split(key)
    flip = functools.partial(random_flip, horizontal=horizontal, vertical=vertical, p=0.5)
    expected = flip(k_flip, random_crop(k_crop, x, padding=padding, mode=mode, fill=9))
    got = random_crop_flip(
        key, x, padding=padding, mode=mode, fill=9, horizontal=horizontal, vertical=vertical
    )
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- flip


def test_flip_twice_is_identity_and_p_extremes():
    x = _images(dtype=jnp.float32)
    flip = functools.partial(random_flip, horizontal=True, vertical=True)
    np.testing.assert_array_equal(flip(KEY, flip(KEY, x)), x)
    np.testing.assert_array_equal(random_flip(KEY, x, p=0.0), x)
    np.testing.assert_array_equal(random_flip(KEY, x, p=1.0), x[:, :, ::-1])
    np.testing.assert_array_equal(
        random_flip(KEY, x, horizontal=False, vertical=True, p=1.0), x[:, ::-1]
    )


def test_flip_rate_within_4_sigma():
    n, p = 4000, 0.3
    x = jnp.broadcast_to(jnp.arange(2, dtype=jnp.uint8).reshape(1, 1, 2, 1), (n, 1, 2, 1))
    flipped = np.asarray(random_flip(KEY, x, p=p)[:, 0, 0, 0] == 1)
    assert abs(flipped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------- affine


@pytest.mark.parametrize(
    "interpolation, dtype", [("bilinear", jnp.float32), ("nearest", jnp.uint8)]
)
def test_affine_identity_parameters_are_identity(interpolation, dtype):
    x = _images(dtype=dtype)
    np.testing.assert_array_equal(random_affine(KEY, x, interpolation=interpolation), x)


def test_affine_matrices_follow_the_ranges():
    n, rot, zoom = 256, 30.0, 0.2
    m = np.asarray(affine_matrices(KEY, n, 9, 9, rotation=rot))
    a = m[:, :, :2]
    np.testing.assert_allclose(
        a @ a.transpose(0, 2, 1), np.broadcast_to(np.eye(2), a.shape), atol=1e-5
    )
    angles = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    assert np.all(np.abs(angles) <= rot + 1e-3) and np.ptp(angles) > rot  # spread, bounded
    m = np.asarray(affine_matrices(KEY, n, 9, 9, zoom=zoom))
    inv_scale = m[:, 0, 0]  # pure zoom about the centre: diag(1/s, 1/s)
    assert np.all((inv_scale >= 1 / (1 + zoom) - 1e-6) & (inv_scale <= 1 / (1 - zoom) + 1e-6))
    # the centre is a fixed point of rotation / zoom / shear
    m = np.asarray(affine_matrices(KEY, n, 9, 9, rotation=40.0, zoom=0.3, shear=20.0))
    np.testing.assert_allclose(m @ np.array([4.0, 4.0, 1.0]), np.full((n, 2), 4.0), atol=1e-4)


def test_affine_bilinear_matches_scipy_map_coordinates():
    x = _images(dtype=jnp.float32)
    settings_ = dict(rotation=35.0, translation=0.15, zoom=0.25, shear=15.0)
    y = random_affine(KEY, x, **settings_, fill=0.25)
    m = np.asarray(affine_matrices(KEY, 6, 8, 10, **settings_), np.float64)
    ys, xs = np.mgrid[0:8, 0:10].astype(np.float64)
    for n in range(6):
        sx = m[n, 0, 0] * xs + m[n, 0, 1] * ys + m[n, 0, 2]
        sy = m[n, 1, 0] * xs + m[n, 1, 1] * ys + m[n, 1, 2]
        for c in range(3):
            ref = ndimage.map_coordinates(
                np.asarray(x[n, :, :, c], np.float64),
                [sy, sx],
                order=1,
                mode="grid-constant",
                cval=0.25,
            )
            np.testing.assert_allclose(y[n, :, :, c], ref, atol=1e-4)


def test_affine_uint8_nearest_only_copies_input_values_or_fill():
    x = _images()
    y = random_affine(KEY, x, rotation=45.0, translation=0.2, interpolation="nearest", fill=3)
    assert y.dtype == jnp.uint8
    for n in range(6):
        assert set(np.unique(y[n])) <= set(np.unique(x[n])) | {3}


# --------------------------------------------------------------------------- erasing


@pytest.mark.parametrize("scale", [(0.02, 0.33), (0.1, 0.2)])
def test_erased_fraction_lies_in_the_requested_range(scale):
    h = w = 32
    x = jnp.ones((64, h, w, 3))
    y = random_erasing(KEY, x, p=1.0, scale=scale, value=0.0)
    erased = np.asarray(jnp.sum(y[..., 0] == 0, axis=(1, 2)))
    # rounding h and w to integers moves the area by at most (h + w) / 2 + 1/4 pixels
    slack = (h + w) / 2 + 0.25
    assert np.all(erased >= scale[0] * h * w - slack) and np.all(erased <= scale[1] * h * w + slack)
    assert np.all(erased > 0) and len(np.unique(erased)) > 5
    # the erased pixels form a rectangle, on every channel
    for n in range(8):
        rows, cols = np.nonzero(np.asarray(y[n, :, :, 0] == 0))
        assert erased[n] == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert np.all(np.asarray(y[n, :, :, 0] == y[n, :, :, 2]))


def test_erasing_probability_values_and_dtype():
    x = _images(n=1000, h=4, w=4, c=1)
    kept = np.asarray(jnp.all(random_erasing(KEY, x, p=0.25, value=0) == x, axis=(1, 2, 3)))
    assert abs((1 - kept.mean()) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 1000)
    np.testing.assert_array_equal(random_erasing(KEY, x, p=0.0), x)
    y = random_erasing(KEY, jnp.zeros_like(_images()), p=1.0, value=(10, 20, 30))
    assert y.dtype == jnp.uint8
    assert set(np.unique(y[..., 1])) == {0, 20}
    noisy = random_erasing(KEY, jnp.zeros((6, 8, 10, 3)), p=1.0, value="random")
    assert noisy.dtype == jnp.float32 and float(noisy.max()) <= 1.0 and float(noisy.max()) > 0


def test_cutout_masks_one_square_per_example():
    x = jnp.ones((32, 24, 24, 1), jnp.uint8)
    y = np.asarray(cutout(KEY, x, size=6)[..., 0])
    for n in range(32):
        rows, cols = np.nonzero(y[n] == 0)
        assert rows.size > 0 and np.ptp(rows) + 1 <= 6 and np.ptp(cols) + 1 <= 6
        assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert np.sum(y == 0, axis=(1, 2)).max() == 36  # squares fully inside the image
    np.testing.assert_array_equal(cutout(KEY, x, size=6, p=0.0), x)


# --------------------------------------------------------------------------- errors


ERRORS = [
    (lambda x: random_crop(KEY, x[0]), ValueError, "rank 4"),
    (lambda x: random_crop(KEY, x.astype(jnp.int32)), TypeError, "uint8 or floating"),
    (lambda x: random_crop(KEY, x, padding=-1), ValueError, "padding must be >= 0"),
    (lambda x: random_crop(KEY, x, padding=8), ValueError, "padding=8"),
    (lambda x: random_crop(KEY, x, padding=2.0), TypeError, "padding"),
    (lambda x: random_crop(KEY, x, mode="wrap"), ValueError, "mode"),
    (lambda x: random_crop(KEY, x, mode="constant", fill=(1, 2)), ValueError, "fill"),
    (lambda x: random_crop(KEY, x, mode="constant", fill=300), ValueError, "fill"),
    (lambda x: random_flip(KEY, x, p=1.5), ValueError, "p must lie in"),
    (lambda x: random_crop_flip(KEY, x, p=-0.1), ValueError, "p must lie in"),
    (lambda x: random_crop_flip(KEY, x, padding=-2), ValueError, "padding"),
    (lambda x: random_affine(KEY, x, interpolation="cubic"), ValueError, "interpolation"),
    (lambda x: random_affine(KEY, x, zoom=1.0), ValueError, "zoom"),
    (lambda x: random_affine(KEY, x, rotation=-5.0), ValueError, "rotation"),
    (lambda x: random_affine(KEY, x, shear=90.0), ValueError, "shear"),
    (lambda x: random_affine(KEY, x, fill=(0, 0)), ValueError, "fill"),
    (lambda x: random_erasing(KEY, x, p=2.0), ValueError, "p must lie in"),
    (lambda x: random_erasing(KEY, x, scale=(0.5, 0.1)), ValueError, "scale"),
    (lambda x: random_erasing(KEY, x, ratio=(0.0, 1.0)), ValueError, "ratio"),
    (lambda x: random_erasing(KEY, x, value=(1, 2)), ValueError, "value"),
    (lambda x: random_erasing(KEY, x, value="noise"), ValueError, "value"),
    (lambda x: random_erasing(KEY, x[..., None]), ValueError, "rank 4"),
    (lambda x: cutout(KEY, x, size=-1), ValueError, "size"),
    (lambda x: cutout(KEY, x, p=1.1), ValueError, "p must lie in"),
    (lambda x: cutout(KEY, x.astype(jnp.bool_)), TypeError, "uint8 or floating"),
    (lambda x: compose(random_flip, 3), TypeError, "op 1"),
]


@pytest.mark.parametrize("call, exc, match", ERRORS)
def test_bad_arguments_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_images())


# --------------------------------------------------------------------------- pipeline

OPS = {
    "crop": functools.partial(random_crop, padding=2),
    "flip": functools.partial(random_flip, vertical=True),
    "crop_flip": functools.partial(random_crop_flip, mode="constant", vertical=True),
    "affine": functools.partial(random_affine, rotation=20.0, translation=0.1, zoom=0.1),
    "erasing": functools.partial(random_erasing, p=0.7, value="random"),
    "cutout": functools.partial(cutout, size=4),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_jit_equals_eager_and_examples_differ(name):
    op = OPS[name]
    x = _images(dtype=jnp.float32)
    y = jax.jit(op)(KEY, x)
    np.testing.assert_allclose(y, op(KEY, x), atol=1e-5)
    same_image = jnp.broadcast_to(x[:1], x.shape)  # one image, eight draws
    z = np.asarray(op(KEY, same_image))
    assert len({z[n].tobytes() for n in range(6)}) > 2


def test_compose_keys_per_op_vmap_and_jit():
    crop, erase = OPS["crop"], OPS["erasing"]
    aug = compose(crop, erase)
    x = _images(dtype=jnp.float32)
    expected = erase(jax.random.fold_in(KEY, 1), crop(jax.random.fold_in(KEY, 0), x))
    np.testing.assert_array_equal(aug(KEY, x), expected)
    np.testing.assert_array_equal(jax.jit(aug)(KEY, x), expected)
    keys = jax.random.split(KEY, 3)
    batched = jax.jit(jax.vmap(aug, in_axes=(0, None)))(keys, x)
    assert batched.shape == (3, *x.shape)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], aug(keys[i], x))
    assert not np.array_equal(batched[0], batched[1])


def test_compose_inside_a_scanned_training_step():
    aug = compose(OPS["crop_flip"], OPS["affine"], OPS["erasing"])
    x = _images(dtype=jnp.float32)
    labels = (jnp.arange(6) % 2).astype(jnp.float32)

    def step(w, i):
        xa = aug(jax.random.fold_in(KEY, i), x)
        loss = lambda w: jnp.mean((xa.reshape(6, -1) @ w - labels) ** 2)
        return w - 0.01 * jax.grad(loss)(w), xa

    w0 = jnp.zeros((x[0].size,))
    w, seen = jax.jit(lambda w: jax.lax.scan(step, w, jnp.arange(3)))(w0)
    assert np.all(np.isfinite(np.asarray(w)))
    for i in range(3):
        np.testing.assert_allclose(seen[i], aug(jax.random.fold_in(KEY, i), x), atol=1e-6)


SHARDED = textwrap.dedent(
    """
    import functools, json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxreg.augment.erasing import cutout, random_erasing
    from jaxreg.augment.geometric import random_affine, random_crop_flip
    from jaxreg.augment.pipeline import compose

    assert jax.device_count() == 8, jax.devices()
    x = jax.random.randint(jax.random.key(1), (16, 8, 8, 3), 0, 256).astype(jnp.uint8)
    ops = {
        "crop_flip": functools.partial(random_crop_flip, mode="constant", vertical=True),
        "affine": functools.partial(random_affine, rotation=30.0, zoom=0.2, shear=5.0),
        "erasing": functools.partial(random_erasing, p=0.8, value="random"),
        "cutout": functools.partial(cutout, size=4),
    }
    ops = {"pipeline": compose(*ops.values())}
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
    xs = jax.device_put(x, sharding)
    report = {}
    for name, op in ops.items():
        ref = np.asarray(jax.jit(op)(jax.random.key(5), x))
        out = jax.jit(op, out_shardings=sharding)(jax.random.key(5), xs)
        report[name] = [bool(np.array_equal(np.asarray(out), ref)), len(out.sharding.device_set)]
    print("RESULT " + json.dumps(report))
    """
)


def test_sharded_batch_gives_the_unsharded_output():
    report = run_on_cpu_devices(SHARDED, devices=8)
    assert set(report) == {"pipeline"}
    for name, (equal, n_devices) in report.items():
        assert equal, f"{name}: sharded output differs from the unsharded one"
        assert n_devices == 8, name


# --------------------------------------------------------------------------- test-time views


def test_flip_translate_views_are_shifted_reflections_and_their_mirrors():
    x = jax.random.uniform(jax.random.key(0), (2, 6, 5, 3))
    views = flip_translate_views(x, shift=2)
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    xn = np.asarray(x)
    padded = np.pad(xn, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    down_right, up_left = padded[:, :6, :5], padded[:, 4:, 4:]
    # the content moves by the shift: pixel (i, j) of the image is (i + 2, j + 2)
    np.testing.assert_array_equal(down_right[:, 2:, 2:], xn[:, :-2, :-2])
    np.testing.assert_array_equal(up_left[:, :-2, :-2], xn[:, 2:, 2:])
    expected = [
        xn,
        xn[:, :, ::-1],
        down_right,
        down_right[:, :, ::-1],
        up_left,
        up_left[:, :, ::-1],
    ]
    for got, want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # the first two are flip_views
    for got, want in zip(views[:2], flip_views(x), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    jitted = jax.jit(functools.partial(flip_translate_views, shift=2))(x)
    np.testing.assert_array_equal(np.asarray(jitted[3]), expected[3])


@pytest.mark.parametrize("shift", [0, -1, 1.5, True, 6])
def test_flip_translate_views_rejects_bad_shift(shift):
    with pytest.raises(ValueError, match="flip_translate_views: shift"):
        flip_translate_views(jnp.zeros((1, 6, 8, 3)), shift=shift)


# --------------------------------------------------------------------------- alternating flip


def _orientation(out):
    """Per example: True when the column ramp of ``_ramp`` reads right-to-left."""
    return np.asarray(out[:, 0, 0, 0] > out[:, 0, -1, 0])


def _ramp(n, dtype=jnp.uint8):
    row = jnp.arange(4, dtype=dtype).reshape(1, 1, 4, 1)
    return jnp.broadcast_to(row, (n, 2, 4, 3))


def test_alternating_flip_alternates_each_examples_mirror_from_epoch_to_epoch():
    n = 4000
    x, index = _ramp(n), jnp.arange(n) * 3 + 5
    seen = [_orientation(alternating_flip(KEY, x, index, e)) for e in range(4)]
    # epoch 0 mirrors about half of the examples, like random flipping ...
    assert abs(seen[0].mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    # ... and every later epoch mirrors exactly those the previous one did not
    for e in range(1, 4):
        np.testing.assert_array_equal(seen[e], ~seen[e - 1])
    flipped = alternating_flip(KEY, x, index, 1)
    np.testing.assert_array_equal(
        np.asarray(flipped), np.where(seen[1][:, None, None, None], x[:, :, ::-1], x)
    )
    assert flipped.dtype == jnp.uint8


def test_alternating_flip_depends_on_the_example_not_its_place_in_the_batch():
    n = 64
    x, index = _ramp(n, jnp.float32), jnp.arange(n)
    perm = np.random.default_rng(0).permutation(n)
    whole = alternating_flip(KEY, x, index, 0)
    shuffled = alternating_flip(KEY, x[perm], index[perm], 0)
    np.testing.assert_array_equal(np.asarray(shuffled), np.asarray(whole)[perm])
    half = alternating_flip(KEY, x[:32], index[:32], 0)  # a batch of the first half
    np.testing.assert_array_equal(np.asarray(half), np.asarray(whole)[:32])
    other = alternating_flip(jax.random.key(1), x, index, 0)  # another run's key
    assert (_orientation(other) != _orientation(whole)).any()
    jitted = jax.jit(alternating_flip)(KEY, x, index, jnp.int32(2))  # a traced epoch
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(whole))


@pytest.mark.parametrize(
    "index, epoch, match",
    [
        (jnp.arange(3), 0, r"index must be an integer vector .* \(4,\)"),
        (jnp.arange(4.0), 0, "index must be an integer vector"),
        (jnp.arange(4), 1.0, "epoch must be an integer scalar"),
        (jnp.arange(4), jnp.arange(2), "epoch must be an integer scalar"),
    ],
)
def test_alternating_flip_rejects_bad_index_and_epoch(index, epoch, match):
    with pytest.raises(ValueError, match="alternating_flip: " + match):
        alternating_flip(KEY, _ramp(4), index, epoch)
