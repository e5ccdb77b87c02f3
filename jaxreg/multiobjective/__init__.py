"""Multi-objective gradient aggregators as optax transformations.

Each receives the Jacobian of m objectives as a pytree with leaves ``[m, *shape]`` (as
``jaxreg.objective.term_gradients`` returns it) and returns one update; chain it before an
optimizer, or give it to ``jaxreg.train.make_step(..., aggregator=...)``. Those that read only
the Gramian are built from a :class:`Weighting` (``weighting_of`` gives it back), so the train
step can compute them without the Jacobian (``jaxreg.multiobjective.engine``);
``groupwise`` aggregates each group of parameters separately.
"""

from jaxreg.multiobjective.auxiliary import bloop
from jaxreg.multiobjective.balancing import excess_mtl, fairgrad
from jaxreg.multiobjective.bargaining import auxinash, nash_mtl
from jaxreg.multiobjective.base import (
    Weighting,
    combine,
    from_weighting,
    gramian,
    num_objectives,
    weighting_of,
)
from jaxreg.multiobjective.conflict_free import config, momentum_config
from jaxreg.multiobjective.dual_cone import dualproj, project_to_dual_cone, upgrad
from jaxreg.multiobjective.groupwise import groupwise
from jaxreg.multiobjective.loss_weighting import (
    gradnorm,
    uncertainty_parameters,
    uncertainty_weighting,
)
from jaxreg.multiobjective.min_norm import cagrad, mgda
from jaxreg.multiobjective.priority import pcd
from jaxreg.multiobjective.robust import krum, trimmed_mean
from jaxreg.multiobjective.scalarization import dwa, famo, geometric_mean, pbi, stch
from jaxreg.multiobjective.stochastic import cr_mogm, modo, sdmgrad
from jaxreg.multiobjective.surgery import graddrop, pcgrad
from jaxreg.multiobjective.vaccine import gradvac
from jaxreg.multiobjective.weighted import aligned_mtl, imtl_g, mean, random_weighting, sum

__all__ = [
    "Weighting", "aligned_mtl", "auxinash", "bloop", "cagrad", "combine", "config", "cr_mogm",
    "dualproj", "dwa", "excess_mtl", "fairgrad", "famo", "from_weighting", "geometric_mean",
    "graddrop", "gradnorm", "gradvac", "gramian", "groupwise", "imtl_g", "krum", "mean", "mgda",
    "modo", "momentum_config", "nash_mtl", "num_objectives", "pbi", "pcd", "pcgrad",
    "project_to_dual_cone", "random_weighting", "sdmgrad", "stch", "sum", "trimmed_mean",
    "uncertainty_parameters", "uncertainty_weighting", "upgrad", "weighting_of",
]
