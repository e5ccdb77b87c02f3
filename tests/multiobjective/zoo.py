"""A seeded zoo of Jacobians for the aggregator tests (after torchjd's tests/unit/aggregation).

Each Jacobian is a pytree ``{"w": [m, a], "b": [m, c]}`` so aggregators are exercised on
more than one leaf; ``flat(J)`` gives the ``[m, n]`` matrix for numpy references.
"""

import numpy as np

# torchjd tests/unit/aggregation/test_values.py
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def as_tree(matrix, split=None):
    matrix = np.asarray(matrix, np.float32)
    split = matrix.shape[1] // 2 if split is None else split
    return {"w": matrix[:, :split].reshape(matrix.shape[0], split), "b": matrix[:, split:]}


def flat(tree):
    leaves = [np.asarray(tree[k]) for k in ("w", "b")]
    return np.concatenate([x.reshape(x.shape[0], int(np.prod(x.shape[1:]))) for x in leaves],
                          axis=1)


def rank_controlled(m, n, rank, rng):
    """``U[:, :r] diag(|N(0,1)|) V[:r]`` with Haar-random orthogonal U, V."""
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return u[:, :rank] @ np.diag(np.abs(rng.standard_normal(rank)) + 0.1) @ v.T[:rank]


SHAPES = [(1, 1, 1), (4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9), (3, 20, 3),
          (2, 5, 2), (2, 6, 1)]  # append only: earlier matrices feed the golden files


def matrices(seed=0):
    """(name, [m, n] float64 matrix) pairs of chosen rank."""
    rng = np.random.default_rng(seed)
    return [(f"m{m}n{n}r{r}", rank_controlled(m, n, r, rng)) for m, n, r in SHAPES]


def zero_matrices():
    return [(f"zero{m}x{n}", np.zeros((m, n))) for m, n in [(1, 1), (4, 3), (9, 11)]]


def scaled_matrices(seed=0):
    """Each zoo matrix scaled by 0 and 1e-15 .. 1e15 (finite output expected)."""
    return [(f"{name}x{scale:g}", matrix * scale) for name, matrix in matrices(seed)[:4]
            for scale in (0.0, 1e-15, 1e-10, 1e3, 1e5, 1e10, 1e15)]


def golden(name):
    """The golden numbers ``golden/<name>.json`` (computed from the reference packages)."""
    import json
    import pathlib

    return json.loads((pathlib.Path(__file__).parent / "golden" / f"{name}.json").read_text())


def run(aggregator, matrix, state=None):
    """One jitted update of ``aggregator`` on the Jacobian ``matrix`` ``[m, n]`` (as a
    two-leaf tree): ``(flat update [n], state)``."""
    import jax
    import jax.numpy as jnp

    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    state = aggregator.init(params) if state is None else state
    update, state = jax.jit(aggregator.update)(jac, state, params)
    return flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0], state
