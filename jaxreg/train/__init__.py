"""Train steps composed from objectives and optax: state, step, grid, loop, checkpoints,
sharding over a device mesh and multi-host runs."""

from jaxreg.train import distributed, sharding
from jaxreg.train.checkpoint import Checkpointer, CheckpointError
from jaxreg.train.fork_merge import ForkMergeResult, fork_merge, merge_search
from jaxreg.train.grid import GridResult, grid, product
from jaxreg.train.hypergradient import implicit_hypergradient, neumann_inverse_hvp
from jaxreg.train.loop import NonFiniteError, fit, write_history
from jaxreg.train.model_editing import (
    apply_coefficients,
    dare,
    darex_q_search,
    init_coefficients,
    learn_coefficients,
    merge,
    task_vector,
)
from jaxreg.train.sharding import ShardingPlan, make_mesh
from jaxreg.train.state import TrainState, init_state
from jaxreg.train.step import make_step

__all__ = ["CheckpointError", "Checkpointer", "ForkMergeResult", "GridResult",
           "NonFiniteError", "ShardingPlan", "TrainState",
           "apply_coefficients", "dare", "darex_q_search", "distributed", "fit", "fork_merge",
           "grid", "implicit_hypergradient", "init_coefficients", "init_state",
           "learn_coefficients", "make_mesh", "make_step", "merge", "merge_search",
           "neumann_inverse_hvp", "product", "sharding", "task_vector", "write_history"]
