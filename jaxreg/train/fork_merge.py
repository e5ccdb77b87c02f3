"""ForkMerge: fork branches with different task weights, merge them on validation data.

Jiang et al., "ForkMerge: Mitigating Negative Transfer in Auxiliary-Task Learning" (NeurIPS
2023), arXiv:2301.12618, Algorithm 1; official code thuml/ForkMerge
(``auxiliary_domain_image_recognition/forkmerge.py``). K branches start from the same
parameters and train on differently weighted sums of the objective's terms (say, the main
task alone and the main task plus the auxiliaries). Every ``merge_every`` epochs each branch
keeps its best-validation parameters of the round, and the branches are merged,
``theta = sum_b lambda_b theta_b / sum_b lambda_b``, with lambda searched greedily on
validation: the best branch starts at 1, then each next branch (in order of its validation
score) tries ``lambda_b = alpha * sum(lambda) / i`` for each ``alpha`` and keeps the best.
Every branch continues from the merged parameters with its own optimizer state.

The branches are one vmapped program (each epoch a ``lax.scan`` over the same batches);
the merge search runs on the host over jitted validations.

Two choices where the official code is implicit: the search starts from the validation
score of the current merge, so a branch whose every alpha scores lower keeps lambda 0 (the
official code starts from 0 and includes alpha = 0 in its grid, which is equivalent when 0
is among ``alphas``); and each round keeps each branch's best parameters *of that round*
(the official trainer compares with its best score over all rounds, so a branch that does
not beat it reloads a checkpoint from before the last merge).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreg.data import epoch_indices
from jaxreg.train.state import init_state
from jaxreg.train.step import make_step


@dataclasses.dataclass
class ForkMergeResult:
    """``params``: the merged parameters after the last round; ``rounds``: per round, the
    epochs it covered, each branch's best validation score, the chosen lambdas (normalised)
    and the merged parameters' validation score."""
    params: Any
    rounds: list[dict]


def weighted_params(thetas: Sequence[Any], lambdas) -> Any:
    """``sum_b lambda_b theta_b / sum_b lambda_b`` over parameter pytrees."""
    lambdas = np.asarray(lambdas, np.float64)
    if lambdas.sum() <= 0:
        raise ValueError(f"`lambdas` must have a positive sum, got {lambdas.tolist()}")
    share = lambdas / lambdas.sum()
    return jax.tree.map(lambda *leaves: sum(float(w) * x for w, x in zip(share, leaves)),
                        *thetas)


def merge_search(thetas: Sequence[Any], scores: Sequence[float], validate: Callable,
                 alphas: Sequence[float]) -> tuple[Any, np.ndarray]:
    """The greedy search of ForkMerge (see the module); returns ``(theta, lambdas)`` with the
    lambdas normalised to sum to 1. ``validate(params) -> score``, higher is better."""
    order = sorted(range(len(thetas)), key=lambda b: -float(scores[b]))  # stable on ties
    lambdas = np.zeros(len(thetas))
    lambdas[order[0]] = 1.0
    best = float(validate(thetas[order[0]]))
    for i, branch in enumerate(order[1:]):
        upper = lambdas.sum() / (i + 1)
        chosen = 0.0
        for alpha in alphas:
            lambdas[branch] = alpha * upper
            score = float(validate(weighted_params(thetas, lambdas)))
            if score > best:
                best, chosen = score, lambdas[branch]
        lambdas[branch] = chosen
    return weighted_params(thetas, lambdas), lambdas / lambdas.sum()


def _check(branch_weights, merge_every, epochs, alphas):
    if not branch_weights:
        raise ValueError("`branch_weights` is empty: give one mapping term -> weight per branch")
    if any(not isinstance(w, Mapping) or not w for w in branch_weights):
        raise ValueError("`branch_weights` must be non-empty mappings term name -> weight")
    if merge_every < 1 or epochs < 1:
        raise ValueError(f"`merge_every` and `epochs` must be at least 1, got {merge_every} "
                         f"and {epochs}")
    if not alphas:
        raise ValueError("`alphas` is empty")


def fork_merge(objective, optimizer: optax.GradientTransformation, params, train_data: dict,
               *, branch_weights: Sequence[Mapping[str, float]], validate: Callable,
               epochs: int, merge_every: int, batch_size: int,
               alphas: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), seed: int = 0,
               progress: bool = False) -> ForkMergeResult:
    """Trains with ForkMerge (see the module).

    Args:
        objective: ``objective(params, batch, hparams, key) -> terms``.
        optimizer: the optax transformation of every branch (each has its own state).
        params: the initial parameters, shared by every branch.
        train_data: name -> array with a leading example axis.
        branch_weights: one mapping per branch, term name -> weight; terms a branch does not
            name get weight 0 (e.g. ``[{"main": 1}, {"main": 1, "aux": 1}]``).
        validate: ``validate(params) -> scalar``, higher is better (jitted here).
        epochs, merge_every: training length and the merge period, in epochs.
        batch_size: examples per step; every branch sees the same batches.
        alphas: the grid of relative merge coefficients.
        seed: the batch order and the step keys.
    """
    _check(branch_weights, merge_every, epochs, alphas)
    names = sorted({name for w in branch_weights for name in w})
    weights = {f"weight/{n}": jnp.asarray([float(w.get(n, 0.0)) for w in branch_weights],
                                          jnp.float32) for n in names}

    def weighted(p, batch, hparams, key):
        terms = objective(p, batch, hparams, key)
        unknown = set(names) - set(terms)
        if unknown:
            raise KeyError(f"`branch_weights` name terms {sorted(unknown)} that the objective "
                           f"does not return; it returns {sorted(terms)}")
        return {n: hparams[f"weight/{n}"] * value if n in names else 0.0 * value
                for n, value in terms.items()}

    step = make_step(weighted, optimizer)
    data = {k: jnp.asarray(v) for k, v in train_data.items()}
    n = len(next(iter(data.values())))
    key = jax.random.PRNGKey(seed)

    def init_branch(w):
        return init_state(params, optimizer, key=key, hparams=w)

    def epoch_branch(state, order):
        def body(state, index):
            return step(state, {**{k: v[index] for k, v in data.items()}, "index": index})
        state, _ = jax.lax.scan(body, state, order)
        return state, validate(state.params)

    states = jax.jit(jax.vmap(init_branch))(weights)
    run_epoch = jax.jit(jax.vmap(epoch_branch, (0, None)))
    validate_one = jax.jit(validate)
    rounds, merged, start = [], params, 0
    bar = tqdm(total=epochs, disable=not progress, unit="epoch", desc="fork-merge")
    while start < epochs:
        end = min(start + merge_every, epochs)
        best_scores = np.full(len(branch_weights), -np.inf)
        best_params = states.params
        for epoch in range(start, end):
            order = jnp.asarray(epoch_indices(seed, epoch, n, batch_size))
            states, scores = run_epoch(states, order)
            scores = np.asarray(scores, np.float64)
            better = scores > best_scores
            best_scores = np.where(better, scores, best_scores)
            keep = jnp.asarray(better)
            best_params = jax.tree.map(
                lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                states.params, best_params)
            bar.update(1)
        thetas = [jax.tree.map(lambda x, b=b: x[b], best_params)
                  for b in range(len(branch_weights))]
        merged, lambdas = merge_search(thetas, best_scores, validate_one, alphas)
        rounds.append({"epochs": [start, end], "branch_scores": best_scores.tolist(),
                       "lambdas": lambdas.tolist(),
                       "merged_score": float(validate_one(merged))})
        states = states.replace(params=jax.tree.map(
            lambda m, x: jnp.broadcast_to(m, x.shape).astype(x.dtype), merged, states.params))
        start = end
    bar.close()
    return ForkMergeResult(params=merged, rounds=rounds)
