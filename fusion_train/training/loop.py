"""Control-head training (LatCH-F) and the generic training loop it runs on.

**What is trained** (LatCH-F, Novack et al. 2026, arXiv 2603.04366): a :class:`~fusion_infer.ControlHead` maps a
noised latent ``z_t = α_t·z0 + σ_t·ε`` (the base model's forward schedule, ``t ~ U[0, 1]``) to the
control features of the *clean* audio, ``[B, C, T]``. Targets are standardised per channel with
the train split's statistics (low-variance targets otherwise collapse to the mean, §1.4); the loss
is Huber (default), L1 or MSE on the standardised targets. Validation is the **median per-frame
MAE in target units** (dB): for every validation excerpt, fixed noise seed and point of a fixed
t-grid (the midpoints of ``val_t_buckets`` equal buckets of [0, 1]), the absolute error is averaged
over the control channels for each frame; the median over all those frames is the score (the
re-implementation's ``val_point_mae``; the mean is skewed by outliers). It is also reported per
t-bucket and per channel. The best checkpoint by that score is kept.

**Layers** (distillation, :mod:`fusion_train.training.distill`, reuses the lower two):

* :func:`make_optimizer` — recipes by name: ``adamw`` (``torch.optim.AdamW``), ``muon``,
  ``muon+mona``, ``sf-normuon``, ``full`` (FusionOpt recipes).
* :func:`fit` — the generic inner loop: ``loss_fn(step) -> (loss, scalars)``, backward, optional
  gradient clipping, ``optimizer.step``; telemetry every ``log_every`` steps; validation every
  ``val_every`` steps inside :func:`averaged_weights` (``optimizer.eval()`` → x, then back to y);
  best-score tracking with an ``on_improve`` callback; an ``on_step_end`` hook (training state).
* :func:`train_head` — data, head, optimizer, noise, losses, diversity, checkpoints, resume.

Example:
    >>> from fusion_train.data import synthetic_data
    >>> from fusion_infer import ControlHeadConfig
    >>> data = synthetic_data(12, frames=16)
    >>> cfg = HeadTrainConfig(recipe="adamw", steps=4, batch_size=4, val_every=2, progress=False,
    ...                       head=ControlHeadConfig(in_channels=64, out_channels=5, dim=32, depth=1,
    ...                                              heads=2, freq_dim=32, modulator_rows=1))
    >>> result = train_head(cfg, data)
    >>> result.best_step in (2, 4)
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusion_infer.checkpoint import TargetScaling, load_head
from fusion_infer.models.control_head import ControlHead, ControlHeadConfig
from fusion_infer.noise_schedules import NOISE_SCHEDULES, NoiseSchedule, get_noise_schedule

from ..data.describe import describe_data
from ..optim.optimizer import FusionOpt
from ..optim.recipes import RECIPES
from ..optim.routing import build_param_groups
from .diversity import DiversityConfig, DiversityLoss, derivative_correlation
from .export import export_checkpoint, load_training_state, save_training_state
from .losses import task_loss, validate_loss_name
from .parallel import (
    PARALLEL_MODES,
    is_writer,
    rank_slice,
    resolve_parallel,
    world_info,
    wrap_model,
)
from .telemetry import TelemetryWriter, optimizer_telemetry

__all__ = [
    "DEFAULT_LR",
    "TRAIN_RECIPES",
    "EpochSampler",
    "FitResult",
    "HeadTrainConfig",
    "TrainResult",
    "ValidationSet",
    "averaged_weights",
    "fit",
    "make_optimizer",
    "t_grid",
    "train_head",
    "validate_head",
]

TRAIN_RECIPES = ("adamw", "muon", "muon+mona", "sf-normuon", "full")
# Starting points from a short CPU sweep (benchmarks/head_quality.py sweeps ×0.5…×2 around them):
# at 150 steps the FusionOpt recipes improved from 1e-3 to 2e-3 and beyond, AdamW peaked near 1e-3.
DEFAULT_LR = {"adamw": 1e-3, "muon": 4e-3, "muon+mona": 4e-3, "sf-normuon": 4e-3, "full": 4e-3}
# FusionOpt recipe name for each training recipe that runs on FusionOpt.
_FUSION_RECIPE = {"muon": "muon", "muon+mona": "muon+mona", "sf-normuon": "sf-normuon", "full": "full"}


# --------------------------------------------------------------------------- optimizer
def make_optimizer(
    recipe: str,
    model: nn.Module,
    lr: float | None = None,
    *,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    **options: Any,
) -> torch.optim.Optimizer:
    """The optimizer of training recipe ``recipe`` for ``model``.

    ``adamw`` is ``torch.optim.AdamW(model.parameters(), lr, weight_decay=…)`` (``options`` go to
    AdamW; no warm-up: pass ``warmup_steps=0``). The others build
    ``FusionOpt(build_param_groups(model), lr, recipe=…, weight_decay=…, warmup_steps=…, **options)``
    with FusionOpt's defaults (``hot_dtype="auto"`` measures whether bf16 Newton–Schulz is faster
    than fp32 on this device).

    Example:
        >>> opt = make_optimizer("sf-normuon", nn.Linear(256, 256))
        >>> type(opt).__name__, opt.sf
        ('FusionOpt', True)
    """
    if recipe not in TRAIN_RECIPES:
        raise ValueError(f"recipe must be one of {list(TRAIN_RECIPES)}, got {recipe!r}")
    lr = DEFAULT_LR[recipe] if lr is None else lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if recipe == "adamw":
        if warmup_steps:
            raise ValueError("warmup_steps is a FusionOpt option; recipe 'adamw' runs at a constant lr (pass 0)")
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, **options)
    name = _FUSION_RECIPE[recipe]
    if name not in RECIPES:
        raise NotImplementedError(
            f"recipe {recipe!r} is not available until FusionOpt gains it (branch issue-4: MONA); "
            f"available now: {[r for r in TRAIN_RECIPES if r == 'adamw' or _FUSION_RECIPE[r] in RECIPES]}"
        )
    try:
        return FusionOpt(
            build_param_groups(model), lr=lr, recipe=name, weight_decay=weight_decay,
            warmup_steps=warmup_steps, **options,
        )
    except NotImplementedError as exc:
        raise NotImplementedError(
            f"recipe {recipe!r} is not available until its FusionOpt components are merged "
            f"(branch issue-4): {exc}"
        ) from exc


@contextlib.contextmanager
def averaged_weights(model: nn.Module, optimizer: Any) -> Iterator[None]:
    """Inside: the model in ``eval()`` holding the averaged weights x; afterwards both back as they were.

    For a Schedule-Free FusionOpt in train mode this is ``optimizer.eval()`` … ``optimizer.train()``;
    for other optimizers only the module mode changes.
    """
    was_training = model.training
    switch = isinstance(optimizer, FusionOpt) and optimizer.sf and optimizer.training
    if switch:
        optimizer.eval()
    model.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()
        model.train(was_training)


# --------------------------------------------------------------------------- data order
class EpochSampler:
    """Batches of indices from per-epoch permutations; the position is a small resumable state.

    Epoch ``e``'s permutation comes from its own generator seeded ``(seed, e)``, so the state is just
    ``(epoch, position)`` and a resumed run draws the very same batches.

    Example:
        >>> s = EpochSampler(5, batch_size=4, seed=0)
        >>> len(s.next_batch()), len(s.next_batch()), s.state_dict()["epoch"]
        (4, 4, 1)
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = 0, 0
        self._perm: Tensor | None = None

    def _permutation(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g)
        return self._perm

    def next_batch(self) -> Tensor:
        """The next ``batch_size`` indices (crossing into the next epoch when one runs out)."""
        parts, need = [], self.batch_size
        while need:
            perm = self._permutation()
            take = perm[self.position : self.position + need]
            parts.append(take)
            need -= take.numel()
            self.position += take.numel()
            if self.position == self.n:
                self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        return torch.cat(parts)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n") != self.n or state.get("seed") != self.seed:
            raise ValueError(
                f"loader state is for n={state.get('n')}, seed={state.get('seed')}; this sampler has "
                f"n={self.n}, seed={self.seed} (different data or seed)"
            )
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None


# --------------------------------------------------------------------------- validation
def t_grid(buckets: int) -> tuple[float, ...]:
    """Midpoints of ``buckets`` equal buckets of [0, 1] (the fixed validation t-grid).

    Example:
        >>> t_grid(4)
        (0.125, 0.375, 0.625, 0.875)
    """
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"val_t_buckets must be a positive int, got {buckets!r}")
    return tuple((i + 0.5) / buckets for i in range(buckets))


@dataclass
class ValidationSet:
    """Fixed validation inputs: clean latents, targets in target units, fixed seeds and t-grid.

    ``destandardize`` maps the head's (standardised) outputs to target units.
    """

    latents: Tensor
    targets: Tensor
    destandardize: Callable[[Tensor], Tensor]
    seeds: tuple[int, ...] = (0, 1)
    t_values: tuple[float, ...] = t_grid(10)
    names: tuple[str, ...] = ()


@torch.no_grad()
def _predict_grid(model: nn.Module, val: ValidationSet, schedule: NoiseSchedule, batch_size: int, device) -> tuple[Tensor, Tensor]:
    """Predictions ``[S, G, N, C, T]`` (target units) and the noised inputs' seeds/t in loop order."""
    preds = []
    for seed in val.seeds:
        noise = torch.randn(val.latents.shape, generator=torch.Generator().manual_seed(int(seed)))
        per_t = []
        for t in val.t_values:
            chunks = []
            for i in range(0, val.latents.shape[0], batch_size):
                x0 = val.latents[i : i + batch_size].to(device)
                eps = noise[i : i + batch_size].to(device)
                tt = torch.full((x0.shape[0],), float(t), device=device)
                out = model(schedule.add_noise(x0, eps, tt), tt)
                chunks.append(val.destandardize(out.float()).cpu())
            per_t.append(torch.cat(chunks))
        preds.append(torch.stack(per_t))
    return torch.stack(preds), torch.tensor(val.t_values)


def validate_head(
    model: nn.Module,
    val: ValidationSet,
    schedule: NoiseSchedule | str = "rectified_flow",
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    reference: nn.Module | None = None,
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``val`` (call it with the averaged weights in place).

    Returns ``val/median_mae`` (the score), ``val/mean_mae``, ``val/median_mae@t=<t>`` per grid
    point, ``val/median_abs_err/<channel>``, ``val/deriv_corr_target`` (mean over channels); with a
    ``reference`` head also ``val/deriv_corr_reference`` and ``val/mae_to_reference`` (dB).
    """
    schedule = get_noise_schedule(schedule)
    was = model.training
    model.eval()
    try:
        pred, ts = _predict_grid(model, val, schedule, batch_size, device)  # [S, G, N, C, T]
    finally:
        model.train(was)
    target = val.targets.float().cpu()
    abs_err = (pred - target).abs()  # broadcast over S, G
    per_frame = abs_err.mean(dim=3)  # [S, G, N, T]: mean over channels
    metrics = {
        "val/median_mae": float(per_frame.median()),
        "val/mean_mae": float(per_frame.mean()),
    }
    for g, t in enumerate(ts.tolist()):
        metrics[f"val/median_mae@t={t:.3f}"] = float(per_frame[:, g].median())
    names = val.names or tuple(f"ch{c}" for c in range(target.shape[1]))
    for c, name in enumerate(names):
        metrics[f"val/median_abs_err/{name}"] = float(abs_err[:, :, :, c].median())
    flat = pred.flatten(0, 2)  # [S·G·N, C, T]
    reps = flat.shape[0] // target.shape[0]
    metrics["val/deriv_corr_target"] = float(
        derivative_correlation(flat, target.repeat(reps, 1, 1)).nanmean()
    )
    if reference is not None:
        ref_pred, _ = _predict_grid(reference, val, schedule, batch_size, device)
        ref_flat = ref_pred.flatten(0, 2)
        metrics["val/deriv_corr_reference"] = float(derivative_correlation(flat, ref_flat).nanmean())
        metrics["val/mae_to_reference"] = float((flat - ref_flat).abs().mean())
    return metrics


# --------------------------------------------------------------------------- generic loop
@dataclass
class FitResult:
    """Outcome of :func:`fit`: best score and step, every validation's metrics, steps run, time.

    ``seconds`` is the loop's wall time; ``train_seconds`` only the forward/backward/step part
    (without validation, telemetry and hooks), for steps-per-second comparisons.
    """

    best_score: float
    best_step: int
    history: list[dict[str, float]]
    last_step: int
    seconds: float
    last_loss: float
    train_seconds: float = 0.0


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[int], tuple[Tensor, dict[str, Any]]],
    *,
    steps: int,
    start_step: int = 0,
    validate: Callable[[], dict[str, float]] | None = None,
    val_every: int = 0,
    score_key: str = "val/median_mae",
    best_score: float = math.inf,
    best_step: int = -1,
    on_improve: Callable[[int, dict[str, float]], None] | None = None,
    on_step_end: Callable[[int, FitResult], None] | None = None,
    telemetry: TelemetryWriter | None = None,
    log_every: int = 10,
    grad_clip: float | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
    desc: str = "train",
) -> FitResult:
    """Run steps ``start_step+1 … steps`` of ``loss_fn`` with ``optimizer``; validate and keep the best.

    ``loss_fn(step)`` draws its own batch (so it owns the data order and noise RNG) and returns
    ``(loss, scalars)``; ``scalars`` are logged as they are. Validation runs every ``val_every``
    steps and after the last one, inside :func:`averaged_weights`; a lower ``metrics[score_key]``
    calls ``on_improve(step, metrics)`` (still inside, so the model holds x). ``on_step_end(step,
    state)`` runs last in every step (after validation), which is where training state is saved.
    ``max_seconds`` stops early after the step that crosses it (equal-wall-clock comparisons).

    Example:
        >>> model = nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> res = fit(model, opt, lambda s: (model(torch.ones(2, 4)).square().mean(), {}), steps=3)
        >>> res.last_step
        3
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if val_every < 0 or log_every < 1:
        raise ValueError(f"val_every must be >= 0 and log_every >= 1, got {val_every!r}, {log_every!r}")
    state = FitResult(best_score, best_step, [], start_step, 0.0, math.nan)
    model.train()
    if isinstance(optimizer, FusionOpt) and optimizer.sf and not optimizer.training:
        optimizer.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=desc, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for step in range(start_step + 1, steps + 1):
            t_step = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, scalars = loss_fn(step)
            loss.backward()
            if grad_clip is not None:
                scalars = {**scalars, "train/grad_norm": nn.utils.clip_grad_norm_(model.parameters(), grad_clip)}
            if isinstance(optimizer, FusionOpt):
                optimizer.step(loss=loss.detach())
            else:
                optimizer.step()
            state.train_seconds += time.perf_counter() - t_step
            state.last_step = step
            last = step == steps or (max_seconds is not None and time.perf_counter() - t0 >= max_seconds)
            if telemetry is not None and (step % log_every == 0 or last):
                state.last_loss = float(loss.detach())
                telemetry.log(step, {"train/loss": state.last_loss, **scalars, **optimizer_telemetry(optimizer)})
            if validate is not None and ((val_every and step % val_every == 0) or last):
                with averaged_weights(model, optimizer):
                    metrics = validate()
                    metrics = {**metrics, "step": step}
                    state.history.append(metrics)
                    if telemetry is not None:
                        telemetry.log(step, {k: v for k, v in metrics.items() if k != "step"})
                    if metrics[score_key] < state.best_score:
                        state.best_score, state.best_step = metrics[score_key], step
                        if on_improve is not None:
                            on_improve(step, metrics)
                if bar is not None:
                    bar.set_postfix({score_key.split("/")[-1]: f"{metrics[score_key]:.3f}"})
            if on_step_end is not None:
                on_step_end(step, state)
            if bar is not None:
                bar.update(1)
            if last:
                break
    finally:
        if bar is not None:
            bar.close()
    state.seconds = time.perf_counter() - t0
    if math.isnan(state.last_loss) and state.last_step > start_step:
        state.last_loss = float(loss.detach())
    return state


# --------------------------------------------------------------------------- head training
def validate_loop_config(cfg: Any, *, nonneg_ints: tuple[str, ...]) -> None:
    """Checks shared by every config that drives :func:`fit` (head training, distillation).

    ``cfg`` has ``recipe``, ``loss``, ``noise_schedule``, ``steps``, ``batch_size``,
    ``val_t_buckets``, ``val_batch_size``, ``log_every``, ``val_seeds``, ``dtype``, ``grad_clip`` and
    the non-negative int fields named in ``nonneg_ints``.
    """
    if cfg.recipe not in TRAIN_RECIPES:
        raise ValueError(f"recipe must be one of {list(TRAIN_RECIPES)}, got {cfg.recipe!r}")
    validate_loss_name(cfg.loss)
    if cfg.noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {sorted(NOISE_SCHEDULES)}, got {cfg.noise_schedule!r}")
    for name in ("steps", "batch_size", "val_t_buckets", "val_batch_size", "log_every"):
        v = getattr(cfg, name)
        minimum = 0 if name == "steps" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    for name in nonneg_ints:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if not cfg.val_seeds:
        raise ValueError("val_seeds must hold at least one seed")
    if cfg.dtype not in ("float32", "bfloat16", "float16", "float64"):
        raise ValueError(f"dtype must be one of float32, bfloat16, float16, float64; got {cfg.dtype!r}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {cfg.grad_clip!r}")


@dataclass(frozen=True)
class HeadTrainConfig:
    """Everything :func:`train_head` needs besides the data.

    Attributes:
        recipe: one of :data:`TRAIN_RECIPES`; lr: learning rate (``None``: :data:`DEFAULT_LR`);
            weight_decay, warmup_steps, optimizer_options: passed to :func:`make_optimizer`.
        head: the head's config (``None``: ``ControlHeadConfig`` defaults with the data's channel
            counts); ``in_channels``/``out_channels`` must match the data.
        steps, batch_size: optimizer steps and excerpts per step.
        loss, huber_delta: ``"huber"`` (default), ``"l1"``, ``"mse"`` on standardised targets.
        noise_schedule: ``"rectified_flow"`` (default) or ``"vp_cosine"``; recorded in checkpoints.
        grad_clip: max global gradient norm (``None``: no clipping).
        seed: initialisation, data order and noise.
        val_every, val_seeds, val_t_buckets, val_batch_size, val_max_excerpts: validation (see the
            module docstring); ``val_max_excerpts`` caps the validation excerpts (first ones).
        out_dir: where ``best.safetensors``, ``last.safetensors``, ``telemetry.jsonl`` and
            ``training_state.safetensors`` go (``None``: nothing is written).
        state_every: save the training state every that many steps (0: never).
        resume_from: a training-state file to resume from.
        log_every, progress, tensorboard: telemetry cadence, tqdm bar, TensorBoard (None: if installed).
        device, dtype: where and in which precision the head trains.
        diversity: a :class:`~fusion_train.training.diversity.DiversityConfig` for diversity training.
        max_seconds: stop after this much wall-clock time (equal-time comparisons).
        parallel: multi-process training under torchrun (see parallel.py): ``"auto"`` (DDP when
            a process group with more than one rank is active), ``"none"``, ``"ddp"``, ``"fsdp"``
            (FSDP2 ``fully_shard``). ``batch_size`` is the global batch; rank 0 writes.
    """

    recipe: str = "sf-normuon"
    lr: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    head: ControlHeadConfig | None = None
    steps: int = 2000
    batch_size: int = 16
    loss: str = "huber"
    huber_delta: float = 1.0
    noise_schedule: str = "rectified_flow"
    grad_clip: float | None = None
    seed: int = 0
    val_every: int = 200
    val_seeds: tuple[int, ...] = (0, 1)
    val_t_buckets: int = 10
    val_batch_size: int = 32
    val_max_excerpts: int | None = None
    out_dir: str | None = None
    state_every: int = 0
    resume_from: str | None = None
    log_every: int = 10
    progress: bool = True
    tensorboard: bool | None = None
    device: str = "cpu"
    dtype: str = "float32"
    diversity: DiversityConfig | None = None
    max_seconds: float | None = None
    parallel: str = "auto"

    def __post_init__(self) -> None:
        validate_loop_config(self, nonneg_ints=("val_every", "state_every", "warmup_steps", "seed"))
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.state_every and self.out_dir is None:
            raise ValueError("state_every needs out_dir (where training_state.safetensors is written)")
        if self.diversity is not None and not isinstance(self.diversity, DiversityConfig):
            raise TypeError(f"diversity must be a DiversityConfig or None, got {type(self.diversity).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (stored in checkpoints' ``extra``)."""
        d = dataclasses.asdict(self)
        d["head"] = self.head.to_dict() if self.head is not None else None
        d["val_seeds"] = list(self.val_seeds)
        return d


@dataclass
class TrainResult:
    """What :func:`train_head` returns.

    ``model`` holds the final **averaged** weights (the optimizer is left in ``eval()`` mode; call
    ``optimizer.train()`` to continue training it). ``best_metrics`` are the validation metrics of
    the best step; ``history`` every validation; ``records`` the telemetry records; ``seconds`` the
    loop's wall time and ``train_seconds`` its forward/backward/step part.
    """

    model: ControlHead
    optimizer: torch.optim.Optimizer
    best_score: float
    best_step: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    records: list[dict[str, Any]]
    steps: int
    seconds: float
    best_path: Path | None = None
    last_path: Path | None = None
    telemetry_path: Path | None = None
    train_seconds: float = 0.0


def validation_description(config: Any) -> dict[str, Any]:
    """The validation settings of ``config`` as stored in checkpoints (``extra["validation"]``)."""
    return {"seeds": [int(s) for s in config.val_seeds], "t_buckets": int(config.val_t_buckets),
            "max_excerpts": config.val_max_excerpts, "batch_size": int(config.val_batch_size)}


def _resolve_head_config(config: HeadTrainConfig, n_mels: int, n_controls: int) -> ControlHeadConfig:
    head = config.head or ControlHeadConfig(in_channels=n_mels, out_channels=n_controls)
    if head.in_channels != n_mels or head.out_channels != n_controls:
        raise ValueError(
            f"head config has in_channels={head.in_channels}, out_channels={head.out_channels} but the "
            f"data has {n_mels} latent channels and {n_controls} controls"
        )
    return head


def train_head(config: HeadTrainConfig, data: Any = None) -> TrainResult:
    """Train a LatCH-F control head on ``data`` (a :class:`~fusion_train.data.ReferenceData`).

    ``data=None`` builds the music21 reference data with default settings (cached on disk).
    See the module docstring for what is trained and validated; :class:`HeadTrainConfig` for the
    knobs. With ``config.diversity`` the loss is ``task − λ·min(MSE(pred, ref_pred), bound)``
    against the frozen reference head (:mod:`fusion_train.training.diversity`).
    """
    if not isinstance(config, HeadTrainConfig):
        raise TypeError(f"config must be a HeadTrainConfig, got {type(config).__name__}")
    if data is None:
        from ..data import build_reference_data

        data = build_reference_data(progress=config.progress)
    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    schedule = get_noise_schedule(config.noise_schedule)
    x_train, y_train_db = data.split("train")
    x_val, y_val_db = data.split("val")
    if x_train.shape[0] == 0 or x_val.shape[0] == 0:
        raise ValueError(f"data needs excerpts in both splits, got train {x_train.shape[0]}, val {x_val.shape[0]}")
    if config.val_max_excerpts is not None:
        x_val, y_val_db = x_val[: config.val_max_excerpts], y_val_db[: config.val_max_excerpts]
    y_train = data.standardize_controls(y_train_db)
    scaling = TargetScaling(
        tuple(data.control_names),
        tuple(float(m) for m in data.control_mean),
        tuple(float(s) for s in data.control_std),
        "dB",
    )

    reference, diversity = None, None
    if config.diversity is not None:
        loaded = load_head(config.diversity.reference, device=device)
        if loaded.noise_schedule != config.noise_schedule:
            raise ValueError(
                f"reference head was trained with noise_schedule {loaded.noise_schedule!r}, this run uses "
                f"{config.noise_schedule!r}"
            )
        reference = loaded.model.to(dtype=dtype).eval().requires_grad_(False)
        diversity = DiversityLoss(
            config.diversity.lam, config.diversity.bound, config.diversity.warmup_steps,
            task_fn=lambda p, y: task_loss(config.loss, p, y, config.huber_delta),
        )

    torch.manual_seed(config.seed)
    if config.diversity is not None and config.diversity.warm_start:
        head_cfg = reference.config  # type: ignore[union-attr]
        _resolve_head_config(dataclasses.replace(config, head=head_cfg), x_train.shape[1], y_train.shape[1])
        model = ControlHead(head_cfg)
        model.load_state_dict(reference.state_dict())  # type: ignore[union-attr]
    else:
        model = ControlHead(_resolve_head_config(config, x_train.shape[1], y_train.shape[1]))
    model.to(device=device, dtype=dtype)
    # --- multi-process (torchrun): each rank computes its slice of every global batch (parallel.py)
    mode = resolve_parallel(config.parallel)
    rank, world = world_info()
    local = rank_slice(config.batch_size, rank, world)
    if world > 1 and (config.state_every or config.resume_from):
        raise ValueError("state_every/resume_from write a single-process training state; with several "
                         "processes checkpoint with torch.distributed.checkpoint (docs/distributed.md)")
    forward, parallel_options = wrap_model(model, mode)
    optimizer = make_optimizer(
        config.recipe, model, config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        **{**config.optimizer_options, **(parallel_options if config.recipe != "adamw" else {})},
    )
    writer = is_writer()
    sampler = EpochSampler(x_train.shape[0], config.batch_size, config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 7919)  # distinct stream from data order
    x_train_d, y_train_d = x_train.to(device=device, dtype=dtype), y_train.to(device=device, dtype=dtype)

    def loss_fn(step: int) -> tuple[Tensor, dict[str, Any]]:
        idx = sampler.next_batch()
        t = torch.rand(idx.numel(), generator=noise_gen)
        eps = torch.randn((idx.numel(), *x_train.shape[1:]), generator=noise_gen)
        idx_d = idx.to(device)
        x0, y = x_train_d[idx_d], y_train_d[idx_d]
        t_d = t.to(device=device, dtype=dtype)
        x_t = schedule.add_noise(x0, eps.to(device=device, dtype=dtype), t_d)
        x_t, t_d, y = x_t[local], t_d[local], y[local]  # this rank's share (all of it in one process)
        pred = forward(x_t, t_d)
        if diversity is None:
            loss = task_loss(config.loss, pred, y, config.huber_delta)
            return loss, {}
        with torch.no_grad():
            ref_pred = reference(x_t, t_d)  # type: ignore[misc]
        loss, parts = diversity(pred, y, ref_pred, step)
        return loss, {"train/task_loss": parts["task"], "train/diversity_penalty": parts["penalty"],
                      "train/lambda": parts["lambda"]}

    val = ValidationSet(
        x_val, y_val_db, scaling.destandardize, tuple(config.val_seeds),
        t_grid(config.val_t_buckets), tuple(data.control_names),
    )

    def validate() -> dict[str, float]:
        return validate_head(model, val, schedule, batch_size=config.val_batch_size, device=device,
                             reference=reference)

    out = Path(config.out_dir) if config.out_dir is not None else None
    start_step, best_score, best_step, best_metrics = 0, math.inf, -1, {}
    if config.resume_from is not None:
        info = load_training_state(config.resume_from, model, optimizer, generators={"noise": noise_gen})
        sampler.load_state_dict(info["loader"])
        start_step = info["step"]
        best_score, best_step = info["extra"]["best_score"], info["extra"]["best_step"]
        best_metrics = info["extra"].get("best_metrics", {})

    # Besides the schema fields, checkpoints record (under metadata["extra"]) what is needed to
    # evaluate the head the way it was validated: the data it was trained on, the validation
    # settings, and the learning rate actually used (config.lr=None resolves per recipe).
    meta = dict(noise_schedule=config.noise_schedule, loss=config.loss, recipe=config.recipe, targets=scaling,
                data=describe_data(data), validation=validation_description(config),
                effective_lr=float(DEFAULT_LR[config.recipe] if config.lr is None else config.lr))
    best_path = out / "best.safetensors" if out is not None else None
    state_path = out / "training_state.safetensors" if out is not None else None
    kept: dict[str, Any] = {"metrics": best_metrics}

    def on_improve(step: int, metrics: dict[str, float]) -> None:
        kept["metrics"] = metrics
        if best_path is not None and (writer or mode == "fsdp"):  # FSDP2: a collective, rank 0 writes
            export_checkpoint(model, optimizer, best_path, step=step, **meta,
                              train_config=config.to_dict(), metrics=metrics)

    def on_step_end(step: int, state: FitResult) -> None:
        if state_path is not None and config.state_every and step % config.state_every == 0:
            save_training_state(
                state_path, model, optimizer, step=step, loader_state=sampler.state_dict(),
                generators={"noise": noise_gen},
                extra={"best_score": state.best_score, "best_step": state.best_step,
                       "best_metrics": kept["metrics"]},
            )

    telemetry = TelemetryWriter(out / "telemetry.jsonl" if out is not None and writer else None,
                                tensorboard=config.tensorboard if out is not None and writer else False)
    try:
        res = fit(
            model, optimizer, loss_fn, steps=config.steps, start_step=start_step, validate=validate,
            val_every=config.val_every, best_score=best_score, best_step=best_step,
            on_improve=on_improve, on_step_end=on_step_end, telemetry=telemetry,
            log_every=config.log_every, grad_clip=config.grad_clip, max_seconds=config.max_seconds,
            progress=config.progress, desc=f"head[{config.recipe}]",
        )
    finally:
        telemetry.close()
    last_path = None
    if out is not None and (writer or mode == "fsdp"):
        last_path = export_checkpoint(model, optimizer, out / "last.safetensors", **meta,
                                      train_config=config.to_dict())
    if isinstance(optimizer, FusionOpt) and optimizer.sf:
        optimizer.eval()
    model.eval()
    return TrainResult(
        model, optimizer, res.best_score, res.best_step, kept["metrics"], res.history,
        telemetry.records, res.last_step, res.seconds, best_path if res.best_step >= 0 and out else None,
        last_path, telemetry.path, res.train_seconds,
    )

