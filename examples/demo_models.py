"""The demo's two small models and how they are trained, saved and reloaded.

* ``train_base_rectified_flow`` — the base DiT (:class:`fusion_infer.BaseDiT`) as rectified flow
  (Liu et al. 2023; SD3 §2): ``x_t = (1 − t)·x_0 + t·ε``, loss ``‖v̂(x_t, t) − (ε − x_0)‖²``.
* ``train_loudness_head`` — a LatCH-F control head (Novack et al. 2026, arXiv 2603.04366): inputs forward-noised
  with the base model's own RF schedule, target the *clean* latent's broadband loudness
  (:func:`fusion_infer.loudness_extractor`), standardised; MSE loss (the guidance loss too);
  random smooth gain curves augment the clean latents (see its docstring for why).

Both use FusionOpt's default recipe ``"sf-normuon"`` directly in a short loop written here:
it shows the optimizer's API in full (``fusion_train.train_head`` wraps the same steps for
control heads). Checkpoints store the Schedule-Free **averaged** weights (``opt.eval()``
before saving) in a safetensors file with JSON metadata, written atomically (temp file +
``os.replace``), under the user cache dir so a second ``make demo`` skips training.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from fusion_infer import BaseDiT, ControlHead, ControlHeadConfig, base_dit_config
from fusion_infer.files import atomic_write
from fusion_train import FusionOpt, build_param_groups

FORMAT = "fusion-demo-checkpoint/1"
BASE_CONFIG = base_dit_config(dim=64, depth=2, heads=4, freq_dim=64)
HEAD_CONFIG = ControlHeadConfig(in_channels=64, out_channels=1, dim=64, depth=2, heads=4, freq_dim=64)


@dataclass(frozen=True)
class TrainSettings:
    """Steps, batch, learning rate and seed of one short training run."""

    steps: int
    batch: int = 16
    lr: float = 2e-3
    seed: int = 0


def _optimizer(model: torch.nn.Module, lr: float, steps: int) -> FusionOpt:
    # min_dim=64: the demo's 64-wide matrices go to the Newton–Schulz/NorMuon group (the default
    # 128 would route every matrix of these tiny models to the scalar AdamW path).
    groups = build_param_groups(model, min_dim=64)
    return FusionOpt(groups, lr=lr, recipe="sf-normuon", hot_dtype="fp32", warmup_steps=max(1, steps // 10))


def _train(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Generator], Tensor],
    settings: TrainSettings,
    log: Callable[[str], None] | None,
    name: str,
) -> list[float]:
    from tqdm.auto import tqdm

    opt = _optimizer(model, settings.lr, settings.steps)
    gen = torch.Generator().manual_seed(settings.seed)
    model.train()
    opt.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    # A progress bar with ETA when someone is watching (log given); tests pass log=None.
    bar = tqdm(total=settings.steps, desc=f"training {name}", unit="step", disable=log is None, leave=True)
    try:
        for _ in range(settings.steps):
            loss = loss_fn(gen)
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    finally:
        bar.close()
    if log is not None:
        recent = sum(losses[-20:]) / len(losses[-20:])
        log(f"  {name}: {settings.steps} steps, final loss {recent:.4f} ({time.perf_counter() - t0:.0f} s)")
    opt.eval()  # parameters now hold the averaged iterate x: what we evaluate and save
    model.eval()
    return losses


def train_base_rectified_flow(
    latents: Tensor, settings: TrainSettings, log: Callable[[str], None] | None = print
) -> tuple[BaseDiT, list[float]]:
    """Train :data:`BASE_CONFIG` as rectified flow on standardised latents ``[N, 64, T]``."""
    torch.manual_seed(settings.seed)
    model = BaseDiT(BASE_CONFIG)

    def loss_fn(gen: torch.Generator) -> Tensor:
        idx = torch.randint(latents.shape[0], (settings.batch,), generator=gen)
        x0 = latents[idx]
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.rand(settings.batch, generator=gen).clamp_min(1e-3)
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps
        return (model(xt, t) - (eps - x0)).square().mean()

    return model, _train(model, loss_fn, settings, log, "base DiT")


def random_gain_curves(batch: int, frames: int, max_db: float, gen: torch.Generator, knots: int = 8) -> Tensor:
    """Smooth random gain curves ``[batch, frames]`` in dB: ``knots`` uniform values in
    ``[−max_db, max_db]`` linearly interpolated over the frames."""
    k = (torch.rand(batch, 1, knots, generator=gen) * 2 - 1) * max_db
    return torch.nn.functional.interpolate(k, size=frames, mode="linear", align_corners=True)[:, 0]


def train_loudness_head(
    latents: Tensor,
    loudness: Callable[[Tensor], Tensor],
    latent_std: Tensor,
    settings: TrainSettings,
    log: Callable[[str], None] | None = print,
    gain_db: float = 12.0,
) -> tuple[ControlHead, list[float]]:
    """Train :data:`HEAD_CONFIG` to predict ``loudness(x_0)`` (standardised, ``[B, 1, T]``) of the
    clean latent from its RF-noised version at ``t ~ U[0, 1]`` (LatCH-F).

    **Gain augmentation** (``gain_db``): each clean excerpt first gets a smooth random gain curve
    (±``gain_db`` dB, the same in every mel bin, i.e. ``+g/std`` in standardised units) and the
    target is re-measured on the result. Without it, a briefly trained head predicts loudness
    well but its input gradient is nearly orthogonal to the true one (measured cosine ≈ 0.05),
    so guidance moves the head's prediction, not the loudness; the augmentation shows the head
    the very direction guidance must move along.
    """
    torch.manual_seed(settings.seed + 1)
    head = ControlHead(HEAD_CONFIG)
    inv_std = (1.0 / latent_std.to(latents))[None, :, None]

    def loss_fn(gen: torch.Generator) -> Tensor:
        idx = torch.randint(latents.shape[0], (settings.batch,), generator=gen)
        x0 = latents[idx]
        if gain_db > 0:
            x0 = x0 + random_gain_curves(settings.batch, x0.shape[-1], gain_db, gen)[:, None, :] * inv_std
        with torch.no_grad():
            y = loudness(x0)
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.rand(settings.batch, generator=gen)
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * eps
        return (head(xt, t) - y).square().mean()

    return head, _train(head, loss_fn, settings, log, "loudness head")


def base_model_samples(
    base: BaseDiT, n: int, frames: int, steps: int = 20, seed: int = 99, batch: int = 16, progress: bool = False
) -> Tensor:
    """``n`` unguided Euler samples ``[n, C, frames]`` of the base model (LatCH-B-style inputs).

    A briefly trained base model's samples are off the data manifold, and a head trained on data
    latents alone mispredicts them (measured ≈ 9 dB loudness error on the demo's samples vs
    ≈ 2 dB on data). The extractor is exact on *any* latent, so the base model's own samples
    can be labelled and added to the head's training set (LatCH-B, arXiv 2603.04366).
    """
    from tqdm.auto import tqdm

    from fusion_infer import rf_sigmas, sample

    gen = torch.Generator().manual_seed(seed)
    out = []
    with tqdm(total=n, desc="sampling the base model for the head", unit="sample", disable=not progress) as bar:
        for start in range(0, n, batch):
            b = min(batch, n - start)
            noise = torch.randn(b, base.config.in_channels, frames, generator=gen)
            out.append(sample(base, noise, rf_sigmas(steps), cache=True, generator=gen).latents)
            bar.update(b)
    return torch.cat(out)


# ----------------------------------------------------------------------------- checkpoints
def settings_key(**parts: Any) -> str:
    """A short stable hash of what determines a checkpoint (config, data, settings)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(path: Path, model: ControlHead, metadata: dict[str, Any]) -> None:
    """Weights (safetensors) + JSON metadata, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "class": type(model).__name__,
        "config": json.dumps(model.config.to_dict()),
        "extra": json.dumps(metadata),
    }
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: Path) -> tuple[ControlHead, dict[str, Any]]:
    """Inverse of :func:`save_checkpoint`; raises ``ValueError`` on a foreign or corrupt file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    classes = {"BaseDiT": BaseDiT, "ControlHead": ControlHead}
    if meta.get("class") not in classes:
        raise ValueError(f"{path}: model class {meta.get('class')!r} not one of {sorted(classes)}")
    model = classes[meta["class"]](ControlHeadConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model, json.loads(meta.get("extra", "{}"))
