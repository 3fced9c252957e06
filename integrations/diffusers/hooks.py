"""``apply_modulator_cache`` / ``remove_modulator_cache``: the lossless modulator cache as diffusers hooks.

Layout (diffusers' hooks convention, ``src/diffusers/hooks/hooks.py`` and
``first_block_cache.py``):

* a root hook ``"fusion_modulator_cache"`` (:class:`ModulatorCache`) on the transformer builds
  the key of each forward call from the exact bits of everything the modulators depend on
  (timestep, class labels / pooled text / guidance / resolution-aspect conditions, hidden dtype,
  autocast state, PEFT adapter state and the per-call LoRA scale), looks it up **outside any
  compiled region** (``torch.compiler.disable``) and arms the slots;
* slot hooks ``"fusion_modulator_slot"`` on every modulator module (:mod:`fusion_diffusers.slots`)
  return the armed tensors instead of running the module.

Storage, exact keys and never-stale checks are ``fusion_infer``'s :class:`~fusion_infer.CacheCore`
(bounded LRU store with stats; storage identity + content tripwire every call; exact 64-bit
digests of every watched tensor at each render start, or every call with ``verify="lookup"``;
bitwise probe).
This module adds the diffusers-specific parts: which tensors are watched (the parameters and
buffers of the modules now at the site paths, LoRA wrappers included), the PEFT state in the key,
when a render starts (for the probe), and the bypass rules.

Never stale (docs/design.md §4.3) — what catches what:

* ``load_state_dict``, optimizer steps, ``.to()``, replaced parameters, changed strides: storage
  identity (``data_ptr``/offset/strides/``_version``/dtype/device) → table dropped at the next call;
* ``EMAModel.copy_to``/``restore``, whole-tensor writes through ``.data``, PEFT
  ``fuse_lora``/``unfuse_lora``: content tripwire (sampled elements of the live storage compared
  bitwise on every call) and the PEFT ``merged_adapters`` state → next call;
* any other change of any watched tensor, down to one bit of one element (a sparse ``.data``
  edit of one embedding row): exact digests, compared before the first call of every render
  uses the table (``verify="lookup"``: every call);
* LoRA load/unload (modules replaced): slots move to the new modules and the table is dropped;
  ``set_adapters`` weights, switching/disabling adapters, ``joint_attention_kwargs={"scale": s}``:
  part of the key (entries for other adapter states stay valid and are reused);
* anything else: :meth:`ModulatorCache.invalidate` / :meth:`ModulatorCache.weights_swapped`.

The cache is bypassed (computed normally, counted in ``stats.bypassed``) when the transformer is in
training mode (label dropout / LoRA dropout are random) or when autograd needs gradients of
modulator weights.

Threads: per-call values live in thread-local slots (:mod:`fusion_diffusers.slots`) and the
table is guarded by ``core.lock``, so any number of threads may call one cached transformer; each
output equals the uncached one. Not synchronised: changing weights, loading/unloading LoRA
adapters or calling :meth:`ModulatorCache.invalidate` *while* other threads are mid-call (a call
that already armed its slots finishes with the values it looked up), and diffusers' own per-call
LoRA ``scale`` (it rescales shared PEFT layers for the duration of a forward in diffusers itself).

Copies: ``copy.deepcopy(transformer)`` and pickle / ``torch.save`` give a transformer whose own
hooks (:mod:`fusion_diffusers.hook_chain`) run *its* modules with *its* weights, with a cache
with the same config and an empty table.

The hook is *stateful* for diffusers, so a pipeline's end-of-call ``maybe_free_model_hooks()``
reaches :meth:`ModulatorCache.reset_state` — which keeps the cross-render table and only marks the
start of a new render (docs/design.md §4.5). No ``cache_context`` is needed.

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10).eval()
    >>> cache = apply_modulator_cache(m)
    >>> x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([5, 5]), torch.tensor([1, 10])
    >>> with torch.no_grad():
    ...     a = m(x, timestep=t, class_labels=y).sample
    ...     b = m(x, timestep=t, class_labels=y).sample
    >>> torch.equal(a, b), stats(m).hits, stats(m).misses
    (True, 1, 1)
    >>> remove_modulator_cache(m)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from diffusers.hooks import HookRegistry, ModelHook
from fusion_infer import CacheCore, CacheStats, bits_equal, make_key

from .config import ModulatorCacheConfig
from .families import CallConditioning, Family, unwrap_compiled
from .hook_chain import make_portable
from .modulators import compute_with_slots_empty
from .offload import ResidentReport, WeightOffload, refuse_offload_hooks
from .selfcheck import ensure_verified
from .slots import SlotTable

__all__ = [
    "CACHE_HOOK_NAME",
    "ModulatorCache",
    "apply_modulator_cache",
    "remove_modulator_cache",
    "get_modulator_cache",
    "stats",
]

CACHE_HOOK_NAME = "fusion_modulator_cache"
_USER = "modulator_cache"
_MAX_STREAMS = 256


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "scaling") and hasattr(module, "merged_adapters") and hasattr(module, "active_adapters")


def _clone_tree(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_clone_tree(v) for v in value)
    return value


class ModulatorCache(ModelHook):
    """Root hook holding the cross-render modulator table of one transformer.

    Get it from :func:`apply_modulator_cache` (or :func:`get_modulator_cache`).

    Attributes:
        core: the :class:`fusion_infer.CacheCore` (store, stats, watcher, probe).
        config: the :class:`ModulatorCacheConfig` in use.
    """

    _is_stateful = True

    def __init__(self, table: SlotTable, config: ModulatorCacheConfig) -> None:
        super().__init__()
        self.table = table
        self.family: Family = table.family
        self.config = config
        self._watched_now: list[Tensor] = []
        self.core = CacheCore(
            self._watched,
            max_entries=config.max_entries,
            max_bytes=config.max_bytes,
            samples_per_tensor=config.samples_per_tensor,
            probe_every=config.probe_every,
            recompute_probe=self._recompute_probe,
            verify=config.verify,
        )
        self._paths = list(table.sites)
        self._local = threading.local()  # per-thread ``disabled()`` depth
        #: Why every call on every thread bypasses the table (e.g. an offload fallback), or None.
        self.bypass_reason: str | None = None
        self._streams: OrderedDict[Any, float] = OrderedDict()
        self._lora_merged: tuple | None = None
        #: :class:`fusion_diffusers.offload.WeightOffload` when ``config.offload_weights``, else None.
        self.offload: WeightOffload | None = None
        if config.offload_weights:
            self.offload = WeightOffload(config.offload_device)
            self.offload.park(self._scan()[0])
        self._streaming = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        state["_watched_now"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # ------------------------------------------------------------------ public controls

    def __repr__(self) -> str:
        s = self.core.stats
        bound = f"/{self.config.max_entries}" if self.config.max_entries is not None else ""
        state = "disabled" if getattr(self._local, "depth", 0) or self.bypass_reason else "enabled"
        offload = f", offload={self.offload.offload_device}" if self.offload is not None else ""
        return (
            f"ModulatorCache(family={self.family.name!r}, model={type(self.table.model).__name__}, "
            f"sites={len(self._paths)}, {state}, entries={s.entries}{bound}, bytes={s.bytes}, "
            f"hits={s.hits}, misses={s.misses}, hit_rate={s.hit_rate:.2f}, bypassed={s.bypassed}, "
            f"invalidations={s.invalidations}{offload})"
        )

    @property
    def stats(self) -> CacheStats:
        """Hits, misses, entries, bytes, evictions, invalidations (by reason), probes, bypasses."""
        return self.core.stats

    def invalidate(self, reason: str = "explicit") -> None:
        """Drop every cached entry now."""
        self.core.invalidate(reason)

    @contextmanager
    def weights_swapped(self) -> Iterator[None]:
        """Context manager around code that changes weights: the table is dropped on entry and exit."""
        with self.core.weights_swapped():
            yield

    def new_render(self) -> None:
        """Mark the start of a render: before the next call uses the table, the exact digests of
        every watched tensor are compared (any change down to one bit drops it) and, unless
        ``probe="never"``, one recorded entry is recomputed and compared bitwise."""
        with self.core.lock:
            self._streams.clear()
            self._request_render_checks()

    def _request_render_checks(self) -> None:
        self.core.request_verify()
        if self.config.probe != "never":
            self.core.request_probe()

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the transformer uncached inside this block (slots stay empty); affects only the
        calling thread."""
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def resident_report(self, execution_device: torch.device | str | None = None) -> ResidentReport:
        """Parameter bytes on the execution device with and without the modulator weights.

        ``execution_device`` defaults to the device of the transformer's first parameter that is
        not a modulator weight. Without offload the "after" figure equals the "before" one.
        """
        watched, _, _ = self._scan()
        off = self.offload if self.offload is not None else WeightOffload("meta")
        if self.offload is None:
            off._tensors = watched  # nothing rests elsewhere: a report of the status quo
        if execution_device is None:
            execution_device = self.execution_device(watched)
        report = off.report(self.table.model, execution_device)
        if self.offload is None:
            report = ResidentReport(**{**report.__dict__, "offload_device": "none", "same_device": True})
        return report

    def execution_device(self, watched: list[Tensor] | None = None) -> torch.device:
        """Where the transformer runs: the device of its first parameter that is not a
        modulator weight."""
        if watched is None:
            watched = self._scan()[0]
        ids = {id(t) for t in watched}
        return next((p.device for p in self.table.model.parameters() if id(p) not in ids), torch.device("cpu"))

    @contextmanager
    def streaming(self, device: torch.device | str) -> Iterator[None]:
        """Stream the offloaded modulator weights to ``device`` for the whole block.

        Used by :func:`fusion_diffusers.precompute` so a schedule streams them once; a no-op
        without offload.
        """
        if self.offload is None or self._streaming:
            yield
            return
        with self.offload.streamed(device):
            self._streaming = True
            try:
                yield
            finally:
                self._streaming = False

    # ------------------------------------------------------------------ diffusers hook API

    def reset_state(self, module: nn.Module) -> nn.Module:
        """Called by diffusers after each pipeline call: keep the table, start a new render."""
        self.new_render()
        return module

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        previous = self._enter(module, args, kwargs)
        if previous is None:
            if self.offload is None:
                return self.fn_ref.original_forward(*args, **kwargs)
            # Uncached call (``disabled()``): the modulator modules run, so their offloaded
            # weights are streamed to the execution device for this call.
            with self.streaming(self.execution_device()):
                return self.fn_ref.original_forward(*args, **kwargs)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self._exit(previous)

    # ------------------------------------------------------------------ internals

    def _watched(self) -> list[Tensor]:
        return self._watched_now

    def _scan(self) -> tuple[list[Tensor], tuple, tuple]:
        """Watched tensors, PEFT key state and PEFT merge state of the modules at the sites."""
        tensors: list[Tensor] = []
        seen: set[int] = set()
        lora_key = []
        lora_merged = []
        for occupant in self.table.occupants():
            for m in occupant.modules():
                for t in (*m._parameters.values(), *m._buffers.values()):
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        tensors.append(t)
                if _is_lora_layer(m):
                    lora_key.append(
                        (
                            id(m),
                            tuple(m.active_adapters),
                            tuple(sorted((str(k), float(v)) for k, v in m.scaling.items())),
                            bool(m.disable_adapters),
                        )
                    )
                    lora_merged.append((id(m), tuple(m.merged_adapters)))
        return tensors, tuple(lora_key), tuple(lora_merged)

    def _hook_sites(self) -> list[nn.Module]:
        model = self.table.model
        blocks = [b for name in self.family.block_lists for b in getattr(model, name, ())]
        return [*self.table.occupants(), *blocks]

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(t.requires_grad for t in self._watched_now)

    def _recompute_probe(self, cond: CallConditioning) -> tuple:
        return self._flat(self._compute(cond))

    def _compute(self, cond: CallConditioning) -> dict[str, Any]:
        # With offload, modulator weights are streamed to the timestep's device for this
        # computation only (a no-op inside `streaming`, which already holds them there).
        with torch.no_grad(), self.streaming(cond.timestep.device):
            return compute_with_slots_empty(self.table.model, self.family, cond).values

    def _flat(self, values: dict[str, Any]) -> tuple:
        return tuple(values[p] for p in self._paths)

    @torch.compiler.disable
    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        with self.core.lock:
            return self._enter_locked(module, args, kwargs)

    def _enter_locked(self, module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
        if module.training and self.offload is not None:
            raise RuntimeError(
                "the modulator cache with offload_weights=True cannot run a training-mode forward "
                "(modulator weights rest on the offload device); call transformer.eval(), or "
                "remove_modulator_cache(transformer) before training"
            )
        if getattr(self._local, "depth", 0) or self.bypass_reason is not None or module.training:
            self.core.stats.bypassed += 1
            return None
        if self.table.sync():
            self.core.invalidate("structure")
        self._watched_now, lora_key, lora_merged = self._scan()
        if self.offload is not None and not self._streaming:
            # Offloading hooks added after the cache would fight over the same weights.
            refuse_offload_hooks(self.table.model, self._hook_sites())
            # Something (model.to(), a LoRA load) may have put modulator weights back on a device:
            # park them again; the fingerprint sees the new storage and drops the table.
            self.offload.park(self._watched_now)
        if self._needs_grad():
            if self.offload is not None:
                raise RuntimeError(
                    "the modulator cache with offload_weights=True cannot give gradients of modulator "
                    "weights (they rest on the offload device); run under torch.no_grad(), freeze them "
                    "with requires_grad_(False), or remove_modulator_cache(transformer)"
                )
            self.core.stats.bypassed += 1
            return None
        if self._lora_merged is not None and lora_merged != self._lora_merged:
            self.core.invalidate("lora_merge")
        self._lora_merged = lora_merged

        cond = self.family.call_conditioning(module, args, kwargs)
        if cond is None:  # a call form the family cannot serve from one entry (Family.uncacheable_call)
            self.core.stats.bypassed += 1
            return None
        t_host = cond.timestep.detach().to("cpu")
        stream, key = self._key(cond, t_host, lora_key)

        self._note_stream(stream, t_host)
        self.core.validate(self._watched_now)
        values = self.core.get(key)
        if values is None:
            values = self._compute(cond)
            self.core.put(key, values)
            if not self.core.has_probe:
                self.core.expect_probe(_clone_tree(cond), self._flat(values))
        elif self.config.probe == "always":
            fresh = self._compute(cond)
            self.core.stats.probes += 1
            if not bits_equal(self._flat(fresh), self._flat(values)):
                self.core.stats.probe_failures += 1
                self.core.invalidate("probe")
                self.core.put(key, fresh)
                self.core.expect_probe(_clone_tree(cond), self._flat(fresh))
                values = fresh
        return self.table.arm(values)

    def _key(self, cond: CallConditioning, t_host: Tensor, lora_key: tuple) -> tuple[Any, Any]:
        device = cond.timestep.device
        autocast = (
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None,
        )
        stream = make_key(
            self.family.name,
            cond.values,
            cond.hidden_dtype,
            device,
            autocast,
            lora_key and (lora_key, float(cond.lora_scale)),
        )
        return stream, (stream, make_key(t_host))

    def prepare(self) -> tuple:
        """Run the checks of a forward call (structure, offload parking, PEFT state, weight
        fingerprint, tripwire, due probe) before :meth:`fill`; returns the PEFT key state.

        Call it outside :meth:`streaming`: the watched weights must be at rest when checked.
        """
        with self.core.lock:
            return self._prepare_locked()

    def _prepare_locked(self) -> tuple:
        if self.table.sync():
            self.core.invalidate("structure")
        self._watched_now, lora_key, lora_merged = self._scan()
        if self.offload is not None:
            refuse_offload_hooks(self.table.model, self._hook_sites())
            self.offload.park(self._watched_now)
        if self._lora_merged is not None and lora_merged != self._lora_merged:
            self.core.invalidate("lora_merge")
        self._lora_merged = lora_merged
        self.core.validate(self._watched_now)
        return lora_key

    def fill(self, cond: CallConditioning, lora_key: tuple) -> bool:
        """Compute and store the entry for one call's conditioning unless present; True if computed.

        ``lora_key`` comes from :meth:`prepare`; the key equals the one a forward call builds.
        """
        _, key = self._key(cond, cond.timestep.detach().to("cpu"), lora_key)
        with self.core.lock:
            if key in self.core.store:
                return False
            values = self._compute(cond)
            self.core.put(key, values)
            if not self.core.has_probe:
                self.core.expect_probe(_clone_tree(cond), self._flat(values))
            return True

    def _note_stream(self, stream: Any, t_host: Tensor) -> None:
        # Schedules run from high to low timesteps; a timestep that does not decrease for the
        # same conditioning means a new render began (e.g. a raw transformer loop without a
        # pipeline reset) -> re-verify one recorded entry bitwise before replaying.
        tval = float(t_host.float().max()) if t_host.numel() else 0.0
        last = self._streams.get(stream)
        if last is None or tval >= last:
            self.core.request_verify()
            if self.config.probe == "render":
                self.core.request_probe()
        self._streams[stream] = tval
        self._streams.move_to_end(stream)
        while len(self._streams) > _MAX_STREAMS:
            self._streams.popitem(last=False)

    @torch.compiler.disable
    def _exit(self, previous: dict[str, Any]) -> None:
        self.table.restore(previous)


def apply_modulator_cache(transformer: nn.Module, config: ModulatorCacheConfig | None = None) -> ModulatorCache:
    """Put the lossless modulator cache on a diffusers transformer.

    Args:
        transformer: ``DiTTransformer2DModel``, ``PixArtTransformer2DModel``,
            ``SD3Transformer2DModel``, ``FluxTransformer2DModel``, ``AuraFlowTransformer2DModel``
            or ``SanaTransformer2DModel``, or one of the image families in
            :data:`fusion_diffusers.families.FAMILIES` (Qwen-Image, FLUX.2, Z-Image, …), or a
            ``torch.compile`` wrapper of one. Any other class is refused with
            :class:`fusion_diffusers.UnsupportedModelError` naming it.
        config: :class:`ModulatorCacheConfig` (defaults when None).

    Returns:
        The :class:`ModulatorCache` hook (``.stats``, ``.invalidate()``, ``.weights_swapped()``,
        ``.new_render()``, ``.disabled()``).

    Raises:
        ValueError: when a modulator cache is already applied.

    Example:
        >>> from diffusers import DiTTransformer2DModel
        >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
        ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10)
        >>> cache = apply_modulator_cache(m, ModulatorCacheConfig(max_entries=64))
        >>> cache.stats.entries
        0
        >>> remove_modulator_cache(m)
    """
    if config is None:
        config = ModulatorCacheConfig()
    if not isinstance(config, ModulatorCacheConfig):
        raise TypeError(f"config must be a ModulatorCacheConfig or None, got {type(config).__name__}")
    model = unwrap_compiled(transformer)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    if registry.get_hook(CACHE_HOOK_NAME) is not None:
        raise ValueError(
            f"a modulator cache is already applied to this {type(model).__name__}; "
            "call remove_modulator_cache(transformer) first"
        )
    if config.offload_weights:
        refuse_offload_hooks(model)
    ensure_verified(model, apply_modulator_cache, remove_modulator_cache)  # unverified diffusers: self-check
    table = SlotTable.acquire(model, _USER)  # raises UnsupportedModelError for unknown models
    hook = ModulatorCache(table, config)
    registry.register_hook(hook, CACHE_HOOK_NAME)
    make_portable(model)  # deepcopy / pickle follow the copy's own hooks
    registry.invalidate_child_registries_cache()
    return hook


def get_modulator_cache(transformer: nn.Module) -> ModulatorCache | None:
    """The :class:`ModulatorCache` applied to ``transformer``, or None."""
    registry = getattr(unwrap_compiled(transformer), "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(CACHE_HOOK_NAME)


def remove_modulator_cache(transformer: nn.Module) -> None:
    """Remove the cache hooks (a no-op when none is applied); other hooks stay in place."""
    model = unwrap_compiled(transformer)
    hook = get_modulator_cache(model)
    if hook is None:
        return
    model._diffusers_hook.remove_hook(CACHE_HOOK_NAME, recurse=False)
    make_portable(model)
    if hook.offload is not None:
        # Bring the modulator weights back to where the rest of the model runs.
        home = hook.resident_report().execution_device
        with torch.no_grad():
            for t in hook.offload.tensors:
                if t.device.type != "meta":
                    t.data = t.data.to(home)
    hook.table.release(_USER)
    hook.core.invalidate("removed")
    model._diffusers_hook.invalidate_child_registries_cache()


def stats(transformer: nn.Module) -> CacheStats:
    """The :class:`fusion_infer.CacheStats` of the cache on ``transformer``.

    Raises:
        ValueError: when no modulator cache is applied.
    """
    hook = get_modulator_cache(transformer)
    if hook is None:
        raise ValueError(
            f"no modulator cache is applied to this {type(unwrap_compiled(transformer)).__name__}; "
            "call apply_modulator_cache first"
        )
    return hook.stats
