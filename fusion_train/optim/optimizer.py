"""FusionOpt: Newton–Schulz/NorMuon directions for hidden matrices, Schedule-Free averaging, an
optional Polyak step, MONA and KL-Shampoo — composed from the component modules of this package.

Per step, for parameter groups routed by :func:`fusion_train.build_param_groups`:

spectral group (2-D hidden matrices, conv kernels flattened to ``(out, in·kh·kw)``)::

    A ← β_a·A + (1−β_a)·(G − G_prev) ; G̃ = G + α·A    mona (mona.py; no difference term on a
                                                      parameter's first step), else G̃ = G
    M ← μ·M + (1−μ)·G̃                        EMA momentum (Nesterov: use lerp(G̃, M, μ))
    P = S_a^{-1/2} M S_b^{-1/2}               shampoo: KL-Shampoo (kl_shampoo.py), from the factors
                                              *before* this step, which are then updated with the
                                              raw G:  S_a ← β·S_a + (1−β)/b·G S_b⁻¹ Gᵀ,
                                                      S_b ← β·S_b + (1−β)/a·Gᵀ S_a⁻¹ G ;
                                              else P = M
    O = NS5(P)                                ns5: batched over all same-shape matrices, see newton_schulz.py
    U = NorMuon(O)  or  O·shape_scale         normuon: row-normalised, RMS 0.2 ("match_rms"), see normuon.py

With ``shampoo`` a spectral parameter's first step only seeds the KL factors (the authors'
algorithm): its momentum, NorMuon statistics and value stay as they are (MONA records G₁). The
scalar group steps from step 1 on. Without ``ns5`` (``allow_unbounded=True``) U = P.

scalar group (biases, norms, embeddings, input/output projections, small matrices)::

    v ← β₂·v + (1−β₂)·G² ;  U = G / (√(v/(1−β₂ᵗ)) + ε)      Schedule-Free AdamW (no first moment)
    (without "sf": AdamW with first moment β₁ and decoupled weight decay)

then, with ``sf``, the Schedule-Free update on the single stored sequence z (schedule_free.py)::

    z ← z − γ_t·U − η_t·λ·z ;  x ← (1−c)·x + c·z ;  y = (1−β)·z + β·x   (p holds y; x after eval())

with ``η_t`` the warm-up scheduled learning rate, ``γ_t = η_t·clamp(ratio_t, γ_min, γ_max)`` the
Polyak-scaled step (polyak.py; ``γ_t = η_t`` when ``polyak="off"``) and ``c = η_max,t²/Σ η_max²``.
Without ``sf`` the update is applied to p directly (``p ← p(1 − η_t·λ) − γ_t·U``), which for
``recipe="muon"`` is torch.optim.Muon's algorithm.

No host synchronisation happens inside ``step()`` (with ``nonfinite="skip"``): a non-finite gradient
or loss turns the whole step into a no-op through a 0/1 gate tensor and is counted in telemetry;
MONA buffers and KL factors are gated too. A skipped *first* step leaves the KL state at its
initial value (zero factors, identity bases), so that parameter's next step updates it from there
instead of seeding (an identity-seeded start); MONA still skips the difference term then.

``compile=True`` compiles the pure per-shape-batch functions (Newton–Schulz, the KL step, MONA)
with ``torch.compile(dynamic=False)`` and falls back to eager with a warning (compilation.py).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from fusion_train import FusionOpt, build_param_groups
    >>> model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256), nn.Linear(256, 4))
    >>> opt = FusionOpt(build_param_groups(model), lr=1e-3)
    >>> loss = model(torch.randn(8, 32)).square().mean()
    >>> loss.backward(); _ = opt.step(loss=loss); opt.zero_grad()
    >>> opt.eval()   # parameters now hold the averaged weights x (validate / export here)
    >>> opt.train()  # back to y before the next step
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .compilation import compile_pure
from .distributed import attach_distributed
from .kl_shampoo import (
    KLShampooConfig,
    KLShampooState,
    kl_shampoo_gated_seed,
    kl_shampoo_gated_step,
    kl_shampoo_init_state,
    kl_shampoo_refresh_due,
)
from .mona import (
    DEFAULT_MONA_BETA,
    default_mona_alpha,
    mona_gated_step,
    mona_init_buffers,
    validate_mona_alpha,
    validate_mona_beta,
)
from .newton_schulz import COEFFICIENTS, orthogonalize, resolve_hot_dtype, validate_softening
from .normuon import NORMUON_SCALES, normuon_rows
from .polyak import POLYAK_MODES, PolyakState
from .recipes import resolve_components
from .schedule_free import averaging_weight, sf_update_, x_from_y, x_to_y_, y_to_x_

__all__ = ["FusionOpt", "LR_SCALES", "lr_shape_scale"]

GROUP_TYPES = ("spectral", "scalar")
NONFINITE_MODES = ("skip", "raise")
LR_SCALES = ("match_rms", "original", "none")


def lr_shape_scale(rows: int, cols: int, mode: str) -> float:
    """Learning-rate factor for an orthogonalised ``rows × cols`` update.

    ``"match_rms"``: ``0.2·√max(rows, cols)`` (Moonlight, arXiv 2502.16982): an orthogonal matrix
    has RMS ``1/√max``, so this gives the update AdamW's typical RMS 0.2 and lets one learning rate
    serve both groups. ``"original"``: ``√max(1, rows/cols)`` (Keller Jordan; torch.optim.Muon's
    default). ``"none"``: 1.
    """
    if mode == "match_rms":
        return 0.2 * math.sqrt(max(rows, cols))
    if mode == "original":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "none":
        return 1.0
    raise ValueError(f"lr_scale must be one of {LR_SCALES}, got {mode!r}")


def _check_range(name: str, value: float, lo: float, hi: float, hi_open: bool = True) -> None:
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok or math.isnan(value):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")


def _local_device(p: torch.Tensor) -> torch.device:
    # a DTensor parameter's device is its mesh's; the scalars live there too
    return p.to_local().device if hasattr(p, "to_local") else p.device


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    # Low-precision parameters keep fp32 moments: bf16 EMAs lose most of a small update.
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


class FusionOpt(torch.optim.Optimizer):
    """The FusionOpt optimizer (see the module docstring for the update rules).

    Args:
        params: param groups from :func:`fusion_train.build_param_groups` (recommended), or plain
            parameters / groups without ``group_type``, which are split by shape alone
            (2-D with ``min(shape) >= 128`` → spectral).
        lr: base learning rate for both groups (``match_rms`` scaling makes one value work for both).
        recipe: ``"sf-normuon"`` (default: ns5 + normuon + sf), ``"muon"`` (ns5), ``"sf-adamw"``
            (sf only: everything takes the scalar path), ``"muon+mona"`` (ns5 + mona),
            ``"full"`` (ns5 + normuon + sf + mona + shampoo).
        components: an explicit component set instead of ``recipe``.
        betas: ``(β, β₂)``: with ``sf``, β is the Schedule-Free interpolation; without it, Adam's β₁.
        eps: Adam epsilon of the scalar path.
        weight_decay: decoupled weight decay (on z with ``sf``, on p without).
        momentum: spectral EMA momentum μ (default 0.8 with ``sf`` as in SF-NorMuon, 0.95 without).
        nesterov: Nesterov momentum on the spectral path (default False with ``sf``, True without).
        hot_dtype: dtype of the Newton–Schulz matmuls: ``"bf16"``, ``"fp16"``, ``"fp16_safe"``, ``"fp32"``.
        ns_steps, ns_coefficients: Newton–Schulz steps and coefficient set (``"jordan"``, ``"polar_express"``).
        softening: Soft-Muon blend s ∈ [0, 1] towards the Frobenius-normalised input.
        normuon_beta2, normuon_eps, normuon_scale: NorMuon row EMA, epsilon and rescaling
            (``"match_rms"`` paper default, ``"preserve_norm"`` official code).
        lr_scale: shape factor of the spectral learning rate when NorMuon's ``match_rms`` does not
            already fix the update's scale (see :func:`lr_shape_scale`).
        polyak: ``"off"`` (default), ``"relative"`` or ``"sfplus"`` (see polyak.py); needs the loss.
        polyak_beta: EMA factor of the Polyak statistics.
        gamma_clamp: ``(γ_min, γ_max)`` for the Polyak ratio.
        warmup_steps: linear learning-rate warm-up (Schedule-Free's averaging weights follow it).
        r, weight_lr_power: Schedule-Free averaging weights ``w_t = t^r·η_max^p``.
        nonfinite: ``"skip"`` a step whose gradients (or loss) are not finite, or ``"raise"``.
        allow_unbounded: permit ``shampoo`` without ``ns5``.
        mona_alpha, mona_beta: MONA's α and β_a (arXiv 2605.26842 as reconstructed by public
            reimplementations; see mona.py for what is uncertain). ``mona_alpha=None`` means
            ``−1/(2(1−β_a))`` (−20 at the default β_a = 0.975); α must be > −1/(1−β_a).
        mona_lite: keep MONA's two buffers in bf16 (MONA-Lite); the arithmetic stays fp32.
        shampoo_beta: EMA decay of the KL-Shampoo factors and eigenvalues, in [0, 1).
        precondition_frequency: refresh the KL eigenbases (one power iteration + QR, fp32) every
            this many steps after the seed.
        max_precond_dim: a matrix side longer than this uses the identity on that side (no
            factor, no state); see docs/benchmarks/component_profile.md for the cost trade-off.
        shampoo_eps: KL-Shampoo damping in ``1/(√(d_a·d_b) + eps)``.
        compile: compile the per-shape-batch functions with ``torch.compile`` (eager fallback).
        process_group: for replicated (DDP) parameters, the group over which Newton–Schulz work is
            split and the loss / non-finite flags are reduced. FSDP2 (DTensor) parameters are
            detected without it. See distributed.py and docs/distributed.md.

    Example (the full recipe; a spectral parameter's first step only seeds KL-Shampoo):
        >>> import torch
        >>> from torch import nn
        >>> from fusion_train import build_param_groups
        >>> model = nn.Sequential(nn.Linear(16, 128), nn.GELU(), nn.Linear(128, 128), nn.Linear(128, 4))
        >>> opt = FusionOpt(build_param_groups(model), lr=1e-3, recipe="full", hot_dtype="fp32")
        >>> w0 = model[2].weight.detach().clone()
        >>> model(torch.randn(8, 16)).square().mean().backward(); opt.step(); opt.zero_grad()
        >>> torch.equal(model[2].weight, w0), "kl_s_a" in opt.state[model[2].weight]
        (True, True)
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        recipe: str | None = "sf-normuon",
        components: Iterable[str] | None = None,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float | None = None,
        nesterov: bool | None = None,
        hot_dtype: str = "bf16",
        ns_steps: int = 5,
        ns_coefficients: str = "jordan",
        softening: float = 0.0,
        normuon_beta2: float = 0.95,
        normuon_eps: float = 1e-8,
        normuon_scale: str = "match_rms",
        lr_scale: str = "match_rms",
        polyak: str = "off",
        polyak_beta: float = 0.9,
        gamma_clamp: tuple[float, float] = (0.1, 10.0),
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        nonfinite: str = "skip",
        allow_unbounded: bool = False,
        mona_alpha: float | None = None,
        mona_beta: float = DEFAULT_MONA_BETA,
        mona_lite: bool = False,
        shampoo_beta: float = 0.95,
        precondition_frequency: int = 10,
        max_precond_dim: int = 2048,
        shampoo_eps: float = 1e-8,
        compile: bool = False,
        process_group: Any = None,
    ) -> None:
        comps = resolve_components(recipe, components, allow_unbounded=allow_unbounded)
        sf = "sf" in comps
        if momentum is None:
            momentum = 0.8 if sf else 0.95
        if nesterov is None:
            nesterov = not sf
        _check_range("lr", float(lr), 0.0, math.inf)
        _check_range("betas[0]", float(betas[0]), 0.0, 1.0)
        _check_range("betas[1]", float(betas[1]), 0.0, 1.0)
        if sf and betas[0] == 0.0:
            raise ValueError("betas[0] (Schedule-Free interpolation β) must be > 0 with 'sf'")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        _check_range("weight_decay", float(weight_decay), 0.0, math.inf)
        _check_range("momentum", float(momentum), 0.0, 1.0)
        resolve_hot_dtype(hot_dtype)
        if ns_coefficients not in COEFFICIENTS:
            raise ValueError(f"ns_coefficients must be one of {sorted(COEFFICIENTS)}, got {ns_coefficients!r}")
        if not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be a positive int, got {ns_steps!r}")
        softening = validate_softening(softening)
        _check_range("normuon_beta2", float(normuon_beta2), 0.0, 1.0)
        if normuon_scale not in NORMUON_SCALES:
            raise ValueError(f"normuon_scale must be one of {NORMUON_SCALES}, got {normuon_scale!r}")
        if lr_scale not in LR_SCALES:
            raise ValueError(f"lr_scale must be one of {LR_SCALES}, got {lr_scale!r}")
        if polyak not in POLYAK_MODES:
            raise ValueError(f"polyak must be one of {POLYAK_MODES}, got {polyak!r}")
        if polyak != "off" and not sf:
            raise ValueError("polyak needs the 'sf' component (its inner-product term uses z and x)")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        mona_beta = validate_mona_beta(mona_beta, name="mona_beta")
        mona_alpha = (
            default_mona_alpha(mona_beta) if mona_alpha is None
            else validate_mona_alpha(mona_alpha, mona_beta, name="mona_alpha")
        )
        if not isinstance(mona_lite, bool):
            raise TypeError(f"mona_lite must be a bool, got {type(mona_lite).__name__}")
        if isinstance(shampoo_beta, bool) or not isinstance(shampoo_beta, (int, float)):
            raise TypeError(f"shampoo_beta must be a real number in [0, 1), got {type(shampoo_beta).__name__}")
        _check_range("shampoo_beta", float(shampoo_beta), 0.0, 1.0)
        if not (isinstance(shampoo_eps, (int, float)) and math.isfinite(shampoo_eps) and shampoo_eps > 0):
            raise ValueError(f"shampoo_eps must be a finite number > 0, got {shampoo_eps!r}")
        for name, value in (("precondition_frequency", precondition_frequency), ("max_precond_dim", max_precond_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {type(compile).__name__}")

        self.components = comps
        self.hot_dtype, self.ns_steps, self.ns_coefficients = hot_dtype, ns_steps, ns_coefficients
        self.softening = softening
        self.normuon_scale, self.lr_scale = normuon_scale, lr_scale
        self.nonfinite = nonfinite
        self.mona_alpha, self.mona_beta, self.mona_lite = mona_alpha, mona_beta, mona_lite
        self._kl_base = KLShampooConfig(
            beta=float(shampoo_beta), precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim, eps=float(shampoo_eps),
        )
        self._kl_configs: dict[torch.dtype, KLShampooConfig] = {}
        # The per-shape-batch arithmetic is pure functions, so compiled versions can be swapped in
        # without touching the step. The KL seed (fp32 eigh, once per parameter) stays eager:
        # compiling it would cost more than it ever saves.
        self._orthogonalize: Callable[..., torch.Tensor] = orthogonalize
        self._mona_step: Callable[..., Any] = mona_gated_step
        self._kl_step: Callable[..., Any] = kl_shampoo_gated_step
        self._kl_seed: Callable[..., Any] = kl_shampoo_gated_seed
        if compile:
            self._orthogonalize = compile_pure(orthogonalize, "orthogonalize")
            if "mona" in comps:
                self._mona_step = compile_pure(mona_gated_step, "mona_gated_step")
            if "shampoo" in comps:
                self._kl_step = compile_pure(kl_shampoo_gated_step, "kl_shampoo_gated_step")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, momentum=momentum,
            nesterov=bool(nesterov), normuon_beta2=normuon_beta2, normuon_eps=normuon_eps,
            warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power, ns_split=1,
            k=0, lr_max=-1.0, weight_sum=0.0, scheduled_lr=0.0,
        )
        super().__init__(self._normalise_groups(params), defaults)
        device = next((_local_device(p) for g in self.param_groups for p in g["params"]), torch.device("cpu"))
        self._polyak = PolyakState(polyak, polyak_beta, gamma_clamp, device)
        self._nonfinite_steps = torch.zeros((), dtype=torch.float32, device=device)
        self._train_mode = True
        # --- distributed seam (1/5): FSDP2 / DDP set-up; None for a single process
        self._dist = attach_distributed(self, process_group)

    # ---------------------------------------------------------------- groups
    def _normalise_groups(self, params) -> list[dict[str, Any]]:
        params = list(params)
        if not params:
            raise ValueError("FusionOpt got an empty parameter list")
        groups = [{"params": params}] if isinstance(params[0], torch.Tensor) else params
        out = []
        for g in groups:
            g = dict(g)
            g["params"] = list(g["params"]) if not isinstance(g["params"], torch.Tensor) else [g["params"]]
            if "group_type" in g:
                out.append(g)
                continue
            # No routing information: fall back to the shape rule (build_param_groups is better).
            spectral = [p for p in g["params"] if p.ndim >= 2 and min(p.shape[0], p[0].numel()) >= 128]
            scalar = [p for p in g["params"] if all(p is not q for q in spectral)]
            rest = {k: v for k, v in g.items() if k != "params"}
            out += [{**rest, "params": ps, "group_type": t} for t, ps in (("spectral", spectral), ("scalar", scalar)) if ps]
        return out

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        gtype = param_group.get("group_type")
        if gtype not in GROUP_TYPES:
            raise ValueError(f"param group 'group_type' must be one of {GROUP_TYPES}, got {gtype!r}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if gtype == "spectral" and not self.components & {"ns5", "shampoo"}:
            group["group_type"] = gtype = "scalar"  # e.g. recipe="sf-adamw": everything is scalar
        if gtype == "spectral":
            k = group["ns_split"]
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"ns_split must be a positive int, got {k!r}")
            names = group.get("param_names") or [f"#{i}" for i in range(len(group["params"]))]
            for name, p in zip(names, group["params"]):
                if p.ndim < 2:
                    raise ValueError(
                        f"parameter {name} with shape {tuple(p.shape)} cannot be in a spectral group: "
                        "spectral parameters must be matrices (or conv kernels, flattened)"
                    )
                if p.shape[0] % k:
                    raise ValueError(f"ns_split={k} does not divide the {p.shape[0]} rows of {name}")

    # ---------------------------------------------------------------- modes
    @property
    def sf(self) -> bool:
        return "sf" in self.components

    @torch.no_grad()
    def eval(self) -> None:
        """Switch parameters to the averaged iterate x (call before validation, export, sampling)."""
        if self.sf and self._train_mode:
            for group, p, state in self._sf_params():
                y_to_x_(p, state["z"], group["betas"][0])
        self._train_mode = False

    @torch.no_grad()
    def train(self) -> None:
        """Switch parameters back to the gradient point y (call before the next forward/backward)."""
        if self.sf and not self._train_mode:
            for group, p, state in self._sf_params():
                x_to_y_(p, state["z"], group["betas"][0])
        self._train_mode = True

    @property
    def training(self) -> bool:
        return self._train_mode

    def _sf_params(self):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    yield group, p, state

    @torch.no_grad()
    def averaged(self, p: torch.Tensor) -> torch.Tensor:
        """The Schedule-Free averaged iterate x of parameter ``p`` (a new tensor), in either mode.

        Bit-identical to what ``p`` holds after :meth:`eval` (same arithmetic).
        """
        state = self.state.get(p)
        if not self.sf or not self._train_mode or not state or "z" not in state:
            return p.detach().clone()
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        return x_from_y(p.detach(), state["z"], group["betas"][0])

    # ---------------------------------------------------------------- step
    def _schedule(self, group: dict[str, Any]) -> tuple[float, float]:
        """Advance the group's clock; return (scheduled lr η_t, averaging coefficient c_{t+1})."""
        group["k"] += 1
        k, warm = group["k"], group["warmup_steps"]
        lr_t = group["lr"] * (min(1.0, k / warm) if warm > 0 else 1.0)
        group["scheduled_lr"] = lr_t
        group["lr_max"] = max(group["lr_max"], lr_t)
        w = averaging_weight(k, group["lr_max"], group["r"], group["weight_lr_power"])
        group["weight_sum"] += w
        c = w / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
        return lr_t, c

    def _check_finite(self, grads: list[torch.Tensor], loss, names) -> torch.Tensor:
        maxes = torch._foreach_norm(grads, float("inf"))
        finite = torch.isfinite(torch.stack([m.float() for m in maxes])).all()
        if loss is not None:
            finite = finite & torch.isfinite(torch.as_tensor(loss).detach().float()).all()
        if self.nonfinite == "raise" and not bool(finite):  # host sync only in "raise" mode
            bad = [n for n, m in zip(names, maxes) if not bool(torch.isfinite(m))]
            raise FloatingPointError(f"non-finite gradient(s) in {bad or ['loss']}")
        return finite

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: torch.Tensor | None = None):
        """One optimizer step. Pass the loss (``closure`` or ``loss=``) when ``polyak`` is on."""
        if self.sf and not self._train_mode:
            raise RuntimeError(
                "FusionOpt.step() called in eval mode: parameters hold the averaged weights x. "
                "Call optimizer.train() before the forward/backward of the next training step."
            )
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._polyak.mode != "off" and loss is None:
            raise ValueError(
                f"polyak={self._polyak.mode!r} needs the loss: call step(loss=loss) or step(closure)"
            )
        if self._dist is not None and self._dist.sharded:  # distributed seam (2/5): FSDP2 step
            return self._dist.step(self, loss)
        items = []
        for group in self.param_groups:
            names = group.get("param_names") or [f"group{len(items)}#{i}" for i in range(len(group["params"]))]
            for name, p in zip(names, group["params"]):
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"FusionOpt does not support sparse gradients ({name})")
                    items.append((group, p, name))
        if not items:
            return loss
        grads = [p.grad for _, p, _ in items]
        if self._dist is None:
            finite, global_loss = self._check_finite(grads, loss, [n for *_, n in items]), loss
        else:  # distributed seam (3/5): one all-reduce of the non-finite flag and the mean loss
            finite, global_loss, _ = self._dist.reduce_global_scalars(self, grads, loss, [n for *_, n in items])
        gate = finite.to(torch.float32)
        self._nonfinite_steps += 1.0 - gate
        zero = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
        grads = [torch.where(finite, g, zero.to(g.dtype)) for g in grads]

        sched = {id(g): self._schedule(g) for g in self.param_groups}
        if self.sf:
            for _, p, _ in items:
                if "z" not in self.state[p]:
                    self.state[p]["z"] = p.detach().clone()
        multiplier = self._polyak_multiplier(items, grads, global_loss, sched, gate)

        spectral = [(grp, p, g) for (grp, p, _), g in zip(items, grads) if grp["group_type"] == "spectral"]
        scalar = [(grp, p, g) for (grp, p, _), g in zip(items, grads) if grp["group_type"] == "scalar"]
        updates = self._spectral_directions(spectral, gate) + self._scalar_directions(scalar, gate, sched)
        for group, p, U in updates:
            lr_t, c = sched[id(group)]
            self._apply(group, p, U, lr_t, c, multiplier, gate)
        return loss

    def _polyak_multiplier(self, items, grads, loss, sched, gate) -> torch.Tensor | float:
        if loss is not None:
            loss_t = torch.as_tensor(loss).detach().float().reshape(())
        if self._polyak.mode == "off":
            if loss is not None:  # keep the loss EMA for telemetry; it costs nothing
                pl = self._polyak
                w = (1.0 - pl.beta_p) * gate
                pl.loss_ema.lerp_(torch.where(gate > 0, loss_t, pl.loss_ema), w)
                pl.loss_w.lerp_(torch.ones_like(pl.loss_w), w)
            return 1.0
        grad_l1 = torch.stack([n.float() for n in torch._foreach_norm(grads, 1)]).sum()
        # I_t = β⟨g, z − x⟩ = ⟨g, z − y⟩ over the Schedule-Free parameters (p holds y).
        inner = sum(
            (torch.vdot(g.flatten().float(), (self.state[p]["z"] - p).flatten().float()) for (_, p, _), g in zip(items, grads)),
            torch.zeros((), device=gate.device),
        )
        lr_ref = sched[id(self.param_groups[0])][0]
        return self._polyak.update(loss_t, grad_l1, inner, max(lr_ref, 1e-30), gate)

    def _kl_config(self, p: torch.Tensor) -> KLShampooConfig:
        # Factors in fp32 (fp64 for fp64 parameters): eigh/QR need it and bf16 factors lose the
        # small eigenvalues that the inverse roots amplify.
        dtype = _state_dtype(p)
        if dtype not in self._kl_configs:
            self._kl_configs[dtype] = dataclasses.replace(self._kl_base, factor_dtype=dtype)
        return self._kl_configs[dtype]

    @staticmethod
    def _kl_state(state: dict[str, Any]) -> KLShampooState:
        return KLShampooState(*(state.get("kl_" + f) for f in KLShampooState._fields))

    @staticmethod
    def _store_kl(state: dict[str, Any], kl: KLShampooState) -> None:
        for f, t in zip(KLShampooState._fields, kl):
            if t is not None:  # identity sides (longer than max_precond_dim) keep no state
                state["kl_" + f] = t

    def _spectral_directions(self, spectral, gate) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """MONA → momentum → KL-Shampoo → batched NS5 → NorMuon / shape scale, per spectral param.

        Parameters on their KL seed step are left out of the result (they do not move).
        """
        use_mona, use_kl = "mona" in self.components, "shampoo" in self.components
        use_ns = "ns5" in self.components
        buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor, bool]]] = {}
        prepared = []
        for group, p, g in spectral:
            state = self.state[p]
            rows, k = p.shape[0], group["ns_split"]
            # matrices as KL-Shampoo and Newton–Schulz see them: (rows, cols), or k row blocks
            kshape = (rows, p.numel() // rows) if k == 1 else (k, rows // k, p.numel() // rows)
            g_tilde = g
            if use_mona:
                if "mona_accel" not in state:
                    state["mona_accel"], state["mona_prev"] = mona_init_buffers(p, lite=self.mona_lite)
                    state["mona_seen"] = torch.zeros((), dtype=torch.float32, device=p.device)
                g_tilde, state["mona_accel"], state["mona_prev"], state["mona_seen"] = self._mona_step(
                    g, state["mona_accel"], state["mona_prev"], state["mona_seen"], gate,
                    alpha=self.mona_alpha, beta=self.mona_beta,
                )
            if use_kl and state.get("kl_seed_k", -1) < 0:  # -1: prepopulated, not seeded
                # First step seeds only (authors' code): momentum, NorMuon and p stay untouched.
                cfg = self._kl_config(p)
                init = kl_shampoo_init_state(kshape, cfg, device=p.device)
                self._store_kl(state, self._kl_seed(g.reshape(kshape), init, cfg, gate))
                state["kl_seed_k"] = group["k"]
                continue
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p, dtype=_state_dtype(p))
            m = state["momentum"]
            mu = group["momentum"]
            g_tilde = g_tilde.to(m.dtype)
            m.lerp_(g_tilde, (1.0 - mu) * gate.to(m.dtype))
            u = g_tilde.lerp(m, mu) if group["nesterov"] else m
            if use_kl:
                cfg = self._kl_config(p)
                refresh = kl_shampoo_refresh_due(group["k"] - state["kl_seed_k"], cfg)
                # factors from the raw gradient (authors' code); the direction from the momentum
                u, new = self._kl_step(g.reshape(kshape), u.reshape(kshape), self._kl_state(state), cfg, gate, refresh=refresh)
                self._store_kl(state, new)
            if not use_ns:  # shampoo alone (allow_unbounded=True): the KL direction is the update
                prepared.append((group, p, None, u.reshape(p.shape)))
                continue
            mat = u.reshape(k, rows // k, -1)  # conv kernels flatten to (out, in·kh·kw)
            a, b = mat.shape[-2:]
            tall = a > b
            buckets.setdefault((min(a, b), max(a, b)), []).append((len(prepared), mat.mT if tall else mat, tall))
            prepared.append((group, p, (a, b), None))
        ortho: list[torch.Tensor | None] = [None] * len(prepared)
        for items in buckets.values():
            X = torch.cat([x for _, x, _ in items])  # one batched NS per canonical shape
            O = self._orthogonalize(
                X, steps=self.ns_steps, coefficients=self.ns_coefficients,
                hot_dtype=self.hot_dtype, softening=self.softening,
            )
            for (i, _, tall), o in zip(items, O.split([x.shape[0] for _, x, _ in items])):
                ortho[i] = o.mT if tall else o
        out = []
        for (group, p, ab, direct), o in zip(prepared, ortho):
            if ab is None:
                out.append((group, p, direct))
                continue
            a, b = ab
            O = o.reshape(p.shape[0], -1)
            if "normuon" in self.components:
                state = self.state[p]
                if "row_var" not in state:
                    state["row_var"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                U = normuon_rows(
                    O, state["row_var"], beta2=group["normuon_beta2"], eps=group["normuon_eps"],
                    scale=self.normuon_scale, gate=gate,
                )
                if self.normuon_scale == "preserve_norm":
                    U = U * lr_shape_scale(a, b, self.lr_scale)
            else:
                U = O * lr_shape_scale(a, b, self.lr_scale)
            out.append((group, p, U.reshape(p.shape)))
        return out

    def _scalar_directions(self, scalar, gate, sched) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """Adam-normalised gradients (Schedule-Free AdamW has no first moment)."""
        out = []
        for group, p, g in scalar:
            state = self.state[p]
            dt = _state_dtype(p)
            if "exp_avg_sq" not in state:
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=dt)
                if not self.sf:
                    state["exp_avg"] = torch.zeros_like(p, dtype=dt)
            beta1, beta2 = group["betas"]
            k = group["k"]
            g = g.to(dt)
            v = state["exp_avg_sq"]
            v.lerp_(g.square(), (1.0 - beta2) * gate.to(dt))
            denom = (v / (1.0 - beta2**k)).sqrt_().add_(group["eps"])
            if self.sf:
                U = g / denom
            else:
                m = state["exp_avg"]
                m.lerp_(g, (1.0 - beta1) * gate.to(dt))
                U = m / denom / (1.0 - beta1**k)
            out.append((group, p, U))
        return out

    def _apply(self, group, p, U, lr_t: float, c: float, multiplier, gate) -> None:
        wd = group["weight_decay"]
        step_lr = multiplier * lr_t if isinstance(multiplier, torch.Tensor) else lr_t
        if self.sf:
            z = self.state[p]["z"]
            delta = U * step_lr
            if wd:
                delta = delta + z * (lr_t * wd)
            delta = (delta * gate).to(p.dtype)
            sf_update_(p, z, delta, (gate * c).to(p.dtype), group["betas"][0])
        else:
            if wd:
                p.mul_((1.0 - lr_t * wd * gate).to(p.dtype))
            p.sub_((U * (step_lr * gate)).to(p.dtype))

    # ---------------------------------------------------------------- telemetry / state
    def telemetry(self, as_tensors: bool = False) -> dict[str, Any]:
        """Scalars for logging: ``fusion/gamma_curr`` (the Polyak-scaled lr of the first group),
        ``fusion/gamma_ratio`` (the unclamped ratio), ``fusion/gamma_multiplier`` (clamped),
        ``fusion/loss_ema``, ``fusion/gnorm_ema`` (bias-corrected; gnorm is ‖g‖₁·√(π/2)),
        ``fusion/lr`` (scheduled), ``fusion/step``, ``fusion/nonfinite_steps``, ``fusion/train_mode``.

        Reading them synchronises with the device (call it when you log, not every step).
        """
        pl = self._polyak
        lr = self.param_groups[0]["scheduled_lr"]
        nan = torch.tensor(float("nan"))
        vals = {
            "fusion/gamma_curr": pl.multiplier * lr,
            "fusion/gamma_ratio": pl.ratio,
            "fusion/gamma_multiplier": pl.multiplier,
            "fusion/loss_ema": pl.loss_ema / pl.loss_w if float(pl.loss_w) > 0 else nan,
            "fusion/gnorm_ema": pl.gnorm_ema / pl.gnorm_w if float(pl.gnorm_w) > 0 else nan,
            "fusion/lr": lr,
            "fusion/step": self.param_groups[0]["k"],
            "fusion/nonfinite_steps": self._nonfinite_steps,
            "fusion/train_mode": self._train_mode,
        }
        if as_tensors:
            return vals
        return {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in vals.items()}

    def state_dict(self) -> dict[str, Any]:
        if self._dist is not None:  # distributed seam (4/5): owners' KL factors into the state
            self._dist.sync_state(self)
        sd = super().state_dict()
        sd["fusion"] = {
            "train_mode": self._train_mode,
            "polyak": self._polyak.state_dict(),
            "nonfinite_steps": self._nonfinite_steps.clone(),
            "components": sorted(self.components),
        }
        if self._dist is not None:
            self._dist.pack_extra(sd, sd["fusion"])
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("fusion", None)
        if extra is None and state_dict.get("param_groups"):  # distributed seam (5/5): DCP keeps
            extra = state_dict["param_groups"][0].get("fusion_extra")  # only groups and state
        if extra is None:
            raise ValueError("state_dict has no 'fusion' entry: it was not saved by FusionOpt")
        if sorted(self.components) != extra["components"]:
            raise ValueError(
                f"state_dict was saved with components {extra['components']}, "
                f"this optimizer has {sorted(self.components)}"
            )
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; FusionOpt keeps fp32 moments for
        # low-precision parameters, so put the saved tensors back with their own dtypes.
        old_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for old_id, p in zip(old_ids, params):
            saved = state_dict["state"].get(old_id)
            if saved is not None:
                self.state[p] = {
                    k: (v.to(device=p.device).clone() if isinstance(v, torch.Tensor) else v)
                    for k, v in saved.items()
                }
        self._train_mode = bool(extra["train_mode"])
        self._polyak.load_state_dict(extra["polyak"])
        self._nonfinite_steps = extra["nonfinite_steps"].to(self._nonfinite_steps.device).clone()
        for group in self.param_groups:
            group.pop("fusion_extra", None)
        if self._dist is not None:
            self._dist.after_load(self)
