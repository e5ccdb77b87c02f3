"""Loss-landscape slices and linear mode connectivity on losses with known geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.diagnostics import landscape


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"dense": {"kernel": jax.random.normal(k1, (5, 3)), "bias": jnp.ones(3)},
            "conv": {"kernel": jax.random.normal(k2, (2, 2, 3, 4))}}


def test_every_filter_of_the_direction_has_the_norm_of_its_weights():
    params = _params()
    direction = landscape.filter_normalized_direction(jax.random.PRNGKey(1), params)
    for path in (("dense", "kernel"), ("conv", "kernel")):
        d, p = direction[path[0]][path[1]], params[path[0]][path[1]]
        axes = tuple(range(p.ndim - 1))
        np.testing.assert_allclose(np.linalg.norm(np.asarray(d).reshape(-1, p.shape[-1]), axis=0),
                                   np.sqrt(np.sum(np.asarray(p) ** 2, axis=axes)), rtol=1e-5)
    np.testing.assert_array_equal(direction["dense"]["bias"], np.zeros(3))


def _quadratic(params):
    return sum(0.5 * jnp.sum((i + 1.0) * jnp.square(p))
               for i, p in enumerate(jax.tree.leaves(params)))


@pytest.mark.parametrize("dims", [1, 2])
def test_landscape_evaluates_the_loss_at_each_point(dims):
    params = _params()
    result = jax.jit(lambda k: landscape.loss_landscape(_quadratic, params, k, span=0.5,
                                                        num_points=5, dims=dims))(
        jax.random.PRNGKey(2))
    steps = np.asarray(result["steps"])
    np.testing.assert_allclose(steps, np.linspace(-0.5, 0.5, 5), atol=1e-7)
    assert result["losses"].shape == (5,) * dims
    for index in np.ndindex(*(5,) * dims):
        moved = jax.tree.map(
            lambda p, *ds, index=index: p + sum(steps[i] * d for i, d in zip(index, ds)),
            params, *result["directions"])
        np.testing.assert_allclose(result["losses"][index], _quadratic(moved), rtol=1e-5)
    centre = (2,) * dims
    np.testing.assert_allclose(result["losses"][centre], _quadratic(params), rtol=1e-6)


def _double_well(params):
    return jnp.sum(jnp.square(jnp.square(params["well"]) - 1)) + jnp.sum(params["bowl"] ** 2)


def test_barrier_of_a_double_well_and_of_a_convex_bowl():
    a = {"well": jnp.asarray([-1.0]), "bowl": jnp.asarray([-2.0, 1.0])}
    b = {"well": jnp.asarray([1.0]), "bowl": jnp.asarray([3.0, -1.0])}
    full = jax.jit(lambda p, q: landscape.linear_mode_connectivity(_double_well, p, q))(a, b)
    np.testing.assert_allclose(full["alphas"], np.linspace(0, 1, 11), atol=1e-7)
    expected = [float(_double_well(jax.tree.map(lambda x, y, t=t: (1 - t) * x + t * y, a, b)))
                for t in np.linspace(0, 1, 11)]
    np.testing.assert_allclose(full["losses"], expected, rtol=1e-5)
    chord = (1 - np.linspace(0, 1, 11)) * expected[0] + np.linspace(0, 1, 11) * expected[-1]
    np.testing.assert_allclose(full["barrier"], np.max(np.asarray(expected) - chord), rtol=1e-5)
    # Layer-wise: the well alone has a barrier of 1 (at its midpoint); the bowl alone, being
    # convex, lies under its chord, so its barrier is 0 (at the ends).
    well = landscape.linear_mode_connectivity(_double_well, a, b,
                                              mask={"well": True, "bowl": False})
    np.testing.assert_allclose(well["barrier"], 1.0, rtol=1e-5)
    bowl = landscape.linear_mode_connectivity(_double_well, a, b,
                                              mask={"well": False, "bowl": True})
    np.testing.assert_allclose(bowl["barrier"], 0.0, atol=1e-6)
    np.testing.assert_allclose(bowl["losses"][-1], _double_well({**a, "bowl": b["bowl"]}),
                               rtol=1e-6)


def test_arguments_are_checked():
    params = _params()
    with pytest.raises(ValueError, match="`dims`"):
        landscape.loss_landscape(_quadratic, params, jax.random.PRNGKey(0), dims=3)
    with pytest.raises(ValueError, match="`num_points`"):
        landscape.loss_landscape(_quadratic, params, jax.random.PRNGKey(0), num_points=1)
    with pytest.raises(ValueError, match="`params_b`"):
        landscape.linear_mode_connectivity(_quadratic, params, {"dense": params["dense"]})
    with pytest.raises(ValueError, match="`mask`"):
        landscape.linear_mode_connectivity(_quadratic, params, params, mask={"dense": True})


def test_plot_draws_a_line_and_a_plane(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    for ax, dims in zip(axes, (1, 2)):
        result = landscape.loss_landscape(_quadratic, _params(), jax.random.PRNGKey(3),
                                          num_points=4, dims=dims)
        assert landscape.plot_landscape(result, ax) is ax
    assert len(axes[0].lines) == 1 and len(axes[1].collections) > 0
    plt.close(fig)
