"""The one injection mechanism: *slots* on modulator modules, registered through ``HookRegistry``.

Each modulator site (a ``norm*.linear``, an embedder, ``adaln_single``, ``proj_out_1`` …; see
:mod:`fusion_diffusers.families`) gets a :class:`ModulatorSlotHook` named
``"fusion_modulator_slot"``. A slot is either empty — the module runs as usual — or *armed* with a
tensor, which it returns without running the module. Block code, attention processors,
ControlNet residuals and IP-Adapters are never touched (docs/design.md §3).

Armed values are **call-local**: they live in thread-local storage keyed by the slot, never on
the shared hook or module, so any number of threads can run one cached transformer at once
(each forward call runs on one thread; nested arming — the cache inside, the block patcher
inside it — saves and restores the previous value). ``torch.compile`` traces the thread-local
read without a graph break (measured on torch 2.13); a new tensor each step is a graph input,
not a recompile (docs/design.md §4.4).

Two users arm slots:

* the modulator cache (:mod:`fusion_diffusers.hooks`) arms every slot for the duration of one
  transformer forward with the tensors of the current cache entry;
* the block patcher (:mod:`fusion_diffusers.blocks`) arms one block's slots for one block call
  from its ``mods=`` argument.

**PEFT**: loading a LoRA replaces ``norm1.linear`` by a ``lora.Linear`` wrapper whose
``base_layer`` is the old module. A slot left on the base layer would return the full (LoRA
included) output and PEFT would add the delta a second time, so :meth:`SlotTable.sync` moves the
slot to whatever module currently sits at the site path (cheap identity checks; run before each
use).

Example:
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
    ...                           num_layers=1, sample_size=4, num_embeds_ada_norm=10)
    >>> table = SlotTable.acquire(m, "doc")
    >>> table.arm({"proj_out_1": torch.zeros(1, 32)})
    {'proj_out_1': None}
    >>> m.proj_out_1(torch.ones(1, 16)).abs().sum().item()
    0.0
    >>> table.release("doc")
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from torch import nn

from diffusers.hooks import HookRegistry, ModelHook

from .families import Family, resolve_family, site_paths
from .hook_chain import make_portable

__all__ = ["SLOT_HOOK_NAME", "ModulatorSlotHook", "SlotTable"]

SLOT_HOOK_NAME = "fusion_modulator_slot"
_TABLE_ATTR = "_fusion_modulator_slots"

#: Per-thread armed values: attribute ``hook.slot_name`` → tensor (absent/None: empty slot).
_ARMED = threading.local()
_SLOT_IDS = itertools.count()


class ModulatorSlotHook(ModelHook):
    """Returns the value armed *for the calling thread* instead of running the module.

    The value is read with a plain ``getattr`` on a ``threading.local`` so that
    ``torch.compile`` treats it as a graph input (guarded on shape/dtype/device, not identity):
    a new tensor each denoising step does not recompile (docs/design.md §4.4).
    """

    _is_stateful = False

    def __init__(self) -> None:
        super().__init__()
        self.slot_name = f"slot{next(_SLOT_IDS)}"

    @property
    def value(self) -> Any:
        """The value armed for the calling thread (None: empty)."""
        return getattr(_ARMED, self.slot_name, None)

    @value.setter
    def value(self, value: Any) -> None:
        setattr(_ARMED, self.slot_name, value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (deepcopy/pickle) gets its own slot: arming the copy never arms the original.
        self.__dict__.update(state)
        self.slot_name = f"slot{next(_SLOT_IDS)}"

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        value = getattr(_ARMED, self.slot_name, None)
        if value is not None:
            return value
        return self.fn_ref.original_forward(*args, **kwargs)


class _Site:
    __slots__ = ("path", "parent", "attr", "occupant", "hook")

    def __init__(self, path: str, parent: nn.Module, attr: str, hook: ModulatorSlotHook) -> None:
        self.path = path
        self.parent = parent
        self.attr = attr
        self.occupant: nn.Module | None = None
        self.hook = hook


def _register(module: nn.Module, hook: ModulatorSlotHook) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if registry.get_hook(SLOT_HOOK_NAME) is None:
        registry.register_hook(hook, SLOT_HOOK_NAME)
        make_portable(module)


def _unregister(module: nn.Module) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(SLOT_HOOK_NAME) is not None:
        registry.remove_hook(SLOT_HOOK_NAME, recurse=False)
        make_portable(module)


class SlotTable:
    """All slots of one transformer, shared by the cache and the block patcher.

    Use :meth:`acquire` / :meth:`release` (reference-counted by user name) rather than the
    constructor; the table lives on the transformer as ``_fusion_modulator_slots``.
    """

    def __init__(self, model: nn.Module, family: Family) -> None:
        self.model = model
        self.family = family
        self.users: set[str] = set()
        self.sites: dict[str, _Site] = {}
        for path in site_paths(model, family):
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            self.sites[path] = _Site(path, parent, attr, ModulatorSlotHook())
        self.sync()

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def acquire(cls, model: nn.Module, user: str) -> SlotTable:
        """The model's slot table (created and hooked on first use), registered for ``user``."""
        table = getattr(model, _TABLE_ATTR, None)
        if table is None:
            table = cls(model, resolve_family(model))
            setattr(model, _TABLE_ATTR, table)
            HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()
        table.users.add(user)
        return table

    @staticmethod
    def get(model: nn.Module) -> SlotTable | None:
        """The model's slot table, or None when no user holds one."""
        return getattr(model, _TABLE_ATTR, None)

    def release(self, user: str) -> None:
        """Drop ``user``; the last user removes every slot hook and the table."""
        self.users.discard(user)
        if self.users:
            return
        for site in self.sites.values():
            site.hook.value = None
            if site.occupant is not None:
                _unregister(site.occupant)
            site.occupant = None
        if getattr(self.model, _TABLE_ATTR, None) is self:
            delattr(self.model, _TABLE_ATTR)
        HookRegistry.check_if_exists_or_initialize(self.model).invalidate_child_registries_cache()

    # ---------------------------------------------------------------- occupants

    def sync(self, paths: Any = None) -> bool:
        """Move slots onto the modules now at their site paths; True if any moved.

        PEFT wraps/unwraps modulator linears after the fact (LoRA load, ``unload_lora_weights``);
        a moved slot means the module structure changed.
        """
        moved = False
        sites = self.sites.values() if paths is None else (self.sites[p] for p in paths)
        for site in sites:
            current = site.parent._modules.get(site.attr)
            if current is site.occupant:
                continue
            if site.occupant is not None:
                _unregister(site.occupant)
            if current is not None:
                _register(current, site.hook)
            site.occupant = current
            moved = True
        if moved:
            HookRegistry.check_if_exists_or_initialize(self.model).invalidate_child_registries_cache()
        return moved

    def occupants(self) -> list[nn.Module]:
        """The modules currently sitting at the site paths (after :meth:`sync`)."""
        return [s.occupant for s in self.sites.values() if s.occupant is not None]

    # ---------------------------------------------------------------- arming

    def arm(self, values: dict[str, Any]) -> dict[str, Any]:
        """Arm the named slots for the calling thread; returns their previous values (pass it
        to :meth:`restore`)."""
        previous = {}
        for path, value in values.items():
            hook = self.sites[path].hook
            previous[path] = hook.value
            hook.value = value
        return previous

    def restore(self, previous: dict[str, Any]) -> None:
        """Put back the values returned by :meth:`arm`."""
        for path, value in previous.items():
            self.sites[path].hook.value = value

    def disarm_all(self) -> None:
        """Empty every slot (for the calling thread)."""
        for site in self.sites.values():
            site.hook.value = None
