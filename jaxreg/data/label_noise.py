"""Synthetic label noise, applied once on the host before training.

Two conventions for "symmetric noise at rate r" coexist in the noisy-label literature and
give different realised noise for the same r; both are offered and named after the code
they reproduce:

* ``"flip"``: Active-Passive Losses (Ma et al., "Normalized Loss Functions for Deep
  Learning with Noisy Labels", ICML 2020, arXiv:2006.13554; HanxunH/Active-Passive-Losses
  ``dataset.py``, ``other_class``): a fixed number of examples per class is moved to a
  *different* class, so the wrong-label fraction is r.
* ``"uniform"``: ELR (Liu et al., "Early-Learning Regularization Prevents Memorization of
  Noisy Labels", NeurIPS 2020, arXiv:2007.00151; shengliu66/ELR
  ``ELR/data_loader/cifar10.py``, ``symmetric_noise``): a fraction r of the examples is
  relabelled uniformly over *all* K classes, so about r (K-1)/K of the labels end up wrong.

Every function takes an explicit ``seed`` and draws from ``np.random.default_rng(seed)``; the
reference code draws from NumPy's global state, so the same seed does not reproduce its
exact choice of examples, only its distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

SYMMETRIC_CONVENTIONS = ("flip", "uniform")
ASYMMETRIC_CONVENTIONS = ("count", "bernoulli")

# Active-Passive Losses' MNIST asymmetric noise (``MNISTNoisy``): 7 -> 1, 2 -> 7, 5 <-> 6,
# 3 -> 8 (after Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss
# Correction Approach", CVPR 2017).
DIGITS_ASYMMETRIC_MAP = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}


def symmetric_noise(labels, rate: float, num_classes: int, *, seed: int,
                    convention: str = "flip") -> np.ndarray:
    """Returns a copy of ``labels`` with symmetric (class-independent) noise.

    ``convention="flip"`` matches Active-Passive Losses (arXiv:2006.13554, HanxunH/
    Active-Passive-Losses ``dataset.py``): within each class c, exactly
    ``int(rate * n_c)`` examples, chosen without replacement, get a label drawn uniformly
    from the other ``num_classes - 1`` classes (``other_class``). Counts are exact, not
    Bernoulli. The reference computes one count for all classes, ``int(int(rate * n) / K)``;
    here each class gets ``int(rate * n_c)``, which is the same for balanced classes and
    keeps the per-class rate at ``rate`` (up to truncation) when classes are unbalanced.

    ``convention="uniform"`` matches ELR (arXiv:2007.00151, shengliu66/ELR
    ``ELR/data_loader/cifar10.py``): the first ``ceil(rate * n)`` examples of a random
    permutation (the reference's ``i < percent * n``; an exact count, not a Bernoulli draw
    per example) get a label drawn uniformly from all ``num_classes`` classes, possibly their
    own, so the realised wrong-label fraction is about ``rate * (K - 1) / K``.

    Args:
        labels: integer class indices ``[N]`` in ``[0, num_classes)``.
        rate: noise rate in ``[0, 1]``.
        num_classes: number of classes K (at least 2).
        seed: seed of ``np.random.default_rng``.
        convention: ``"flip"`` or ``"uniform"``.

    Returns:
        noisy labels, same shape and dtype as ``labels``.
    """
    labels = _check_labels(labels, "labels", num_classes)
    _check_rate(rate)
    if convention not in SYMMETRIC_CONVENTIONS:
        raise ValueError(
            f"`convention` must be one of {SYMMETRIC_CONVENTIONS}, got {convention!r}.")
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    if convention == "flip":
        for c in range(num_classes):
            members = np.flatnonzero(labels == c)
            chosen = rng.choice(members, int(rate * members.size), replace=False)
            # c + U{1, ..., K-1} mod K is uniform over the K-1 other classes.
            noisy[chosen] = (c + rng.integers(1, num_classes, size=chosen.size)) % num_classes
    else:
        chosen = rng.permutation(labels.size)[:math.ceil(rate * labels.size)]
        noisy[chosen] = rng.integers(0, num_classes, size=chosen.size)
    return noisy


def asymmetric_noise(labels, rate: float, class_map: Mapping[int, int], *, seed: int,
                     convention: str = "count") -> np.ndarray:
    """Returns a copy of ``labels`` where a fraction ``rate`` of each source class is moved.

    For each ``source -> target`` in ``class_map``, examples whose *clean* label is
    ``source`` are relabelled ``target`` (so with ``5 <-> 6`` no example is moved twice);
    classes not in the map are untouched.

    ``convention="count"`` matches Active-Passive Losses' CIFAR-10 asymmetric noise
    (``cifar10Nosiy``, arXiv:2006.13554): exactly ``int(rate * n_source)`` examples, chosen
    without replacement. ``convention="bernoulli"`` matches its MNIST and CIFAR-100 noise
    (``multiclass_noisify`` with a transition matrix, after Patrini et al. 2017): each
    source example moves independently with probability ``rate``.

    Args:
        labels: non-negative integer class indices ``[N]``.
        rate: fraction of each source class to move, in ``[0, 1]``.
        class_map: ``{source: target}`` with distinct non-negative integer classes, e.g.
            :data:`DIGITS_ASYMMETRIC_MAP`.
        seed: seed of ``np.random.default_rng``.
        convention: ``"count"`` or ``"bernoulli"``.

    Returns:
        noisy labels, same shape and dtype as ``labels``.
    """
    labels = _check_labels(labels, "labels")
    _check_rate(rate)
    if convention not in ASYMMETRIC_CONVENTIONS:
        raise ValueError(
            f"`convention` must be one of {ASYMMETRIC_CONVENTIONS}, got {convention!r}.")
    for source, target in class_map.items():
        if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in (source, target)) \
                or source == target:
            raise ValueError("`class_map` must map non-negative integer classes to other "
                             f"classes, got {source!r} -> {target!r}.")
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    for source in sorted(class_map):
        members = np.flatnonzero(labels == source)
        if convention == "count":
            chosen = rng.choice(members, int(rate * members.size), replace=False)
        else:
            chosen = members[rng.random(members.size) < rate]
        noisy[chosen] = class_map[source]
    return noisy


def noise_report(clean, noisy, num_classes: int) -> dict:
    """Summarises realised label noise, in plain Python types (JSON-serialisable).

    Args:
        clean: true integer labels ``[N]`` in ``[0, num_classes)``.
        noisy: observed integer labels ``[N]`` in ``[0, num_classes)``.
        num_classes: number of classes K.

    Returns:
        ``{"noise_rate": float, "per_class_rate": list[float | None], "class_counts":
        list[int], "transition_matrix": list[list[float]]}``: the fraction of all examples
        with ``noisy != clean``; the same fraction within each clean class (``None`` for a
        class with no examples); the clean class sizes; and ``T[i][j] = P(noisy = j | clean
        = i)``, whose rows sum to 1 (all zeros for a class with no examples).
    """
    clean = _check_labels(clean, "clean", num_classes)
    noisy = _check_labels(noisy, "noisy", num_classes)
    if clean.shape != noisy.shape:
        raise ValueError(
            f"`noisy` must have the shape of `clean`, {clean.shape}, got {noisy.shape}.")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (clean, noisy), 1)
    class_counts = counts.sum(axis=1)
    transition = counts / np.maximum(class_counts, 1)[:, None]
    return {
        "noise_rate": float(np.mean(clean != noisy)) if clean.size else 0.0,
        "per_class_rate": [None if n == 0 else float(1.0 - transition[c, c])
                           for c, n in enumerate(class_counts)],
        "class_counts": class_counts.tolist(),
        "transition_matrix": transition.tolist(),
    }


def _check_labels(labels, name: str, num_classes: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integer class indices, got dtype {labels.dtype}.")
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {labels.shape}.")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
    if labels.size and labels.min() < 0:
        raise ValueError(f"`{name}` must be non-negative, got minimum {labels.min()}.")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise ValueError(f"`{name}` must be < num_classes={num_classes}, "
                         f"got maximum {labels.max()}.")
    return labels


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"`rate` must be in [0, 1], got {rate}.")
