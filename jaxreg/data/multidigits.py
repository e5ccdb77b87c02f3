"""MultiDigits: two of scikit-learn's 8x8 digits overlaid on one canvas, two labels.

In the spirit of MultiMNIST (Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018, arXiv:1810.04650, Section 5), where two MNIST digits are put on
a 36x36 canvas, one at the top-left and one at the bottom-right, each shifted by up to 4
pixels, and the two tasks are to classify the left and the right digit. Here the digits are
the 8x8 images of :func:`jaxreg.data.load_digits` and the canvas is ``canvas x canvas``
(12 by default): the left digit's top-left corner is at ``(dy, dx)``, the right digit's
bottom-right corner at ``(canvas - dy', canvas - dx')``, each offset drawn uniformly from
``0 .. max_shift``; so on a 12x12 canvas with ``max_shift=1`` the two digits' 8x8 boxes
overlap on 4 to 6 rows and columns. The images are combined pixel-wise by ``max`` (or by a sum
clipped to 1, ``combine="sum"``).

A pair's two digits are two different examples of the same split, drawn uniformly with a
seed: training pairs only from the digits' training split, test pairs only from its test
split, so no source digit of a test pair was seen in training.
"""

from __future__ import annotations

import os

import numpy as np

from jaxreg.data.digits import load_digits

DIGIT_SIZE = 8
COMBINES = ("max", "sum")
_SPLIT_STREAM = {"train": 0, "test": 1}  # the two splits draw from different streams


def overlay_pairs(images: np.ndarray, labels: np.ndarray, num_pairs: int, *,
                  canvas: int = 12, max_shift: int = 1, seed: int = 0, combine: str = "max",
                  stream: int = 0) -> dict[str, np.ndarray]:
    """``num_pairs`` pairs of ``images`` overlaid on a canvas (see the module docstring).

    Args:
        images: ``[N, 8, 8]`` or ``[N, 8, 8, 1]`` floats in ``[0, 1]``, N >= 2.
        labels: ``[N]`` integer labels.
        num_pairs: how many pairs, a positive integer.
        canvas: the canvas' side, at least ``8 + max_shift``.
        max_shift: the largest offset of each digit from its corner, a non-negative integer.
        seed: draws the pairs and the offsets (with ``stream``).
        combine: ``"max"`` (pixel-wise maximum) or ``"sum"`` (sum clipped to 1).
        stream: a second seed component (``load_multidigits`` uses one per split).

    Returns:
        ``{"image": float32 [P, canvas, canvas, 1], "left": int32 [P], "right": int32 [P],
        "left_index", "right_index": int32 [P] (the rows of ``images`` used),
        "left_offset", "right_offset": int32 [P, 2] ((dy, dx) from each digit's corner),
        "index": int32 arange(P)}``.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"`images` must have shape [N, 8, 8] or [N, 8, 8, 1], got "
                         f"{np.shape(images)}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"`labels` must have shape [{len(images)}] (one per image), got "
                         f"{labels.shape}")
    if len(images) < 2:
        raise ValueError(f"`images` must hold at least 2 digits to pair, got {len(images)}")
    if not isinstance(num_pairs, (int, np.integer)) or isinstance(num_pairs, bool) \
            or num_pairs < 1:
        raise ValueError(f"`num_pairs` must be a positive integer, got {num_pairs!r}")
    if not isinstance(max_shift, (int, np.integer)) or isinstance(max_shift, bool) \
            or max_shift < 0:
        raise ValueError(f"`max_shift` must be a non-negative integer, got {max_shift!r}")
    if not isinstance(canvas, (int, np.integer)) or isinstance(canvas, bool) \
            or canvas < DIGIT_SIZE + max_shift:
        raise ValueError(f"`canvas` must be an integer of at least 8 + max_shift = "
                         f"{DIGIT_SIZE + max_shift} (both digits on the canvas), got {canvas!r}")
    if combine not in COMBINES:
        raise ValueError(f"`combine` must be one of {COMBINES}, got {combine!r}")
    rng = np.random.default_rng([int(seed), int(stream)])
    n = len(images)
    left = rng.integers(0, n, num_pairs)
    right = (left + rng.integers(1, n, num_pairs)) % n  # another example than the left one
    left_offset = rng.integers(0, max_shift + 1, (num_pairs, 2))
    right_offset = rng.integers(0, max_shift + 1, (num_pairs, 2))
    out = np.zeros((num_pairs, canvas, canvas), np.float32)
    right_corner = canvas - DIGIT_SIZE
    for p in range(num_pairs):
        (ly, lx), (ry, rx) = left_offset[p], right_offset[p]
        a = np.zeros((canvas, canvas), np.float32)
        b = np.zeros((canvas, canvas), np.float32)
        a[ly:ly + DIGIT_SIZE, lx:lx + DIGIT_SIZE] = images[left[p]]
        y, x = right_corner - ry, right_corner - rx
        b[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = images[right[p]]
        out[p] = np.maximum(a, b) if combine == "max" else np.minimum(a + b, 1.0)
    return {"image": out[..., None], "left": labels[left].astype(np.int32),
            "right": labels[right].astype(np.int32), "left_index": left.astype(np.int32),
            "right_index": right.astype(np.int32),
            "left_offset": left_offset.astype(np.int32),
            "right_offset": right_offset.astype(np.int32),
            "index": np.arange(num_pairs, dtype=np.int32)}


def load_multidigits(split: str = "train", *, num_pairs: int | None = None, canvas: int = 12,
                     max_shift: int = 1, seed: int = 0, combine: str = "max",
                     data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """MultiDigits pairs built from one split of :func:`jaxreg.data.load_digits`.

    Args:
        split: ``"train"`` (pairs of the 1,437 training digits) or ``"test"`` (of the 360
            test digits).
        num_pairs: how many pairs; ``None``: as many as the split has digits.
        canvas: the canvas' side (as for :func:`overlay_pairs`).
        max_shift: the largest offset of each digit from its corner.
        combine: ``"max"`` or ``"sum"`` (clipped to 1).
        seed: the pairs and offsets are a deterministic function of ``(seed, split)``.
        data_dir: where the digits' tfds dataset lives (:func:`load_digits`).

    Returns:
        The dict of :func:`overlay_pairs`: ``image`` ``[P, canvas, canvas, 1]``, the labels
        ``left`` and ``right`` (two 10-way tasks), the source rows within the split
        (``left_index``, ``right_index``), the offsets and ``index``.
    """
    if split not in _SPLIT_STREAM:
        raise ValueError(f"`split` must be one of {tuple(_SPLIT_STREAM)}, got {split!r}")
    digits = load_digits(split, data_dir=data_dir)
    if num_pairs is None:
        num_pairs = len(digits["label"])
    return overlay_pairs(digits["image"], digits["label"], num_pairs, canvas=canvas,
                         max_shift=max_shift, seed=seed, combine=combine,
                         stream=_SPLIT_STREAM[split])
