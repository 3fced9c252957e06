"""Adversarial staleness suite for the diffusers modulator cache (docs/cache_invalidation.md).

Every scenario runs one tiny model of a supported family (all of ``all_cases()``) through a
render that fills the cache, starts a second render, changes the weights in one adversarial way
*mid-render*, and then asserts

1. that the change alters the **uncached** output (a scenario that cannot fail is no test), and
2. that the **cached** output equals the uncached one bit for bit — at the very next call for
   changes the contract promises to see at the next lookup (whole-tensor rewrites, new storage,
   new layout, version bumps, PEFT state), and from the next render on for every change (down to
   one bit of one element).

The default run covers every edit for the base families and a core subset for families added by
other case modules; ``-m slow`` runs every edit for every case.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from all_cases import SuiteCase, all_cases, build, same
from diffusers_tiny_models import CASES as BASE_CASES
from fusion_diffusers import ModulatorCacheConfig, apply_modulator_cache, get_modulator_cache
from fusion_diffusers.families import resolve_family, site_paths
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

BASE = {c.name for c in BASE_CASES}
CASES = all_cases()


# ----------------------------------------------------------------------------- targets


def _occupant_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(path, module)`` of every plain nn.Linear inside the modulator sites."""
    out = []
    for path in site_paths(model, resolve_family(model)):
        site = model.get_submodule(path)
        out.extend(
            (f"{path}.{sub}" if sub else path, lin) for sub, lin in site.named_modules() if type(lin) is nn.Linear
        )
    return out


def _primary(model: nn.Module) -> torch.Tensor:
    """The largest modulator Linear weight (every row of it feeds some modulator)."""
    return max((lin.weight for _, lin in _occupant_linears(model)), key=lambda w: w.numel())


def _watched(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in get_modulator_cache(model)._scan()[0] if t.is_floating_point()]


def _other_weights(sc: SuiteCase, model: nn.Module) -> dict[str, torch.Tensor]:
    return build(sc.case, seed=7).state_dict()


def _noncontiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own values, every 2-D tensor stored transposed (non-contiguous)."""
    return {k: (v.t().contiguous().t() if v.dim() == 2 else v.clone()) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- edits


def _sparse_row(sc, model):
    w = _primary(model)
    w.data[1, 1:] += 0.5  # one row, element 0 (a tripwire sample when the step is a row) untouched


def _primary_linear(model: nn.Module) -> nn.Linear:
    return max((lin for _, lin in _occupant_linears(model)), key=lambda m: m.weight.numel())


def _one_ulp(sc, model, changes):
    # One unit in the last place of one element. Most single-ulp weight edits are absorbed by
    # the rounding of a dot product; the adversary searches for one that reaches the output
    # (biases and weights of the modulator linears, element by element) and keeps the first.
    for _, lin in reversed(_occupant_linears(model)):
        for t in (lin.bias, lin.weight):
            if t is None or t.dtype != torch.float32:
                continue
            bits = t.data.view(torch.int32)  # any layout: indexed, never flattened into a copy
            for i in range(1, min(bits.numel(), 9)):
                idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), bits.shape))
                bits[idx] += 1
                if changes():
                    return
                bits[idx] -= 1
    raise AssertionError("no single-ulp edit of a modulator linear changes the output")


def _sign_bit(sc, model):
    w = _primary(model)
    w.data.view(torch.int32)[0, 3] ^= -(2**31)  # flip the sign bit of one element


def _ema_data_copy(sc, model):
    other = _other_weights(sc, model)
    names = {id(p): n for n, p in model.named_parameters()}
    for p in _watched(model):
        if id(p) in names:
            p.data.copy_(other[names[id(p)]])  # ema_pytorch style: no version bump


def _foreach_copy(sc, model):
    other = _other_weights(sc, model)
    pairs = [(p, other[n]) for n, p in model.named_parameters() if any(p is w for w in _watched(model))]
    torch._foreach_copy_([p.data for p, _ in pairs], [o for _, o in pairs])  # diffusers EMAModel.copy_to


def _load_state_dict(sc, model):
    model.load_state_dict(_other_weights(sc, model))  # in place: version bump, same pointers


def _load_assign(sc, model):
    model.load_state_dict(_other_weights(sc, model), assign=True)


def _relayout_same_pointer(sc, model):
    w = _primary(model)
    # Same storage, same pointer, same shape — permuted strides: other values at each index.
    w.data = w.data.as_strided(w.shape, (1, w.shape[0]))


def _optimizer_step(sc, model):
    params = [p for p in _watched(model) if isinstance(p, nn.Parameter)]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()


def _replace_parameter(sc, model):
    lin = _primary_linear(model)
    lin.weight = nn.Parameter(lin.weight.detach() * 1.25, requires_grad=False)


def _half_round_trip(sc, model):
    model.half()
    model.float()  # values rounded to fp16: a real change, made through .to()


def _lora(model, scale=None, merge=False):
    targets = [path for path, _ in _occupant_linears(model)]
    torch.manual_seed(3)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False), model)
    for m in model.modules():
        if hasattr(m, "set_scale") and hasattr(m, "merged_adapters"):
            if scale is not None:
                m.set_scale("default", scale)
            if merge:
                m.merge()


def _lora_load(sc, model):
    _lora(model)


def _lora_scale(sc, model):
    for m in model.modules():
        if hasattr(m, "set_scale") and hasattr(m, "merged_adapters"):
            m.set_scale("default", 0.5)


def _lora_fuse(sc, model):
    for m in model.modules():
        if hasattr(m, "set_scale") and hasattr(m, "merged_adapters"):
            m.set_scale("default", 0.5)
            m.merge()  # base weight.data += delta: pointer and version unchanged


def _inference_dense(sc, model):
    with torch.inference_mode():
        _primary(model).mul_(1.5)  # inference tensors: no version counter at all


def _inference_sparse(sc, model):
    with torch.inference_mode():
        _primary(model)[1, 1] += 0.5


def _prepare_noncontiguous(model):
    model.load_state_dict(_noncontiguous_state(model), assign=True)


def _prepare_lora(model):
    _lora(model)


@dataclass(frozen=True)
class Edit:
    name: str
    apply: Callable
    seen: str  # "lookup": at the next call; "render": from the next render on
    prepare: Callable | None = None  # applied before the cache is attached
    inference: bool = False  # the whole scenario (build, cache, renders, edit) in inference_mode
    core: bool = False  # part of the default run for every case module
    search: bool = False  # apply(sc, model, changes): the edit searches for an output-changing element


EDITS = [
    Edit("sparse_row_data", _sparse_row, "render", core=True),
    Edit("one_ulp", _one_ulp, "render", core=True, search=True),
    Edit("sign_bit", _sign_bit, "render"),
    Edit("ema_swap_data_copy", _ema_data_copy, "lookup", core=True),
    Edit("ema_foreach_copy", _foreach_copy, "lookup"),
    Edit("load_state_dict", _load_state_dict, "lookup"),
    Edit("load_state_dict_assign", _load_assign, "lookup"),
    Edit("noncontiguous_ema_swap", _ema_data_copy, "lookup", prepare=_prepare_noncontiguous, core=True),
    Edit("noncontiguous_one_ulp", _one_ulp, "render", prepare=_prepare_noncontiguous, search=True),
    Edit("relayout_same_pointer", _relayout_same_pointer, "lookup"),
    Edit("optimizer_step", _optimizer_step, "lookup"),
    Edit("replace_parameter", _replace_parameter, "lookup"),
    Edit("half_round_trip", _half_round_trip, "lookup"),
    Edit("lora_load", _lora_load, "lookup"),
    Edit("lora_scale", _lora_scale, "lookup", prepare=_prepare_lora),
    Edit("lora_fuse", _lora_fuse, "lookup", prepare=_prepare_lora),
    Edit("inference_mode_dense", _inference_dense, "lookup", inference=True),
    Edit("inference_mode_sparse", _inference_sparse, "render", inference=True, core=True),
]


def _params():
    out = []
    for sc in CASES:
        for edit in EDITS:
            marks = [] if (sc.name in BASE or edit.core) else [pytest.mark.slow]
            out.append(pytest.param(sc, edit, id=f"{sc.name}-{edit.name}", marks=marks))
    return out


def _schedule(sc: SuiteCase) -> list[dict]:
    c = sc.case
    mid = (c.t_hi + c.t_lo) / 2
    return [c.inputs(2, torch.float32, seed=0, t=t) for t in (c.t_hi, mid, c.t_lo)]


@pytest.mark.parametrize(("sc", "edit"), _params())
def test_edit_is_never_replayed_stale(sc: SuiteCase, edit: Edit):
    mode = torch.inference_mode() if edit.inference else contextlib.nullcontext()
    with mode:
        model = build(sc.case)
        if edit.prepare is not None:
            edit.prepare(model)
        cache = apply_modulator_cache(model, ModulatorCacheConfig(probe="never"))
        steps = _schedule(sc)

        def cached(x):
            return sc.forward(model, x)

        def uncached(x):
            with cache.disabled():
                return sc.forward(model, x)

        for x in steps:  # render 1 fills the table
            cached(x)
        cache.new_render()
        cached(steps[0])
        cached(steps[1])  # render 2, mid-render
        before = uncached(steps[2])
        with torch.no_grad():
            if edit.search:
                edit.apply(sc, model, lambda: not same(uncached(steps[2]), before))
            else:
                edit.apply(sc, model)
        after = [uncached(x) for x in steps]
        assert not same(after[2], before), "the edit does not change the uncached output"
        if edit.seen == "lookup":
            assert same(cached(steps[2]), after[2])  # the very next call
        else:
            cached(steps[2])  # inside this render the edit may stay unseen (documented)
        cache.new_render()  # a pipeline call ended: the next render starts
        for x, ref in zip(steps, after):
            assert same(cached(x), ref)
        for x, ref in zip(steps, after):  # and its entries are replayed, not recomputed forever
            assert same(cached(x), ref)
        assert cache.stats.hits > 0


# ----------------------------------------------------------------------------- verify="lookup"


@pytest.mark.parametrize("sc", [pytest.param(sc, id=sc.name, marks=[] if sc.name in BASE else [pytest.mark.slow]) for sc in CASES])
def test_verify_lookup_sees_one_ulp_at_the_next_call(sc: SuiteCase):
    model = build(sc.case)
    cache = apply_modulator_cache(model, ModulatorCacheConfig(verify="lookup", samples_per_tensor=0, probe="never"))
    steps = _schedule(sc)
    for x in steps:
        sc.forward(model, x)
    with cache.disabled():
        before = sc.forward(model, steps[2])

    def changes():
        with cache.disabled():
            return not same(sc.forward(model, steps[2]), before)

    with torch.no_grad():
        _one_ulp(sc, model, changes)
    with cache.disabled():
        after = sc.forward(model, steps[2])
    assert not same(after, before)
    assert same(sc.forward(model, steps[2]), after)
    assert cache.stats.invalidations_by_reason["digest"] == 1


# ----------------------------------------------------------------------------- threads, copies, pickle


def _maybe_slow(sc):
    return [] if sc.name in BASE else [pytest.mark.slow]


CASE_PARAMS = [pytest.param(sc, id=sc.name, marks=_maybe_slow(sc)) for sc in CASES]


@pytest.mark.parametrize("sc", CASE_PARAMS)
def test_four_threads_share_one_cached_model(sc: SuiteCase):
    model = build(sc.case)
    c = sc.case
    inputs = [c.inputs(2, torch.float32, seed=s, t=t) for s, t in ((0, c.t_hi), (1, c.t_lo), (2, c.t_lo), (3, c.t_hi))]
    reference = [sc.forward(model, x) for x in inputs]
    apply_modulator_cache(model)
    wrong: list[int] = []
    start = threading.Barrier(4)

    def worker(i: int) -> None:
        start.wait()
        for r in range(6):
            j = (i + r) % 4
            if not same(sc.forward(model, inputs[j]), reference[j]):
                wrong.append(j)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert get_modulator_cache(model).stats.hits > 0


@pytest.mark.parametrize("sc", CASE_PARAMS)
def test_deepcopy_follows_its_own_weights(sc: SuiteCase):
    model = build(sc.case)
    steps = _schedule(sc)
    apply_modulator_cache(model)
    original = [sc.forward(model, x) for x in steps]
    twin = copy.deepcopy(model)  # the usual `ema = copy.deepcopy(transformer)`
    twin_cache = get_modulator_cache(twin)
    assert twin_cache is not None and twin_cache is not get_modulator_cache(model)
    with torch.no_grad():
        _ema_data_copy(sc, twin)  # the copy gets other weights …
    with twin_cache.disabled():
        twin_ref = [sc.forward(twin, x) for x in steps]
    assert not same(twin_ref[0], original[0])
    for _ in range(2):
        assert all(same(sc.forward(twin, x), r) for x, r in zip(steps, twin_ref))  # … and uses them
        assert all(same(sc.forward(model, x), r) for x, r in zip(steps, original))  # original untouched
    assert twin_cache.stats.hits > 0


@pytest.mark.parametrize("sc", CASE_PARAMS)
def test_torch_save_and_pickle_round_trip_exactly(sc: SuiteCase):
    model = build(sc.case)
    steps = _schedule(sc)
    apply_modulator_cache(model)
    outputs = [sc.forward(model, x) for x in steps]
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # trusted: this test's own buffer
    clone = pickle.loads(pickle.dumps(model))
    for m in (loaded, clone):
        cache = get_modulator_cache(m)
        assert cache is not None and cache.stats.entries == 0
        for _ in range(2):
            assert all(same(sc.forward(m, x), r) for x, r in zip(steps, outputs))
        with torch.no_grad():
            _sparse_row(sc, m)
        cache.new_render()
        with cache.disabled():
            refs = [sc.forward(m, x) for x in steps]
        assert all(same(sc.forward(m, x), r) for x, r in zip(steps, refs))


@pytest.mark.parametrize("sc", CASE_PARAMS)
def test_dtype_round_trips_stay_exact(sc: SuiteCase):
    model = build(sc.case)
    steps = _schedule(sc)
    cache = apply_modulator_cache(model)
    outputs = [sc.forward(model, x) for x in steps]
    # float64 where the model runs in it; a model that casts to float32 inside round-trips
    # through bfloat16 instead (not exact: the cached result is then compared with the uncached
    # model's, not with the first outputs)
    for dtype in (torch.float64, torch.bfloat16):
        model.to(dtype)
        try:
            with cache.disabled():
                ref = sc.forward(model, _cast(steps[0], dtype))
        except RuntimeError as err:
            if "dtype" not in str(err):
                raise
            continue
        assert same(sc.forward(model, _cast(steps[0], dtype)), ref)
        break
    else:
        pytest.fail("the uncached model runs in neither float64 nor bfloat16")
    model.to(torch.float32)  # new storage; the same values after a float64 round trip
    with cache.disabled():
        refs = [sc.forward(model, x) for x in steps]
    assert all(same(sc.forward(model, x), r) for x, r in zip(steps, refs))
    if dtype == torch.float64:
        assert all(same(r, o) for r, o in zip(refs, outputs))


def _cast(x, dtype: torch.dtype):
    """Floating tensors in ``x`` (a dict of inputs, also inside lists: Z-Image takes lists) cast."""
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cast(v, dtype) for v in x)
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


# ----------------------------------------------------------------------------- the reported DiT case


def test_dit_one_class_row_edit_is_seen_at_the_next_render_and_not_replayed_forever():
    """1000 classes; ``emb.weight.data[7, 1:] += 0.5`` with class 7 in the batch, across renders."""
    from diffusers_tiny_models import CASE_BY_NAME, dit_inputs, forward

    model = build(CASE_BY_NAME["dit"])
    cache = apply_modulator_cache(model)
    steps = []
    for t in (999, 500, 1):
        x = dit_inputs(2, torch.float32, t=t)
        x["class_labels"] = torch.tensor([7, 1000])
        steps.append(x)
    for x in steps:
        forward(model, x)
    table = model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight
    with torch.no_grad():
        table.data[7, 1:] += 0.5
    for _render in range(3):
        cache.new_render()
        for x in steps:
            with cache.disabled():
                ref = forward(model, x)
            assert torch.equal(forward(model, x), ref)
    assert cache.stats.invalidations_by_reason["digest"] == 1


# ----------------------------------------------------------------------------- pipelines


def _pipeline(name: str):
    import test_diffusers_pipelines as tp

    return {"dit": tp._dit_pipe, "sd3": tp._sd3_pipe, "flux_dev": tp._flux_pipe}[name]()


def _render(pipe, kwargs):
    import test_diffusers_pipelines as tp

    return tp._render(pipe, kwargs)


@pytest.mark.parametrize("name", ["dit", pytest.param("sd3", marks=pytest.mark.slow), pytest.param("flux_dev", marks=pytest.mark.slow)])
def test_pipeline_sparse_edit_seen_at_the_next_call_and_to_round_trips_exact(name):
    from fusion_diffusers import enable_modulator_cache

    pipe, kwargs = _pipeline(name)
    plain = _render(pipe, kwargs)
    cache = enable_modulator_cache(pipe)
    assert torch.equal(_render(pipe, kwargs), plain)
    assert torch.equal(_render(pipe, kwargs), plain) and cache.stats.hits > 0
    # A one-row .data edit between two pipeline calls: seen before the next call replays.
    w = _primary(pipe.transformer)
    with torch.no_grad():
        w.data[1, 1:] += 0.5
    with cache.disabled():
        edited = _render(pipe, kwargs)
    assert not torch.equal(edited, plain)
    assert torch.equal(_render(pipe, kwargs), edited)
    # pipe.to(dtype) and back: new storage both times, outputs exact.
    pipe.to(torch.float64)
    pipe.to(torch.float32)
    assert torch.equal(_render(pipe, kwargs), edited)
    # A deep copy of the whole pipeline follows its own transformer.
    twin = copy.deepcopy(pipe)
    with torch.no_grad():
        _primary(twin.transformer).data[2, 1:] -= 0.5
    twin_cache = get_modulator_cache(twin.transformer)
    with twin_cache.disabled():
        twin_ref = _render(twin, kwargs)
    assert not torch.equal(twin_ref, edited)
    assert torch.equal(_render(twin, kwargs), twin_ref)
    assert torch.equal(_render(pipe, kwargs), edited)
