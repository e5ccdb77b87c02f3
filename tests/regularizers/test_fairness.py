"""Distance-covariance fairness penalties against golden numbers from the `dcor` package
(0.7; V- and U-statistics, exponent 1), JdCov's expansion into pairwise dCov, the
intersectional ("gerrymandering") case, and the Jensen-Shannon helpers against NumPy."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric import central_difference

from jaxreg.regularizers import fairness as f

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "fairness.json").read_text())
DATA = GOLDEN["data"]
OUT = np.asarray(DATA["outputs"])  # [12]
OUT2 = np.asarray(DATA["outputs2"])  # [12, 2]
BINARY = np.asarray(DATA["binary"])  # 0/1
CATEGORY = np.asarray(DATA["category"])  # codes 0..2
CONTINUOUS = np.asarray(DATA["continuous"])
ONE_HOT = np.eye(3)[CATEGORY]
KIND = {True: "unbiased", False: "biased"}


@pytest.mark.parametrize("unbiased", [False, True])
def test_distance_covariance_matches_dcor(unbiased):
    with jax.enable_x64(True):
        for name, x in (("outputs", OUT), ("outputs2", OUT2)):
            np.testing.assert_allclose(
                f.distance_covariance(x, CONTINUOUS, unbiased=unbiased),
                GOLDEN["distance_covariance"][name][KIND[unbiased]], rtol=1e-12)
        np.testing.assert_allclose(
            f.distance_correlation(OUT2, CONTINUOUS, unbiased=unbiased),
            GOLDEN["distance_correlation_sqr"][KIND[unbiased]], rtol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_every_attribute_type_matches_dcor(unbiased):
    """Binary as one coordinate, categorical one-hot, continuous as is."""
    with jax.enable_x64(True):
        variables = {"outputs": OUT, "binary": BINARY.astype(float), "category": ONE_HOT,
                     "continuous": CONTINUOUS}
        for pair, expected in GOLDEN["pairs"].items():
            a, b = pair.split(",")
            np.testing.assert_allclose(
                f.distance_covariance(variables[a], variables[b], unbiased=unbiased),
                expected[KIND[unbiased]], rtol=1e-12, err_msg=pair)
        per_attribute = f.per_attribute_distance_covariance(
            OUT, [BINARY, CATEGORY, CONTINUOUS], unbiased=unbiased, categories=(None, 3, None))
        expected = sum(GOLDEN["pairs"][f"outputs,{a}"][KIND[unbiased]]
                       for a in ("binary", "category", "continuous"))
        np.testing.assert_allclose(per_attribute, expected, rtol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_concatenated_matches_dcor_on_the_joint_attribute(unbiased):
    with jax.enable_x64(True):
        value = f.concatenated_distance_covariance(
            OUT, [BINARY, CATEGORY, CONTINUOUS], unbiased=unbiased, categories=(None, 3, None))
        np.testing.assert_allclose(value, GOLDEN["concatenated"][KIND[unbiased]], rtol=1e-12)
        # Categorical codes are the same as passing the one-hot block as a continuous one.
        manual = f.concatenated_distance_covariance(OUT, [BINARY, ONE_HOT, CONTINUOUS],
                                                    unbiased=unbiased)
        np.testing.assert_allclose(value, manual, rtol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_joint_distance_covariance_expands_into_pairwise_terms(unbiased):
    """JdCov(c) = c^2 sum_pairs dCov^2 + c sum_triples + the 4-way term for m = 4 variables
    (Chakraborty & Zhang 2019, Eq. 3.3): its second difference in c is twice the sum of the
    six pairwise dCov^2, each from dcor."""
    with jax.enable_x64(True):
        attributes = [BINARY, CATEGORY, CONTINUOUS]

        def jdcov(c):
            return f.joint_distance_covariance(OUT, attributes, c=c, unbiased=unbiased,
                                               categories=(None, 3, None))

        pairs = sum(v[KIND[unbiased]] for v in GOLDEN["pairs"].values())
        np.testing.assert_allclose((jdcov(3.0) - 2 * jdcov(2.0) + jdcov(1.0)) / 2, pairs,
                                   rtol=1e-10)
        # One attribute: JdCov is the distance covariance, whatever c.
        for c in (0.5, 1.0, 3.0):
            np.testing.assert_allclose(
                f.joint_distance_covariance(OUT, CONTINUOUS, c=c, unbiased=unbiased),
                GOLDEN["distance_covariance"]["outputs"][KIND[unbiased]], rtol=1e-10)


def test_intersectional_dependence_is_missed_by_per_attribute_terms():
    """Y = S1 xor S2 on a balanced design: empirically independent of each attribute alone
    (per-attribute V-statistics are 0), dependent on the pair (CCdCov and JdCov > 0)."""
    s1 = np.array([0, 0, 1, 1] * 3, float)
    s2 = np.array([0, 1, 0, 1] * 3, float)
    y = jnp.asarray(np.logical_xor(s1, s2), jnp.float32)
    attributes = jnp.stack([s1, s2], axis=1)
    per = f.per_attribute_distance_covariance(y, attributes, unbiased=False)
    assert abs(float(per)) < 1e-7
    assert float(f.concatenated_distance_covariance(y, attributes, unbiased=False)) > 0.05
    assert float(f.joint_distance_covariance(y, attributes, unbiased=False)) > 0.05


def test_gradients_match_central_differences_with_ties():
    """Tied predictions sit where the distance is not differentiable; the safe square root
    gives them a finite gradient, and elsewhere the gradient is the true one."""
    attributes = [BINARY, CATEGORY, CONTINUOUS]
    with jax.enable_x64(True):
        for fn in (f.concatenated_distance_covariance, f.joint_distance_covariance,
                   f.per_attribute_distance_covariance):
            def value(y, fn=fn):
                return fn(y, attributes, categories=(None, 3, None))

            grad = np.asarray(jax.grad(value)(jnp.asarray(OUT)))
            numeric = central_difference(lambda y: float(value(jnp.asarray(y))), OUT)
            np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    tied = jnp.asarray(np.round(OUT))  # several equal predictions
    grad = jax.grad(lambda y: f.concatenated_distance_covariance(y, CONTINUOUS))(tied)
    assert np.all(np.isfinite(grad))


def test_jit_vmap_over_strength_and_c_and_bfloat16():
    attributes = jnp.stack([BINARY, CONTINUOUS], axis=1)
    y = jnp.asarray(OUT, jnp.float32)
    strengths = jnp.asarray([0.0, 0.5, 2.0])
    swept = jax.jit(jax.vmap(lambda s: f.concatenated_distance_covariance(
        y, attributes, strength=s)))(strengths)
    one = f.concatenated_distance_covariance(y, attributes)
    np.testing.assert_allclose(swept, strengths * one, rtol=1e-5)
    cs = jnp.asarray([0.5, 1.0, 2.0])
    swept_c = jax.jit(jax.vmap(lambda c: f.joint_distance_covariance(y, attributes, c=c)))(cs)
    for c, v in zip(cs, swept_c):
        np.testing.assert_allclose(v, f.joint_distance_covariance(y, attributes, c=c), rtol=1e-4)
    low = f.concatenated_distance_covariance(y.astype(jnp.bfloat16) * 1e3, attributes)
    assert np.isfinite(low)


def _kde_jsd(scores, groups, bandwidth=0.15, points=1000, equal=False):
    grid = np.linspace(scores.min(), scores.max(), points)
    present = [g for g in np.unique(groups)]
    densities, weights = [], []
    for g in present:
        s = scores[groups == g]
        p = np.exp(-0.5 * ((grid[None] - s[:, None]) / bandwidth) ** 2).sum(0)
        densities.append(p / p.sum())
        weights.append(1 / len(present) if equal else len(s) / len(scores))
    densities, weights = np.asarray(densities), np.asarray(weights)

    def h(p):
        p = p[p > 0]
        return -(p * np.log2(p)).sum()

    return h(weights @ densities) - sum(w * h(p) for w, p in zip(weights, densities))


def test_jensen_shannon_divergence_matches_numpy_and_its_limits():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(0.3, 0.1, 30), rng.normal(0.6, 0.15, 20),
                             rng.normal(0.4, 0.1, 10)])
    groups = np.repeat([0, 1, 3], [30, 20, 10])  # code 2 empty: left out
    for equal in (False, True):
        value = f.jensen_shannon_divergence(jnp.asarray(scores, jnp.float32), groups,
                                            num_groups=4,
                                            weights="equal" if equal else "proportion")
        np.testing.assert_allclose(value, _kde_jsd(scores, groups, equal=equal), rtol=1e-4)
    same = np.tile(rng.uniform(size=25), 2)
    assert abs(float(f.jensen_shannon_divergence(same, np.repeat([0, 1], 25),
                                                 num_groups=2))) < 1e-6
    apart = np.concatenate([np.zeros(25), 100 * np.ones(25)])  # disjoint: 1 bit
    np.testing.assert_allclose(
        f.jensen_shannon_divergence(apart, np.repeat([0, 1], 25), num_groups=2), 1.0,
        rtol=1e-5)


def test_jensen_shannon_calibration_interpolates_the_crossing():
    strengths = jnp.asarray([0.0, 1.0, 2.0, 4.0])
    divergences = jnp.asarray([0.4, 0.3, 0.1, 0.05])
    np.testing.assert_allclose(
        f.jensen_shannon_calibration(strengths, divergences, target=0.2), 1.5, rtol=1e-6)
    np.testing.assert_allclose(
        f.jensen_shannon_calibration(strengths, divergences, target=0.5), 0.0)
    assert np.isnan(f.jensen_shannon_calibration(strengths, divergences, target=0.01))
    logs = f.jensen_shannon_calibration(jnp.asarray([0.1, 1.0, 10.0]),
                                        jnp.asarray([0.5, 0.3, 0.1]), target=0.2,
                                        log_scale=True)
    np.testing.assert_allclose(logs, np.sqrt(10.0), rtol=1e-5)
    targets = jnp.asarray([0.35, 0.2, 0.075])
    swept = jax.jit(jax.vmap(lambda t: f.jensen_shannon_calibration(
        strengths, divergences, target=t)))(targets)
    np.testing.assert_allclose(swept, [0.5, 1.5, 3.0], rtol=1e-6)


def test_bad_inputs_are_named():
    y = jnp.asarray(OUT, jnp.float32)
    with pytest.raises(ValueError, match="attributes\\[1\\]"):
        f.concatenated_distance_covariance(y, [BINARY, CONTINUOUS[:5]])
    with pytest.raises(TypeError, match="attributes\\[0\\]"):
        f.per_attribute_distance_covariance(y, [CONTINUOUS], categories=(3,))
    with pytest.raises(ValueError, match="categories"):
        f.joint_distance_covariance(y, [BINARY, CATEGORY], categories=(None,))
    with pytest.raises(TypeError, match="outputs"):
        f.concatenated_distance_covariance(jnp.asarray(BINARY), [CONTINUOUS])
    with pytest.raises(ValueError, match="at least 4"):
        f.concatenated_distance_covariance(y[:3], [CONTINUOUS[:3]])
    with pytest.raises(ValueError, match="y"):
        f.distance_covariance(y, CONTINUOUS[:4])
    with pytest.raises(TypeError, match="groups"):
        f.jensen_shannon_divergence(y, CONTINUOUS, num_groups=2)
    with pytest.raises(ValueError, match="divergences"):
        f.jensen_shannon_calibration(jnp.ones(3), jnp.ones(2), target=0.1)
