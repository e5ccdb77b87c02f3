"""The train step: objective -> gradient(s) -> optax update, as one pure function.

Ordinary training differentiates the weighted sum of the objective's terms. Multi-objective
training (``aggregator=``) differentiates each term separately, from one forward pass and a
VJP vmapped over the terms, and hands the stacked gradients to an aggregator from
``jaxreg.multiobjective`` (UPGrad, ConFIG, PCGrad, ...), whose single update the optimizer
then applies. With ``representation=`` the aggregator sees the terms' gradients with respect
to a shared representation instead of all parameters (MGDA-UB, Sener & Koltun 2018): it picks
the weights there, and one backward pass of the weighted sum updates every parameter.
With ``perturbation=`` (``jaxreg.optim.sharpness``: SAM, ASAM, adversarial model
perturbation) the summed objective is differentiated at the weights and again at the
perturbed weights ``w + delta``, and the optimizer applies the second gradient to ``w``.
With ``sharding=`` (a ``jaxreg.train.sharding.ShardingPlan``) the step constrains the batch
to its data-parallel sharding and the gradients (or the per-term Jacobian) and the new
parameters to the parameters' shardings, so XLA reduce-scatters gradients instead of
gathering them; jit it with the plan's in/out shardings (``fit`` and ``grid`` do).
With ``skip_nonfinite=True`` a step whose loss, terms, gradients or update hold a NaN or an
inf leaves the parameters, optimizer state and per-example state as they were (one bad batch
does not poison the run) and reports ``skipped`` = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import jax
import jax.numpy as jnp
import optax

from jaxreg import objective as objective_lib
from jaxreg.multiobjective import engine as engine_lib
from jaxreg.multiobjective.base import gramian, weighting_of, weighting_update
from jaxreg.optim.sharpness import Perturbation
from jaxreg.train.sharding import ShardingPlan
from jaxreg.train.state import TrainState, full_optimizer


def _gather_rows(state: TrainState, batch: dict):
    if state.example_state is None:
        return None
    if "index" not in batch:
        raise KeyError("an objective with per-example state needs `batch['index']`")
    return jax.tree.map(lambda buf: buf[batch["index"]], state.example_state)


def _scatter_rows(state: TrainState, batch: dict, new_rows):
    if new_rows is None:
        return state.example_state
    return jax.tree.map(lambda buf, new: buf.at[batch["index"]].set(new),
                        state.example_state, new_rows)


def _check_batch(batch) -> None:
    """Trace-time check: every batched array holds at least one example."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        shape = jnp.shape(leaf)
        if shape and shape[0] == 0:
            raise ValueError(f"`batch{jax.tree_util.keystr(path)}` holds no examples (shape "
                             f"{shape}): a step needs a batch of at least one example")


def _all_finite(*trees) -> jax.Array:
    """Whether every floating leaf of ``trees`` is free of NaN and inf (a traced bool)."""
    finite = jnp.bool_(True)
    for leaf in jax.tree.leaves(trees):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            finite = finite & jnp.all(jnp.isfinite(leaf))
    return finite


def _gramian_metrics(names, gram, agg_state, gradient_metrics: bool) -> dict:
    """The aggregator's weights if it logs them and its solver's iterations if it reports
    them; with ``gradient_metrics`` also the pairwise cosines and norms of the terms'
    gradients. Per-objective metrics only for named terms (``names`` is None when the
    objectives are per-example)."""
    metrics = {}
    iterations = getattr(getattr(agg_state, "inner", None), "iterations", None)
    if iterations is not None:
        metrics["aggregator/iterations"] = iterations
    if names is None:
        return metrics
    if gradient_metrics:
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 1e-30))
        metrics.update({f"cos/{names[i]},{names[j]}": gram[i, j] / (norms[i] * norms[j])
                        for i, j in combinations(range(len(names)), 2)})
        metrics.update({f"grad_norm/{n}": norms[i] for i, n in enumerate(names)})
    weights = getattr(agg_state, "weights", None)
    if weights is not None and weights.shape == (len(names),):
        metrics.update({f"weight/{n}": weights[i] for i, n in enumerate(names)})
    return metrics


def _engine(engine: str, aggregator, representation) -> str:
    """The engine a multi-objective step uses: ``engine``, checked, or for ``"auto"`` the
    fastest valid one (``"layers"`` for an aggregator built from a weighting)."""
    if engine not in ("auto", *engine_lib.ENGINES):
        raise ValueError(f"`engine` must be 'auto' or one of {engine_lib.ENGINES}, got "
                         f"{engine!r}")
    if aggregator is None or representation is not None:
        if engine not in ("auto", "jacobian"):
            raise ValueError(f"engine={engine!r} computes the Gramian of several objectives: it "
                             "needs an `aggregator` (and no `representation`)")
        return "jacobian"
    weighting = weighting_of(aggregator)
    if weighting is not None and not weighting.uses_gramian and engine != "jacobian":
        return "values"  # a scalarization: one backward pass of w^T f, whatever the engine
    if engine == "auto":
        return "jacobian" if weighting is None else "layers"
    if engine != "jacobian" and weighting is None:
        raise ValueError(f"engine={engine!r} gives the aggregator only the Gramian, but this "
                         "aggregator needs the Jacobian itself (GradDrop, GradNorm, Bloop, "
                         "M-ConFIG, MultiAdam): use engine='jacobian'")
    return engine


def make_step(objective: objective_lib.Objective, optimizer: optax.GradientTransformation,
              *, weights: Mapping[str, float] | None = None,
              aggregator: optax.GradientTransformation | None = None,
              representation: Callable | None = None,
              term_order: Sequence[str] | None = None,
              perturbation: Perturbation | None = None,
              sharding: ShardingPlan | None = None,
              skip_nonfinite: bool = False,
              engine: str = "auto",
              gradient_metrics: bool = False,
              ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns ``step(state, batch) -> (state, metrics)``, pure and jit/vmap-safe.

    The step splits the state's key, gathers the batch's rows of the per-example state (by
    ``batch["index"]``) when there is one, computes the update, applies the optimizer, and
    scatters the new rows back. Build the state with ``init_state(..., aggregator=...)``
    using the same aggregator.

    Args:
        objective: ``objective(params, batch, hparams, key[, rows]) -> terms[, new_rows]``;
            with ``representation``, it also takes the keyword ``representation`` (the
            shared features, from which it computes the terms).
        optimizer: any optax transformation (extra-args variants receive ``value``).
        weights: optional static weight per term name for the summed objective (a term
            without one counts once); traced weights belong in ``hparams``.
        aggregator: a ``jaxreg.multiobjective`` transformation: each term is differentiated
            separately and the stacked gradients (leading axis in sorted term-name order)
            are aggregated into one update. It also receives the terms' values in the same
            order as the extra argument ``values`` (GradNorm needs them).
        representation: ``representation(params, batch) -> features`` shared by every term
            (MGDA-UB): the aggregator sees the terms' gradients with respect to the features
            and must log its weights (build it with ``num_objectives``); the update is the
            gradient of the weighted sum of terms.
        term_order: the order of the objectives given to the aggregator (default: sorted
            term names); e.g. ``("main", "aux")`` for Bloop, whose first objective is the
            main one.
        perturbation: a ``jaxreg.optim.sharpness`` perturbation (``sam()``, ``asam()``,
            ``adversarial_model_perturbation()``): the update is the optimizer applied to the
            gradient of the summed objective at ``w + delta`` (same batch, same key). Its
            hyperparameters are read from ``state.hparams`` when present there (so a grid
            can sweep ``rho``), else its constructor's values. Extra-args optimizers receive
            the loss at ``w + delta`` as ``value``. Not combined with an ``aggregator``.
        sharding: a ``jaxreg.train.sharding.ShardingPlan``: the batch, the gradients and the
            parameters are constrained to its shardings inside the step (the values are
            those of the unsharded step).
        skip_nonfinite: when the loss, a term, a gradient or the update holds a NaN or an
            inf, keep the parameters, the optimizer state and the per-example state unchanged
            (the step count and the key still advance) and report ``skipped`` = 1.0 (else
            0.0), so a bad batch costs one step instead of the run. Decided on device
            (jit/vmap/grid safe). The step's other metrics are those computed, NaN included.

        engine: how a multi-objective step gets the Gramian and the update
            (``jaxreg.multiobjective.engine``): ``"jacobian"`` (forms J; every aggregator),
            ``"gramian"`` (leaf by leaf, memory O(m^2 + the largest leaf)), ``"layers"``
            (from the inputs and output cotangents of the Flax Dense layers, no Jacobian) or
            ``"auto"``: ``"layers"`` for an aggregator built from a weighting (UPGrad,
            DualProj, MGDA, CAGrad, IMTL-G, Aligned-MTL, Nash-MTL, PCGrad, GradVac, ConFIG,
            mean, sum, random), else ``"jacobian"``. A term given as
            ``jaxreg.objective.per_example(losses)`` counts as one objective per example.
        gradient_metrics: with an aggregator, also report the pairwise cosines and norms of
            the terms' gradients (``cos/a,b``, ``grad_norm/a``; m(m+1)/2 scalars, so off by
            default).

    Returns:
        The step. ``metrics`` holds ``"loss"`` (the sum of the weighted terms) and every
        term (a per-example term as its mean); with an aggregator also ``weight/a`` when the
        aggregator logs its weights, ``aggregator/iterations`` when its solver reports them
        (UPGrad, DualProj), and with ``gradient_metrics`` ``cos/a,b`` (cosine of the
        gradients of terms a and b) and ``grad_norm/a``. With a
        perturbation, the terms and ``"loss"`` are those at ``w`` (the per-example state
        too is updated from ``w``), and ``"perturbed_loss"`` and ``"perturbation_norm"``
        (``||delta||``) are added.

    Raises:
        ValueError: at trace time, when an array of ``batch`` holds no examples (leading
            axis of length 0), and for the argument combinations above that do not go
            together.
    """
    if aggregator is None and representation is not None:
        raise ValueError("`representation` needs an `aggregator` to choose the weights")
    if aggregator is not None and perturbation is not None:
        raise ValueError("`perturbation` perturbs the summed objective; it cannot be combined "
                         "with an `aggregator`")
    if perturbation is not None and not isinstance(perturbation, Perturbation):
        raise TypeError("`perturbation` must be a jaxreg.optim.sharpness.Perturbation (sam(), "
                        f"asam(), adversarial_model_perturbation()), got "
                        f"{type(perturbation).__name__}")
    if aggregator is not None and weights is not None:
        raise ValueError("give `weights` or an `aggregator`, not both: the aggregator decides "
                         "how the terms are combined")
    if sharding is not None and not isinstance(sharding, ShardingPlan):
        raise TypeError("`sharding` must be a jaxreg.train.sharding.ShardingPlan, got "
                        f"{type(sharding).__name__}")
    if not isinstance(skip_nonfinite, bool):
        raise TypeError(f"`skip_nonfinite` must be a bool, got {skip_nonfinite!r}")
    if not isinstance(gradient_metrics, bool):
        raise TypeError(f"`gradient_metrics` must be a bool, got {gradient_metrics!r}")
    transform = full_optimizer(optimizer, aggregator)

    def like_params(tree, leading=0):
        return tree if sharding is None else sharding.constrain_like_params(tree, leading)

    def summed(state, batch, step_key, rows):
        def loss_fn(params):
            terms, new_rows = objective_lib.evaluate(
                objective, params, batch, state.hparams, step_key, rows)
            return objective_lib.weighted_sum(terms, weights), (terms, new_rows)

        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (terms, new_rows)), grads = value_and_grad(state.params)
        grads = like_params(grads)
        metrics = {"loss": loss, **terms}
        if perturbation is not None:
            delta = perturbation(lambda p: value_and_grad(p)[1], state.params, grads,
                                 state.hparams)
            perturbed = jax.tree.map(lambda p, d: p + d.astype(p.dtype), state.params, delta)
            (loss, _), grads = value_and_grad(perturbed)
            grads = like_params(grads)
            metrics.update(perturbed_loss=loss, perturbation_norm=optax.tree.norm(delta))
        updates, opt_state = transform.update(grads, state.opt_state, state.params, value=loss)
        return updates, opt_state, metrics, new_rows, grads

    def per_term(state, batch, step_key, rows):
        def stacked(params):
            terms, new_rows = objective_lib.evaluate(objective, params, batch, state.hparams,
                                                     step_key, rows)
            return objective_lib.objective_vector(terms, term_order), (terms, new_rows)

        def only_per_example(aux):  # one per-example term: objective b is row b's loss
            terms = aux[0]
            return objective_lib.has_per_example(terms) and len(terms) == 1

        lin = engine_lib.linearize(stacked, state.params, engine=engine_name,
                                   per_example=only_per_example)
        terms, new_rows = lin.aux
        names = (None if objective_lib.has_per_example(terms)
                 else objective_lib.term_order(terms, term_order))
        terms = objective_lib.scalar_terms(terms)
        loss = objective_lib.weighted_sum(terms)
        if lin.jacobian is not None:
            grads = like_params(lin.jacobian, leading=1)
            updates, opt_state = transform.update(grads, state.opt_state, state.params,
                                                  value=loss, values=lin.values)
            agg_state = opt_state[0]  # opt_state = (aggregator state, optimizer state)
        else:
            agg_state, inner = state.opt_state
            weights, agg_state = weighting_update(weighting_of(aggregator), lin.gram, agg_state,
                                                  lin.values)
            grads = like_params(lin.combine(weights))
            updates, inner = optimizer_only.update(grads, inner, state.params, value=loss)
            opt_state = (agg_state, inner)
        metrics = {"loss": loss, **terms,
                   **_gramian_metrics(names, lin.gram, agg_state,
                                      gradient_metrics and lin.gram is not None)}
        return updates, opt_state, metrics, new_rows, grads

    def on_representation(state, batch, step_key, rows):
        features, encoder_vjp = jax.vjp(lambda p: representation(p, batch), state.params)

        def stacked(params, feats):
            out = objective(params, batch, state.hparams, step_key,
                            *(() if rows is None else (rows,)), representation=feats)
            terms, new_rows = out if rows is not None else (out, None)
            names = objective_lib.term_order(terms, term_order)
            return jnp.stack([terms[n] for n in names]), (terms, new_rows)

        values, heads_vjp, (terms, new_rows) = jax.vjp(stacked, state.params, features,
                                                       has_aux=True)
        basis = jnp.eye(values.shape[0], dtype=values.dtype)
        feature_jacobian = jax.vmap(lambda e: heads_vjp(e)[1])(basis)
        agg_state, opt_state = state.opt_state  # as built by full_optimizer
        _, agg_state = optax.with_extra_args_support(aggregator).update(
            feature_jacobian, agg_state, state.params, values=values)
        term_weights = agg_state.weights
        if term_weights.shape != values.shape:
            raise ValueError("with `representation`, the aggregator must log its weights: "
                             f"build it with num_objectives={values.shape[0]}")
        head_grads, feature_grads = heads_vjp(term_weights.astype(values.dtype))
        (encoder_grads,) = encoder_vjp(feature_grads)
        grads = like_params(jax.tree.map(jnp.add, head_grads, encoder_grads))
        loss = jnp.sum(values)
        updates, opt_state = optimizer_only.update(grads, opt_state, state.params, value=loss)
        metrics = {"loss": loss, **terms,
                   **_gramian_metrics(objective_lib.term_order(terms, term_order),
                                      gramian(feature_jacobian), agg_state,
                                      gradient_metrics)}
        return updates, (agg_state, opt_state), metrics, new_rows, (feature_jacobian, grads)

    engine_name = _engine(engine, aggregator, representation)
    optimizer_only = optax.with_extra_args_support(optimizer)
    if representation is not None:
        update_fn = on_representation
    else:
        update_fn = per_term if aggregator is not None else summed

    def step(state: TrainState, batch: dict):
        _check_batch(batch)
        key, step_key = jax.random.split(state.key)
        if sharding is not None:
            batch = sharding.constrain_batch(batch)
        rows = _gather_rows(state, batch)
        updates, opt_state, metrics, new_rows, grads = update_fn(state, batch, step_key, rows)
        params = optax.apply_updates(state.params, updates)
        if skip_nonfinite:  # a select on device, not a Python branch: jit/vmap safe
            finite = _all_finite(metrics, grads, updates)
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            params, opt_state = keep((params, opt_state), (state.params, state.opt_state))
            if new_rows is not None:
                new_rows = keep(new_rows, rows)
            metrics = {**metrics, "skipped": jnp.where(finite, 0.0, 1.0).astype(jnp.float32)}
        new_state = state.replace(params=like_params(params), opt_state=opt_state,
                                  step=state.step + 1, key=key,
                                  example_state=_scatter_rows(state, batch, new_rows))
        return new_state, metrics

    return step
