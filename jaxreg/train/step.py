"""The train step: objective -> gradient -> optax update, as one pure function."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import optax

from jaxreg import objective as objective_lib
from jaxreg.train.state import TrainState


def make_step(objective: objective_lib.Objective, optimizer: optax.GradientTransformation,
              *, weights: Mapping[str, float] | None = None
              ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns ``step(state, batch) -> (state, metrics)``, pure and jit/vmap-safe.

    The step splits the state's key, gathers the batch's rows of the per-example state (by
    ``batch["index"]``) when there is one, differentiates the weighted sum of the objective's
    terms, applies the optimizer, and scatters the new rows back.

    Args:
        objective: ``objective(params, batch, hparams, key[, rows]) -> terms[, new_rows]``.
        optimizer: any optax transformation (extra-args variants receive ``value``).
        weights: optional static weight per term name (a term without one counts once);
            traced weights belong in ``hparams``, applied inside the objective.

    Returns:
        The step; ``metrics`` holds ``"loss"`` (the weighted sum) and every named term.
    """
    def loss_fn(params, batch, hparams, key, rows):
        terms, new_rows = objective_lib.evaluate(objective, params, batch, hparams, key, rows)
        return objective_lib.weighted_sum(terms, weights), (terms, new_rows)

    optimizer = optax.with_extra_args_support(optimizer)

    def step(state: TrainState, batch: dict):
        key, step_key = jax.random.split(state.key)
        rows = None
        if state.example_state is not None:
            if "index" not in batch:
                raise KeyError("an objective with per-example state needs `batch['index']`")
            rows = jax.tree.map(lambda buf: buf[batch["index"]], state.example_state)
        (loss, (terms, new_rows)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, state.hparams, step_key, rows)
        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, value=loss)
        example_state = state.example_state
        if rows is not None:
            example_state = jax.tree.map(lambda buf, new: buf.at[batch["index"]].set(new),
                                         example_state, new_rows)
        new_state = state.replace(params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, step=state.step + 1, key=key,
                                  example_state=example_state)
        return new_state, {"loss": loss, **terms}

    return step
