"""Training: the one loop every kind goes through, checkpoints, residual training."""

from saelab.process_group import is_main_process
from saelab.train.loop import NonFiniteError, TrainConfig, train_sae
from saelab.train.residual import ErrorStore, train_residual

__all__ = [
    "ErrorStore",
    "NonFiniteError",
    "TrainConfig",
    "is_main_process",
    "train_residual",
    "train_sae",
]
