"""Group-wise aggregation: one aggregator per group of parameters.

Instead of aggregating the objectives' whole gradients, aggregate each group's block of the
Jacobian on its own (its own Gramian, weights and state), and concatenate the updates: what
torchjd does when ``jac_to_grad`` is called per parameter group, and GradVac's granularities
(Wang et al., "Gradient Vaccine", ICLR 2021, arXiv:2010.05874, Section 4: whole model, per
layer, per parameter). Groups are given by leaf, by module (the leaves sharing a path up to
their last key, e.g. a layer's kernel and bias), by regular expressions on the leaves' paths,
or by a function of the path.

The update is not one combination of the whole gradients, so the state's ``weights`` are NaN
(each group's aggregator logs its own in ``groups``); the step computes the Jacobian
(``make_step(..., engine="jacobian")``, what ``"auto"`` picks).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax
import optax

from jaxreg.multiobjective.base import accumulation_dtype, initial_weights


class GroupwiseState(NamedTuple):
    """``weights``: NaN (the update combines each group's gradients with its own weights);
    ``groups``: each group's aggregator state, in the order of :func:`parameter_groups`."""
    weights: Any
    groups: tuple


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def parameter_groups(tree, groups: str | Sequence[str] | Callable[[str], Hashable]
                     ) -> list[list[int]]:
    """The groups of ``tree``'s leaves, as lists of leaf indices (in order of first leaf).

    Args:
        tree: the parameters (or a Jacobian with a leading objective axis).
        groups: ``"leaf"`` (each leaf alone), ``"module"`` (leaves whose paths agree but for
            their last key), ``"all"`` (one group: ordinary aggregation), a sequence of
            regular expressions (a leaf joins the first that matches its path, as printed by
            ``jax.tree_util.keystr``, e.g. ``"['params']['Dense_0']['kernel']"``; leaves
            matching none form a last group), or a function ``path -> group key``.
    """
    paths = _paths(tree)
    if not paths:
        raise ValueError("`tree` has no leaves to group")
    if groups == "leaf":
        keys = list(range(len(paths)))
    elif groups == "all":
        keys = [0] * len(paths)
    elif groups == "module":
        keys = [path[:path.rfind("[")] if "[" in path else path for path in paths]
    elif callable(groups):
        keys = [groups(path) for path in paths]
    elif isinstance(groups, Sequence) and not isinstance(groups, str):
        patterns = []
        for pattern in groups:
            try:
                patterns.append(re.compile(pattern))
            except (re.error, TypeError) as error:
                raise ValueError(f"`groups`: {pattern!r} is not a regular expression "
                                 f"({error})") from None
        keys = [next((i for i, p in enumerate(patterns) if p.search(path)), len(patterns))
                for path in paths]
    else:
        raise ValueError("`groups` must be 'leaf', 'module', 'all', a sequence of regular "
                         f"expressions or a function of the path, got {groups!r}")
    order: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        order.setdefault(key, []).append(index)
    return list(order.values())


def groupwise(aggregator: optax.GradientTransformation,
              groups: str | Sequence[str] | Callable[[str], Hashable] = "module", *,
              num_objectives: int | None = None) -> optax.GradientTransformationExtraArgs:
    """``aggregator`` applied to each group's block of the Jacobian separately.

    Args:
        aggregator: any ``jaxreg.multiobjective`` aggregator (one state per group is made
            from it).
        groups: see :func:`parameter_groups` (default: per module, i.e. per layer).
        num_objectives: the number of objectives, to size the (NaN) logged weights.

    Example:
        ``make_step(objective, optax.adam(1e-3), aggregator=groupwise(upgrad(), "module"))``
        aggregates each layer's gradients with UPGrad.
    """
    def init(params):
        leaves = jax.tree.leaves(params)
        return GroupwiseState(
            initial_weights(num_objectives, accumulation_dtype(params)),
            tuple(aggregator.init([leaves[i] for i in members])
                  for members in parameter_groups(params, groups)))

    def update(updates, state, params=None, **extra_args):
        leaves, treedef = jax.tree.flatten(updates)
        members_of = parameter_groups(updates, groups)
        if len(members_of) != len(state.groups):
            raise ValueError(f"the Jacobian splits into {len(members_of)} groups but the "
                             f"state was built for {len(state.groups)}")
        param_leaves = None if params is None else jax.tree.leaves(params)
        transform = optax.with_extra_args_support(aggregator)
        out, new_states = [None] * len(leaves), []
        for members, group_state in zip(members_of, state.groups):
            block = [leaves[i] for i in members]
            own = None if param_leaves is None else [param_leaves[i] for i in members]
            direction, group_state = transform.update(block, group_state, own, **extra_args)
            for i, value in zip(members, direction):
                out[i] = value
            new_states.append(group_state)
        return treedef.unflatten(out), GroupwiseState(state.weights, tuple(new_states))

    return optax.GradientTransformationExtraArgs(init, update)
