"""Multi-objective gradient aggregators as optax transformations.

Each receives the Jacobian of m objectives as a pytree with leaves ``[m, *shape]`` (as
``jaxreg.objective.term_gradients`` returns it) and returns one update; chain it before an
optimizer, or give it to ``jaxreg.train.make_step(..., aggregator=...)``.
"""

from jaxreg.multiobjective.bargaining import auxinash, nash_mtl
from jaxreg.multiobjective.base import combine, from_weighting, gramian, num_objectives
from jaxreg.multiobjective.vaccine import gradvac
from jaxreg.multiobjective.weighted import aligned_mtl, imtl_g, mean, random_weighting, sum

__all__ = ["aligned_mtl", "auxinash", "combine", "from_weighting", "gradvac", "gramian", "imtl_g", "mean",
           "nash_mtl", "num_objectives", "random_weighting", "sum"]
