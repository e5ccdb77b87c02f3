"""Train steps composed from objectives and optax: state, step, grid, loop, checkpoints."""

from jaxreg.train.checkpoint import Checkpointer
from jaxreg.train.grid import GridResult, grid, product
from jaxreg.train.loop import fit, write_history
from jaxreg.train.state import TrainState, init_state
from jaxreg.train.step import make_step

__all__ = ["Checkpointer", "GridResult", "TrainState", "fit", "grid", "init_state", "make_step",
           "product", "write_history"]
