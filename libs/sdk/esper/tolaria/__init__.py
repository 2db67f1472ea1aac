"""Tolaria: the training loop, the epoch-boundary heartbeat, checkpoints and rollback."""

from .checkpoint import (
    CheckpointIntegrityError,
    CheckpointStore,
    NoGoodCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from .runlog import ConsoleProgress, RunLog, progress_bar_wanted
from .trainer import (
    TolariaTrainer,
    TrainerHooks,
    TrainingDivergedError,
    TrainingHistory,
    broadcast_signal,
    evaluate,
    make_optimizer,
)

__all__ = [
    "CheckpointIntegrityError", "CheckpointStore", "ConsoleProgress", "NoGoodCheckpointError", "RunLog",
    "TolariaTrainer", "TrainerHooks", "TrainingDivergedError", "TrainingHistory", "broadcast_signal", "evaluate",
    "load_checkpoint", "make_optimizer", "progress_bar_wanted", "save_checkpoint",
]
