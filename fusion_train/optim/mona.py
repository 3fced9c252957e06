"""MONA: the gradient-difference acceleration term of "MONA: Muon Optimizer with Nesterov
Acceleration for Scalable Language Model Training" (Li, Tan, Xu, Zhang, Lu, Sun, Xie, Cai;
Meituan; arXiv:2605.26842, v1 2026-05-26).

The transform, applied to the raw gradient *before* momentum and orthogonalisation::

    D_k = G_k − G_{k−1}                         # gradient difference, ≈ H·Δθ (curvature proxy)
    A_k = β_a·A_{k−1} + (1−β_a)·D_k             # EMA of differences (the "acceleration" buffer)
    G̃_k = G_k + α·A_k                           # what momentum / Newton–Schulz then see

with ``α = +1/(2(1−β_a))`` by default (:func:`default_mona_alpha`; +20 at β_a = 0.975), chosen by
the audit below; the public reimplementations' ``−1/(2(1−β_a))`` is :func:`reimplementation_mona_alpha`.

Audit: sign and scale of α (decided by measurement)
----------------------------------------------------
Write ``c = α(1−β_a)``. Then ``G̃_k = (1+c)·G_k − c·[(1−β_a)·Σ β_a^j G_{k−1−j} + …]``: the newest
gradient gets weight ``1 + c`` and a discounted average of older gradients gets ``−c``. The
reimplementations' α = −1/(2(1−β_a)) is ``c = −½``, i.e. ``G̃ = ½·G + ½·EMA(past G)``: *extra
smoothing*, the opposite of acceleration. Gradient-difference forms of Nesterov's method (Adan,
Xie et al., arXiv 2208.06677, whose reformulated Nesterov momentum adds ``(1−β)(g_k − g_{k−1})``
to the gradient; the NAG reformulation it derives from) use a *positive* coefficient, ``c = +½`` here: extrapolation along the recent change of the gradient.
Algorithm 1 of the MONA paper was searched for again (stored arXiv HTML and markdown mirrors,
paper digests, code search for an official Meituan repository); only the abstract and the start
of the introduction are reachable, so the sign could not be read off the source.

Measured (both signs and α = 0, β_a = 0.975, recipe ``muon+mona``; reduced CPU runs on a heavily
loaded machine, seed 0 of the lr sweep; ``docs/benchmarks/quality_partial.md``):

* digits MLP (150 steps, val cross-entropy, lower is better; α = −20 / 0 / +20): lr 5e-3: 0.99 /
  0.64 / 0.42; lr 1e-2: 0.78 / 0.55 / 0.83; lr 2e-2: 12.1 / 2.85 / 2.33; each α at its best lr:
  0.78 / 0.55 / 0.20 (+20 at 2.5e-3 after widening the sweep at its low edge).
* digits CNN (150 steps): lr 5e-3: 1.06 / 0.50 / 0.31; lr 1e-2: 3.57 / 2.87 / 0.93; lr 2e-2:
  31.5 / 17.0 / 5.17.
* control head (dim 128, depth 1, 120 steps, val MAE dB): lr 2e-3: 5.447 / 5.468 / 5.483; lr 4e-3:
  5.058 / 5.057 / 5.057; lr 8e-3: 5.205 / 5.007 / 4.928; each α at its best lr: 5.058 / 5.007 / 4.928.

+20 was the best setting at 6 of the 9 (task, lr) points and, at each α's best lr, on all three
tasks; −20 was the worst at 6 of 9 and at each α's best lr on all three.

The full digits protocol (``benchmarks/digits_quality.py``: 1000 steps, lr sweep ×0.25…×4 widened
up to 3 times, 3 seeds at each α's best lr; ``docs/benchmarks/digits_quality.md``), val CE mean ±
std for α = −20 / 0 / +20:

* MLP: 0.195 ± 0.064 (lr 3.1e-4; a sweep continued below it confirmed it interior) / 0.460 ±
  0.056 / 0.345 ± 0.016;
* CNN: 0.134 ± 0.090 / 0.144 ± 0.091 / 0.131 ± 0.039 (−20 and 0 at 1.56e-4, from a sweep continued
  below the first run's low edge; α = 0 is plain Muon's code path).
* control head at the reference size (dim 256, depth 4, 1000 steps, ``benchmarks/head_quality.py
  --cpu``; val MAE dB): +20 3.141 ± 0.080, 0 (plain Muon) 3.166 ± 0.112; −20 not run at this size.

So the longer runs are mixed: the MLP clearly favours −20, the CNN is a tie within the seed
spread, and the head slightly favours +20 over α = 0. The default stays ``+1/(2(1−β_a))`` (the
extrapolating sign of the gradient-difference Nesterov forms, and best on all three tasks in the
reduced runs), but the evidence does not settle the sign; pass
``mona_alpha=reimplementation_mona_alpha(β)`` for the other sign. Both signs and any α > −1/(1−β_a) stay available.

Sources and what is uncertain
-----------------------------
Only the paper's abstract was readable to us ("an acceleration term ... calculated from the
exponential moving average of gradient differences", added "directly into Muon's gradient
processing pipeline"). We searched the stored page, doc and code corpora for Algorithm 1 of the
PDF (arxiv.org/html/2605.26842, the fast.hugflare.com markdown mirror, paper digests) and did
not find the method section, so the rule above is the reconstruction that independent public
reimplementations agree on, *not* a transcription of Algorithm 1:

* a paper digest ("the acceleration term A_k=β_aA_{k−1}+(1−β_a)(G_k−G_{k−1}) is applied to the
  raw gradient before orthogonalisation"), and ArxivLens' summary ("applying the acceleration
  before orthogonalization");
* ``MONAAcceleration`` in the *palingenesis* training library (β_a = 0.975, α = −1/(2(1−β_a)),
  "MONA-Lite: bf16 buffers"), which skips the difference on step 1;
* a research oracle's ``MONA(torch.optim.Optimizer)`` and a Rust port (``mona_alpha = 0`` ⇒
  "paper rule −1/(2(1−β_a))", β_a = 0.99).

Open points, exposed as options rather than settled:

* **Sign and scale of α.** Three reimplementations call ``−1/(2(1−β_a))`` "the paper's rule"
  (−20 at β_a = 0.975, −50 at 0.99); one unrelated implementation uses α = +0.1 and the earlier
  public FusionOpt used α = +0.2 on an un-normalised accumulator. With ``c = α(1−β_a) = −½`` the
  newest gradient enters G̃ with weight ``1 + c = ½``; the rest is a β_a-discounted combination of
  older gradients, i.e. that rule *smooths* rather than extrapolates. Settled here by measurement
  (the audit above): the default is the positive sign.
* **Placement relative to Nesterov momentum.** All sources put the term on the raw gradient
  before Muon's momentum buffer (``M ← μM + G̃``, then NS of the Nesterov combination). This
  module only produces G̃; the optimizer owns momentum.
* **β_a per scale.** One docstring says 0.975 for 68B and 0.99 for 1B, the same project's docs
  say "higher for larger models (0.99 for 68B)". Callers pass β explicitly;
  :data:`DEFAULT_MONA_BETA` = 0.975 is what we suggest for the optimizer's default.

Step 1 has no previous gradient. The earlier public FusionOpt initialised ``G_prev = 0`` which
makes ``A_1 = (1−β_a)·G_1`` and, with a large |α|, a first-step spike. Here step 1 leaves
``A`` untouched, returns ``G̃_1 = G_1`` and only records ``G_prev ← G_1``. ``G_prev`` always
stores the *raw* gradient (palingenesis stores the augmented one, because it overwrites the
gradient in place before copying; that makes D the difference of augmented gradients, which the
formula above does not say).

MONA-Lite ("bf16 buffers plus streaming computation", a 75% memory-overhead reduction per the
secondary summaries): buffers may be stored in bfloat16. The arithmetic always runs in float32:
``A`` and ``G_prev`` are upcast, the new ``A`` is computed and used for G̃ at full precision,
then rounded once into the buffer.

Example:
    >>> import torch
    >>> g1, g2 = torch.ones(2, 2), torch.full((2, 2), 3.0)
    >>> accel, prev = mona_init_buffers(g1)
    >>> mona_transform(g1, accel, prev, alpha=-20.0, beta=0.975, first_step=True).equal(g1)
    True
    >>> out = mona_transform(g2, accel, prev, alpha=-20.0, beta=0.975, first_step=False)
    >>> out[0, 0].item()  # 3 + (−20)·(0.025·(3 − 1)) = 2
    2.0
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "DEFAULT_MONA_BETA",
    "MonaConfig",
    "default_mona_alpha",
    "mona_gated_step",
    "mona_init_buffers",
    "mona_transform",
    "reimplementation_mona_alpha",
    "validate_mona_alpha",
    "validate_mona_beta",
]

#: β_a used by the reimplementations for the largest published scale (68B).
DEFAULT_MONA_BETA: float = 0.975

_BUFFER_DTYPES = (torch.float32, torch.bfloat16)


def validate_mona_beta(beta: object, *, name: str = "mona_beta") -> float:
    """Check the EMA decay β_a and return it as a float.

    β_a must be a real number in [0, 1): β_a = 1 would freeze the buffer at zero and make the
    default α infinite.

    Example:
        >>> validate_mona_beta(0.99)
        0.99
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1), got {type(beta).__name__}")
    value = float(beta)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {beta!r}")
    return value


def validate_mona_alpha(alpha: object, beta: float, *, name: str = "mona_alpha") -> float:
    """Check the acceleration coefficient α against β_a and return it as a float.

    α must be finite and satisfy ``α > −1/(1−β_a)``: the newest gradient enters G̃ with weight
    ``1 + α(1−β_a)``, and at or below that bound the transform ignores or *reverses* the current
    gradient. Both signs are allowed because the published sign is not settled (module
    docstring); α = 0 turns MONA into the identity.

    Example:
        >>> round(validate_mona_alpha(reimplementation_mona_alpha(0.975), 0.975), 9)
        -20.0
    """
    beta = validate_mona_beta(beta)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(alpha).__name__}")
    value = float(alpha)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {alpha!r}")
    bound = -1.0 / (1.0 - beta)
    if value <= bound:
        raise ValueError(
            f"{name} must be > -1/(1-mona_beta) = {bound:.6g} so that the current gradient keeps "
            f"a positive weight 1 + {name}*(1-mona_beta); got {alpha!r} with mona_beta={beta!r}"
        )
    return value


def default_mona_alpha(beta: float) -> float:
    """FusionOpt's default ``α = +1/(2(1−β_a))`` (+20 at 0.975, +50 at 0.99): the newest gradient
    gets weight 1.5, i.e. Nesterov-like extrapolation (see the audit in the module docstring).

    Example:
        >>> round(default_mona_alpha(0.99), 9)
        50.0
    """
    beta = validate_mona_beta(beta)
    return 1.0 / (2.0 * (1.0 - beta))


def reimplementation_mona_alpha(beta: float) -> float:
    """The public reimplementations' ``α = −1/(2(1−β_a))`` (−20 at 0.975): ``G̃ = ½G + ½·EMA(past G)``.

    Example:
        >>> round(reimplementation_mona_alpha(0.975), 9)
        -20.0
    """
    beta = validate_mona_beta(beta)
    return -1.0 / (2.0 * (1.0 - beta))


@dataclass(frozen=True)
class MonaConfig:
    """MONA hyperparameters, validated on construction.

    Args:
        beta: EMA decay β_a of the gradient differences, in [0, 1).
        alpha: acceleration coefficient; ``None`` means :func:`default_mona_alpha` (β).
            Must be finite and > −1/(1−β) (:func:`validate_mona_alpha`).
        lite: store the two buffers in bfloat16 (MONA-Lite).

    Example:
        >>> cfg = MonaConfig(beta=0.99)
        >>> round(cfg.resolved_alpha, 9), cfg.lite
        (50.0, False)
    """

    beta: float = DEFAULT_MONA_BETA
    alpha: float | None = None
    lite: bool = False

    def __post_init__(self) -> None:
        validate_mona_beta(self.beta)
        if self.alpha is not None:
            validate_mona_alpha(self.alpha, self.beta)
        if not isinstance(self.lite, bool):
            raise TypeError(f"mona_lite must be a bool, got {type(self.lite).__name__}")

    @property
    def resolved_alpha(self) -> float:
        """``alpha``, or :func:`default_mona_alpha` (+1/(2(1−β))) when it is None."""
        return default_mona_alpha(self.beta) if self.alpha is None else float(self.alpha)


def mona_init_buffers(
    like: torch.Tensor, *, lite: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero ``(accel, prev_grad)`` buffers shaped like ``like`` (a gradient or a parameter).

    ``lite=True`` stores them in bfloat16 (MONA-Lite), otherwise in float32, whatever the
    parameter's dtype: the EMA of small differences needs at least fp32 accumulation unless the
    caller opts into the lossy Lite storage.

    Example:
        >>> a, p = mona_init_buffers(torch.zeros(3, 4), lite=True)
        >>> a.dtype, p.shape
        (torch.bfloat16, torch.Size([3, 4]))
    """
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"like must be a torch.Tensor, got {type(like).__name__}")
    dtype = torch.bfloat16 if lite else torch.float32
    return (
        torch.zeros(like.shape, dtype=dtype, device=like.device),
        torch.zeros(like.shape, dtype=dtype, device=like.device),
    )


def mona_transform(
    grad: torch.Tensor,
    accel: torch.Tensor,
    prev_grad: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    first_step: bool,
) -> torch.Tensor:
    """Return ``G̃ = G + α·A`` and update ``accel`` (A) and ``prev_grad`` (G_prev) in place.

    Implements ``A ← β·A + (1−β)(G − G_prev)``, ``G̃ = G + α·A``, ``G_prev ← G``
    (arXiv:2605.26842 as reconstructed, see the module docstring). With ``first_step=True``
    there is no difference term: A is left as it is, ``G̃ = G`` and only ``G_prev ← G``.

    Works on any shape, including a stacked batch ``(n, a, b)`` of same-shape parameters.
    ``accel``/``prev_grad`` may be float32 or bfloat16 (MONA-Lite); arithmetic is float32 and
    G̃ comes back in ``grad``'s dtype. ``first_step`` is a Python bool decided by the caller
    from its step counter (not a tensor and not the step number itself) so that a compiled
    version specialises into exactly two graphs instead of guarding on an integer.
    ``alpha``/``beta`` are assumed validated once at construction
    (:func:`validate_mona_alpha`, :func:`validate_mona_beta`); this function does no checks
    that would cost time or break a compiled graph beyond shape/dtype agreement.

    Example:
        >>> g = torch.tensor([1.0, 2.0])
        >>> a, p = mona_init_buffers(g)
        >>> _ = mona_transform(g, a, p, alpha=-1.0, beta=0.5, first_step=True)
        >>> mona_transform(2 * g, a, p, alpha=-1.0, beta=0.5, first_step=False)
        tensor([1.5000, 3.0000])
    """
    if accel.shape != grad.shape or prev_grad.shape != grad.shape:
        raise ValueError(
            "accel and prev_grad must have grad's shape "
            f"{tuple(grad.shape)}, got {tuple(accel.shape)} and {tuple(prev_grad.shape)}"
        )
    if accel.dtype not in _BUFFER_DTYPES or prev_grad.dtype not in _BUFFER_DTYPES:
        raise TypeError(
            "accel and prev_grad must be float32 or bfloat16 (MONA-Lite), got "
            f"{accel.dtype} and {prev_grad.dtype}"
        )
    if first_step:
        prev_grad.copy_(grad)
        return grad.clone()
    g32 = grad.to(torch.float32)
    # A ← β·A + (1−β)(G − G_prev), in fp32 even when the buffers are bf16 (MONA-Lite).
    new_accel = torch.lerp(accel.to(torch.float32), g32 - prev_grad.to(torch.float32), 1.0 - beta)
    out = torch.add(g32, new_accel, alpha=alpha).to(grad.dtype)
    accel.copy_(new_accel)
    prev_grad.copy_(grad)
    return out


def mona_gated_step(
    grad: torch.Tensor,
    accel: torch.Tensor,
    prev_grad: torch.Tensor,
    seen: torch.Tensor,
    gate: torch.Tensor,
    *,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Out-of-place MONA for an optimizer that skips steps without a host synchronisation.

    The same rule as :func:`mona_transform`, with the first-step decision and the skip carried
    by 0/1 tensors instead of a Python bool: ``seen`` (0-d, 1 once a gradient has been recorded)
    and ``gate`` (0-d, 0 when the whole step is being skipped)::

        A' = lerp(A, G − G_prev, (1−β)·seen·gate)     # = A on a first or skipped step
        G̃  = G + α·A'                                 # = G on a first step (A is still zero)
        G_prev' = G where gate else G_prev ;  seen' = max(seen, gate)

    so a skipped *first* step does not make the next step's difference ``G − 0`` (the spike the
    earlier FusionOpt had). Returns ``(G̃ (fp32), A', G_prev', seen')`` with the buffers in their
    own dtypes (bf16 for MONA-Lite); the caller stores them. Pure, so it can be compiled.

    Example:
        >>> g = torch.tensor([1.0, 2.0]); one, zero = torch.ones(()), torch.zeros(())
        >>> a, p = mona_init_buffers(g)
        >>> out, a, p, seen = mona_gated_step(g, a, p, zero, one, alpha=-1.0, beta=0.5)
        >>> out, seen
        (tensor([1., 2.]), tensor(1.))
        >>> mona_gated_step(2 * g, a, p, seen, one, alpha=-1.0, beta=0.5)[0]
        tensor([1.5000, 3.0000])
    """
    g32 = grad.to(torch.float32)
    weight = (1.0 - beta) * seen.to(torch.float32) * gate.to(torch.float32)
    # Differences and G̃ of huge but finite gradients can overflow fp32 (|G| ≳ 1.7e38); clamping to
    # the finite range keeps A and everything downstream finite and changes no bit below that.
    big = torch.finfo(torch.float32).max
    diff = (g32 - prev_grad.to(torch.float32)).clamp_(-big, big)
    new_accel = torch.lerp(accel.to(torch.float32), diff, weight)
    out = torch.add(g32, new_accel, alpha=alpha).clamp_(-big, big)
    new_prev = torch.where(gate > 0, grad.to(prev_grad.dtype), prev_grad)
    new_seen = torch.maximum(seen, gate.to(seen.dtype))
    return out, new_accel.to(accel.dtype), new_prev, new_seen
