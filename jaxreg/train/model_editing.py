"""Model editing on parameter pytrees: task vectors, DARE, DAREx-q and aTLAS coefficients.

Everything here is a pure function of parameter pytrees (randomness through explicit keys), so
it jits, vmaps over the numeric hyperparameters and differentiates.

**Task vectors** (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023,
arXiv:2212.04089): ``tau = theta_F - theta_P``; ``merge`` computes
``theta = theta_P + sum_t lambda_t tau_t``.

**DARE** (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
Models as a Free Lunch", ICML 2024, arXiv:2311.03099, Eqs. 1-2): each delta is dropped with
probability ``p`` and the survivors are rescaled by ``1 / (1 - p)``,
``m ~ Bernoulli(p)``, ``delta' = (1 - m) * delta / (1 - p)``, ``theta = theta_P + delta'``,
which keeps the expectation of every delta (and of every pre-activation) unchanged. This
matches ``mask_input_with_mask_rate`` (random strategy, ``weight_format="delta_weight"``) of the
official code, github.com/yule-BUAA/MergeLM (``model_merging_methods/mask_weights_utils.py``):
there every parameter is edited, embeddings, biases and LayerNorm included; only the
task-specific classification head is excluded (``exclude_param_names_regex=[".*classifier.*"]``
for the GLUE models, nothing for the LLMs). Hence ``mask=None`` edits every leaf; pass a mask
(a pytree of bools or a function of the parameters) to exclude a head or to edit kernels only;
leaves outside the mask keep their fine-tuned values, as the excluded head does there.
Defaults: ``p = 0.9`` with rescaling, the setting the paper's abstract and figures feature
(MergeLM's command-line defaults are ``--weight_mask_rate 0.1`` with ``--use_weight_rescale``
off; the paper reports rates up to 0.99).

**DAREx-q** (Deng et al., "DARE the Extreme: Revisiting Delta-Parameter Pruning for Fine-Tuned
Models", ICLR 2025, arXiv:2410.09344): at large ``p`` the factor ``1 / (1 - p)``
amplifies the variance of the pruned model's outputs; DAREx-q rescales the survivors by
``1 / q`` instead, ``theta(q) = theta_P + (1 - m) * delta / q``, with ``q`` between ``1 - p``
and 1. Implemented variant: one *global* ``q`` chosen without labels by minimising the mean
absolute change of the model's outputs on a small calibration batch (the paper's unsupervised
proxy, Fig. 1 left: "the rescaling factor that minimizes the last-layer output change"),
``q* = argmin_q 1/K sum_k mean_{x, j} |f(theta_F; x)_j - f(theta_k(q); x)_j|``, averaged over
``K`` drop masks that are held fixed across ``q`` (common random numbers). This is the
``--outputchange`` path of ``find_q_encoder.py`` in the official code github.com/vengdeng/DAREx
(global q, ``rescale_v``; ``get_outpuchage``: ``mean |h_F - h_pruned|`` of the last hidden
layer; 4 drop seeds; grid from ``1 - p`` up, then a finer grid around the best point).
``apply_fn`` decides which output is compared (return the last hidden layer to follow the
paper exactly). Departures: the search is a grid over ``[q_min, q_max]`` followed by a
golden-section refinement between the best grid point's neighbours (the official code refines
with a finer grid and stops a sweep after 4 non-improving points); the ``K`` draws are plainly
averaged (the official code drops the one farthest from the mean when it has 3 or more). For a
model linear in its parameters the objective is convex in ``1/q``, so the refinement finds the
global optimum; otherwise the grid guards against a non-unimodal objective. Not implemented:
the per-layer ``q`` of the paper's analytical variant (official ``analyticalq.py``)
and DAREx-L2 (fine-tuning with AdamR; see ``jaxreg.optim.weight_decay.decay_to_anchor``).

**aTLAS** (Zhang et al., "Knowledge Composition using Task Vectors with Learned Anisotropic
Scaling", NeurIPS 2024, arXiv:2407.02880): one learned coefficient per task and per
parameter tensor ("block"), ``theta^(j) = theta_P^(j) + sum_t lambda_t^(j) tau_t^(j)``, trained
by gradient descent on an objective while the task vectors stay frozen. As in the official
code (github.com/fredzzhang/atlas, ``src/composition.py``, ``WeightedImageEncoder``:
``torch.zeros(T, num_blocks)``, every parameter tensor a block)
the coefficients start at zero (the pre-trained model) and every tensor gets its own.
``coefficient_objective`` turns a loss into a ``jaxreg.train.make_step`` objective whose
trainable parameters are the coefficients; ``learn_coefficients`` runs that step.

Trees: ``finetuned``, ``base`` and each task vector must have the same structure and leaf
shapes, with floating leaves; a mismatch raises a ``ValueError``/``TypeError`` naming the
argument. Arithmetic is done in float32 (or wider) and results take the parameters' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import at_least_float32 as _f32
from jaxreg.train.state import init_state
from jaxreg.train.step import make_step

_GOLDEN = 0.6180339887498949  # (sqrt(5) - 1) / 2


# --------------------------------------------------------------------------- checks


def _float_leaves(tree, name: str):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    if not leaves:
        raise ValueError(f"`{name}` must be a non-empty pytree of floating arrays.")
    for path, leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"`{name}` leaf {jax.tree_util.keystr(path)} must be a floating "
                            f"array, got dtype {jnp.result_type(leaf)}.")


def _same_tree(reference, other, reference_name: str, name: str, *, check_dtype=True):
    """Raises unless ``other`` has the structure and leaf shapes of ``reference``."""
    ref_def, other_def = jax.tree.structure(reference), jax.tree.structure(other)
    if ref_def != other_def:
        raise ValueError(f"`{name}` must have the tree structure of `{reference_name}`: "
                         f"expected {ref_def}, got {other_def}.")
    if check_dtype:
        _float_leaves(other, name)
    paths = jax.tree_util.tree_flatten_with_path(reference)[0]
    for (path, a), b in zip(paths, jax.tree.leaves(other), strict=True):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"`{name}` leaf {jax.tree_util.keystr(path)} must have shape "
                             f"{jnp.shape(a)} (as in `{reference_name}`), got {jnp.shape(b)}.")


def _chosen(mask, params, params_name: str):
    """The mask as a pytree of Python bools: None selects every leaf."""
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    chosen = mask(params) if callable(mask) else mask
    if jax.tree.structure(chosen) != jax.tree.structure(params):
        raise ValueError(f"`mask` must have the tree structure of `{params_name}`: expected "
                         f"{jax.tree.structure(params)}, got {jax.tree.structure(chosen)}.")
    for leaf in jax.tree.leaves(chosen):
        if not isinstance(leaf, (bool, jnp.bool_)) and jnp.result_type(leaf) != jnp.bool_:
            raise TypeError(f"`mask` leaves must be booleans, got {type(leaf).__name__}.")
    return jax.tree.map(bool, chosen)


def _num_tasks(task_vectors) -> int:
    if isinstance(task_vectors, dict) or not isinstance(task_vectors, Sequence) \
            or not task_vectors:
        raise TypeError("`task_vectors` must be a non-empty list of pytrees shaped like `base`, "
                        f"got {type(task_vectors).__name__}.")
    return len(task_vectors)


def _stack(task_vectors, base):
    _num_tasks(task_vectors)
    for t, tau in enumerate(task_vectors):
        _same_tree(base, tau, "base", f"task_vectors[{t}]")
    return jax.tree.map(lambda *leaves: jnp.stack([_f32(v) for v in leaves]), *task_vectors)


# --------------------------------------------------------------------------- task vectors


def task_vector(finetuned, base):
    """The task vector ``tau = theta_F - theta_P``, leaf by leaf.

    Args:
        finetuned: fine-tuned parameters ``theta_F``.
        base: pre-trained parameters ``theta_P`` (same tree and shapes).

    Returns:
        The deltas, a pytree like ``finetuned`` in its dtypes.
    """
    _float_leaves(finetuned, "finetuned")
    _same_tree(finetuned, base, "finetuned", "base")
    return jax.tree.map(lambda f, b: (_f32(f) - _f32(b)).astype(jnp.result_type(f)),
                        finetuned, base)


# --------------------------------------------------------------------------- DARE / DAREx-q


def _keep_masks(key, finetuned, drop_rate):
    """``1 - m``: one Bernoulli(1 - p) draw per entry, a key per leaf (in flattening order)."""
    leaves, treedef = jax.tree.flatten(finetuned)
    keys = jax.random.split(key, len(leaves))
    keep = [jax.random.bernoulli(k, 1.0 - drop_rate, jnp.shape(leaf))
            for k, leaf in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, keep)


def _edit(finetuned, base, keep, scale, chosen):
    """``theta_P + keep * delta * scale`` on chosen leaves (written ``theta_F + (scale - 1)
    delta`` for survivors, so that ``scale = 1`` returns ``theta_F`` exactly); the fine-tuned
    value elsewhere."""
    def one(f, b, k, on):
        if not on:
            return f
        f32, b32 = _f32(f), _f32(b)
        survivor = f32 + (scale - 1.0) * (f32 - b32)
        return jnp.where(k, survivor, b32).astype(jnp.result_type(f))

    return jax.tree.map(one, finetuned, base, keep, chosen)


def _check_pair(finetuned, base, mask):
    _float_leaves(finetuned, "finetuned")
    _same_tree(finetuned, base, "finetuned", "base")
    return _chosen(mask, finetuned, "finetuned")


def dare(key, finetuned, base, *, drop_rate=0.9, rescale=True, q=None, mask: Any = None):
    """DARE: drop each delta with probability ``p`` and rescale the survivors (Eqs. 1-2).

    ``theta = theta_P + (1 - m) * (theta_F - theta_P) * s``, ``m ~ Bernoulli(p)`` entry-wise,
    with ``s = 1 / (1 - p)`` (``rescale=True``), ``s = 1`` (``rescale=False``, drop only), or
    ``s = 1 / q`` when ``q`` is given (DAREx-q's factor; see ``darex_q_search``).

    Args:
        key: PRNG key; leaf ``i`` (in ``jax.tree.leaves`` order) uses ``split(key, n)[i]``.
        finetuned: fine-tuned parameters ``theta_F``.
        base: pre-trained parameters ``theta_P`` (same tree and shapes).
        drop_rate: ``p`` in [0, 1] (paper: 0.9). At ``p = 1`` every delta is dropped and no
            rescaling happens (as in MergeLM).
        rescale: whether the survivors are multiplied by ``1 / (1 - p)`` (a bool, may be a
            traced boolean); ignored when ``q`` is given.
        q: optional DAREx-q rescaling denominator (scalar, traceable).
        mask: which leaves to edit: None (default, every leaf, as the official code), a pytree
            of bools or a function ``mask(params) -> pytree of bools``; the others keep their
            fine-tuned values.

    Returns:
        The edited parameters, a pytree like ``finetuned`` in its dtypes.
    """
    chosen = _check_pair(finetuned, base, mask)
    drop_rate = _f32(drop_rate)
    if q is None:
        keep_rate = 1.0 - drop_rate
        inverse = 1.0 / jnp.where(keep_rate > 0, keep_rate, 1.0)
        scale = jnp.where(rescale, inverse, 1.0)
    else:
        scale = 1.0 / _f32(q)
    return _edit(finetuned, base, _keep_masks(key, finetuned, drop_rate), scale, chosen)


def output_change(apply_fn: Callable, reference_params, params, inputs):
    """``mean_{x, j} |f(reference; x)_j - f(params; x)_j|``: DAREx-q's calibration objective.

    Args:
        apply_fn: ``apply_fn(params, inputs) -> outputs`` (an array or a pytree of arrays).
        reference_params: the fine-tuned parameters ``theta_F``.
        params: the edited parameters.
        inputs: a calibration batch.

    Returns:
        A scalar (float32): the mean absolute output difference over all output entries.
    """
    reference = apply_fn(reference_params, inputs)
    return _mean_abs_change(reference, apply_fn(params, inputs))


def _mean_abs_change(reference, outputs):
    diffs = [jnp.abs(_f32(a) - _f32(b)).ravel()
             for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(outputs), strict=True)]
    return jnp.mean(jnp.concatenate(diffs))


def darex_q_search(key, apply_fn: Callable, finetuned, base, inputs, *, drop_rate=0.9,
                   q_min=None, q_max=1.0, num_draws: int = 4, num_grid: int = 16,
                   num_refine: int = 30, mask: Any = None):
    """DAREx-q: the global ``q`` minimising the mean output change on calibration inputs.

    ``q* = argmin_{q in [q_min, q_max]} 1/K sum_k output_change(theta_F, theta_k(q))`` with
    ``theta_k(q) = dare(keys[k], finetuned, base, drop_rate=p, q=q, mask=mask)`` and
    ``keys = jax.random.split(key, K)`` (the masks are the same for every ``q``). A grid of
    ``num_grid`` points, then ``num_refine`` golden-section steps on the bracket around the
    best grid point; jittable (``apply_fn`` is static) and vmappable over ``drop_rate``,
    ``q_min``, ``q_max``. Use the result with ``dare(key', ..., q=q)``.

    Args:
        key: PRNG key for the ``K`` calibration drop masks.
        apply_fn: ``apply_fn(params, inputs) -> outputs``; return the last hidden layer to
            follow the paper (it compares last-layer outputs), or logits.
        finetuned: fine-tuned parameters ``theta_F``.
        base: pre-trained parameters ``theta_P``.
        inputs: the calibration batch (unlabelled).
        drop_rate: ``p`` (paper: 0.9; DAREx-q targets p = 0.99).
        q_min: lower end of the search (default ``1 - p``, DARE's own factor, as the official
            ``l_bound = 1 - p``).
        q_max: upper end (default 1: no rescaling).
        num_draws: ``K`` drop masks averaged (official: 4 seeds).
        num_grid: grid points (at least 3).
        num_refine: golden-section iterations (each shrinks the bracket by 0.618).
        mask: leaves to edit, as in ``dare``.

    Returns:
        ``(q, objective)``: the chosen ``q`` and its averaged output change (float32 scalars).
    """
    if num_grid < 3:
        raise ValueError(f"`num_grid` must be at least 3, got {num_grid}.")
    if num_draws < 1:
        raise ValueError(f"`num_draws` must be at least 1, got {num_draws}.")
    chosen = _check_pair(finetuned, base, mask)
    drop_rate = _f32(drop_rate)
    low = 1.0 - drop_rate if q_min is None else _f32(q_min)
    high = _f32(q_max)
    keeps = jax.vmap(lambda k: _keep_masks(k, finetuned, drop_rate))(
        jax.random.split(key, num_draws))
    reference = apply_fn(finetuned, inputs)

    def objective(q):
        def one(keep):
            edited = _edit(finetuned, base, keep, 1.0 / q, chosen)
            return _mean_abs_change(reference, apply_fn(edited, inputs))
        return jnp.mean(jax.vmap(one)(keeps))

    dtype = jnp.promote_types(jnp.result_type(*jax.tree.leaves(finetuned)), jnp.float32)
    grid = low + (high - low) * jnp.linspace(0.0, 1.0, num_grid, dtype=dtype)
    values = jax.lax.map(objective, grid)
    best = jnp.argmin(values)
    a = grid[jnp.maximum(best - 1, 0)]
    b = grid[jnp.minimum(best + 1, num_grid - 1)]

    def golden(_, bracket):
        a, b, c, d, fc, fd = bracket
        left = fc <= fd  # the minimum lies in [a, d]: d becomes the new upper end
        a, b = jnp.where(left, a, c), jnp.where(left, d, b)
        point = jnp.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
        value = objective(point)  # the other interior point is the old c (or d), reused
        return (a, b, jnp.where(left, point, d), jnp.where(left, c, point),
                jnp.where(left, value, fd), jnp.where(left, fc, value))

    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    a, b, c, d, fc, fd = jax.lax.fori_loop(
        0, num_refine, golden, (a, b, c, d, objective(c), objective(d)))
    refined, f_refined = jnp.where(fc <= fd, c, d), jnp.minimum(fc, fd)
    use_refined = f_refined <= values[best]
    return (jnp.where(use_refined, refined, grid[best]),
            jnp.where(use_refined, f_refined, values[best]))


# --------------------------------------------------------------------------- merging / aTLAS


def init_coefficients(base, num_tasks: int, *, value=0.0):
    """aTLAS coefficients: one ``[num_tasks]`` vector per parameter tensor, all ``value``.

    Args:
        base: pre-trained parameters (gives the tree).
        num_tasks: number of task vectors ``T``.
        value: initial coefficient (official code: 0, i.e. start at the pre-trained model).

    Returns:
        A pytree like ``base`` whose leaves are float32 ``[T]`` arrays.
    """
    _float_leaves(base, "base")
    return jax.tree.map(lambda _: jnp.full((num_tasks,), value, jnp.float32), base)


def apply_coefficients(base, task_vectors: Sequence, coefficients, *, mask: Any = None):
    """Anisotropic task arithmetic (aTLAS): ``theta^(j) = theta_P^(j) + sum_t
    lambda_t^(j) tau_t^(j)`` for every parameter tensor ``j``.

    Args:
        base: pre-trained parameters ``theta_P``.
        task_vectors: a list of ``T`` pytrees shaped like ``base`` (from ``task_vector``).
        coefficients: a pytree like ``base`` whose leaves are ``[T]`` vectors (see
            ``init_coefficients``); differentiable.
        mask: tensors to merge (None: all; else as in ``dare``); the others keep ``base``.

    Returns:
        The merged parameters, a pytree like ``base`` in its dtypes.
    """
    _float_leaves(base, "base")
    stacked = _stack(task_vectors, base)
    num_tasks = len(task_vectors)
    if jax.tree.structure(coefficients) != jax.tree.structure(base):
        raise ValueError("`coefficients` must have the tree structure of `base` (one [T] "
                         f"vector per tensor): expected {jax.tree.structure(base)}, got "
                         f"{jax.tree.structure(coefficients)}.")
    for leaf in jax.tree.leaves(coefficients):
        if jnp.shape(leaf) != (num_tasks,):
            raise ValueError(f"`coefficients` leaves must have shape ({num_tasks},) (one per "
                             f"task vector), got {jnp.shape(leaf)}.")
    chosen = _chosen(mask, base, "base")

    def one(b, taus, lam, on):
        if not on:
            return b
        merged = _f32(b) + jnp.tensordot(_f32(lam), taus, axes=1)
        return merged.astype(jnp.result_type(b))

    return jax.tree.map(one, base, stacked, coefficients, chosen)


def merge(base, task_vectors: Sequence, coefficients, *, mask: Any = None):
    """Task arithmetic: ``theta = theta_P + sum_t lambda_t tau_t`` (one scalar per task).

    Args:
        base: pre-trained parameters ``theta_P``.
        task_vectors: a list of ``T`` pytrees shaped like ``base``.
        coefficients: ``[T]`` scalars ``lambda_t`` (traceable; a scalar is broadcast).
        mask: tensors to merge, as in ``apply_coefficients``.

    Returns:
        The merged parameters.
    """
    num_tasks = _num_tasks(task_vectors)
    if jnp.shape(coefficients) not in ((), (num_tasks,)):
        raise ValueError(f"`coefficients` must be a scalar or have shape ({num_tasks},) (one per "
                         f"task vector), got {jnp.shape(coefficients)}.")
    lam = jnp.broadcast_to(_f32(coefficients), (num_tasks,))
    per_tensor = jax.tree.map(lambda _: lam, base)
    return apply_coefficients(base, task_vectors, per_tensor, mask=mask)


def coefficient_objective(loss_fn: Callable, base, task_vectors: Sequence, *,
                          mask: Any = None):
    """An objective for ``jaxreg.train.make_step`` whose parameters are aTLAS coefficients.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` on the merged model's parameters.
        base: pre-trained parameters (frozen).
        task_vectors: list of task vectors (frozen).
        mask: tensors to merge, as in ``apply_coefficients``.

    Returns:
        ``objective(coefficients, batch, hparams, key) -> {"loss": loss}``.
    """
    def objective(coefficients, batch, hparams, key):
        del hparams, key
        params = apply_coefficients(base, task_vectors, coefficients, mask=mask)
        return {"loss": loss_fn(params, batch)}

    return objective


def learn_coefficients(key, loss_fn: Callable, base, task_vectors: Sequence, batch, *,
                       optimizer: optax.GradientTransformation, num_steps: int = 100,
                       init=0.0, mask: Any = None):
    """Learns aTLAS coefficients by ``num_steps`` of ``make_step`` on one batch (few-shot).

    Args:
        key: PRNG key of the train state.
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        base: pre-trained parameters.
        task_vectors: list of task vectors.
        batch: the data the objective sees at every step (a dict).
        optimizer: an optax transformation, e.g. ``optax.adam(0.05)``.
        num_steps: gradient steps (a ``lax.scan``).
        init: initial coefficient value (default 0, as the official code).
        mask: tensors to merge, as in ``apply_coefficients``.

    Returns:
        ``(coefficients, losses)``: the learned coefficients and the ``[num_steps]`` losses
        (each measured before its step).
    """
    coefficients = init_coefficients(base, len(task_vectors), value=init)
    step = make_step(coefficient_objective(loss_fn, base, task_vectors, mask=mask), optimizer)
    state = init_state(coefficients, optimizer, key=key)
    state, metrics = jax.lax.scan(lambda s, _: step(s, batch), state, None, length=num_steps)
    return state.params, metrics["loss"]
