"""TimeConditioningCache: lossless reuse of a control head's adaLN modulators (docs/design.md §3–§4).

Modulators are pure functions of ``(t, conditioning, weights)``. In guided sampling the head is
called at the same timesteps over and over (LatCH's selective TFG, Novack et al. 2026, arXiv 2603.04366: per sampler step one call at
``t_curr`` and ``N_iter = 4`` mean-guidance calls at ``t = 0``), and across renders with the same
schedule. The cache stores one row of the stacked modulator table per distinct
``(t bits, cond bits, dtype, device)`` and gathers rows for each batch.

Guarantees (tested in ``tests/infer/``):

* **Lossless** — the cached forward equals the uncached one bit for bit (``torch.equal``): both
  run :meth:`ControlHead.modulator_rows`, whose rows do not depend on which rows were computed
  together (fixed-shape chunks, :mod:`fusion_infer.models.modulators`), and the cache only copies rows.
* **Exact keys** — the float32 (float64 for float64 heads) bits of each ``t`` after ``-0.0 → +0.0``
  canonicalisation, the bytes of ``cond`` rows, the parameter dtype and device. No rounding.
* **Never stale** — :class:`~fusion_infer.cache.core.CacheCore` checks the storage identity and
  a content tripwire of :meth:`ControlHead.modulator_parameters` on every lookup, compares exact
  64-bit digests of all their bytes (:mod:`fusion_infer.cache.fingerprint`) at every render
  start (:meth:`render`, :meth:`new_render`, the first lookup after :meth:`attach`, every
  ``probe_every`` lookups; every lookup with ``verify="lookup"``), recomputes a sentinel row with
  every miss computation (a free bitwise probe: it rides in the same GEMM chunk), and offers
  :meth:`invalidate` / :meth:`weights_swapped`. Contract and costs: ``docs/cache_invalidation.md``.
* **Training-safe** — with grad enabled and any modulator parameter (or ``cond``) requiring
  grad, the cache is bypassed (``on_grad="bypass"``: modulators computed with autograd, the
  weights train normally; ``stats.bypassed`` counts it) or raises (``on_grad="raise"``). It never
  feeds constants to a model that is being trained. Guidance that differentiates w.r.t. the
  input only (head frozen with ``requires_grad_(False)``) uses the cache; gradients w.r.t. ``x``
  are identical.
* **Compile-safe** — the lookup runs in the head's ``torch.compiler.disable`` region and returns
  tensors; a compiled head does not recompile per timestep.

Example:
    >>> import torch
    >>> from fusion_infer import ControlHead, TimeConditioningCache
    >>> head = ControlHead(dim=64, depth=2, heads=4, freq_dim=64).requires_grad_(False)
    >>> x = torch.randn(2, 64, 16)
    >>> ref = head(x, 0.5)
    >>> with TimeConditioningCache(head, max_entries=64) as cache:
    ...     _ = cache.warm(torch.linspace(0, 1, 41))
    ...     with cache.render():
    ...         out = head(x, 0.5)
    >>> torch.equal(out, ref), cache.stats.hits, cache.stats.entries
    (True, 1, 41)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ..models.modulators import Modulators, split_modulator_table
from ..models.timestep_embedding import canonical_time_dtype, validate_timesteps
from .core import CacheCore
from .keys import dedupe, row_keys
from .offload import ResidentReport, WeightOffload
from .store import CacheStats

__all__ = ["TimeConditioningCache"]

#: Sentinel timestep recomputed with every miss batch (Euler–Mascheroni: no sinusoid feature of
#: it is exactly 0 or ±1, so every timestep-MLP weight influences its modulators).
SENTINEL_T = 0.5772156649015329
_ON_GRAD = ("bypass", "raise")
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


class TimeConditioningCache:
    """Exact-key, bounded, never-stale cache of a :class:`~fusion_infer.ControlHead`'s modulators.

    Args:
        model: the head (a ``torch.compile`` wrapper is unwrapped to its original module).
        max_entries: most cached rows (one per distinct ``t``/``cond``), LRU-evicted.
        max_bytes: optional byte budget for the rows.
        probe_every: run the bitwise probe every this many lookups (None: only at attach,
            :meth:`render` entry and with each miss computation).
        samples_per_tensor: content-tripwire elements per watched parameter (0 disables it).
        on_grad: ``"bypass"`` (default) or ``"raise"`` when called with grad enabled while a
            modulator parameter or ``cond`` requires grad.
        offload_weights: keep :meth:`ControlHead.modulator_parameters` resting on
            ``offload_device`` and stream them to the head's device only to compute rows (a miss,
            a probe, :meth:`warm`); cached steps run with no modulator weight on the device
            (:mod:`fusion_infer.cache.offload`). Undone by :meth:`restore_weights`.
        offload_device: where offloaded weights rest (default ``"cpu"``).
        verify: when the exact digests of every modulator tensor are compared —
            ``"render"`` (default): on :meth:`render` entry, the first lookup after
            :meth:`new_render` or :meth:`attach`, and every ``probe_every`` lookups;
            ``"lookup"``: on every lookup (any change, down to one bit, is seen at the next
            lookup). Identity and tripwire checks run on every lookup either way.

    Thread safety: lookups from several threads share one table under a lock; outputs equal
    the uncached head's. Attaching/detaching or changing weights while other threads run the
    head is not synchronised. Copies (``copy.deepcopy(head)``, pickle / ``torch.save``) carry an
    attached cache with an empty table that follows the copy's own weights.

    Example:
        >>> from fusion_infer import ControlHead
        >>> head = ControlHead(dim=64, depth=1, heads=4, freq_dim=64).requires_grad_(False)
        >>> cache = TimeConditioningCache(head).attach()
        >>> _ = head(torch.randn(1, 64, 8), 0.0); _ = head(torch.randn(1, 64, 8), 0.0)
        >>> cache.stats.hits, cache.stats.misses
        (1, 1)
        >>> cache.detach()
    """

    _bypass_warned = False  # set per instance on the first bypass warning

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_entries: int | None = 1024,
        max_bytes: int | None = None,
        probe_every: int | None = 200,
        samples_per_tensor: int = 16,
        on_grad: str = "bypass",
        offload_weights: bool = False,
        offload_device: torch.device | str = "cpu",
        verify: str = "render",
    ) -> None:
        model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
        for attr in ("modulator_rows", "prepare_conditions", "modulator_parameters", "config"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"TimeConditioningCache needs a ControlHead-like model (missing {attr!r}); "
                    f"got {type(model).__name__}"
                )
        if on_grad not in _ON_GRAD:
            raise ValueError(f"on_grad must be one of {_ON_GRAD}, got {on_grad!r}")
        # Refuses wrapped modulator layers the head cannot read exactly (adapters, hook-based
        # weights) now, at attach time, with an error naming the module.
        model.modulator_parameters()
        if not isinstance(offload_weights, bool):
            raise TypeError(f"offload_weights must be a bool, got {type(offload_weights).__name__}")
        #: :class:`~fusion_infer.WeightOffload` when ``offload_weights``, else None.
        self.offload: WeightOffload | None = None
        if offload_weights:
            try:
                device = torch.device(offload_device)
            except (RuntimeError, TypeError):
                raise ValueError(f"offload_device must be a device such as 'cpu', got {offload_device!r}") from None
            if device.type == "meta":
                raise ValueError("offload_device must hold real data ('cpu', 'cuda:1', ...), got 'meta'")
            self.offload = WeightOffload(device)
            self.offload.park(model.modulator_parameters())
        self.model = model
        self.on_grad = on_grad
        self.core = CacheCore(
            model.modulator_parameters,
            max_entries=max_entries,
            max_bytes=max_bytes,
            samples_per_tensor=samples_per_tensor,
            probe_every=probe_every,
            recompute_probe=self._recompute,
            verify=verify,
        )

    # ------------------------------------------------------------------------- lifecycle
    @property
    def stats(self) -> CacheStats:
        """Hits, misses, entries, bytes, hit rate, evictions, invalidations (by reason), probes."""
        return self.core.stats

    @property
    def attached(self) -> bool:
        """Whether the head currently uses this cache."""
        return self.model._modulator_provider is self

    def attach(self) -> TimeConditioningCache:
        """Make the head's ``mods=None`` path use this cache; returns ``self``.

        The first lookup after attaching runs the bitwise probe (weights may have changed while
        detached). Raises ``RuntimeError`` if another cache is attached.
        """
        current = self.model._modulator_provider
        if current is not None and current is not self:
            raise RuntimeError("another TimeConditioningCache is attached to this model; detach it first")
        self.model._modulator_provider = self
        self.core.request_probe()
        return self

    def detach(self) -> None:
        """Stop using this cache (entries are kept for a later :meth:`attach`)."""
        if self.model._modulator_provider is self:
            self.model._modulator_provider = None

    def __enter__(self) -> TimeConditioningCache:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def invalidate(self) -> None:
        """Drop every entry (use after changes the cache cannot see, e.g. a monkeypatched module)."""
        self.core.invalidate("explicit")

    @contextmanager
    def weights_swapped(self) -> Iterator[None]:
        """Wrap weight swaps (EMA ``copy_to``/``restore``…): entries are dropped on exit.

        Example:
            >>> from fusion_infer import ControlHead
            >>> head = ControlHead(dim=64, depth=1, heads=4, freq_dim=64)
            >>> cache = TimeConditioningCache(head)
            >>> with cache.weights_swapped():
            ...     pass  # ema.copy_to(head.parameters())
        """
        with self.core.weights_swapped():
            yield

    @contextmanager
    def render(self) -> Iterator[None]:
        """Mark a sampling loop: on entry the exact digests of every modulator tensor are
        compared (any change since the entries were computed drops them) and the probe runs."""
        with self.core.render():
            yield

    def new_render(self) -> None:
        """Mark the start of a render without a ``with`` block: the next lookup compares the
        exact digests of every modulator tensor before any cached row is used."""
        self.core.new_render()

    # ------------------------------------------------------------------------- lookups
    def _recompute(self, inputs: tuple[Tensor, Tensor | None]) -> Tensor:
        with torch.no_grad(), torch.inference_mode(False):
            if self.offload is None:
                return self.model.modulator_rows(*inputs)
            with self.offload.streamed(inputs[0].device):
                return self.model.modulator_rows(*inputs)

    def _park(self, params: list[Tensor]) -> None:
        # model.to() or replaced parameters put modulator weights back on a device: park them
        # again (new storage: the fingerprint drops the table, as it would for any .to()).
        if self.offload is not None:
            self.offload.park(params)

    def resident_report(self) -> ResidentReport:
        """Parameter bytes on the head's device with and without the modulator weights."""
        off = self.offload
        if off is None:
            off = WeightOffload(self.model.device)
            off._tensors = self.model.modulator_parameters()
        return off.report(self.model, self.model.device)

    def restore_weights(self) -> None:
        """Move offloaded modulator weights back to the head's device and stop offloading."""
        if self.offload is None:
            return
        with torch.no_grad():
            for p in self.offload.tensors:
                if p.device.type != "meta":
                    p.data = p.data.to(self.model.device)
        self.offload = None
        self.core.invalidate("restore_weights")

    def _sentinel(self) -> tuple[Tensor, Tensor | None]:
        m = self.model
        t = validate_timesteps(SENTINEL_T, 1, dtype=canonical_time_dtype(m.dtype), device=m.device)
        cd = m.config.cond_dim
        cond = torch.linspace(-1.0, 1.0, cd, dtype=m.dtype, device=m.device)[None] if cd else None
        return t, cond

    def _keys(self, t: Tensor, cond: Tensor | None) -> list[tuple]:
        prefix = (str(self.model.dtype), str(self.model.device))
        if cond is None:
            # Fast path: canonical t is 1-D float32/float64; its integer view *is* its bits.
            bits = t.detach().to("cpu").view(_INT_VIEW[t.dtype]).tolist()
            return [(*prefix, str(t.dtype), b) for b in bits]
        return row_keys(t, cond, prefix=prefix)

    def _must_bypass(self, params: list[Tensor], cond: Tensor | None) -> bool:
        if not torch.is_grad_enabled():
            return False
        needs_grad = any(p.requires_grad for p in params) or (cond is not None and cond.requires_grad)
        if needs_grad and self.on_grad == "raise":
            raise RuntimeError(
                "TimeConditioningCache: grad is enabled and modulator weights (or cond) require "
                "grad, so cached modulators would silently freeze them. Freeze the head "
                "(requires_grad_(False)), run under torch.no_grad(), detach the cache, or use "
                "on_grad='bypass'."
            )
        return needs_grad

    def _compute_and_store(self, keys: list, t: Tensor, cond: Tensor | None) -> tuple[Tensor, bool]:
        """Compute rows for ``keys`` (+ the sentinel) in one batched call and store them.

        Returns the rows and whether the piggy-backed probe passed (False: the table was stale
        and has been dropped; the returned rows are fresh).
        """
        probe_t, probe_cond = self.core.probe_inputs if self.core.has_probe else self._sentinel()
        t_all = torch.cat([t, probe_t])
        cond_all = None if cond is None else torch.cat([cond, probe_cond])
        out = self._recompute((t_all, cond_all))
        n = t.shape[0]
        fresh, sentinel = out[:n], out[n:].clone()
        ok = self.core.confirm_probe(sentinel) if self.core.has_probe else True
        if not self.core.has_probe:
            self.core.expect_probe((probe_t, probe_cond), sentinel)
        for i, k in enumerate(keys):
            self.core.put(k, fresh[i].clone())  # own storage: exact byte accounting, no aliasing
        return fresh, ok

    def lookup_rows(self, t: Tensor, cond: Tensor | None = None) -> Tensor | None:
        """Stacked modulator rows ``[B, modulator_width]`` for canonical ``t``/``cond``.

        Called by the head's ``mods=None`` path (``t``/``cond`` from
        :meth:`ControlHead.prepare_conditions`). Returns None when the call must bypass the
        cache (training), in which case the head computes the rows itself.
        """
        params = self.model.modulator_parameters()
        if self._must_bypass(params, cond):
            self.core.stats.bypassed += 1
            if not self._bypass_warned and any(p.requires_grad for p in params):
                # Once per cache: a head left trainable at inference silently gets 0 hits otherwise.
                self._bypass_warned = True
                warnings.warn(
                    "TimeConditioningCache is bypassed: grad is enabled and the head's modulator "
                    "weights require grad. For inference call head.requires_grad_(False) or run "
                    "under torch.no_grad(); training through the cache is exact but uncached.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            if self.offload is not None:
                raise RuntimeError(
                    "TimeConditioningCache(offload_weights=True) cannot bypass: the modulator weights "
                    "rest on the offload device. Call cache.restore_weights() before training."
                )
            return None
        with self.core.lock:
            self._park(params)
            self.core.validate(params)
            return self._gather(t, cond, retry=True)

    def _gather(self, t: Tensor, cond: Tensor | None, retry: bool) -> Tensor:
        keys = self._keys(t, cond)
        distinct, inverse = dedupe(keys)
        first = [0] * len(distinct)
        for pos in range(len(inverse) - 1, -1, -1):
            first[inverse[pos]] = pos
        rows: list[Tensor | None] = [self.core.get(k) for k in distinct]
        missing = [j for j, r in enumerate(rows) if r is None]
        if missing:
            idx = torch.tensor([first[j] for j in missing], device=t.device)
            fresh, ok = self._compute_and_store(
                [distinct[j] for j in missing],
                t.index_select(0, idx),
                None if cond is None else cond.index_select(0, idx),
            )
            if not ok and retry and len(missing) < len(distinct):
                # The probe found the weights changed: the hits gathered above are stale.
                return self._gather(t, cond, retry=False)
            for r, j in enumerate(missing):
                rows[j] = fresh[r]
        table = torch.stack(rows)  # type: ignore[arg-type]
        if len(distinct) == len(keys):
            return table
        return table.index_select(0, torch.tensor(inverse, device=table.device))

    def modulators(self, t: Tensor | float | Sequence[float], cond: Tensor | None = None) -> Modulators:
        """Cached equivalent of :meth:`ControlHead.compute_modulators` (same bits).

        Example:
            >>> from fusion_infer import ControlHead
            >>> head = ControlHead(dim=64, depth=1, heads=4, freq_dim=64)
            >>> cache = TimeConditioningCache(head)
            >>> torch.equal(cache.modulators([0.2, 0.7]).final, head.compute_modulators([0.2, 0.7]).final)
            True
        """
        tt, cc = self.model.prepare_conditions(t, cond, None if cond is None else cond.shape[0])
        flat = self.lookup_rows(tt, cc)
        if flat is None:
            flat = self.model.modulator_rows(tt, cc)
        return split_modulator_table(flat, self.model.config.depth, self.model.config.dim)

    def warm(self, t_values: Tensor | Sequence[float], cond: Tensor | None = None) -> int:
        """Precompute the rows of many timesteps in one batched computation; returns rows computed.

        ``t_values``: ``[N]`` timesteps (e.g. a sampler schedule plus ``0.0``); ``cond``:
        ``[N, cond_dim]`` or None. Rows already cached are skipped; hit/miss counters are not
        touched. Raises ``ValueError`` if more distinct rows are requested than ``max_entries``.

        Example:
            >>> from fusion_infer import ControlHead
            >>> cache = TimeConditioningCache(ControlHead(dim=64, depth=1, heads=4, freq_dim=64))
            >>> cache.warm(torch.linspace(0, 1, 41)), cache.warm(torch.linspace(0, 1, 41))
            (41, 0)
        """
        tt, cc = self.model.prepare_conditions(t_values, cond, None if cond is None else cond.shape[0])
        with self.core.lock:
            return self._warm(tt, cc)

    def _warm(self, tt: Tensor, cc: Tensor | None) -> int:
        params = self.model.modulator_parameters()
        self._park(params)
        self.core.validate(params)
        keys = self._keys(tt, cc)
        distinct, _ = dedupe(keys)
        cap = self.core.store.max_entries
        if cap is not None and len(distinct) > cap:
            raise ValueError(
                f"warm got {len(distinct)} distinct timesteps/conditions but max_entries={cap}; "
                "raise max_entries or warm fewer"
            )
        todo = [k for k in distinct if self.core.store.peek(k) is None]
        if not todo:
            return 0
        pos = {k: i for i, k in reversed(list(enumerate(keys)))}
        idx = torch.tensor([pos[k] for k in todo], device=tt.device)
        self._compute_and_store(todo, tt.index_select(0, idx), None if cc is None else cc.index_select(0, idx))
        return len(todo)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"TimeConditioningCache(entries={s.entries}, bytes={s.bytes}, hits={s.hits}, "
            f"misses={s.misses}, attached={self.attached})"
        )
