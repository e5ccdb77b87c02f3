"""The training state: one pytree, so a step is a pure function and a grid is a vmap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes.

    Attributes:
        params: model parameters.
        opt_state: optimizer state; hyperparameters injected with ``optax.inject_hyperparams``
            (learning rate, weight decay, ...) live here, so a vmapped grid can vary them.
        step: number of steps taken.
        key: PRNG key (raw ``uint32[2]``), split once per step.
        hparams: the objective's hyperparameters (loss q, regularizer weights, ...), arrays.
        example_state: per-example buffers (leading axis = number of training examples),
            gathered and scattered by ``batch["index"]``; None when the objective keeps none.
    """
    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    hparams: dict
    example_state: Any = None


def full_optimizer(optimizer: optax.GradientTransformation,
                   aggregator: optax.GradientTransformation | None = None
                   ) -> optax.GradientTransformation:
    """The transformation whose state ``TrainState.opt_state`` holds: the aggregator (if any)
    chained before the optimizer, accepting extra arguments such as ``value``."""
    if aggregator is not None:
        optimizer = optax.chain(aggregator, optimizer)
    return optax.with_extra_args_support(optimizer)


def optimizer_hparam_names(optimizer: optax.GradientTransformation, params) -> set[str]:
    """Names of the hyperparameters an optimizer exposes through ``inject_hyperparams``."""
    kinds = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    found = set()

    def visit(node):
        if isinstance(node, kinds):
            found.update(node.hyperparams)
        return node

    jax.tree.map(visit, jax.eval_shape(optimizer.init, params),
                 is_leaf=lambda x: isinstance(x, kinds))
    return found


def init_state(params, optimizer: optax.GradientTransformation, *, key: jax.Array,
               hparams: Mapping[str, Any] | None = None, example_state: Any = None,
               aggregator: optax.GradientTransformation | None = None) -> TrainState:
    """Builds a ``TrainState``, routing each hyperparameter to where it is used.

    A name the optimizer (or the aggregator) injects through ``optax.inject_hyperparams`` is
    written into the optimizer state; every other name is kept in ``state.hparams`` for the
    objective. Values may be traced, so this function can be vmapped over a grid. Pass the
    ``aggregator`` given to ``make_step``: the optimizer state then holds both.
    """
    optimizer = full_optimizer(optimizer, aggregator)
    hparams = {k: jnp.asarray(v) for k, v in (hparams or {}).items()}
    injected = optimizer_hparam_names(optimizer, params)
    opt_state = optimizer.init(params)
    opt_values = {k: v for k, v in hparams.items() if k in injected}
    if opt_values:
        opt_state = optax.tree_utils.tree_set(opt_state, **opt_values)
    return TrainState(
        params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32), key=key,
        hparams={k: v for k, v in hparams.items() if k not in injected},
        example_state=example_state)
