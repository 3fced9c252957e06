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
or loss turns the whole step into a no-op through a 0/1 gate tensor (it adds no Schedule-Free
averaging weight either) and is counted in telemetry; MONA buffers and KL factors are gated too.
Finite but huge gradients cannot make a moment or EMA non-finite (g clipped to ±√max/2 on the
element-wise path, Newton–Schulz
normalised by its largest entry first, MONA differences and KL inputs clamped, Polyak statistics
clamped), and a direction that still overflows is dropped for that parameter. Bias correction
counts each parameter's own steps (``state["step"]``), like torch's AdamW. A skipped *first* step leaves the KL state at its
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
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .compilation import compile_pure
from .distributed import attach_distributed
from .hot_dtype import auto_hot_dtype
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
from .newton_schulz import (
    BACKENDS,
    orthogonalize,
    validate_coefficients,
    validate_hot_dtype,
    validate_softening,
)
from .normuon import NORMUON_SCALES, normuon_rows
from .param_groups import normalise_param_group
from .polyak import POLYAK_MODES, PolyakState
from .recipes import resolve_components
from .schedule_free import (
    averaging_weight,
    sf_update_precise_,
    sf_update_scaled_,
    x_from_y,
    x_to_y_,
    y_to_x_,
)

__all__ = ["FusionOpt", "LR_SCALES", "lr_shape_scale"]

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


def _low_precision(p: torch.Tensor) -> bool:
    return p.dtype in (torch.float16, torch.bfloat16)


def _clip_for_square(g: torch.Tensor) -> torch.Tensor:
    """``g`` clipped to ``±√max/2`` of its dtype (≈9.2e18 in fp32), so ``g²`` stays finite.

    A finite gradient with ``|g| ≳ 1.8e19`` squares to ``inf`` in fp32; an ``inf`` second moment
    freezes AdamW's parameter for good (its update becomes 0 forever) or, through ``inf − inf``,
    poisons it. Clipping the gradient itself (not only g²) keeps the first and second moments
    consistent, so the step stays ≈ lr·sign(g); below the threshold no bit changes.
    """
    lim = math.sqrt(torch.finfo(g.dtype).max) / 2
    return g.clamp(-lim, lim)


class FusionOpt(torch.optim.Optimizer):
    """The FusionOpt optimizer (see the module docstring for the update rules).

    Args:
        params: param groups from :func:`fusion_train.build_param_groups` (recommended), or what
            any torch optimizer takes: ``model.parameters()``, ``model.named_parameters()``, or
            group dicts (with tensors or ``(name, tensor)`` pairs). Groups without ``group_type``
            are routed by name and shape like ``build_param_groups`` (param_groups.py).
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
        hot_dtype: dtype of the Newton–Schulz matmuls: ``"auto"`` (default: bf16 on CUDA with bf16
            support and on CPUs where bf16 Newton–Schulz measures ≥ 1.25× faster, fp32 otherwise;
            hot_dtype.py), ``"bf16"``, ``"fp16"``, ``"fp16_safe"``, ``"fp32"``. The resolved value
            is ``hot_dtype_resolved`` and ``telemetry()["fusion/hot_dtype_bf16"]``.
        ns_steps, ns_coefficients: Newton–Schulz steps and coefficients: ``"jordan"``,
            ``"polar_express"`` (the paper's full list when ``ns_steps > 5``), a tuple ``(a, b, c)``
            like torch.optim.Muon's, or a sequence of per-step triples.
        ns_backend: ``"standard"`` or ``"gram"`` (Gram Newton–Schulz for matrices with aspect
            ratio ≥ 2.5; see newton_schulz.py).
        softening: Soft-Muon blend s ∈ [0, 1] towards the Frobenius-normalised input.
        normuon_beta2, normuon_eps, normuon_scale: NorMuon row EMA, epsilon and rescaling
            (``"match_rms"`` paper default, ``"preserve_norm"`` official code).
        lr_scale: shape factor of the spectral learning rate when NorMuon's ``match_rms`` does not
            already fix the update's scale (see :func:`lr_shape_scale`).
        polyak: ``"off"`` (default), ``"relative"`` or ``"sfplus"`` (see polyak.py); needs the loss.
            ``step()`` without a loss then uses γ = lr for that step (one warning).
        polyak_beta: EMA factor of the Polyak statistics.
        gamma_clamp: ``(γ_min, γ_max)`` for the Polyak ratio.
        warmup_steps: linear learning-rate warm-up (Schedule-Free's averaging weights follow it).
        r, weight_lr_power: Schedule-Free averaging weights ``w_t = t^r·η_max^p``.
        nonfinite: ``"skip"`` a step whose gradients (or loss) are not finite, or ``"raise"``.
        allow_unbounded: permit ``shampoo`` without ``ns5``.
        mona_alpha, mona_beta: MONA's α and β_a (see mona.py for the sources and the audit).
            ``mona_alpha=None`` means :data:`fusion_train.optim.mona.DEFAULT_MONA_ALPHA`.
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

    Per-group options (honoured when set in a param group; param_groups.py lists them):
    ``lr, betas, eps, weight_decay, momentum, nesterov, normuon_beta2, normuon_eps, warmup_steps,
    r, weight_lr_power, ns_split, hot_dtype, ns_steps, ns_coefficients, ns_backend, softening,
    lr_scale, normuon_scale, mona_alpha, mona_beta``. Optimizer-wide options in a group raise.

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
        params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        recipe: str | None = "sf-normuon",
        components: Iterable[str] | None = None,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float | None = None,
        nesterov: bool | None = None,
        hot_dtype: str = "auto",
        ns_steps: int = 5,
        ns_coefficients: Any = "jordan",
        ns_backend: str = "standard",
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
        if polyak not in POLYAK_MODES:
            raise ValueError(f"polyak must be one of {POLYAK_MODES}, got {polyak!r}")
        if polyak != "off" and not sf:
            raise ValueError("polyak needs the 'sf' component (its inner-product term uses z and x)")
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
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
        self.nonfinite = nonfinite
        self.mona_lite = mona_lite
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
            hot_dtype=hot_dtype, ns_steps=ns_steps, ns_coefficients=ns_coefficients,
            ns_backend=ns_backend, softening=softening, lr_scale=lr_scale, normuon_scale=normuon_scale,
            mona_alpha=mona_alpha, mona_beta=mona_beta,
        )
        self._validate_options(defaults, where="FusionOpt")
        self._warned: set[str] = set()
        params = list(params)
        if not params:
            raise ValueError("FusionOpt got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        super().__init__(params, defaults)
        device = next((_local_device(p) for g in self.param_groups for p in g["params"]), torch.device("cpu"))
        self._polyak = PolyakState(polyak, polyak_beta, gamma_clamp, device)
        self._nonfinite_steps = torch.zeros((), dtype=torch.float32, device=device)
        self._train_mode = True
        self._set_group_modes()
        # --- distributed seam (1/5): FSDP2 / DDP set-up; None for a single process
        self._dist = attach_distributed(self, process_group)

    # ---------------------------------------------------------------- options
    @property
    def hot_dtype(self) -> str:
        """The requested ``hot_dtype`` (optimizer default; groups may override it)."""
        return self.defaults["hot_dtype"]

    @property
    def ns_backend(self) -> str:
        return self.defaults["ns_backend"]

    @property
    def ns_steps(self) -> int:
        return self.defaults["ns_steps"]

    @property
    def hot_dtype_resolved(self) -> str:
        """``hot_dtype`` with ``"auto"`` resolved for the parameters' device (hot_dtype.py)."""
        return self._resolve_hot(self.hot_dtype, self._polyak.loss_ema.device)

    @staticmethod
    def _resolve_hot(name: str, device: torch.device) -> str:
        return auto_hot_dtype(device) if name == "auto" else name

    @staticmethod
    def _validate_options(g: dict[str, Any], where: str) -> None:
        """Check every per-group option in ``g`` (the defaults, or one param group)."""
        _check_range(f"{where}: lr", float(g["lr"]), 0.0, math.inf)
        betas = g["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{where}: betas must be a pair (β, β₂), got {betas!r}")
        _check_range(f"{where}: betas[0]", float(betas[0]), 0.0, 1.0)
        _check_range(f"{where}: betas[1]", float(betas[1]), 0.0, 1.0)
        if not g["eps"] > 0:
            raise ValueError(f"{where}: eps must be > 0, got {g['eps']!r}")
        _check_range(f"{where}: weight_decay", float(g["weight_decay"]), 0.0, math.inf)
        _check_range(f"{where}: momentum", float(g["momentum"]), 0.0, 1.0)
        validate_hot_dtype(g["hot_dtype"])
        validate_coefficients(g["ns_coefficients"])
        if g["ns_backend"] not in BACKENDS:
            raise ValueError(f"{where}: ns_backend must be one of {BACKENDS}, got {g['ns_backend']!r}")
        k = g["ns_steps"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{where}: ns_steps must be a positive int, got {k!r}")
        g["softening"] = validate_softening(g["softening"])
        _check_range(f"{where}: normuon_beta2", float(g["normuon_beta2"]), 0.0, 1.0)
        if g["normuon_scale"] not in NORMUON_SCALES:
            raise ValueError(f"{where}: normuon_scale must be one of {NORMUON_SCALES}, got {g['normuon_scale']!r}")
        if g["lr_scale"] not in LR_SCALES:
            raise ValueError(f"{where}: lr_scale must be one of {LR_SCALES}, got {g['lr_scale']!r}")
        w = g["warmup_steps"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"{where}: warmup_steps must be a non-negative int, got {w!r}")
        g["mona_beta"] = validate_mona_beta(g["mona_beta"], name="mona_beta")
        g["mona_alpha"] = (
            default_mona_alpha(g["mona_beta"]) if g["mona_alpha"] is None
            else validate_mona_alpha(g["mona_alpha"], g["mona_beta"], name="mona_alpha")
        )

    # ---------------------------------------------------------------- groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; without ``group_type`` its parameters are routed like ``__init__`` does
        (by name and shape), so progressive unfreezing needs no FusionOpt-specific code. Names are
        generated when the optimizer has names and the group has none."""
        for g in normalise_param_group(param_group, name_prefix=f"group{len(self.param_groups)}"):
            self._add_one_group(g)

    def _add_one_group(self, g: dict[str, Any]) -> None:
        sf = "sf" in self.components
        if sf and "betas" in g and g["betas"][0] == 0.0:
            raise ValueError("betas[0] (Schedule-Free interpolation β) must be > 0 with 'sf'")
        super().add_param_group(g)
        group = self.param_groups[-1]
        self._validate_options(group, where=f"param group {len(self.param_groups) - 1}")
        if sf and group["betas"][0] == 0.0:
            raise ValueError("betas[0] (Schedule-Free interpolation β) must be > 0 with 'sf'")
        group.setdefault("k", 0)
        group.setdefault("lr_max", -1.0)
        group.setdefault("scheduled_lr", 0.0)
        if "weight_sum" not in group or not isinstance(group["weight_sum"], torch.Tensor):
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            group["weight_sum"] = torch.zeros((), dtype=torch.float64, device=device)
        group.setdefault("train_mode", getattr(self, "_train_mode", True))
        gtype = group["group_type"]
        if gtype == "spectral" and not self.components & {"ns5", "shampoo"}:
            group["group_type"] = gtype = "scalar"  # e.g. recipe="sf-adamw": everything is scalar
        if gtype == "spectral":
            k = group["ns_split"]
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"ns_split must be a positive int, got {k!r}")
            for name, p in zip(group["param_names"], group["params"]):
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

    def _set_group_modes(self) -> None:
        # schedulefree's optimizers expose the mode per group; tools (and Accelerate) look there
        for group in self.param_groups:
            group["train_mode"] = self._train_mode

    @torch.no_grad()
    def eval(self) -> None:
        """Switch parameters to the averaged iterate x (call before validation, export, sampling)."""
        if self.sf and self._train_mode:
            for group, p, state in self._sf_params():
                if "x" in state:  # low-precision parameter: x is kept in fp32
                    p.copy_(state["x"])
                else:
                    y_to_x_(p, state["z"], group["betas"][0])
        self._train_mode = False
        self._set_group_modes()

    @torch.no_grad()
    def train(self) -> None:
        """Switch parameters back to the gradient point y (call before the next forward/backward)."""
        if self.sf and not self._train_mode:
            for group, p, state in self._sf_params():
                if "x" in state:
                    p.copy_(torch.lerp(state["z"], state["x"], group["betas"][0]))
                else:
                    x_to_y_(p, state["z"], group["betas"][0])
        self._train_mode = True
        self._set_group_modes()

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
        if "x" in state:
            return state["x"].to(p.dtype)
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        return x_from_y(p.detach(), state["z"], group["betas"][0])

    # ---------------------------------------------------------------- step
    def _schedule(self, group: dict[str, Any], gate: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Advance the group's clock; return (scheduled lr η_t, averaging coefficient c_{t+1}).

        A skipped step (``gate`` 0) adds no averaging weight, so it leaves x where it was.
        """
        group["k"] += 1
        k, warm = group["k"], group["warmup_steps"]
        lr_t = group["lr"] * (min(1.0, k / warm) if warm > 0 else 1.0)
        group["scheduled_lr"] = lr_t
        group["lr_max"] = max(group["lr_max"], lr_t)
        w = averaging_weight(k, group["lr_max"], group["r"], group["weight_lr_power"]) * gate.to(torch.float64)
        ws = group["weight_sum"]
        if ws.device != gate.device:
            ws = group["weight_sum"] = ws.to(gate.device)
        ws.add_(w)
        c = torch.where(ws > 0, w / ws.clamp_min(1e-300), torch.zeros_like(ws)).to(torch.float32)
        return lr_t, c

    def _check_finite(self, grads: list[torch.Tensor], loss, names) -> torch.Tensor:
        maxes = None
        if _free_host_read(grads[0]):
            # On a CPU the inf-norm kernel is ~10× slower than the 2-norm. A finite 2-norm proves
            # every entry finite; only when it is not (a real inf/NaN, or finite entries so large
            # that the sum of squares overflows) is the exact inf-norm check needed.
            norms = torch._foreach_norm(grads, 2)
            finite = torch.isfinite(torch.stack([m.float() for m in norms])).all()
            if not bool(finite):
                maxes = torch._foreach_norm(grads, float("inf"))
        else:
            maxes = torch._foreach_norm(grads, float("inf"))
        if maxes is not None:
            finite = torch.isfinite(torch.stack([m.float() for m in maxes])).all()
        if loss is not None:
            finite = finite & torch.isfinite(torch.as_tensor(loss).detach().float()).all()
        if self.nonfinite == "raise" and not bool(finite):  # host sync only in "raise" mode
            bad = [n for n, m in zip(names, maxes or []) if not bool(torch.isfinite(m))]
            raise FloatingPointError(f"non-finite gradient(s) in {bad or ['loss']}")
        return finite

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _collect(self) -> list[tuple[dict[str, Any], torch.Tensor, str]]:
        """(group, parameter, name) of every parameter with a gradient; zero-size ones skipped."""
        items = []
        for group in self.param_groups:
            for name, p in zip(group["param_names"], group["params"]):
                if p.grad is None or p.numel() == 0:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"FusionOpt does not support sparse gradients ({name})")
                items.append((group, p, name))
        return items

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: torch.Tensor | None = None):
        """One optimizer step. Pass the loss (``closure`` or ``loss=``) when ``polyak`` is on;
        without it that step uses γ = lr (warned once)."""
        if self.sf and not self._train_mode:
            raise RuntimeError(
                "FusionOpt.step() called in eval mode: parameters hold the averaged weights x. "
                "Call optimizer.train() before the forward/backward of the next training step."
            )
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        use_polyak = self._polyak.mode != "off"
        if use_polyak and loss is None:
            self._warn_once(
                "polyak-no-loss",
                f"FusionOpt(polyak={self._polyak.mode!r}): step() got no loss, so this step uses "
                "γ = lr (no Polyak scaling); pass step(loss=loss) or a closure to use it",
            )
            use_polyak = False
        items = self._collect()
        if self._dist is not None and self._dist.sharded:  # distributed seam (2/5): FSDP2 step
            return self._dist.step(self, items, loss, use_polyak)
        if not items:
            return loss
        grads = [p.grad for _, p, _ in items]
        if self._dist is None:
            finite, global_loss = self._check_finite(grads, loss, [n for *_, n in items]), loss
        else:  # distributed seam (3/5): one all-reduce of the non-finite flag and the mean loss
            finite, global_loss, _ = self._dist.reduce_global_scalars(self, grads, loss, [n for *_, n in items])
        gate = finite.to(torch.float32)
        self._nonfinite_steps += 1.0 - gate
        if not _known_finite(finite):
            # Zero the gradients of a skipped step without a host sync.
            zero = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
            grads = [torch.where(finite, g, zero.to(g.dtype)) for g in grads]

        sched = {id(g): self._schedule(g, gate) for g in self.param_groups}
        if self.sf:
            self._init_sf_state(items)
        for _, p, _ in items:  # per-parameter clock for bias correction (torch.optim convention)
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            st["step"] += gate

        spectral = [(grp, p, g) for (grp, p, _), g in zip(items, grads) if grp["group_type"] == "spectral"]
        scalar = [(grp, p, g) for (grp, p, _), g in zip(items, grads) if grp["group_type"] == "scalar"]
        updates = self._spectral_directions(spectral, gate) + self._scalar_directions(scalar, gate)
        multiplier = self._polyak_multiplier(items, grads, updates, global_loss, sched, gate, use_polyak)
        for group, p, U in updates:
            lr_t, c = sched[id(group)]
            self._apply(group, p, U, lr_t, c, multiplier, gate)
        return loss

    def _init_sf_state(self, items) -> None:
        for _, p, _ in items:
            st = self.state[p]
            if "z" not in st:
                if _low_precision(p):
                    # bf16/fp16 parameters: z and x in fp32; p only holds y rounded (see _apply)
                    st["z"] = p.detach().to(torch.float32)
                    st["x"] = st["z"].clone()
                else:
                    st["z"] = p.detach().clone()

    def _polyak_multiplier(self, items, grads, updates, loss, sched, gate, use_polyak) -> torch.Tensor | float:
        """The Polyak multiplier of every group's lr (1.0 when off or without a loss).

        The step-length normaliser is the linear decrease the step would give,
        ``D_t = Σ_groups η_g·⟨g, U_g⟩``, over each group's actual direction U (Adam-normalised or
        NorMuon/orthogonalised), so the multiplier means the same for every group and direction
        type (polyak.py).
        """
        if loss is not None:
            loss_t = torch.as_tensor(loss).detach().float().reshape(())
        if not use_polyak:
            if loss is not None:  # keep the loss EMA for telemetry; it costs nothing
                self._polyak.observe_loss(loss_t, gate)
            return 1.0
        grad_of = {id(p): g for (_, p, _), g in zip(items, grads)}
        dev = gate.device
        decrease = torch.zeros((), device=dev)
        for group, p, U in updates:
            g = grad_of[id(p)]
            decrease = decrease + sched[id(group)][0] * torch.vdot(g.flatten().float(), U.flatten().float())
        # I_t = β⟨g, z − x⟩ = ⟨g, z − y⟩ over the Schedule-Free parameters (p holds y).
        inner = sum(
            (torch.vdot(g.flatten().float(), (self.state[p]["z"] - p).flatten().float())
             for (_, p, _), g in zip(items, grads)),
            torch.zeros((), device=dev),
        )
        return self._polyak.update(loss_t, decrease, inner, gate)

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

    @staticmethod
    def _ns_key(group: dict[str, Any], device: torch.device) -> tuple:
        """The Newton–Schulz settings of a group (matrices are batched only within one key)."""
        coeffs = group["ns_coefficients"]
        return (
            FusionOpt._resolve_hot(group["hot_dtype"], device), group["ns_steps"],
            coeffs if isinstance(coeffs, str) else validate_coefficients(coeffs),
            group["ns_backend"], group["softening"],
        )

    def _spectral_directions(self, spectral, gate) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """MONA → momentum → KL-Shampoo → batched NS5 → NorMuon / shape scale, per spectral param.

        Parameters on their KL seed step are left out of the result (they do not move).
        """
        use_mona, use_kl = "mona" in self.components, "shampoo" in self.components
        use_ns = "ns5" in self.components
        buckets: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
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
                    alpha=group["mona_alpha"], beta=group["mona_beta"],
                )
            if use_kl and state.get("kl_seed_k", -1) < 0:  # -1: prepopulated, not seeded
                # First step seeds only (authors' code): momentum, NorMuon and p stay untouched.
                cfg = self._kl_config(p)
                init = kl_shampoo_init_state(kshape, cfg, device=p.device)
                self._store_kl(state, self._kl_seed(_kl_safe(g).reshape(kshape), init, cfg, gate))
                state["kl_seed_k"] = group["k"]
                continue
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p, dtype=_state_dtype(p))
            u = momentum_direction_(group, state["momentum"], g_tilde, gate)
            if use_kl:
                cfg = self._kl_config(p)
                refresh = kl_shampoo_refresh_due(group["k"] - state["kl_seed_k"], cfg)
                # factors from the raw gradient (authors' code); the direction from the momentum
                u, new = self._kl_step(_kl_safe(g).reshape(kshape), u.reshape(kshape), self._kl_state(state), cfg, gate, refresh=refresh)
                self._store_kl(state, new)
            if not use_ns:  # shampoo alone (allow_unbounded=True): the KL direction is the update
                prepared.append((group, p, None, u.reshape(p.shape)))
                continue
            mat = u.reshape(k, rows // k, -1)  # conv kernels flatten to (out, in·kh·kw)
            a, b = mat.shape[-2:]
            # batched per shape as stored: tall and wide stay apart (no transposed copies)
            buckets.setdefault((a, b, *self._ns_key(group, p.device)), []).append((len(prepared), mat))
            prepared.append((group, p, (a, b), None))
        ortho = self._orthogonalize_buckets(buckets, len(prepared))
        out = []
        for (group, p, ab, direct), o in zip(prepared, ortho):
            if ab is None:
                out.append((group, p, direct))
                continue
            row_var = None
            if "normuon" in self.components:
                state = self.state[p]
                if "row_var" not in state:
                    state["row_var"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                row_var = state["row_var"]
            U = self._finish_spectral(group, o.reshape(p.shape[0], -1), ab, row_var, gate)
            out.append((group, p, U.reshape(p.shape)))
        return out

    def _orthogonalize_buckets(self, buckets: dict[tuple, list], n: int) -> list[torch.Tensor | None]:
        """One batched Newton–Schulz per bucket (key: canonical shape + :meth:`_ns_key`); entries
        ``(slot, matrix)``. Returns the orthogonalised matrix of each slot (None: no entry)."""
        ortho: list[torch.Tensor | None] = [None] * n
        for key, items in buckets.items():
            hot, steps, coeffs, backend, soft = key[2:]
            X = torch.cat([x for _, x in items])  # one batched NS per shape
            O = self._orthogonalize(
                X, steps=steps, coefficients=coeffs, hot_dtype=hot, softening=soft, backend=backend,
            )
            for (i, _), o in zip(items, O.split([x.shape[0] for _, x in items])):
                ortho[i] = o
        return ortho

    def _finish_spectral(self, group, O: torch.Tensor, ab: tuple[int, int], row_var, gate) -> torch.Tensor:
        """NorMuon (``row_var`` updated in place, gated) or the shape scale on the whole
        orthogonalised ``(rows, cols)`` matrix ``O`` whose Newton–Schulz blocks are ``a × b``."""
        a, b = ab
        if "normuon" in self.components:
            U = normuon_rows(
                O, row_var, beta2=group["normuon_beta2"], eps=group["normuon_eps"],
                scale=group["normuon_scale"], gate=gate,
            )
            if group["normuon_scale"] == "preserve_norm":
                U = U * lr_shape_scale(a, b, group["lr_scale"])
            return U
        return O * lr_shape_scale(a, b, group["lr_scale"])

    def _scalar_directions(self, scalar, gate) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """Adam-normalised gradients (Schedule-Free AdamW has no first moment).

        Bias correction uses the parameter's own step count ``state["step"]`` (as torch's AdamW
        does), so a parameter that first gets a gradient late does not take an oversized step.
        """
        out = []
        for group, p, g in scalar:
            state = self.state[p]
            dt = _state_dtype(p)
            if "exp_avg_sq" not in state:
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=dt)
                if not self.sf:
                    state["exp_avg"] = torch.zeros_like(p, dtype=dt)
            out.append((group, p, scalar_direction_(group, state, g, gate, self.sf)))
        return out

    def _apply(self, group, p, U, lr_t: float, c: torch.Tensor, multiplier, gate) -> None:
        state = self.state[p]
        apply_update_(group, p, state.get("z"), state.get("x"), U, lr_t, c, multiplier, gate, self.sf)

    # ---------------------------------------------------------------- telemetry / state
    def telemetry(self, as_tensors: bool = False) -> dict[str, Any]:
        """Scalars for logging: ``fusion/gamma_curr`` (the Polyak-scaled lr of the first group),
        ``fusion/gamma_curr/<i>`` (every group's), ``fusion/gamma_ratio`` (the unclamped ratio),
        ``fusion/gamma_multiplier`` (clamped), ``fusion/loss_ema``, ``fusion/gnorm_ema``
        (bias-corrected EMA of the Polyak normaliser Σ η_g⟨g, U_g⟩), ``fusion/lr`` (scheduled),
        ``fusion/step``, ``fusion/nonfinite_steps``, ``fusion/train_mode`` and
        ``fusion/hot_dtype_bf16`` (1.0 when Newton–Schulz runs in bf16: what ``hot_dtype="auto"``
        resolved to; the name is ``optimizer.hot_dtype_resolved``).

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
        for i, g in enumerate(self.param_groups):
            vals[f"fusion/gamma_curr/{i}"] = pl.multiplier * g["scheduled_lr"]
        # numeric like every other entry (loggers call float() on them): 1.0 when Newton–Schulz
        # runs in bf16, the one choice hot_dtype="auto" makes besides fp32
        vals["fusion/hot_dtype_bf16"] = float(self.hot_dtype_resolved == "bf16")
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
        for g, saved_g in zip(self.param_groups, state_dict["param_groups"]):
            ws = saved_g.get("weight_sum")
            if isinstance(ws, torch.Tensor):  # torch's loader keeps it, but on the saved device
                g["weight_sum"] = ws.to(device=g["params"][0].device if g["params"] else "cpu",
                                        dtype=torch.float64).clone()
            elif ws is not None:  # state saved before the weight sum became a tensor
                g["weight_sum"] = torch.tensor(float(ws), dtype=torch.float64)
        self._train_mode = bool(extra["train_mode"])
        self._set_group_modes()
        self._polyak.load_state_dict(extra["polyak"])
        self._nonfinite_steps = extra["nonfinite_steps"].to(self._nonfinite_steps.device).clone()
        for group in self.param_groups:
            group.pop("fusion_extra", None)
        if self._dist is not None:
            self._dist.after_load(self)


# ---------------------------------------------------------------- per-parameter arithmetic
# Pure per-parameter steps on whatever tensors they are given: whole parameters here, local
# FSDP2 shards in distributed.py (which calls these same functions, so both stay bit-identical).
def momentum_direction_(group: dict[str, Any], m: torch.Tensor, g_tilde: torch.Tensor, gate) -> torch.Tensor:
    """``M ← lerp(M, G̃, (1−μ)·gate)`` in place; the direction (``lerp(G̃, M, μ)`` with Nesterov)."""
    mu = group["momentum"]
    g_tilde = g_tilde.to(m.dtype)
    m.lerp_(g_tilde, (1.0 - mu) * gate.to(m.dtype))
    return g_tilde.lerp(m, mu) if group["nesterov"] else m


def scalar_direction_(group: dict[str, Any], state: dict[str, Any], g: torch.Tensor, gate, sf: bool) -> torch.Tensor:
    """Schedule-Free AdamW's (``sf``) or AdamW's direction; ``state["exp_avg_sq"]`` (and
    ``"exp_avg"``) updated in place, bias-corrected with the parameter's own ``state["step"]``
    (already advanced for this step, as torch's AdamW does)."""
    v = state["exp_avg_sq"]
    dt = v.dtype
    beta1, beta2 = group["betas"]
    k = state["step"].clamp_min(1.0).double()  # a skipped first step leaves it 0
    g = _clip_for_square(g.to(dt))
    v.lerp_(g.square(), (1.0 - beta2) * gate.to(dt))
    bc2 = (1.0 - beta2**k).to(dt)
    denom = (v / bc2).sqrt_().add_(group["eps"])
    if sf:
        return g / denom
    m = state["exp_avg"]
    m.lerp_(g, (1.0 - beta1) * gate.to(dt))
    return m / denom / (1.0 - beta1**k).to(dt)


def apply_update_(group, p, z, x, U, lr_t: float, c, multiplier, gate, sf: bool) -> None:
    """Apply direction ``U`` to ``p`` (and Schedule-Free's ``z``, fp32 ``x`` for low-precision
    parameters, else None) in place, scaled by ``multiplier·lr_t``, gated."""
    wd = group["weight_decay"]
    step_lr = multiplier * lr_t if isinstance(multiplier, torch.Tensor) else lr_t
    # a direction that overflowed (absurd but finite gradients) is dropped for this parameter
    gate = gate * _all_finite(U)
    if sf:
        if x is not None:
            delta = U * step_lr
            if wd:
                delta = delta + z * (lr_t * wd)
            sf_update_precise_(p, z, x, (delta * gate).to(z.dtype), gate * c, group["betas"][0])
        else:
            g = gate.to(p.dtype)
            sf_update_scaled_(p, z, U.to(p.dtype), g * step_lr, (g * c).to(p.dtype), group["betas"][0],
                              decay=g * (lr_t * wd) if wd else None)
    else:
        if wd:
            p.mul_((1.0 - lr_t * wd * gate).to(p.dtype))
        p.addcmul_(U, step_lr * gate, value=-1.0)  # computed in U's dtype, rounded once into p


def _free_host_read(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s value on the host costs nothing: on a CPU every op has already run,
    so ``step()`` may branch on a flag (and skip passes over every gradient). On an accelerator
    it never reads: ``step()`` stays free of host synchronisation there."""
    return t.device.type == "cpu"


def _known_finite(finite: torch.Tensor) -> bool:
    """True when the step's finite flag is set and could be read for free (see above)."""
    return _free_host_read(finite) and bool(finite)


def _all_finite(U: torch.Tensor) -> torch.Tensor:
    """0-d bool: every entry of the direction ``U`` is finite.

    One read (no boolean temporary): a sum is non-finite iff an entry is, as long as the finite
    entries cannot add up past the dtype's max. Directions are bounded by construction (an
    orthogonalised or Adam-normalised update, RMS ≈ 0.2), so only a direction that already holds
    absurd values could overflow the sum, and dropping that one is what this check is for.
    """
    return torch.isfinite(U.sum())


#: Largest |gradient| fed to the KL-Shampoo factor update: its factors hold products of two
#: gradients scaled by up to ``max_clamp_value² · dim`` and must stay finite in fp32.
KL_GRAD_LIMIT = 1e12


def _kl_safe(g: torch.Tensor) -> torch.Tensor:
    return g.clamp(-KL_GRAD_LIMIT, KL_GRAD_LIMIT)
