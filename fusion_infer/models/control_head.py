"""LatCH-style control head: a small adaLN-zero transformer ``(z [B, C_in, T], t) -> [B, C_out, T]``.

Architecture (LatCH, Novack et al. 2026, arXiv 2603.04366, for the role and shape of the
head; the block is DiT's adaLN-zero block, Peebles & Xie 2023 §3.2):

* ``latent_proj``: ``Linear(C_in, dim)`` per latent frame;
* ``t_embedder``: sinusoidal features of ``t`` → ``Linear → SiLU → Linear`` (DiT);
  optional ``cond_proj``: ``Linear(cond_dim, dim)`` added to it (pooled-text style conditioning,
  so the cache must key on it too);
* ``depth`` × :class:`AdaLNZeroBlock`: pre-LN bidirectional attention with 1-D rotary positions
  (RoFormer) through ``scaled_dot_product_attention`` and a GELU MLP, both gated;
  ``adaLN_mod = SiLU → Linear(dim, 6·dim)`` zero-initialised, so every block starts as identity;
* :class:`FinalLayer`: adaptive LayerNorm (``shift, scale`` from ``SiLU → Linear(dim, 2·dim)``,
  zero-initialised) and ``Linear(dim, C_out)``.

**The ``mods=None`` protocol (docs/design.md §3).** ``forward(x, t, mods=None)``: with ``mods`` given
(a :class:`~fusion_infer.models.modulators.Modulators`) the blocks use them and ``t`` is not needed;
otherwise the model obtains them from an attached
:class:`~fusion_infer.cache.time_conditioning.TimeConditioningCache` or computes them with
:meth:`ControlHead.modulator_table` — the same batched computation the cache runs on a miss, so
cached and uncached outputs are bit-identical. That lookup/computation runs outside compiled
regions (``torch.compiler.disable``) and hands tensors in, so a compiled head neither recompiles
per timestep nor fuses the modulator path differently with and without the cache.

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead, ControlHeadConfig
    >>> head = ControlHead(ControlHeadConfig(in_channels=8, out_channels=2, dim=32, depth=2,
    ...                                      heads=4, freq_dim=32))
    >>> y = head(torch.randn(3, 8, 16), torch.tensor([0.1, 0.5, 1.0]))
    >>> y.shape
    torch.Size([3, 2, 16])
    >>> mods = head.compute_modulators(torch.tensor([0.1, 0.5, 1.0]))
    >>> torch.equal(head(torch.zeros(3, 8, 16), mods=mods), head(torch.zeros(3, 8, 16), [0.1, 0.5, 1.0]))
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cost import head_cost
from .head_config import ControlHeadConfig
from .modulators import Modulators, chunked_modulator_table, split_modulator_table
from .rotary import apply_rotary, rotary_tables
from .timestep_embedding import TimestepEmbedder, canonical_time_dtype, validate_timesteps

__all__ = ["ControlHeadConfig", "AdaLNZeroBlock", "FinalLayer", "ControlHead", "modulate"]


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``h · (1 + scale) + shift`` with ``[B, D]`` modulators over ``[B, T, D]``."""
    return h * (1 + scale[:, None, :]) + shift[:, None, :]


class AdaLNZeroBlock(nn.Module):
    """Pre-LN transformer block with adaLN-zero conditioning (DiT §3.2).

    ``x ← x + gate_msa · Attn(modulate(LN(x), shift_msa, scale_msa))``;
    ``x ← x + gate_mlp · MLP(modulate(LN(x), shift_mlp, scale_mlp))``, with the six modulators
    ``adaLN_mod(c) = Linear(SiLU(c))`` (zero-initialised) or given as ``mods``. ``head_dim``
    (default ``dim // heads``) lets the attention width ``heads · head_dim`` differ from ``dim``
    (width-shrunk blocks); the modulators always act on the residual width ``dim``.
    """

    def __init__(
        self, dim: int, heads: int, mlp_hidden: int, eps: float = 1e-6, head_dim: int | None = None
    ) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.head_dim = dim // heads if head_dim is None else head_dim
        inner = heads * self.head_dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, dim)
        )
        self.adaLN_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_mod[1].weight)
        nn.init.zeros_(self.adaLN_mod[1].bias)

    def attention(self, h: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """Bidirectional multi-head self-attention with rotary q/k through SDPA."""
        b, t, _ = h.shape
        qkv = self.qkv(h).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))

    def forward(
        self,
        x: Tensor,
        c: Tensor | None = None,
        mods: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``x [B, T, dim]``; ``c [B, dim]`` conditioning or ``mods [B, 6, dim]`` precomputed."""
        if mods is None:
            if c is None:
                raise ValueError("AdaLNZeroBlock.forward needs either c (conditioning) or mods")
            mods = self.adaLN_mod(c).view(c.shape[0], 6, self.dim)
        if rope is None:
            rope = rotary_tables(x.shape[1], self.head_dim, device=x.device, dtype=x.dtype)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(1)
        x = x + gate_msa[:, None, :] * self.attention(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp[:, None, :] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """Adaptive LayerNorm (``shift, scale`` from ``SiLU → Linear``, zero-init) then ``Linear``."""

    def __init__(self, dim: int, out_channels: int, eps: float = 1e-6, zero_init_output: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.adaLN_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.adaLN_mod[1].weight)
        nn.init.zeros_(self.adaLN_mod[1].bias)
        if zero_init_output:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, c: Tensor | None = None, mods: Tensor | None = None) -> Tensor:
        """``x [B, T, dim]`` → ``[B, T, out]``; ``mods [B, 2, dim]`` = ``shift, scale``."""
        if mods is None:
            if c is None:
                raise ValueError("FinalLayer.forward needs either c (conditioning) or mods")
            mods = self.adaLN_mod(c).view(c.shape[0], 2, self.dim)
        shift, scale = mods.unbind(1)
        return self.linear(modulate(self.norm(x), shift, scale))


class ControlHead(nn.Module):
    """Time-conditioned adaLN-zero control head ``(x [B, C_in, T], t) → [B, C_out, T]``.

    Args:
        config: a :class:`ControlHeadConfig` (defaults when None).
        **overrides: field overrides applied on top of ``config``.

    Example:
        >>> head = ControlHead(dim=64, depth=2, heads=4, freq_dim=64)
        >>> head.config.dim, head(torch.randn(1, 64, 8), 0.3).shape
        (64, torch.Size([1, 1, 8]))
    """

    def __init__(self, config: ControlHeadConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = ControlHeadConfig(**overrides)
        elif not isinstance(config, ControlHeadConfig):
            raise TypeError(f"config must be a ControlHeadConfig or None, got {type(config).__name__}")
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        c = config
        self.latent_proj = nn.Linear(c.in_channels, c.dim)
        self.t_embedder = TimestepEmbedder(c.dim, c.freq_dim, c.time_scale)
        self.cond_proj = nn.Linear(c.cond_dim, c.dim) if c.cond_dim else None
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(c.dim, c.heads, c.mlp_hidden, c.eps, c.head_dim) for _ in range(c.depth)
        )
        self.final = FinalLayer(c.dim, c.out_channels, c.eps, c.zero_init_output)
        # Set by TimeConditioningCache.attach(); read only inside the compiler-disabled lookup.
        self._modulator_provider: Any = None

    # ------------------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (that of ``latent_proj.weight``)."""
        return self.latent_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        """Parameter device."""
        return self.latent_proj.weight.device

    @property
    def modulator_provider(self) -> Any:
        """The attached cache (or None)."""
        return self._modulator_provider

    def cost(self, seq_len: int = 256, batch: int = 1) -> Any:
        """Parameters and FLOPs per forward (:func:`fusion_infer.models.cost.head_cost`).

        Example:
            >>> ControlHead().cost(seq_len=256).params
            5014017
        """
        return head_cost(self.config, seq_len=seq_len, batch=batch)

    def _modulator_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """``(called, read)``: modulator modules the head *calls* (timestep MLP, ``cond_proj``)
        and the adaLN linears whose weights it *reads* (stacked into one GEMM)."""
        # Plain dict reads instead of nn.Module.__getattr__/Sequential indexing: this runs on
        # every cached lookup and must stay a few microseconds.
        mlp = self.t_embedder._modules["mlp"]._modules
        called = [mlp["0"], mlp["2"]]
        if self.cond_proj is not None:
            called.append(self.cond_proj)
        read = [b._modules["adaLN_mod"]._modules["1"] for b in self._modules["blocks"]._modules.values()]
        read.append(self._modules["final"]._modules["adaLN_mod"]._modules["1"])
        return called, read

    def _module_name(self, module: nn.Module) -> str:
        return next((n for n, m in self.named_modules() if m is module), type(module).__name__)

    def _wrapped_tensors(self, module: nn.Module, read: bool) -> list[Tensor]:
        """Every tensor of a wrapped modulator module, or a clear error when it cannot be exact."""
        name = self._module_name(module)
        if hasattr(module, "base_layer"):
            raise TypeError(
                f"ControlHead: the modulator module {name!r} is wrapped by an adapter "
                f"({type(module).__module__}.{type(module).__name__}, e.g. PEFT LoRA); the head computes "
                "modulators from the stacked adaLN weights and would ignore the adapter, and adapter "
                "scales are not tensors a cache can watch. Merge it first (peft: merge_and_unload()), "
                "or keep adapters off the modulator modules (allowed: plain nn.Linear or "
                "torch.nn.utils.parametrize-d nn.Linear)."
            )
        if read and (module._forward_pre_hooks or module._forward_hooks):
            raise TypeError(
                f"ControlHead: the adaLN linear {name!r} has forward hooks "
                f"({[type(h).__name__ for h in (*module._forward_pre_hooks.values(), *module._forward_hooks.values())]}); "
                "hook-based weights (torch.nn.utils.prune, the deprecated torch.nn.utils.weight_norm, "
                "spectral_norm) are only recomputed when the Linear itself runs, but the head reads "
                "adaLN weights directly. Use torch.nn.utils.parametrize / "
                "torch.nn.utils.parametrizations.weight_norm instead, or make pruning permanent with "
                "torch.nn.utils.prune.remove(module, 'weight')."
            )
        if read and not isinstance(module, nn.Linear):
            raise TypeError(
                f"ControlHead: the adaLN linear {name!r} is a {type(module).__name__}, expected an "
                "nn.Linear (optionally torch.nn.utils.parametrize-d)"
            )
        seen: set[int] = set()
        out = []
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    def modulator_parameters(self) -> list[Tensor]:
        """Every tensor the modulators depend on (timestep MLP, ``cond_proj``, all adaLN linears).

        A cache watches exactly these (on every lookup, hence plain attribute reads rather than
        a module traversal for plain ``nn.Linear`` layers); changing any other parameter cannot
        change modulators. Wrapped layers contribute every parameter and buffer they hold
        (``torch.nn.utils.parametrize`` originals, pruning masks, weight-norm factors); wrappers
        whose effect the head cannot reproduce exactly — adapters (PEFT) anywhere, forward-hook
        based weights on the adaLN linears — raise ``TypeError`` naming the module and the fix.
        """
        called, read = self._modulator_modules()
        out: list[Tensor] = []
        for group, is_read in ((called, False), (read, True)):
            for lin in group:
                if type(lin) is nn.Linear and not lin._forward_pre_hooks and not lin._forward_hooks:
                    params = lin._parameters
                    out.append(params["weight"])
                    if params.get("bias") is not None:
                        out.append(params["bias"])
                else:
                    out.extend(self._wrapped_tensors(lin, is_read))
        return out

    def stacked_modulator_weights(self) -> tuple[Tensor, Tensor]:
        """``(W [6·dim·depth + 2·dim, dim], b)``: all adaLN linears concatenated (a fresh copy).

        Concatenating on every call (instead of caching the stack) keeps the computation a pure
        function of the live parameters — and differentiable for training. ``weight`` is read
        through the module, so ``torch.nn.utils.parametrize`` parametrizations apply; layers the
        head cannot read exactly raise ``TypeError`` (see :meth:`modulator_parameters`).
        """
        _, lins = self._modulator_modules()
        for lin in lins:
            if type(lin) is not nn.Linear or lin._forward_pre_hooks or lin._forward_hooks:
                self._wrapped_tensors(lin, True)
        return torch.cat([lin.weight for lin in lins]), torch.cat([lin.bias for lin in lins])

    # ------------------------------------------------------------------------- modulators
    def prepare_conditions(
        self, t: Tensor | float | Sequence[float], cond: Tensor | None, batch: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """Validate ``t`` (and ``cond``) and return them canonical: ``t [B]`` in the keying dtype
        (float32, or float64 for float64 models; ``-0.0`` → ``+0.0``) and ``cond [B, cond_dim]``
        in the parameter dtype, both on the parameter device.
        """
        if isinstance(t, (list, tuple)):
            t = torch.tensor(t, dtype=torch.float64)
        tt = validate_timesteps(t, batch, dtype=canonical_time_dtype(self.dtype), device=self.device)
        cd = self.config.cond_dim
        if cd == 0:
            if cond is not None:
                raise ValueError("cond was given but this head has cond_dim=0 (no conditioning input)")
            return tt, None
        if cond is None:
            raise ValueError(f"cond is required: this head was built with cond_dim={cd}")
        if not isinstance(cond, Tensor) or not cond.is_floating_point():
            raise TypeError(f"cond must be a floating tensor of shape [B, {cd}]")
        if cond.dim() != 2 or cond.shape != (tt.shape[0], cd):
            raise ValueError(f"cond must have shape [{tt.shape[0]}, {cd}], got {tuple(cond.shape)}")
        return tt, cond.to(device=self.device, dtype=self.dtype)

    def _embed_condition(self, t: Tensor, cond: Tensor | None) -> Tensor:
        c = self.t_embedder(t)
        if self.cond_proj is not None:
            c = c + self.cond_proj(cond)
        return c

    def modulator_rows(self, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Stacked modulator table ``[N, modulator_width]`` for canonical ``t``/``cond``
        (from :meth:`prepare_conditions`): the one computation both the uncached forward and the
        cache use. Runs in fixed-shape chunks of ``config.modulator_rows`` rows, so each row's
        bits do not depend on which other rows were computed with it. Differentiable.
        """
        weight, bias = self.stacked_modulator_weights()
        return chunked_modulator_table(
            self._embed_condition, weight, bias, t, cond, self.config.modulator_rows
        )

    def modulator_table(
        self, t: Tensor | float | Sequence[float], cond: Tensor | None = None
    ) -> Tensor:
        """Validated :meth:`modulator_rows`: ``t`` scalar / ``[N]`` → ``[N, modulator_width]``."""
        tt, cc = self.prepare_conditions(t, cond, None if cond is None else cond.shape[0])
        return self.modulator_rows(tt, cc)

    def compute_modulators(
        self, t: Tensor | float | Sequence[float], cond: Tensor | None = None
    ) -> Modulators:
        """Every block's and the final norm's modulators for timesteps ``t`` (one stacked GEMM
        per chunk of ``config.modulator_rows`` timesteps).

        Example:
            >>> head = ControlHead(dim=64, depth=2, heads=4, freq_dim=64)
            >>> m = head.compute_modulators([0.0, 0.5])
            >>> len(m.blocks), tuple(m.blocks[0].shape), tuple(m.final.shape)
            (2, (2, 6, 64), (2, 2, 64))
        """
        return split_modulator_table(self.modulator_table(t, cond), self.config.depth, self.config.dim)

    @torch.compiler.disable
    def _resolve_modulators(self, t: Any, cond: Tensor | None, batch: int) -> Modulators:
        # Kept out of compiled graphs: validation syncs, the cache's dict lookups and weight
        # checks are Python; the graph only ever sees the resulting tensors (no per-t guards).
        tt, cc = self.prepare_conditions(t, cond, batch)
        flat = None
        if self._modulator_provider is not None:
            flat = self._modulator_provider.lookup_rows(tt, cc)
        if flat is None:
            flat = self.modulator_rows(tt, cc)
        return split_modulator_table(flat, self.config.depth, self.config.dim)

    def _check_mods(self, mods: Any, batch: int) -> None:
        c = self.config
        if not isinstance(mods, Modulators):
            raise TypeError(f"mods must be a Modulators (from compute_modulators), got {type(mods).__name__}")
        if len(mods.blocks) != c.depth:
            raise ValueError(f"mods has {len(mods.blocks)} block entries, the head has depth {c.depth}")
        for i, m in enumerate(mods.blocks):
            if tuple(m.shape) != (batch, 6, c.dim):
                raise ValueError(f"mods.blocks[{i}] must have shape [{batch}, 6, {c.dim}], got {tuple(m.shape)}")
        if tuple(mods.final.shape) != (batch, 2, c.dim):
            raise ValueError(f"mods.final must have shape [{batch}, 2, {c.dim}], got {tuple(mods.final.shape)}")

    # ------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        t: Tensor | float | Sequence[float] | None = None,
        mods: Modulators | None = None,
        *,
        cond: Tensor | None = None,
    ) -> Tensor:
        """``x [B, C_in, T]``, ``t`` (scalar or ``[B]``, in ``[0, 1]``) → ``[B, C_out, T]``.

        With ``mods`` given, ``t``/``cond`` are ignored and the blocks use ``mods``.
        """
        c = self.config
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor [B, {c.in_channels}, T], got {type(x).__name__}")
        if x.dim() != 3 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must have shape [B, {c.in_channels}, T], got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the head's parameters are {self.dtype}")
        batch, _, seq = x.shape
        if mods is None:
            if t is None:
                raise ValueError("t is required when mods is None")
            mods = self._resolve_modulators(t, cond, batch)
        else:
            self._check_mods(mods, batch)
        h = self.latent_proj(x.transpose(1, 2))
        rope = rotary_tables(seq, c.head_dim, base=c.rope_base, device=x.device, dtype=x.dtype)
        for block, m in zip(self.blocks, mods.blocks):
            h = block(h, mods=m, rope=rope)
        return self.final(h, mods=mods.final).transpose(1, 2)
