"""jaxreg.data.augment: each augmentation does what it says per image, exactly, under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.data import augment

KEY = jax.random.PRNGKey(0)


def _images(n=16, size=8, seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 1))


def _shifted(image, dy, dx):
    """``image`` translated by (dy, dx) with zero fill, by NumPy indexing."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    src = image[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def test_random_shift_is_an_integer_translation_per_image():
    images = _images()
    out = np.asarray(jax.jit(functools.partial(augment.random_shift, max_shift=1))(KEY, images))
    shifts = set()
    for image, result in zip(np.asarray(images), out):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if np.array_equal(result, _shifted(image, dy, dx))]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 3  # drawn per image, not once per batch
    np.testing.assert_array_equal(augment.random_shift(KEY, images, max_shift=0), images)


def test_random_crop_of_the_whole_image_is_the_identity_and_keeps_constants():
    images = _images()
    np.testing.assert_allclose(augment.random_crop(KEY, images, size=8), images, atol=1e-6)
    constant = jnp.full((4, 8, 8, 1), 0.3)
    np.testing.assert_allclose(augment.random_crop(KEY, constant, size=5), constant, atol=1e-6)
    # a crop of a ramp is a window of it stretched back: each image spans 3 steps of the ramp
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (16, 8, 8, 1))
    out = augment.random_crop(KEY, ramp, size=4)
    np.testing.assert_allclose(out.max(axis=(1, 2, 3)) - out.min(axis=(1, 2, 3)), 3.0,
                               atol=1e-5)
    assert len(set(np.asarray(out.min(axis=(1, 2, 3))).round(4))) > 2  # windows differ


def test_gaussian_noise_has_the_requested_scale():
    images = jnp.zeros((64, 8, 8, 1))
    noise = augment.gaussian_noise(KEY, images, std=0.2)
    assert abs(float(noise.std()) - 0.2) < 0.01 and abs(float(noise.mean())) < 0.01
    np.testing.assert_array_equal(augment.gaussian_noise(KEY, images, std=0.0), images)
    traced = jax.vmap(lambda s: augment.gaussian_noise(KEY, images, std=s).std())(
        jnp.array([0.1, 0.3]))
    np.testing.assert_allclose(traced, [0.1, 0.3], rtol=0.05)


def test_random_mask_zeroes_one_clipped_square():
    ones = jnp.ones((32, 8, 8, 1))
    out = np.asarray(augment.random_mask(KEY, ones, size=3))[..., 0]
    for image in out:
        rows, cols = np.nonzero(image == 0)
        assert 1 <= rows.size <= 9
        # the zeros fill the bounding rectangle: one square, clipped at the border
        assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert np.ptp(rows) < 3 and np.ptp(cols) < 3
    assert len({(image == 0).tobytes() for image in out}) > 5


def test_views_and_compose_draw_independent_keys():
    images = _images(4)
    aug = augment.compose(functools.partial(augment.random_shift, max_shift=1),
                          functools.partial(augment.gaussian_noise, std=0.1))
    two = jax.jit(lambda k, x: augment.views(k, x, aug))(KEY, images)
    assert two.shape == (2,) + images.shape
    assert not np.allclose(two[0], two[1])
    np.testing.assert_allclose(augment.views(KEY, images, aug), two, atol=1e-6)  # jit = eager


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`images`"):
        augment.random_shift(KEY, jnp.ones((8, 8, 1)))
    with pytest.raises(ValueError, match="`max_shift`"):
        augment.random_shift(KEY, _images(), max_shift=-1)
    with pytest.raises(ValueError, match="`size`"):
        augment.random_crop(KEY, _images(), size=9)
    with pytest.raises(ValueError, match="`size`"):
        augment.random_mask(KEY, _images(), size=2.5)
