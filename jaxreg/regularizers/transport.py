"""The Monge gap, a regularizer that pushes a map toward a c-optimal transport map, via ott-jax.

Paper: Uscidda and Cuturi, "The Monge Gap: A Regularizer to Learn All Transport Maps" (2023),
arXiv:2302.04953, Eq. (8): for reference points ``x_1..x_n`` and their images ``T(x_i)``,

    M_eps(T) = (1/n) sum_i c(x_i, T(x_i)) - W_{c,eps}(rho_n, T#rho_n),

the mean displacement cost minus the entropic optimal transport cost between the points and
their images. Without regularization (``eps -> 0``) it is nonnegative and zero exactly when ``T``
is c-optimal on the sample (the identity has gap 0); with ``eps > 0`` it is bounded below by
``-eps log n``.

Matches ``ott.neural.methods.monge_gap.monge_gap_from_samples`` (ott-jax 0.6): the same
``PointCloud`` geometry (squared Euclidean cost by default, ott's default epsilon, 5% of the mean
cost) and ``ott.solvers.linear.solve`` (Sinkhorn, implicit differentiation), with
``W = SinkhornOutput.ent_reg_cost``. It calls ott's geometry and solver directly rather than that
function, because importing ``ott.neural`` also needs diffrax.

ott-jax is an optional extra (``pip install jaxreg[transport]``); it is imported when
``monge_gap`` is called, so jaxreg imports without it.

A concrete ``strength`` must be ``>= 0`` and a concrete ``epsilon`` ``> 0`` (``ValueError``
naming the argument); traced values are not checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import check_strength, float_array, positive, same_shape


def _ott():
    try:
        from ott.geometry import costs, pointcloud
        from ott.solvers import linear
    except ImportError as error:
        raise ImportError("monge_gap needs ott-jax, an optional extra of jaxreg: "
                          "pip install jaxreg[transport]") from error
    return costs, pointcloud, linear


def monge_gap(source, mapped, *, strength=1.0, epsilon=None, cost=None, **solver_kwargs):
    """Monge gap ``strength * [(1/n) sum_i c(x_i, y_i) - W_{c,eps}(x, y)]`` (arXiv:2302.04953).

    Args:
      source: reference points ``x`` ``[n, d]``.
      mapped: their images ``y_i = T(x_i)`` ``[n, d]`` (gradients flow through these).
      strength: the regularization weight.
      epsilon: entropic regularization of the OT cost; None is ott's default (0.05 times the
        mean of the cost matrix), which the gradient treats as a constant (as ott does: the
        gradient is that of the gap at a fixed epsilon). May be a traced scalar.
      cost: an ``ott.geometry.costs.CostFn``; None is ``SqEuclidean`` (``||x - y||^2``).
      **solver_kwargs: passed to ``ott.solvers.linear.solve`` (e.g. ``threshold``,
        ``max_iterations``).

    Returns:
      The scalar penalty.
    """
    check_strength(strength)
    positive(epsilon, "epsilon")  # None (ott's default) passes
    costs, pointcloud, linear = _ott()
    source = float_array(source, "source")
    mapped = float_array(mapped, "mapped")
    if source.ndim != 2:
        raise ValueError(f"`source` must have shape [n, d], got {source.shape}.")
    same_shape(source, mapped, "source", "mapped")
    cost = costs.SqEuclidean() if cost is None else cost
    dtype = jnp.result_type(source, mapped)
    # ott-jax 0.6's Sinkhorn fails on float32 points when x64 is enabled (its lax.cond
    # branches return float64 and float32): solve in the default float dtype, cast back
    work = jnp.promote_types(dtype, jax.dtypes.canonicalize_dtype(jnp.float64))
    source, mapped = source.astype(work), mapped.astype(work)
    geometry = pointcloud.PointCloud(source, mapped, cost_fn=cost, epsilon=epsilon)
    displacement = jnp.mean(jax.vmap(cost)(source, mapped))
    transport = linear.solve(geometry, **solver_kwargs).ent_reg_cost
    return (strength * (displacement - transport)).astype(dtype)
