"""Control-head training: the generic :func:`fit` loop and :func:`train_head`, losses, export of
the averaged weights, resumable training state, distillation, diversity training, telemetry."""

from .diversity import DiversityConfig, DiversityLoss, derivative_correlation
from .export import averaged_state_dict, export_checkpoint, load_training_state, save_training_state
from .loop import (
    TRAIN_RECIPES,
    HeadTrainConfig,
    TrainResult,
    averaged_weights,
    fit,
    make_optimizer,
    train_head,
    validate_head,
)
from .losses import task_loss
from .telemetry import TelemetryWriter, read_telemetry

__all__ = [
    "TRAIN_RECIPES",
    "DiversityConfig",
    "DiversityLoss",
    "HeadTrainConfig",
    "TelemetryWriter",
    "TrainResult",
    "averaged_state_dict",
    "averaged_weights",
    "derivative_correlation",
    "export_checkpoint",
    "fit",
    "load_training_state",
    "make_optimizer",
    "read_telemetry",
    "save_training_state",
    "task_loss",
    "train_head",
    "validate_head",
]
