"""Soft equivariance of linear layers: the projection-based equivariance regularizer (PER).

Kim, Lee, Yang & Lee, "Regularizing Towards Soft Equivariance Under Mixed Symmetries",
ICML 2023, arXiv:2306.00356. A linear layer ``y = x K`` (Flax layout: kernel ``K [in, out]``)
is equivariant to a group ``G`` acting by ``rho_in`` on inputs and ``rho_out`` on outputs when
``rho_in(g)^T K = K rho_out(g)^T`` for every ``g``. These ``K`` form a linear subspace; with
``P_G`` the orthogonal (Frobenius) projector onto it, PER penalizes the distance of each
weight to that subspace, for several groups ``G_1, ..., G_m`` with their own coefficients
(the "mixed symmetries"):

    R(K) = sum_i lambda_i * 1/2 * || vec(K) - P_{G_i} vec(K) ||^2

summed over the layers. The bias ``b [out]`` is a map from the trivial representation to
``rho_out`` and gets the same penalty with its own projector, as in the reference code.

Matches the official code (kim-hyunsu/PER, ``experiments/mixed-symmetry/
train_softemlp_checkpoint.py``, ``equiv_regularizer`` for ``softemlp`` networks with the
default ``--loss_type=mse``: ``0.5 * ((W - Pw @ W) ** 2).sum()`` per layer and group, plus
the same for the bias unless ``--no_bias_regular``), where ``Pw`` is EMLP's
``equivariant_projector`` of ``repout << repin`` (the orthogonal projector onto the nullspace
of the representation's constraints). ``equivariant_projector`` below computes that projector
from the representation matrices of a group's discrete generators and of its Lie algebra
generators, as EMLP does (nullspace of the stacked constraints, by SVD in float64).

Departures: the reference's alternative ``logmse`` and cosine losses and its automatic
rescaling of the coefficients during training (``--auto_equiv``) are not provided; the
projectors are built once, outside ``jit``, and passed in (EMLP's lazy Krylov solver for
large representations is not reproduced: the dense SVD needs ``(in*out)^2`` memory).

A concrete ``strength`` (scalar or per group) must be ``>= 0`` (``ValueError`` naming it); a
traced one is not checked.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _validate


def _generators(values, name: str, dim_name: str):
    if values is None:
        return None
    if isinstance(values, jax.core.Tracer):
        raise TypeError(f"`{name}` must be concrete: build projectors outside jax.jit.")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise ValueError(f"`{name}` must hold square {dim_name} matrices, shape [k, d, d] or "
                         f"[d, d], got {np.shape(values)}.")
    return array


def equivariant_projector(rho_in=None, rho_out=None, *, algebra_in=None, algebra_out=None,
                          tol: float = 1e-7) -> jax.Array:
    """The orthogonal projector onto the kernels ``K [in, out]`` equivariant to a group.

    The group is given by the representation matrices of its discrete generators
    (``rho_in [k, in, in]`` and ``rho_out [k, out, out]``, generator by generator) and/or of
    its Lie algebra generators (``algebra_in [m, in, in]``, ``algebra_out [m, out, out]``).
    The constraints are ``rho_in^T K - K rho_out^T = 0`` (discrete) and
    ``A_in^T K - K A_out^T = 0`` (continuous); their nullspace ``Q`` (orthonormal columns,
    from an SVD in float64) gives ``P = Q Q^T``, acting on the row-major ``K.reshape(-1)``.

    For a bias (a map from the trivial representation), pass ``rho_in = ones [k, 1, 1]``
    (``algebra_in = zeros [m, 1, 1]``): ``P`` then acts on ``b [out]``.

    Computed eagerly with NumPy (not traceable): build it once, then pass it to
    ``soft_equivariance``.

    Args:
        rho_in: discrete generators' representations on the input (the same count k as
            ``rho_out``), or None.
        rho_out: discrete generators' representations on the output, or None.
        algebra_in: Lie algebra generators' representations on the input, or None.
        algebra_out: Lie algebra generators' representations on the output, or None.
        tol: singular values below ``tol * max(1, largest)`` count as zero.

    Returns:
        ``P [in*out, in*out]`` (float32), symmetric and idempotent.
    """
    pairs = []
    for a_name, b_name, a, b in (("rho_in", "rho_out", rho_in, rho_out),
                                 ("algebra_in", "algebra_out", algebra_in, algebra_out)):
        a = _generators(a, a_name, "representation")
        b = _generators(b, b_name, "representation")
        if (a is None) != (b is None):
            raise ValueError(f"`{a_name}` and `{b_name}` must be given together.")
        if a is not None:
            if a.shape[0] != b.shape[0]:
                raise ValueError(f"`{b_name}` must have one matrix per generator of "
                                 f"`{a_name}` ({a.shape[0]}), got {b.shape[0]}.")
            pairs.append((a, b, a_name, b_name))
    if not pairs:
        raise ValueError("give `rho_in`/`rho_out` or `algebra_in`/`algebra_out`.")
    d_in, d_out = pairs[0][0].shape[1], pairs[0][1].shape[1]
    rows = []
    for a, b, a_name, b_name in pairs:
        if a.shape[1] != d_in:
            raise ValueError(f"`{a_name}` must be {d_in}x{d_in}, got {a.shape[1:]}.")
        if b.shape[1] != d_out:
            raise ValueError(f"`{b_name}` must be {d_out}x{d_out}, got {b.shape[1:]}.")
        eye_in, eye_out = np.eye(d_in), np.eye(d_out)
        # Row-major vec: vec(A K B) = (A kron B^T) vec(K).
        rows += [np.kron(ai.T, eye_out) - np.kron(eye_in, bi) for ai, bi in zip(a, b)]
    constraints = np.concatenate(rows, axis=0)
    _, singular, vt = np.linalg.svd(constraints, full_matrices=True)
    rank = int(np.sum(singular > tol * max(1.0, float(singular.max(initial=0.0)))))
    basis = vt[rank:].T
    return jnp.asarray(basis @ basis.T, dtype=jnp.float32)


def soft_equivariance(params, projectors, *, strength=1.0) -> jax.Array:
    """PER: ``sum_leaves sum_i strength_i * 1/2 ||vec(w) - P_i vec(w)||^2`` (see the module).

    Args:
        params: a parameter pytree.
        projectors: a pytree with the structure of ``params`` whose leaves are ``None`` (leaf
            not penalized; a ``None`` may also stand for a whole subtree) or projectors for
            that leaf: ``[n, n]`` or, for several groups, ``[m, n, n]``, with ``n`` the leaf's
            size (from ``equivariant_projector``).
        strength: the coefficients ``lambda``: a scalar, or ``[m]`` (one per group).

    Returns:
        The penalty, a scalar (float32).
    """
    _validate.check_strength(strength)
    strength = _validate.float_array(strength, "strength")
    if strength.ndim > 1:
        raise ValueError(f"`strength` must be a scalar or one value per group, got shape "
                         f"{strength.shape}.")
    try:
        pairs = jax.tree.map(lambda p, w: (p, w), projectors, params,
                             is_leaf=lambda x: x is None)
    except ValueError as error:
        raise ValueError(f"`projectors` must have the structure of `params` (None for the "
                         f"leaves without a constraint): {error}") from None

    total = jnp.zeros([], jnp.float32)
    for projector, weight in jax.tree.leaves(pairs, is_leaf=lambda x: isinstance(x, tuple)):
        if projector is None:
            continue
        weight = _validate.float_array(weight, "params").reshape(-1)
        projector = _validate.float_array(projector, "projectors")
        n = weight.shape[0]
        if projector.ndim not in (2, 3) or projector.shape[-2:] != (n, n):
            raise ValueError(f"`projectors` must hold [n, n] or [m, n, n] matrices with n = "
                             f"{n} (the size of the matching leaf), got {projector.shape}.")
        stacked = projector if projector.ndim == 3 else projector[None]
        if strength.ndim == 1 and strength.shape[0] != stacked.shape[0]:
            raise ValueError(f"`strength` must have one value per group "
                             f"({stacked.shape[0]}), got {strength.shape[0]}.")
        residual = weight[None, :] - stacked @ weight
        per_group = 0.5 * jnp.sum(residual**2, axis=-1)
        total = total + jnp.sum(strength * per_group)
    return total


def equivariance_error(kernel, rho_in: Sequence, rho_out: Sequence) -> jax.Array:
    """``max_g ||rho_in(g)^T K - K rho_out(g)^T||_F / ||K||_F`` over the given group elements:
    0 for an equivariant kernel (a diagnostic, not a penalty)."""
    kernel = _validate.float_array(kernel, "kernel", min_ndim=2)
    rho_in = _validate.float_array(rho_in, "rho_in", min_ndim=3)
    rho_out = _validate.float_array(rho_out, "rho_out", min_ndim=3)
    diff = jnp.swapaxes(rho_in, -1, -2) @ kernel - kernel @ jnp.swapaxes(rho_out, -1, -2)
    norm = jnp.sqrt(jnp.sum(kernel**2) + 1e-30)
    return jnp.max(jnp.sqrt(jnp.sum(diff**2, axis=(-1, -2)))) / norm
