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

from typing import TYPE_CHECKING

# Public names resolve on first use (PEP 562 module __getattr__): ``import fusion_train`` — and so
# the ``fusion-train`` command, whose entry point lives in this package — does not import torch
# until a name that needs it is touched, which keeps ``fusion-train --help`` well under a second.
_LAZY = {
    "orthogonalize": ".optim.newton_schulz",
    "FusionOpt": ".optim.optimizer",
    "lr_shape_scale": ".optim.optimizer",
    "COMPONENTS": ".optim.recipes",
    "RECIPES": ".optim.recipes",
    "resolve_components": ".optim.recipes",
    "build_param_groups": ".optim.routing",
    "summarise_groups": ".optim.routing",
    "DiversityConfig": ".training.diversity",
    "DiversityLoss": ".training.diversity",
    "derivative_correlation": ".training.diversity",
    "averaged_state_dict": ".training.export",
    "export_checkpoint": ".training.export",
    "load_training_state": ".training.export",
    "save_training_state": ".training.export",
    "TRAIN_RECIPES": ".training.loop",
    "HeadTrainConfig": ".training.loop",
    "TrainResult": ".training.loop",
    "averaged_weights": ".training.loop",
    "fit": ".training.loop",
    "make_optimizer": ".training.loop",
    "train_head": ".training.loop",
    "validate_head": ".training.loop",
    "task_loss": ".training.losses",
    "TelemetryWriter": ".training.telemetry",
    "read_telemetry": ".training.telemetry",
}

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
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


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion_train' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
