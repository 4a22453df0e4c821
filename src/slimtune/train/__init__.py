"""Training: slimtune's own trainer (callbacks, crash-safe checkpoints, DDP/FSDP2) and YAML recipes.

    from slimtune.train import Trainer, TrainConfig
    result = Trainer(model, TrainConfig(steps=100), train_data, collate_fn, run_dir="runs/x").fit()
"""

from slimtune.train.callbacks import Callback, MetricsWriter, TrainerState, read_metrics
from slimtune.train.checkpoint import CheckpointData, CheckpointStore
from slimtune.train.config import TrainConfig
from slimtune.train.schedule import Schedule, lr_factor
from slimtune.train.trainer import Trainer, TrainResult

__all__ = [
    "Callback",
    "CheckpointData",
    "CheckpointStore",
    "MetricsWriter",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerState",
    "lr_factor",
    "read_metrics",
]
