"""Train steps composed from objectives and optax: state, step, grid, loop, checkpoints."""

from jaxreg.train.checkpoint import Checkpointer
from jaxreg.train.fork_merge import ForkMergeResult, fork_merge, merge_search
from jaxreg.train.grid import GridResult, grid, product
from jaxreg.train.loop import fit, write_history
from jaxreg.train.state import TrainState, init_state
from jaxreg.train.step import make_step

__all__ = ["Checkpointer", "ForkMergeResult", "GridResult", "TrainState", "fit", "fork_merge",
           "grid", "init_state", "make_step", "merge_search", "product", "write_history"]
