"""Objectives: functions that return named loss terms.

An objective is ``objective(params, batch, hparams, key) -> terms``, where ``terms`` maps a
name to a scalar, or to ``per_example(losses)``: a vector of per-example losses that a
multi-objective step treats as one objective per example (instance-wise risk minimisation,
IWRM: Quinton & Rey 2024, Section 5) and a summed step as their mean. An objective that
keeps per-example state (ELR's targets, PS-KD's stored predictions) takes the rows of that
state for the batch as a fifth argument and returns ``(terms, new_rows)``; the train step
gathers and scatters the rows by ``batch["index"]``.

The train step decides how terms become one update: ``weighted_sum`` for ordinary training,
or ``term_gradients`` (one forward pass, one vectorised VJP per term) to hand the stacked
per-term gradients to a multi-objective aggregator.

Example:
    >>> def objective(params, batch, hparams, key):
    ...     logits = model.apply(params, batch["image"])
    ...     ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    ...     return {"ce": ce.mean(), "l2": hparams["wd"] * optax.tree.norm(params, squared=True)}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Terms = dict[str, jax.Array]
Objective = Callable[..., Any]


@jax.tree_util.register_pytree_node_class
class PerExample:
    """Per-example losses ``[B]`` declared as B objectives (see :func:`per_example`)."""

    def __init__(self, losses):
        self.losses = losses

    def tree_flatten(self):
        return (self.losses,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def mean(self) -> jax.Array:
        return jnp.mean(self.losses)


def per_example(losses) -> PerExample:
    """Declares the per-example losses ``[B]`` of a term as B separate objectives.

    A multi-objective step (``make_step(..., aggregator=...)``) then aggregates one gradient
    per example (IWRM, m = B); a summed step, metrics and logs use their mean. The engines
    that compute the Gramian without the Jacobian assume example b's loss depends on row b of
    the batch only (no batch statistics, no in-batch negatives).
    """
    losses = jnp.asarray(losses)
    if losses.ndim != 1 or losses.shape[0] == 0:
        raise ValueError(f"`per_example` takes a vector of per-example losses [B], B >= 1, got "
                         f"shape {losses.shape}")
    return PerExample(losses)


def _value(term):
    """A term's scalar value: itself, or the mean of its per-example losses."""
    return term.mean() if isinstance(term, PerExample) else term


def scalar_terms(terms: Mapping[str, Any]) -> Terms:
    """The terms with per-example ones replaced by their means (for metrics and logs)."""
    return {name: _value(term) for name, term in terms.items()}


def objective_vector(terms: Mapping[str, Any], order=None) -> jax.Array:
    """The objectives in ``term_order``: one per scalar term, B per per-example term."""
    return jnp.concatenate([jnp.reshape(terms[n].losses if isinstance(terms[n], PerExample)
                                        else terms[n], (-1,))
                            for n in term_order(terms, order)])


def has_per_example(terms: Mapping[str, Any]) -> bool:
    return any(isinstance(t, PerExample) for t in terms.values())


def evaluate(objective: Objective, params, batch, hparams, key, example_rows=None):
    """Calls ``objective`` in either form; returns ``(terms, new_rows)``.

    ``new_rows`` is None for a stateless objective. Raises a ``TypeError`` when the terms are
    not a non-empty dict of scalars.
    """
    if example_rows is None:
        terms, new_rows = objective(params, batch, hparams, key), None
    else:
        out = objective(params, batch, hparams, key, example_rows)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("an objective given per-example state must return "
                            f"(terms, new_rows), got {type(out).__name__}")
        terms, new_rows = out
    if not isinstance(terms, Mapping) or not terms:
        raise TypeError(f"an objective must return a non-empty dict of named scalar terms, got "
                        f"{type(terms).__name__}")
    for name, value in terms.items():
        if isinstance(value, PerExample):
            continue
        if jnp.shape(value) != ():
            raise TypeError(f"term {name!r} must be a scalar, got shape {jnp.shape(value)}; "
                            "reduce per-example losses (e.g. .mean()) inside the objective")
    return dict(terms), new_rows


def weighted_sum(terms: Mapping[str, jax.Array],
                 weights: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """``sum_i w_i * term_i``; a term without a weight counts once. Weights may be traced."""
    weights = weights or {}
    unknown = set(weights) - set(terms)
    if unknown:
        raise KeyError(f"weights for unknown terms {sorted(unknown)}; terms are {sorted(terms)}")
    return sum(jnp.asarray(weights.get(name, 1.0)) * _value(value)
               for name, value in terms.items())


def term_order(terms: Mapping[str, Any], order=None) -> list[str]:
    """The order of the Jacobian's rows: ``order`` if given (it must name every term once),
    else sorted names (the order in which JAX flattens a dict)."""
    if order is None:
        return sorted(terms)
    if sorted(order) != sorted(terms):
        raise ValueError(f"`term_order` {list(order)} must list each term once; the objective "
                         f"returns {sorted(terms)}")
    return list(order)


def term_gradients(objective: Objective, params, batch, hparams, key, example_rows=None, *,
                   order=None):
    """Per-term gradients from one forward pass: the Jacobian of the term vector.

    The objective is linearised once (``jax.vjp``) and the VJP is vmapped over the m basis
    cotangents, so the cost is one forward and m vectorised backward passes rather than m
    separate forwards.

    Returns:
        ``(terms, jacobian, new_rows)``: ``jacobian`` has the structure of ``params`` with a
        leading axis of size m, in ``term_order(terms, order)``: sorted term names unless
        ``order`` is given (aggregators with roles, such as Bloop's main objective, need it);
        a ``per_example`` term gives B rows. ``terms`` are scalars (per-example means).
    """
    from jaxreg.multiobjective.engine import jacobian_engine

    def stacked(p):
        terms, new_rows = evaluate(objective, p, batch, hparams, key, example_rows)
        return objective_vector(terms, order), (scalar_terms(terms), new_rows)

    linearized = jacobian_engine(stacked, params)  # what make_step(engine="jacobian") uses
    terms, new_rows = linearized.aux
    return terms, linearized.jacobian, new_rows
