"""fusion_train: the FusionOpt optimizer and parameter routing for adaLN-zero DiTs.

Example:
    >>> from fusion_train import FusionOpt, build_param_groups, summarise_groups
    >>> groups = build_param_groups(model)            # doctest: +SKIP
    >>> print(summarise_groups(groups))               # doctest: +SKIP
    >>> opt = FusionOpt(groups, lr=1e-3, recipe="sf-normuon")  # doctest: +SKIP

Control-head training: :func:`train_head` (:class:`HeadTrainConfig`), :func:`export_checkpoint`
(averaged weights; read back with ``fusion_infer.load_head``), :func:`save_training_state` /
:func:`load_training_state`, diversity training (:class:`DiversityConfig`).
"""

from .optim.newton_schulz import orthogonalize
from .optim.optimizer import FusionOpt, lr_shape_scale
from .optim.recipes import COMPONENTS, RECIPES, resolve_components
from .optim.routing import build_param_groups, summarise_groups
from .training.diversity import DiversityConfig, DiversityLoss, derivative_correlation
from .training.export import (
    averaged_state_dict,
    export_checkpoint,
    load_training_state,
    save_training_state,
)
from .training.loop import (
    TRAIN_RECIPES,
    HeadTrainConfig,
    TrainResult,
    averaged_weights,
    fit,
    make_optimizer,
    train_head,
    validate_head,
)
from .training.losses import task_loss
from .training.telemetry import TelemetryWriter, read_telemetry

__all__ = [
    "COMPONENTS",
    "RECIPES",
    "TRAIN_RECIPES",
    "DiversityConfig",
    "DiversityLoss",
    "FusionOpt",
    "HeadTrainConfig",
    "TelemetryWriter",
    "TrainResult",
    "averaged_state_dict",
    "averaged_weights",
    "build_param_groups",
    "derivative_correlation",
    "export_checkpoint",
    "fit",
    "load_training_state",
    "lr_shape_scale",
    "make_optimizer",
    "orthogonalize",
    "read_telemetry",
    "resolve_components",
    "save_training_state",
    "summarise_groups",
    "task_loss",
    "train_head",
    "validate_head",
]
