"""Multi-objective gradient aggregators as optax transformations.

Each receives the Jacobian of m objectives as a pytree with leaves ``[m, *shape]`` (as
``jaxreg.objective.term_gradients`` returns it) and returns one update; chain it before an
optimizer, or give it to ``jaxreg.train.make_step(..., aggregator=...)``.
"""

from jaxreg.multiobjective.base import combine, from_weighting, gramian, num_objectives

__all__ = ["combine", "from_weighting", "gramian", "num_objectives"]
