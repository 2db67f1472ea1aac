"""Tolaria: the training loop, the epoch-boundary heartbeat, checkpoints and rollback."""

from .checkpoint import (
    CheckpointIntegrityError,
    CheckpointStore,
    NoGoodCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import RankDivergedError, RankMismatchError, broadcast_signal
from .runlog import ConsoleProgress, RunLog, progress_bar_wanted
from .trainer import (
    TolariaTrainer,
    TrainerHooks,
    TrainingDivergedError,
    TrainingHistory,
    evaluate,
    evaluate_totals,
    make_optimizer,
)

__all__ = [
    "CheckpointIntegrityError", "CheckpointStore", "ConsoleProgress", "NoGoodCheckpointError", "RankDivergedError",
    "RankMismatchError", "RunLog", "TolariaTrainer", "TrainerHooks", "TrainingDivergedError", "TrainingHistory",
    "broadcast_signal", "evaluate", "evaluate_totals", "load_checkpoint", "make_optimizer", "progress_bar_wanted",
    "save_checkpoint",
]
