"""Knowledge distillation of a shrunk control head from its unshrunk teacher.

Loss per step, on the same noised batch ``x_t = α_t·x₀ + σ_t·ε`` that head training uses
(:mod:`fusion_train.training.loop`), following BK-SDM (Kim et al. 2023, arXiv 2305.15798, §3.2,
``L = L_task + λ_out·L_outKD + λ_feat·L_featKD``):

* ``L_task`` — the head-training loss (Huber/L1/MSE, :func:`fusion_train.training.losses.task_loss`) of the
  student's prediction against the standardised targets; weight ``task_weight``;
* ``L_outKD = MSE(student(x_t, t), teacher(x_t, t))`` — output distillation, weight
  ``output_weight``;
* ``L_featKD = mean_pairs MSE(h_S^j, h_T^{k(j)})`` — feature distillation on the residual stream
  after student block ``j`` and teacher block ``k(j)``, weight ``feature_weight`` (0 = off).
  Default pairing: student block ``j`` of ``L_S`` ↔ teacher block ``⌈(j+1)·L_T/L_S⌉ − 1``, the end
  of the ``j``-th of ``L_S`` equal teacher segments (BK-SDM/TinyFusion match stage outputs);
  ``feature_pairs`` overrides it, e.g. ``[(j, keep[j + 1] - 1) …]`` after ``shrink_depth(keep=…)``.
  Residual widths must agree (shrink_width keeps them); TinyFusion's *masked* KD (dropping
  massive activations) is not implemented.

The loop is head training's: :func:`fusion_train.training.loop.fit` with :func:`make_optimizer`,
:func:`validate_head` (with the teacher as ``reference``, so ``val/mae_to_reference`` is logged),
:class:`~fusion_train.training.telemetry.TelemetryWriter` and :func:`~fusion_train.training.export.export_checkpoint`
(averaged weights, ``best``/``last`` checkpoints loadable with ``fusion_infer.load_head``).

Example:
    >>> from fusion_train.data import synthetic_data
    >>> from fusion_infer import ControlHead, ControlHeadConfig
    >>> from fusion_infer.shrink import shrink_depth
    >>> teacher = ControlHead(ControlHeadConfig(in_channels=64, out_channels=5, dim=32, depth=2,
    ...                                         heads=2, freq_dim=64, modulator_rows=2))
    >>> student = shrink_depth(teacher, 1)
    >>> res = distill(student, teacher, synthetic_data(12, frames=16), recipe="adamw", steps=2,
    ...               batch_size=4, val_every=2, progress=False)
    >>> res.steps, "val/mae_to_reference" in res.best_metrics
    (2, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_infer.checkpoint import TargetScaling
from fusion_infer.models.control_head import ControlHead
from fusion_infer.noise_schedules import get_noise_schedule

from ..optim.optimizer import FusionOpt
from .export import export_checkpoint
from .loop import (
    EpochSampler,
    TrainResult,
    ValidationSet,
    fit,
    make_optimizer,
    t_grid,
    validate_head,
    validate_loop_config,
)
from .losses import task_loss
from .telemetry import TelemetryWriter

__all__ = ["DistillConfig", "distill", "default_feature_pairs"]


def default_feature_pairs(student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """``(student block, teacher block)`` pairs: student ``j`` ↔ end of teacher segment ``j``.

    Example:
        >>> default_feature_pairs(4, 6), default_feature_pairs(3, 3)
        ([(0, 1), (1, 2), (2, 4), (3, 5)], [(0, 0), (1, 1), (2, 2)])
    """
    return [(j, -(-(j + 1) * teacher_depth // student_depth) - 1) for j in range(student_depth)]


@dataclass(frozen=True)
class DistillConfig:
    """Knobs of :func:`distill` (the training ones mean what they mean in
    :class:`fusion_train.training.loop.HeadTrainConfig`).

    Attributes:
        recipe, lr, weight_decay, warmup_steps, optimizer_options: the student's optimizer
            (:func:`~fusion_train.training.loop.make_optimizer`).
        steps, batch_size, loss, huber_delta, noise_schedule, grad_clip, seed: training.
        task_weight, output_weight, feature_weight: loss weights (see the module docstring);
            at least one must be > 0.
        feature_pairs: ``(student block, teacher block)`` pairs for feature KD (None: default).
        val_every, val_seeds, val_t_buckets, val_batch_size, val_max_excerpts: validation.
        out_dir: where ``best.safetensors``, ``last.safetensors`` and ``telemetry.jsonl`` go.
        log_every, progress, tensorboard, device, dtype, max_seconds: as in head training.
    """

    recipe: str = "sf-normuon"
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 500
    batch_size: int = 16
    loss: str = "huber"
    huber_delta: float = 1.0
    noise_schedule: str = "rectified_flow"
    grad_clip: float | None = None
    seed: int = 0
    task_weight: float = 1.0
    output_weight: float = 1.0
    feature_weight: float = 0.0
    feature_pairs: tuple[tuple[int, int], ...] | None = None
    val_every: int = 100
    val_seeds: tuple[int, ...] = (0, 1)
    val_t_buckets: int = 10
    val_batch_size: int = 32
    val_max_excerpts: int | None = None
    out_dir: str | None = None
    log_every: int = 10
    progress: bool = True
    tensorboard: bool | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        validate_loop_config(self, nonneg_ints=("val_every", "warmup_steps", "seed"))
        weights = ("task_weight", "output_weight", "feature_weight")
        for name in weights:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not any(getattr(self, n) > 0 for n in weights):
            raise ValueError(f"at least one of {weights} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (stored in checkpoints' ``extra``)."""
        d = dataclasses.asdict(self)
        d["val_seeds"] = list(self.val_seeds)
        d["feature_pairs"] = None if self.feature_pairs is None else [list(p) for p in self.feature_pairs]
        return d


def _check_pairs(pairs: Sequence[Sequence[int]], ls: int, lt: int) -> tuple[tuple[int, int], ...]:
    out = []
    for p in pairs:
        if len(p) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in p):
            raise ValueError(f"feature_pairs entries must be (student block, teacher block) int pairs, got {p!r}")
        s, t = p
        if not (0 <= s < ls and 0 <= t < lt):
            raise ValueError(
                f"feature pair {tuple(p)} out of range: student blocks 0..{ls - 1}, teacher blocks 0..{lt - 1}"
            )
        out.append((s, t))
    if not out:
        raise ValueError("feature_pairs must hold at least one pair when feature_weight > 0")
    return tuple(out)


def _capture(blocks: nn.ModuleList, indices: set[int], store: dict[int, Tensor]) -> list[Any]:
    def hook(i: int):
        def fn(m: nn.Module, a: tuple, kw: dict, out: Tensor) -> None:
            store[i] = out

        return fn

    return [blocks[i].register_forward_hook(hook(i), with_kwargs=True) for i in sorted(indices)]


def distill(
    student: ControlHead,
    teacher: ControlHead,
    data: Any,
    recipe: str = "sf-normuon",
    *,
    config: DistillConfig | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``student`` (in place) against ``teacher`` and the task targets of ``data``.

    Args:
        student: the head to train (e.g. from :func:`fusion_infer.shrink.shrink_depth` /
            :func:`~fusion_infer.shrink.shrink_width`); its weights are the starting point.
        teacher: the unshrunk head; its weights are not modified (run under ``no_grad`` in eval
            mode, its train/eval mode restored afterwards), but it is moved to ``config.device`` /
            ``config.dtype`` like the student.
        data: a :class:`~fusion_train.data.ReferenceData` (``split``, ``standardize_controls``,
            ``control_names/mean/std``), the data the teacher was trained on.
        recipe: optimizer recipe (:data:`fusion_train.training.loop.TRAIN_RECIPES`).
        config: a :class:`DistillConfig`; ``options`` override its fields (``recipe`` too).

    Returns:
        :class:`~fusion_train.training.loop.TrainResult` with the student holding its final averaged
        weights (``best_metrics`` include ``val/mae_to_reference``: MAE to the teacher, dB).

    Raises:
        TypeError: student/teacher not control heads; ValueError: channel or residual-width
        mismatch (feature KD), bad config values, feature pairs out of range.
    """
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, ControlHead):
            raise TypeError(f"{name} must be a fusion_infer.ControlHead, got {type(m).__name__}")
    if config is None:
        config = DistillConfig(recipe=recipe, **options)
    elif not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig or None, got {type(config).__name__}")
    else:
        config = dataclasses.replace(config, **options) if options else config
    sc, tc = student.config, teacher.config
    if (sc.in_channels, sc.out_channels) != (tc.in_channels, tc.out_channels):
        raise ValueError(
            f"student maps {sc.in_channels}→{sc.out_channels} channels, teacher {tc.in_channels}→{tc.out_channels}"
        )
    pairs: tuple[tuple[int, int], ...] = ()
    if config.feature_weight > 0:
        if sc.dim != tc.dim:
            raise ValueError(
                f"feature distillation needs equal residual widths, student dim={sc.dim}, teacher dim={tc.dim}"
            )
        raw = config.feature_pairs if config.feature_pairs is not None else default_feature_pairs(sc.depth, tc.depth)
        pairs = _check_pairs(raw, sc.depth, tc.depth)

    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    schedule = get_noise_schedule(config.noise_schedule)
    x_train, y_train_db = data.split("train")
    x_val, y_val_db = data.split("val")
    if x_train.shape[0] == 0 or x_val.shape[0] == 0:
        raise ValueError(f"data needs excerpts in both splits, got train {x_train.shape[0]}, val {x_val.shape[0]}")
    if x_train.shape[1] != sc.in_channels or y_train_db.shape[1] != sc.out_channels:
        raise ValueError(
            f"data has {x_train.shape[1]} latent channels and {y_train_db.shape[1]} controls, the heads "
            f"map {sc.in_channels}→{sc.out_channels}"
        )
    if config.val_max_excerpts is not None:
        x_val, y_val_db = x_val[: config.val_max_excerpts], y_val_db[: config.val_max_excerpts]
    y_train = data.standardize_controls(y_train_db)
    scaling = TargetScaling(
        tuple(data.control_names), tuple(float(m) for m in data.control_mean),
        tuple(float(s) for s in data.control_std), "dB",
    )

    model = student.to(device=device, dtype=dtype).train()
    teacher_was_training = teacher.training
    teacher.to(device=device, dtype=dtype).eval()
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(
        config.recipe, model, config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps, **config.optimizer_options,
    )
    sampler = EpochSampler(x_train.shape[0], config.batch_size, config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 7919)
    x_train_d, y_train_d = x_train.to(device=device, dtype=dtype), y_train.to(device=device, dtype=dtype)
    s_feats: dict[int, Tensor] = {}
    t_feats: dict[int, Tensor] = {}

    def loss_fn(step: int) -> tuple[Tensor, dict[str, Any]]:
        idx = sampler.next_batch()
        t = torch.rand(idx.numel(), generator=noise_gen)
        eps = torch.randn((idx.numel(), *x_train.shape[1:]), generator=noise_gen)
        idx_d = idx.to(device)
        x0, y = x_train_d[idx_d], y_train_d[idx_d]
        t_d = t.to(device=device, dtype=dtype)
        x_t = schedule.add_noise(x0, eps.to(device=device, dtype=dtype), t_d)
        pred = model(x_t, t_d)
        with torch.no_grad():
            ref = teacher(x_t, t_d)
        parts = {
            "task": task_loss(config.loss, pred, y, config.huber_delta),
            "output_kd": F.mse_loss(pred, ref),
        }
        loss = config.task_weight * parts["task"] + config.output_weight * parts["output_kd"]
        if pairs:
            feat = sum(F.mse_loss(s_feats[s], t_feats[k]) for s, k in pairs) / len(pairs)
            parts["feature_kd"] = feat
            loss = loss + config.feature_weight * feat
        return loss, {f"train/{k}": float(v.detach()) for k, v in parts.items()}

    val = ValidationSet(
        x_val, y_val_db, scaling.destandardize, tuple(config.val_seeds),
        t_grid(config.val_t_buckets), tuple(data.control_names),
    )

    def validate() -> dict[str, float]:
        return validate_head(model, val, schedule, batch_size=config.val_batch_size, device=device,
                             reference=teacher)

    out = Path(config.out_dir) if config.out_dir is not None else None
    meta = dict(noise_schedule=config.noise_schedule, loss=config.loss, recipe=config.recipe, targets=scaling)
    extra = {"distill_config": config.to_dict(), "teacher_config": tc.to_dict()}
    best_path = out / "best.safetensors" if out is not None else None
    kept: dict[str, Any] = {"metrics": {}}

    def on_improve(step: int, metrics: dict[str, float]) -> None:
        kept["metrics"] = metrics
        if best_path is not None:
            export_checkpoint(model, optimizer, best_path, step=step, **meta, **extra, metrics=metrics)

    telemetry = TelemetryWriter(out / "telemetry.jsonl" if out is not None else None,
                                tensorboard=config.tensorboard if out is not None else False)
    handles = _capture(model.blocks, {s for s, _ in pairs}, s_feats) if pairs else []
    handles += _capture(teacher.blocks, {k for _, k in pairs}, t_feats) if pairs else []
    try:
        res = fit(
            model, optimizer, loss_fn, steps=config.steps, validate=validate, val_every=config.val_every,
            on_improve=on_improve, telemetry=telemetry, log_every=config.log_every,
            grad_clip=config.grad_clip, max_seconds=config.max_seconds, progress=config.progress,
            desc=f"distill[{config.recipe}]",
        )
    finally:
        for h in handles:
            h.remove()
        telemetry.close()
        teacher.train(teacher_was_training)
    last_path = None
    if out is not None:
        last_path = export_checkpoint(model, optimizer, out / "last.safetensors", **meta, **extra)
    if isinstance(optimizer, FusionOpt) and optimizer.sf:
        optimizer.eval()
    model.eval()
    return TrainResult(
        model, optimizer, res.best_score, res.best_step, kept["metrics"], res.history,
        telemetry.records, res.last_step, res.seconds,
        best_path if res.best_step >= 0 and out is not None else None, last_path, telemetry.path,
        train_seconds=res.train_seconds,
    )
