"""Image augmentations written in JAX, to run inside a jitted train step.

Each function takes a PRNG key and a batch of images ``[N, H, W, C]`` (floats) and returns a
batch of the same shape, drawing its randomness per image from ``key``; all are jit- and
vmap-safe (no data-dependent shapes). They are the small-image analogues of SimCLR's views
(Chen et al. 2020, arXiv 2002.05709, Sec. 3 and Appendix A: crop and resize, colour
distortion, blur): translations, crops resized back, additive noise and cut-out masks
(DeVries & Taylor 2017, arXiv 1708.04552). :func:`views` composes them into the random
views of a contrastive step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _images(images) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"`images` must be a float array [N, H, W, C], got {images.dtype} "
                         f"{images.shape}.")
    return images


def _per_image(key, images, fn):
    """``fn(key_i, image_i)`` over the batch, one key per image."""
    return jax.vmap(fn)(jax.random.split(key, images.shape[0]), images)


def _check_size(value: int, name: str, limit: int):
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"`{name}` must be an integer in [0, {limit}], got {value!r}.")


def random_shift(key, images, *, max_shift: int = 1) -> jax.Array:
    """Translates each image by integers ``dy, dx`` drawn uniformly from ``[-max_shift,
    max_shift]``, filling with zeros (pad and crop back)."""
    images = _images(images)
    height, width = images.shape[1:3]
    _check_size(max_shift, "max_shift", min(height, width))
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))

    def one(k, image):
        dy, dx = jax.random.randint(k, (2,), 0, 2 * max_shift + 1)
        return jax.lax.dynamic_slice(image, (dy, dx, 0), (height, width, image.shape[-1]))

    return _per_image(key, padded, one)


def random_crop(key, images, *, size: int) -> jax.Array:
    """Crops a random ``size x size`` window of each image and resizes it back to ``H x W``
    (bilinear), SimCLR's crop-and-resize at a fixed scale."""
    images = _images(images)
    height, width, channels = images.shape[1:]
    _check_size(size, "size", min(height, width))
    if size == 0:
        raise ValueError("`size` must be at least 1, got 0.")

    def one(k, image):
        y, x = jax.random.randint(k, (2,), 0, jnp.array([height - size + 1, width - size + 1]))
        window = jax.lax.dynamic_slice(image, (y, x, 0), (size, size, channels))
        return jax.image.resize(window, (height, width, channels), "bilinear")

    return _per_image(key, images, one)


def gaussian_noise(key, images, *, std=0.1) -> jax.Array:
    """Adds independent ``N(0, std^2)`` noise to every pixel (``std`` may be traced)."""
    images = _images(images)
    return images + std * jax.random.normal(key, images.shape, images.dtype)


def random_mask(key, images, *, size: int) -> jax.Array:
    """Cut-out: zeroes a ``size x size`` square at a uniformly drawn centre of each image (the
    square may be clipped at the border, as in DeVries & Taylor)."""
    images = _images(images)
    height, width = images.shape[1:3]
    _check_size(size, "size", min(height, width))
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]

    def one(k, image):
        cy, cx = jax.random.randint(k, (2,), 0, jnp.array([height, width]))
        top, left = cy - size // 2, cx - size // 2
        inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        return jnp.where(inside[..., None], 0.0, image)

    return _per_image(key, images, one)


def compose(*augmentations: Callable) -> Callable:
    """``augment(key, images)`` applying each ``fn(key, images)`` in turn, each with its own
    key (bind hyperparameters with ``functools.partial``)."""
    def augment(key, images):
        for fn, k in zip(augmentations, jax.random.split(key, len(augmentations))):
            images = fn(k, images)
        return images
    return augment


def views(key, images, augment: Callable, num_views: int = 2) -> jax.Array:
    """``num_views`` independent augmentations of the batch: ``[num_views, N, H, W, C]``."""
    return jnp.stack([augment(k, images) for k in jax.random.split(key, num_views)])
