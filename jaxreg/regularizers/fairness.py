"""Distance-covariance fairness penalties for several protected attributes of mixed type.

Paper: Lee, Antonio, Avanzi, Marchi and Zhou, "Machine Learning with Multitype Protected
Attributes: Intersectional Fairness through Regularisation" (2025), arXiv:2509.08163. A model's
predictions ``Y`` are pushed toward independence of the protected attributes ``S_1..S_d``
(demographic parity) by adding ``strength * D(Y, S)`` to the loss, with ``D`` one of

- ``distance_covariance``: the squared distance covariance of Szekely, Rizzo and Bakirov (2007)
  for one attribute. With ``a_kl = |x_k - x_l|`` and ``b_kl = |y_k - y_l|`` (Euclidean),
  the V-statistic is ``dCov^2_n = (1/n^2) sum_kl A_kl B_kl`` with double-centred
  ``A_kl = a_kl - a_k. - a_.l + a_..`` (means), and the unbiased U-statistic of Szekely and
  Rizzo (2014, Ann. Statist. 42(6), Eq. 3.3) is ``(1/(n(n-3))) sum_{k != l} A~_kl B~_kl`` with
  U-centred ``A~_kl = a_kl - a_k./(n-2) - a_.l/(n-2) + a_../((n-1)(n-2))`` (sums) and
  ``A~_kk = 0``. Both match ``dcor.distance_covariance_sqr`` and
  ``dcor.u_distance_covariance_sqr`` (dcor 0.7, exponent 1).
- ``per_attribute_distance_covariance``: ``sum_i dCov^2(Y, S_i)``, one term per attribute, the
  baseline the paper shows misses intersectional ("gerrymandered") dependence.
- ``joint_distance_covariance`` (JdCov, Chakraborty and Zhang 2019, JRSSB 81(5),
  arXiv:1711.09179) of ``(Y, S_1, ..., S_d)``, ``m = d + 1`` variables, with the constant
  ``c > 0``: ``JdCov^2 = (1/n^2) sum_kl prod_i (U_i(k, l) + c) - c^m`` (V-statistic,
  ``U_i = -A_i``) and ``(1/(n(n-3))) sum_kl prod_i (U~_i(k, l) + c) - n c^m / (n-3)``
  (U-statistic, ``U~_i = -A~_i``, zero diagonal). It expands to
  ``c^(m-2) sum_{pairs} dCov^2 + c^(m-3) sum_{triples} dCov^2 + ... + dCov^2(Y, S_1..S_d)``;
  with one attribute it is ``dCov^2(Y, S_1)``.
- ``concatenated_distance_covariance`` (CCdCov, the paper's proposal): ``dCov^2(Y, S)`` with
  ``S = (S_1, ..., S_d)`` the attributes concatenated into one vector; it is zero (in
  population) exactly when ``Y`` is independent of the attributes jointly, intersections
  included.

Attributes of mixed type: binary (0/1 as one coordinate), categorical (integer codes, one-hot
encoded: give their number of categories in ``categories``) and continuous (used as they are;
a ``[n, p]`` attribute is one multivariate attribute). The paper's code (PyTorch ``dcovs.py``:
``sq_dcov_unbiased``, ``JdCov_sq_unbiased`` with ``c = 1``) uses the unbiased U-statistics, so
the penalties default to ``unbiased=True``; ``distance_covariance`` itself defaults to the
V-statistic, like dcor. Departure from that code: it subtracts ``n / (n-3)`` whatever ``c``;
Chakraborty and Zhang's estimator subtracts ``n c^m / (n-3)``, which we follow (equal at the
default ``c = 1``).

Calibration: the paper chooses the strength by the Jensen-Shannon divergence between the
groups' prediction distributions. ``jensen_shannon_divergence`` is the generalised JSD (Lin
1991) of Gaussian kernel density estimates of each group's scores on a common grid, as in the
authors' ``JSD_generalized`` (bandwidth 0.15, 1000 points from the smallest to the largest
score, group weights = group proportions, entropies in bits); ``jensen_shannon_calibration``
turns a measured strength -> JSD curve into the smallest strength that reaches a target JSD.
The paper reads the strength off such a curve; the interpolation rule is ours.

Distances use a safe square root: coincident points (the diagonal, tied scores) are at distance
zero with a zero (finite) gradient.

Hyperparameters given as concrete numbers are checked at call time, naming them: ``strength >=
0``, JdCov's ``c > 0``, the JSD ``bandwidth > 0``; traced values are not checked. Concrete
``groups`` outside ``[0, num_groups)`` raise a ``ValueError`` naming ``groups``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import check_strength, class_labels, float_array, positive


def _real_samples(x, name: str):
    """``x`` ``[n]`` or ``[n, p]`` (float, integer or boolean) as a float32+ ``[n, p]`` array."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        x = x.astype(jnp.result_type(float))  # float32, or float64 under jax_enable_x64
    x = float_array(x, name)
    if x.ndim not in (1, 2):
        raise ValueError(f"`{name}` must have shape [n] or [n, p], got {x.shape}.")
    return x[:, None] if x.ndim == 1 else x


def _same_rows(x, n: int, name: str, reference: str):
    if x.shape[0] != n:
        raise ValueError(f"`{name}` must have {n} rows (the samples of `{reference}`), got "
                         f"shape {x.shape}.")


def _minimum_rows(n: int, unbiased: bool, name: str):
    need = 4 if unbiased else 2
    if n < need:
        raise ValueError(f"`{name}` must have at least {need} samples for the "
                         f"{'unbiased' if unbiased else 'biased'} estimator, got {n}.")


def _distances(x):
    """Euclidean distance matrix ``[n, n]`` of the rows of ``x`` ``[n, p]``, with a finite
    (zero) gradient where two rows coincide."""
    squared = jnp.sum(jnp.square(x[:, None, :] - x[None, :, :]), axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _centred(x, unbiased: bool):
    """Double-centred (V) or U-centred (U, zero diagonal) distance matrix of ``x`` ``[n, p]``."""
    a = _distances(x)
    n = a.shape[0]
    if not unbiased:
        return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()
    centred = (a - a.sum(0, keepdims=True) / (n - 2) - a.sum(1, keepdims=True) / (n - 2)
               + a.sum() / ((n - 1) * (n - 2)))
    return jnp.where(jnp.eye(n, dtype=bool), 0.0, centred)


def _average(matrix, unbiased: bool):
    """``(1/n^2) sum_kl`` (V) or ``(1/(n(n-3))) sum_kl`` (U) of an ``[n, n]`` matrix."""
    n = matrix.shape[0]
    return jnp.sum(matrix) / (n * (n - 3) if unbiased else n * n)


def _dcov(x, y, unbiased: bool):
    return _average(_centred(x, unbiased) * _centred(y, unbiased), unbiased)


def _pair(x, y, unbiased: bool, x_name: str, y_name: str):
    x = _real_samples(x, x_name)
    y = _real_samples(y, y_name)
    _same_rows(y, x.shape[0], y_name, x_name)
    _minimum_rows(x.shape[0], unbiased, x_name)
    return x, y


def distance_covariance(x, y, *, strength=1.0, unbiased: bool = False):
    """Squared distance covariance ``strength * dCov^2(x, y)`` (Szekely et al. 2007).

    Args:
      x: samples ``[n]`` or ``[n, p]``.
      y: samples ``[n]`` or ``[n, q]`` (the same ``n``).
      strength: the penalty weight.
      unbiased: False: the V-statistic ``(1/n^2) sum A_kl B_kl`` of double-centred distances
        (``dcor.distance_covariance_sqr``; nonnegative). True: the U-statistic of Szekely and
        Rizzo (2014) with U-centred distances (``dcor.u_distance_covariance_sqr``; unbiased,
        may be negative; needs ``n >= 4``).

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    x, y = _pair(x, y, unbiased, "x", "y")
    return strength * _dcov(x, y, unbiased)


def distance_correlation(x, y, *, unbiased: bool = False):
    """Squared distance correlation ``dCov^2(x, y) / sqrt(dVar^2(x) dVar^2(y))`` (0 when a
    variance is 0); ``dcor.distance_correlation_sqr`` (V) or ``u_distance_correlation_sqr`` (U).

    Args:
      x: samples ``[n]`` or ``[n, p]``.
      y: samples ``[n]`` or ``[n, q]``.
      unbiased: use the U-statistics (bias-corrected dCor^2, may be negative).

    Returns:
      The scalar ``dCor^2``.
    """
    x, y = _pair(x, y, unbiased, "x", "y")
    a, b = _centred(x, unbiased), _centred(y, unbiased)
    variance = _average(a * a, unbiased) * _average(b * b, unbiased)
    positive = variance > 0
    root = jnp.sqrt(jnp.where(positive, variance, 1.0))
    return jnp.where(positive, _average(a * b, unbiased) / root, 0.0)


def _attribute_blocks(attributes, n: int, categories):
    """The protected attributes as a list of float ``[n, p_i]`` blocks (categorical ones
    one-hot encoded)."""
    if isinstance(attributes, (list, tuple)):
        blocks = list(attributes)
    else:
        array = jnp.asarray(attributes)
        if array.ndim == 1:
            blocks = [array]
        elif array.ndim == 2:
            blocks = [array[:, i] for i in range(array.shape[1])]
        else:
            raise ValueError("`attributes` must be an array [n] or [n, A] (one column per "
                             f"attribute) or a list of arrays, got shape {array.shape}.")
    if not blocks:
        raise ValueError("`attributes` must hold at least one protected attribute.")
    categories = (None,) * len(blocks) if categories is None else tuple(categories)
    if len(categories) != len(blocks):
        raise ValueError(f"`categories` must have one entry per attribute ({len(blocks)}), got "
                         f"{len(categories)}.")
    encoded = []
    for i, (block, count) in enumerate(zip(blocks, categories)):
        name = f"attributes[{i}]"
        block = jnp.asarray(block)
        if count:
            if not isinstance(count, int) or count < 2:
                raise ValueError(f"`categories[{i}]` must be an integer >= 2 (the number of "
                                 f"categories) or None, got {count!r}.")
            if not jnp.issubdtype(block.dtype, jnp.integer) or block.ndim != 1:
                raise TypeError(f"`{name}` is categorical (categories[{i}]={count}) and must "
                                f"hold integer codes of shape [n], got dtype {block.dtype} "
                                f"and shape {block.shape}.")
            block = jax.nn.one_hot(block, count, dtype=jnp.result_type(float))
        else:
            block = _real_samples(block, name)
        _same_rows(block, n, name, "outputs")
        encoded.append(block)
    return encoded


def _outputs_and_attributes(outputs, attributes, categories, unbiased: bool):
    _check_outputs_dtype(outputs)
    outputs = _real_samples(outputs, "outputs")
    _minimum_rows(outputs.shape[0], unbiased, "outputs")
    return outputs, _attribute_blocks(attributes, outputs.shape[0], categories)


def _check_outputs_dtype(outputs):
    dtype = jnp.asarray(outputs).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`outputs` must be a floating array (the model's predictions), got "
                        f"dtype {dtype}.")


def per_attribute_distance_covariance(outputs, attributes, *, strength=1.0,
                                      unbiased: bool = True, categories=None):
    """``strength * sum_i dCov^2(outputs, S_i)``: one distance covariance per attribute.

    Args:
      outputs: predictions ``[n]`` or ``[n, D]`` (floating).
      attributes: the protected attributes: an array ``[n]`` or ``[n, A]`` (one column per
        attribute) or a list/tuple of arrays ``[n]`` or ``[n, p]``.
      strength: the penalty weight.
      unbiased: U-statistics (the paper's estimator) or V-statistics.
      categories: None, or one entry per attribute: an int ``k >= 2`` for integer codes
        ``0..k-1`` to one-hot encode, None (or 0) for binary/continuous values used as they are.

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    outputs, blocks = _outputs_and_attributes(outputs, attributes, categories, unbiased)
    return strength * sum(_dcov(outputs, block, unbiased) for block in blocks)


def concatenated_distance_covariance(outputs, attributes, *, strength=1.0,
                                     unbiased: bool = True, categories=None):
    """CCdCov ``strength * dCov^2(outputs, (S_1, ..., S_d))`` (arXiv:2509.08163): distance
    covariance between the predictions and the concatenation of the (encoded) attributes.

    Args:
      outputs: predictions ``[n]`` or ``[n, D]`` (floating).
      attributes: as in :func:`per_attribute_distance_covariance`.
      strength: the penalty weight.
      unbiased: U-statistic (the paper's estimator) or V-statistic.
      categories: as in :func:`per_attribute_distance_covariance`.

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    outputs, blocks = _outputs_and_attributes(outputs, attributes, categories, unbiased)
    return strength * _dcov(outputs, jnp.concatenate(blocks, axis=1), unbiased)


def joint_distance_covariance(outputs, attributes, *, strength=1.0, c=1.0,
                              unbiased: bool = True, categories=None):
    """JdCov ``strength * JdCov^2(outputs, S_1, ..., S_d; c)`` (Chakraborty and Zhang 2019,
    Eq. 3.3 (V) and Section 3.2 (U); used by arXiv:2509.08163 with ``c = 1``).

    ``(1/n^2) sum_kl prod_i (U_i(k,l) + c) - c^m`` with ``U_i`` the negated double-centred
    distances (V), or ``(1/(n(n-3))) sum_kl prod_i (U~_i(k,l) + c) - n c^m/(n-3)`` with U-centred
    ones (U), over the ``m = d + 1`` variables. Includes the attributes' dependence on each
    other, which does not depend on the model.

    Args:
      outputs: predictions ``[n]`` or ``[n, D]`` (floating).
      attributes: as in :func:`per_attribute_distance_covariance`.
      strength: the penalty weight.
      c: the positive constant weighting lower-order terms (``c^(m-k)`` for the k-way terms).
      unbiased: U-statistic (the paper's estimator) or V-statistic.
      categories: as in :func:`per_attribute_distance_covariance`.

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    positive(c, "c")
    outputs, blocks = _outputs_and_attributes(outputs, attributes, categories, unbiased)
    variables = [outputs, *blocks]
    product = 1.0
    for x in variables:
        product = product * (c - _centred(x, unbiased))
    n, m = outputs.shape[0], len(variables)
    offset = c ** m * (n / (n - 3) if unbiased else 1.0)
    return strength * (_average(product, unbiased) - offset)


def jensen_shannon_divergence(scores, groups, *, num_groups: int, bandwidth=0.15,
                              num_points: int = 1000, weights: str = "proportion"):
    """Generalised Jensen-Shannon divergence (Lin 1991, in bits) between the groups' score
    distributions: ``H(sum_g pi_g p_g) - sum_g pi_g H(p_g)``.

    Each ``p_g`` is a Gaussian kernel density estimate of group ``g``'s scores evaluated on
    ``num_points`` equally spaced points from the smallest to the largest score and normalised
    to sum to 1 (the authors' ``JSD_generalized``: sklearn ``KernelDensity``, bandwidth 0.15,
    1000 points). It is 0 when every group has the same distribution and at most
    ``log2(number of groups)``. Empty groups are left out. For intersectional subgroups pass
    combined codes (e.g. ``race * 2 + sex``).

    Args:
      scores: predictions ``[n]`` (floating); vmap over a leading axis for a grid of models.
      groups: integer group codes ``[n]`` in ``[0, num_groups)``.
      num_groups: the number of group codes (static).
      bandwidth: the kernel's standard deviation, in score units (may be traced).
      num_points: grid size (static).
      weights: ``"proportion"`` (``pi_g`` = the group's share of the samples) or ``"equal"``
        (``1 / number of non-empty groups``).

    Returns:
      The scalar divergence.
    """
    scores = float_array(scores, "scores")
    if scores.ndim != 1:
        raise ValueError(f"`scores` must have shape [n], got {scores.shape}.")
    groups = jnp.asarray(groups)
    if not jnp.issubdtype(groups.dtype, jnp.integer):
        raise TypeError(f"`groups` must hold integer group codes, got dtype {groups.dtype}.")
    if groups.shape != scores.shape:
        raise ValueError(f"`groups` must have the shape of `scores`, {scores.shape}, got "
                         f"{groups.shape}.")
    if weights not in ("proportion", "equal"):
        raise ValueError(f"`weights` must be 'proportion' or 'equal', got {weights!r}.")
    positive(bandwidth, "bandwidth")
    class_labels(groups, num_groups, labels_name="groups")  # raises for concrete codes only
    grid = jnp.linspace(jnp.min(scores), jnp.max(scores), num_points)
    kernel = jnp.exp(-0.5 * jnp.square((grid[None, :] - scores[:, None]) / bandwidth))
    members = jax.nn.one_hot(groups, num_groups, dtype=scores.dtype)  # [n, G]
    mass = members.T @ kernel  # [G, P]
    totals = mass.sum(axis=1, keepdims=True)
    density = mass / jnp.where(totals > 0, totals, 1.0)
    counts = members.sum(axis=0)
    present = counts > 0
    if weights == "proportion":
        pi = counts / scores.shape[0]
    else:
        pi = present / jnp.sum(present)

    def entropy(p):
        positive = p > 0
        return -jnp.sum(jnp.where(positive, p * jnp.log2(jnp.where(positive, p, 1.0)), 0.0),
                        axis=-1)

    return entropy(pi @ density) - jnp.sum(pi * entropy(density))


def jensen_shannon_calibration(strengths, divergences, *, target, log_scale: bool = False):
    """The smallest strength whose Jensen-Shannon divergence reaches ``target``.

    Given strengths ``s_0 < s_1 < ...`` (ascending) and the divergences ``g_i`` measured for
    models trained with them (e.g. a vmapped grid and :func:`jensen_shannon_divergence`), finds
    the first ``i`` with ``g_i <= target`` and interpolates linearly between
    ``(s_{i-1}, g_{i-1})`` and ``(s_i, g_i)`` (in ``log s`` if ``log_scale``) for the strength
    where the curve crosses ``target``. Returns ``s_0`` if it already reaches the target and NaN
    if no strength does. Pure and jittable (``target`` may be traced).

    Args:
      strengths: ``[S]`` ascending strengths (positive if ``log_scale``).
      divergences: ``[S]`` the divergence measured at each strength.
      target: the largest acceptable divergence.
      log_scale: interpolate in ``log(strength)`` (for log-spaced grids).

    Returns:
      The scalar strength (NaN when the target is never reached).
    """
    strengths = float_array(strengths, "strengths")
    divergences = float_array(divergences, "divergences")
    if strengths.ndim != 1 or strengths.shape[0] < 1:
        raise ValueError(f"`strengths` must have shape [S] with S >= 1, got {strengths.shape}.")
    if divergences.shape != strengths.shape:
        raise ValueError(f"`divergences` must have the shape of `strengths`, {strengths.shape}, "
                         f"got {divergences.shape}.")
    reached = divergences <= target
    first = jnp.argmax(reached)
    previous = jnp.maximum(first - 1, 0)
    xs = jnp.log(strengths) if log_scale else strengths
    step = divergences[first] - divergences[previous]
    fraction = jnp.clip((target - divergences[previous]) / jnp.where(step != 0, step, 1.0),
                        0.0, 1.0)
    x = jnp.where(first == 0, xs[0], xs[previous] + fraction * (xs[first] - xs[previous]))
    x = jnp.exp(x) if log_scale else x
    return jnp.where(jnp.any(reached), x, jnp.nan)

