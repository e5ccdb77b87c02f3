"""Multi-objective gradient aggregators as optax transformations.

Each receives the Jacobian of m objectives as a pytree with leaves ``[m, *shape]`` (as
``jaxreg.objective.term_gradients`` returns it) and returns one update; chain it before an
optimizer, or give it to ``jaxreg.train.make_step(..., aggregator=...)``.
"""

from jaxreg.multiobjective.auxiliary import bloop
from jaxreg.multiobjective.bargaining import auxinash, nash_mtl
from jaxreg.multiobjective.base import combine, from_weighting, gramian, num_objectives
from jaxreg.multiobjective.conflict_free import config, momentum_config
from jaxreg.multiobjective.dual_cone import dualproj, project_to_dual_cone, upgrad
from jaxreg.multiobjective.loss_weighting import (
    gradnorm,
    uncertainty_parameters,
    uncertainty_weighting,
)
from jaxreg.multiobjective.min_norm import cagrad, mgda
from jaxreg.multiobjective.surgery import graddrop, pcgrad
from jaxreg.multiobjective.vaccine import gradvac
from jaxreg.multiobjective.weighted import aligned_mtl, imtl_g, mean, random_weighting, sum

__all__ = [
    "aligned_mtl", "auxinash", "bloop", "cagrad", "combine", "config", "dualproj", "from_weighting",
    "graddrop", "gradnorm", "gradvac", "gramian", "imtl_g", "mean", "mgda", "momentum_config",
    "nash_mtl", "num_objectives", "pcgrad", "project_to_dual_cone", "random_weighting", "sum",
    "uncertainty_parameters", "uncertainty_weighting", "upgrad",
]
