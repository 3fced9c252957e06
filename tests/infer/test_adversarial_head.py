"""Adversarial staleness suite for the control-head cache (docs/cache_invalidation.md).

Each edit scenario fills the cache in one render, starts a second render, changes the head's
weights in one adversarial way mid-render and asserts (1) that the change alters the uncached
output and (2) that the cached output equals it bit for bit: at the next lookup for changes
the contract promises to see there, and from the next render on (``new_render()`` /
``render()``) for every change down to one bit. Then threads, copies, pickling, modes and
wrapped (parametrized, pruned, PEFT) adaLN linears.
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
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune

from fusion_infer import ControlHead, TimeConditioningCache
from tests.infer.heads import latents, small_head, uncached

TS = (0.9, 0.5, 0.1)


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    # Tiny heads: OpenMP wake-ups of a second intra-op thread cost more than the ops (12x
    # measured on the shared 2-core machine). Restored after each test.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _adaln(head: ControlHead, i: int = 0) -> nn.Linear:
    return head.blocks[i].adaLN_mod[1]


def _others(head: ControlHead) -> dict:
    return small_head(seed=7, cond_dim=head.config.cond_dim).state_dict()


# ----------------------------------------------------------------------------- edits


def _sparse_row(head, _):
    _adaln(head, 1).weight.data[7, 1:] += 0.5


def _sparse_t_mlp(head, _):
    head.t_embedder.mlp[0].weight.data[3, 1:] += 0.5


def _sparse_final(head, _):
    head.final.adaLN_mod[1].bias.data[5] -= 0.25


def _one_ulp(head, changes):
    for t in (_adaln(head, 1).bias, _adaln(head, 1).weight, head.final.adaLN_mod[1].bias):
        bits = t.data.view(torch.int32)
        for i in range(1, min(bits.numel(), 17)):
            idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), bits.shape))
            bits[idx] += 1
            if changes():
                return
            bits[idx] -= 1
    raise AssertionError("no single-ulp edit changes the output")


def _sign_bit(head, _):
    _adaln(head, 0).weight.data.view(torch.int32)[2, 3] ^= -(2**31)


def _ema_data_copy(head, _):
    other = _others(head)
    for name, p in head.named_parameters():
        p.data.copy_(other[name])


def _foreach_copy(head, _):
    other = _others(head)
    names = [n for n, _ in head.named_parameters()]
    torch._foreach_copy_([p.data for p in head.parameters()], [other[n] for n in names])


def _load_state_dict(head, _):
    head.load_state_dict(_others(head))


def _load_assign(head, _):
    head.load_state_dict(_others(head), assign=True)


def _relayout(head, _):
    w = _adaln(head, 0).weight
    w.data = w.data.as_strided(w.shape, (1, w.shape[0]))


def _data_transpose_square(head, _):
    w = head.t_embedder.mlp[2].weight  # dim x dim: w.data = w.data.t() keeps pointer and shape
    w.data = w.data.t()


def _optimizer_step(head, _):
    params = head.modulator_parameters()
    for p in params:
        p.grad = torch.randn_like(p)
    torch.optim.AdamW(params, lr=1e-2).step()


def _replace_parameter(head, _):
    lin = _adaln(head, 1)
    lin.weight = nn.Parameter(lin.weight.detach() * 1.25, requires_grad=False)


def _half_round_trip(head, _):
    head.half()
    head.float()


def _inference_dense(head, _):
    with torch.inference_mode():
        _adaln(head, 0).weight.mul_(1.5)


def _inference_sparse(head, _):
    with torch.inference_mode():
        _adaln(head, 0).weight[1, 1] += 0.5


def _weight_norm_sparse(head, _):
    _adaln(head, 0).parametrizations.weight.original0.data[3] *= 1.5


def _weight_norm_dense(head, _):
    _adaln(head, 0).parametrizations.weight.original1.data.mul_(-1.0)


def _prepare_noncontiguous(head):
    head.load_state_dict({k: (v.t().contiguous().t() if v.dim() == 2 else v.clone()) for k, v in head.state_dict().items()}, assign=True)


def _prepare_weight_norm(head):
    parametrizations.weight_norm(_adaln(head, 0))


@dataclass(frozen=True)
class Edit:
    name: str
    apply: Callable
    seen: str  # "lookup" | "render"
    prepare: Callable | None = None
    inference: bool = False


EDITS = [
    Edit("sparse_row_data", _sparse_row, "render"),
    Edit("sparse_timestep_mlp", _sparse_t_mlp, "render"),
    Edit("sparse_final_bias", _sparse_final, "render"),
    Edit("one_ulp", _one_ulp, "render"),
    Edit("sign_bit", _sign_bit, "render"),
    Edit("ema_swap_data_copy", _ema_data_copy, "lookup"),
    Edit("ema_foreach_copy", _foreach_copy, "lookup"),
    Edit("load_state_dict", _load_state_dict, "lookup"),
    Edit("load_state_dict_assign", _load_assign, "lookup"),
    Edit("noncontiguous_ema_swap", _ema_data_copy, "lookup", prepare=_prepare_noncontiguous),
    Edit("noncontiguous_one_ulp", _one_ulp, "render", prepare=_prepare_noncontiguous),
    Edit("relayout_same_pointer", _relayout, "lookup"),
    Edit("data_transpose_square", _data_transpose_square, "lookup"),
    Edit("optimizer_step", _optimizer_step, "lookup"),
    Edit("replace_parameter", _replace_parameter, "lookup"),
    Edit("half_round_trip", _half_round_trip, "lookup"),
    Edit("inference_mode_dense", _inference_dense, "lookup", inference=True),
    Edit("inference_mode_sparse", _inference_sparse, "render", inference=True),
    Edit("weight_norm_sparse", _weight_norm_sparse, "render", prepare=_prepare_weight_norm),
    Edit("weight_norm_dense", _weight_norm_dense, "lookup", prepare=_prepare_weight_norm),
]


def _call(head, x, t, cond):
    with torch.no_grad():
        return head(x, t, cond=cond)


@pytest.mark.parametrize("cond_dim", [0, 3], ids=["plain", "conditioned"])
@pytest.mark.parametrize("edit", EDITS, ids=[e.name for e in EDITS])
def test_edit_is_never_replayed_stale(edit: Edit, cond_dim: int):
    mode = torch.inference_mode() if edit.inference else contextlib.nullcontext()
    with mode:
        head = small_head(cond_dim=cond_dim).requires_grad_(False)
        if edit.prepare is not None:
            edit.prepare(head)
        cache = TimeConditioningCache(head, probe_every=None).attach()
        x = latents(2)
        cond = torch.randn(2, 3, generator=torch.Generator().manual_seed(4)) if cond_dim else None
        for t in TS:
            _call(head, x, t, cond)
        cache.new_render()
        _call(head, x, TS[0], cond)
        _call(head, x, TS[1], cond)
        before = uncached(head, x, TS[2], cond)

        def changes():
            return not torch.equal(uncached(head, x, TS[2], cond), before)

        with torch.no_grad():
            edit.apply(head, changes)
        after = [uncached(head, x, t, cond) for t in TS]
        assert not torch.equal(after[2], before), "the edit does not change the uncached output"
        if edit.seen == "lookup":
            assert torch.equal(_call(head, x, TS[2], cond), after[2])
        else:
            _call(head, x, TS[2], cond)  # may stay unseen inside this render (documented)
        with cache.render():
            for t, ref in zip(TS, after):
                assert torch.equal(_call(head, x, t, cond), ref)
        hits = cache.stats.hits
        cache.new_render()
        for t, ref in zip(TS, after):
            assert torch.equal(_call(head, x, t, cond), ref)
        assert cache.stats.hits > hits


def test_verify_lookup_sees_a_sparse_edit_at_the_next_lookup():
    head = small_head().requires_grad_(False)
    cache = TimeConditioningCache(head, verify="lookup", samples_per_tensor=0, probe_every=None).attach()
    x = latents(2)
    before = _call(head, x, 0.5, None)
    _sparse_row(head, None)
    assert torch.equal(_call(head, x, 0.5, None), uncached(head, x, 0.5))
    assert not torch.equal(uncached(head, x, 0.5), before)
    assert cache.stats.invalidations_by_reason["digest"] == 1


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad_frozen", "grad_trainable"])
def test_modes(mode):
    head = small_head()
    if mode != "grad_trainable":
        head.requires_grad_(False)
    x = latents(2)
    refs = [uncached(head, x, t).detach() for t in TS]
    cache = TimeConditioningCache(head).attach()
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, torch.enable_grad)
    with ctx():
        for _ in range(2):
            outs = [head(x, t) for t in TS]
            assert all(torch.equal(o.detach(), r) for o, r in zip(outs, refs))
    if mode == "grad_trainable":
        assert cache.stats.bypassed == 2 * len(TS) and cache.stats.hits == 0
        assert outs[0].requires_grad
    else:
        assert cache.stats.hits == len(TS)


def test_head_loaded_and_cached_entirely_under_inference_mode(tmp_path):
    from fusion_infer import load_head
    from fusion_train.training.export import export_checkpoint

    head = small_head().requires_grad_(False)
    x = latents(2)
    refs = [uncached(head, x, t) for t in TS]
    path = tmp_path / "h.safetensors"
    export_checkpoint(head, None, path)
    with torch.inference_mode():
        loaded, _ = load_head(path)
        loaded.requires_grad_(False)
        cache = TimeConditioningCache(loaded).attach()
        for _ in range(2):
            assert all(torch.equal(loaded(x, t), r) for t, r in zip(TS, refs))
        loaded.blocks[0].adaLN_mod[1].weight.mul_(2.0)  # inference tensors: no version counter
        assert torch.equal(loaded(x, TS[0]), uncached(loaded, x, TS[0]))
    assert cache.stats.hits >= len(TS)


# ----------------------------------------------------------------------------- threads, copies


def test_four_threads_share_one_cached_head():
    head = small_head(cond_dim=3).requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    jobs = [(latents(2, seed=s), t, torch.randn(2, 3, generator=g)) for s, t in ((1, 0.9), (2, 0.5), (3, 0.1), (4, 0.5))]
    refs = [uncached(head, x, t, c) for x, t, c in jobs]
    cache = TimeConditioningCache(head).attach()
    wrong = []
    start = threading.Barrier(4)

    def worker(i):
        start.wait()
        for r in range(20):
            j = (i + r) % 4
            x, t, c = jobs[j]
            if not torch.equal(_call(head, x, t, c), refs[j]):
                wrong.append(j)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and cache.stats.hits > 0


def test_deepcopy_of_a_cached_head_follows_its_own_weights():
    head = small_head().requires_grad_(False)
    cache = TimeConditioningCache(head).attach()
    x = latents(2)
    original = [_call(head, x, t, None) for t in TS]
    twin = copy.deepcopy(head)
    assert twin.modulator_provider is not None and twin.modulator_provider is not cache
    assert twin.modulator_provider.model is twin and twin.modulator_provider.stats.entries == 0
    _ema_data_copy(twin, None)
    refs = [uncached(twin, x, t) for t in TS]
    assert not torch.equal(refs[0], original[0])
    for _ in range(2):
        assert all(torch.equal(_call(twin, x, t, None), r) for t, r in zip(TS, refs))
        assert all(torch.equal(_call(head, x, t, None), r) for t, r in zip(TS, original))


def test_torch_save_and_pickle_of_a_cached_head_round_trip_exactly():
    head = small_head().requires_grad_(False)
    TimeConditioningCache(head).attach()
    x = latents(2)
    outs = [_call(head, x, t, None) for t in TS]
    buf = io.BytesIO()
    torch.save(head, buf)
    buf.seek(0)
    for loaded in (torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(head))):  # trusted: this test's own buffer
        assert loaded.modulator_provider.model is loaded
        for _ in range(2):
            assert all(torch.equal(_call(loaded, x, t, None), r) for t, r in zip(TS, outs))
        _sparse_row(loaded, None)
        loaded.modulator_provider.new_render()
        assert torch.equal(_call(loaded, x, TS[0], None), uncached(loaded, x, TS[0]))


def test_dtype_round_trip_stays_exact():
    head = small_head().requires_grad_(False)
    cache = TimeConditioningCache(head).attach()
    x = latents(2)
    outs = [_call(head, x, t, None) for t in TS]
    head.double()
    x64 = x.double()
    assert torch.equal(_call(head, x64, TS[0], None), uncached(head, x64, TS[0]))
    head.float()
    assert all(torch.equal(_call(head, x, t, None), r) for t, r in zip(TS, outs))
    assert cache.stats.invalidations_by_reason["fingerprint"] >= 2


# ----------------------------------------------------------------------------- wrapped adaLN linears


def test_parametrized_adaln_linear_is_exact():
    class Scale(nn.Module):
        def forward(self, w):
            return w * 1.5

    head = small_head().requires_grad_(False)
    parametrize.register_parametrization(_adaln(head, 1), "weight", Scale())
    x = latents(2)
    cache = TimeConditioningCache(head).attach()
    ref = uncached(head, x, 0.5)
    assert torch.equal(_call(head, x, 0.5, None), ref) and torch.equal(_call(head, x, 0.5, None), ref)
    _adaln(head, 1).parametrizations.weight.original.data[4, 2] += 0.5
    cache.new_render()
    assert torch.equal(_call(head, x, 0.5, None), uncached(head, x, 0.5))
    assert not torch.equal(uncached(head, x, 0.5), ref)


@pytest.mark.parametrize(
    ("wrap", "match"),
    [
        (lambda lin: prune.l1_unstructured(lin, "weight", 0.3), "prune"),
        (lambda lin: torch.nn.utils.weight_norm(lin), "weight_norm"),
    ],
    ids=["pruning", "legacy_weight_norm"],
)
def test_hook_based_adaln_weights_are_refused_at_attach(wrap, match):
    head = small_head().requires_grad_(False)
    with pytest.warns(FutureWarning) if match == "weight_norm" else contextlib.nullcontext():
        wrap(_adaln(head, 0))
    with pytest.raises(TypeError, match=r"blocks\.0\.adaLN_mod\.1.*" + match):
        TimeConditioningCache(head)
    assert head.modulator_provider is None  # nothing half-applied


def test_peft_adapter_on_adaln_linear_is_refused_at_attach():
    from peft import LoraConfig, inject_adapter_in_model

    head = small_head().requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["blocks.0.adaLN_mod.1"]), head)
    with pytest.raises(TypeError, match=r"blocks\.0\.adaLN_mod\.1.*adapter.*merge_and_unload"):
        TimeConditioningCache(head)


def test_pruning_made_permanent_is_accepted_and_exact():
    head = small_head().requires_grad_(False)
    prune.l1_unstructured(_adaln(head, 0), "weight", 0.3)
    prune.remove(_adaln(head, 0), "weight")
    x = latents(2)
    TimeConditioningCache(head).attach()
    assert torch.equal(_call(head, x, 0.5, None), uncached(head, x, 0.5))
