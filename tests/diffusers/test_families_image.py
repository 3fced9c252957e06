"""The image families (Qwen-Image, FLUX.2, Z-Image, Chroma, HiDream, Lumina2, CogView4, Hunyuan-DiT,
Krea 2, LongCat-Image, Bria, Bria FIBO, Ovis-Image, Qwen-Image 2.1, CogView3-Plus, GLM-Image,
ERNIE-Image, OmniGen, HunyuanImage 2.1, Nucleus-MoE-Image): bit-equal to the uncached model, every listed site really served, keys complete, LoRA,
per-call bypass, refusals.

Site lists and conditioning names are written out here independently of
``fusion_diffusers.families``, so a family that forgets a site or a keyed input fails.
"""

from __future__ import annotations

import pytest
import torch
from cache_checks import (
    assert_fill_and_replay_exact,
    assert_miss_and_exact,
    one_cached_entry,
    scaled,
)
from diffusers_tiny_models import build
from fusion_diffusers import (
    ModulatorCacheConfig,
    UnsupportedModelError,
    apply_modulator_cache,
    compute_modulators,
    precompute,
    remove_modulator_cache,
    resolve_family,
)
from peft import LoraConfig
from tiny_image_models import CASE_BY_NAME, CASES, forward
from torch import nn

DTYPES = [torch.float32, torch.bfloat16]

# Module names (suffixes) whose outputs are a function of (timestep, conditioning, weights) only.
MODULATOR_MODULES = {
    "qwen_image": ("time_text_embed", "img_mod", "txt_mod", "norm_out.linear"),
    "flux2": ("time_guidance_embed", "double_stream_modulation_img", "double_stream_modulation_txt",
              "single_stream_modulation", "norm_out.linear"),
    "z_image": ("t_embedder", "adaLN_modulation"),
    "chroma": ("time_text_embed", "distilled_guidance_layer"),
    "hidream": ("t_embedder", "p_embedder", "adaLN_modulation"),
    "lumina2": ("time_caption_embed.timestep_embedder", "norm1.linear", "norm_out.linear_1"),
    "cogview4": ("time_condition_embed", "norm1.linear", "norm_out.linear"),
    "hunyuan_dit": ("time_extra_emb", "norm1.linear", "norm_out.linear"),
    "krea2": ("time_embed", "time_mod_proj"),
    "qwen_image21": ("time_text_embed", "modulation", "norm_out.linear"),
    "cogview3plus": ("time_condition_embed", "norm1.linear", "norm_out.linear"),
    "glm_image": ("time_condition_embed", "norm1.linear", "norm_out.linear"),
    "ernie_image": ("time_embedding", "adaLN_modulation", "final_norm.linear"),
    "omnigen": ("time_token", "t_embedder", "norm_out.linear"),
    "nucleusmoe_image": ("time_text_embed", "img_mod", "norm_out.linear"),
    # norm_out.linear also names the token refiner blocks' gates
    "hunyuan_image": ("time_guidance_embed", "norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear",
                      "context_embedder.time_text_embed"),
    "longcat_image": ("time_embed", "norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"),
    "ovis_image": ("timestep_embedder", "norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"),
    # Bria: `time_embed` runs every call (the guidance embedding is added into it in place)
    "bria": ("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"),
}
# Sites whose value only feeds other (cached) sites: replacing it alone cannot change the output.
FEEDS_ONLY_SITES = {
    "qwen_image": {"time_text_embed"}, "flux2": {"time_guidance_embed"}, "z_image": {"t_embedder"},
    "chroma": {"time_text_embed"}, "hidream": {"t_embedder", "p_embedder"},
    "lumina2": {"time_caption_embed.timestep_embedder"}, "cogview4": {"time_condition_embed"},
    "hunyuan_dit": {"time_extra_emb"}, "krea2": set(), "longcat_image": {"time_embed"},
    "ovis_image": {"timestep_embedder"}, "bria": set(), "qwen_image21": {"time_text_embed"},
    "cogview3plus": {"time_condition_embed"}, "glm_image": {"time_condition_embed"}, "ernie_image": {"time_embedding"},
    "omnigen": {"t_embedder"}, "nucleusmoe_image": set(),  # the expert router reads temb
    "hunyuan_image": {"time_guidance_embed", "context_embedder.time_text_embed"},
}
# Forward inputs (besides the timestep) that feed the modulators.
CONDITIONING = {
    "qwen_image_layered": ("additional_t_cond",), "flux2_dev": ("guidance",), "hidream": ("pooled_embeds",),
    "cogview4": ("original_size", "target_size", "crop_coords"),
    "cogview3plus": ("original_size", "target_size", "crop_coords"), "glm_image": ("target_size", "crop_coords"),
    "hunyuan_image": ("encoder_hidden_states", "encoder_attention_mask"),
    "hunyuan_image_distilled": ("encoder_hidden_states", "encoder_attention_mask", "guidance", "timestep_r"),
    "hunyuan_dit": ("encoder_hidden_states_t5", "image_meta_size", "style"),
    "hunyuan_dit_12": ("encoder_hidden_states_t5",), "bria_fibo": ("guidance",),
}
TIMESTEP_ARG = {"z_image": "t", "hidream": "timesteps"}


def _family_key(case_name: str) -> str:
    return next(k for k in sorted(MODULATOR_MODULES, key=len, reverse=True) if case_name.startswith(k))


def _t_arg(case_name: str) -> str:
    return TIMESTEP_ARG.get(case_name, "timestep")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cached_outputs_bit_equal_uncached(case, batch, dtype):
    model = build(case, dtype)
    steps = [case.inputs(batch, dtype, seed=s, t=t) for s, t in ((0, case.t_hi), (1, case.t_lo), (2, case.t_lo / 2))]
    cache = assert_fill_and_replay_exact(model, steps, forward)
    assert cache.stats.misses == len(steps) and cache.stats.hits == len(steps) and cache.stats.bypassed == 0
    remove_modulator_cache(model)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_cached_site_value_is_what_the_model_uses(case):
    """Scaling one cached tensor changes the output, for every site that feeds the blocks."""
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    inert = set()
    with one_cached_entry(model, x, forward) as (reference, values):
        for path, v in list(values.items()):
            values[path] = scaled(v)
            if torch.equal(forward(model, x), reference):
                inert.add(path)
            values[path] = v
    assert inert == FEEDS_ONLY_SITES[_family_key(case.name)]


def _to_meta(model: nn.Module, names: tuple[str, ...]) -> int:
    replaced = 0
    for mname, module in model.named_modules():
        if any(mname == n or mname.endswith("." + n) for n in names):
            for sub in module.modules():
                for pname, p in list(sub._parameters.items()):
                    if p is not None and p.device.type != "meta":
                        sub._parameters[pname] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                        replaced += 1
    return replaced


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_precomputed_schedule_runs_with_every_modulator_weight_gone(case):
    """After precompute, every modulator module's weights become meta tensors (any use raises):
    the schedule still renders bit-equal, so every one of them is served from the cache."""
    model = build(case)
    schedule = [case.t_hi, (case.t_hi + case.t_lo) / 2, case.t_lo]
    steps = [case.inputs(2, torch.float32, seed=0, t=t) for t in schedule]
    reference = [forward(model, s) for s in steps]
    extra = case.inputs(2, torch.float32, seed=0, t=case.t_lo / 3)
    extra_reference = forward(model, extra)
    cache = apply_modulator_cache(model, ModulatorCacheConfig(offload_weights=True, samples_per_tensor=0, probe="never"))
    # one precompute per step: some conditioning (MeanFlow's timestep_r) changes with the step
    computed = sum(
        precompute(model, [s[_t_arg(case.name)]], **{k: s[k] for k in CONDITIONING.get(case.name, ())}).computed
        for s in steps
    )
    assert computed == len(steps)
    assert _to_meta(model, MODULATOR_MODULES[_family_key(case.name)]) > 0
    cache.core._snapshot = None  # the meta weights are the new baseline (the proof is about use)
    outputs = [forward(model, s) for s in steps]
    assert cache.stats.misses == 0 and cache.stats.hits == len(steps)
    for out, ref in zip(outputs, reference):
        assert torch.equal(out, ref)
    # The proof can fail: a step that was not precomputed needs the weights, and they are gone
    # (meta weights raise, except in bias-free Linears, where torch returns garbage instead).
    try:
        out = forward(model, extra)
    except (NotImplementedError, RuntimeError):
        out = None
    assert cache.stats.misses == 1
    assert out is None or not torch.equal(out, extra_reference)


def _ulp(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t.float(), torch.full_like(t.float(), -1e9)).to(t.dtype)


def _one_ulp(x: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y.view(-1)[0] = torch.nextafter(y.view(-1)[0], torch.tensor(1e9, dtype=y.dtype))
    return y


def _misses(case_name: str, x: dict) -> list[tuple[str, dict]]:
    t = _t_arg(case_name)
    out = [("timestep_one_ulp", {**x, t: _ulp(x[t])})]
    if case_name == "qwen_image_layered":
        out.append(("additional_t_cond", {**x, "additional_t_cond": x["additional_t_cond"].flip(0)}))
    if case_name in ("flux2_dev", "bria_fibo"):
        out.append(("guidance", {**x, "guidance": x["guidance"] + 1.0}))
        out.append(("guidance_one_ulp", {**x, "guidance": _one_ulp(x["guidance"])}))
    if case_name == "hidream":
        out.append(("pooled_embeds", {**x, "pooled_embeds": x["pooled_embeds"].flip(0)}))
        out.append(("pooled_one_ulp", {**x, "pooled_embeds": _one_ulp(x["pooled_embeds"])}))
    if case_name in ("cogview4", "cogview3plus"):
        out.append(("original_size", {**x, "original_size": x["original_size"] * 2}))
    if case_name in ("cogview4", "cogview3plus", "glm_image"):
        out.append(("target_size", {**x, "target_size": x["target_size"] + 8}))
        out.append(("crop_coords", {**x, "crop_coords": x["crop_coords"] + 1}))
    if case_name.startswith("hunyuan_dit"):
        out.append(("t5_one_ulp", {**x, "encoder_hidden_states_t5": _one_ulp(x["encoder_hidden_states_t5"])}))
    if case_name.startswith("hunyuan_image"):
        out.append(("text_one_ulp", {**x, "encoder_hidden_states": _one_ulp(x["encoder_hidden_states"])}))
        mask = x["encoder_attention_mask"].clone()
        mask[0, -1] = 0
        out.append(("text_mask", {**x, "encoder_attention_mask": mask}))
    if case_name == "hunyuan_image_distilled":
        out.append(("guidance", {**x, "guidance": x["guidance"] + 1.0}))
        out.append(("timestep_r", {**x, "timestep_r": _ulp(x["timestep_r"])}))
    if case_name == "hunyuan_dit":
        out.append(("image_meta_size", {**x, "image_meta_size": x["image_meta_size"] * 2}))
    return out


def _hits(case_name: str, x: dict) -> list[tuple[str, dict]]:
    """Inputs the modulators do not depend on: changing them must reuse the entry."""
    if case_name in ("qwen_image", "flux2_dev", "chroma", "lumina2", "krea2", "longcat_image", "bria",
                     "bria_fibo", "ovis_image", "qwen_image21", "qwen_image21_plain", "cogview4", "cogview3plus",
                     "glm_image", "nucleusmoe_image"):
        return [("prompt", {**x, "encoder_hidden_states": x["encoder_hidden_states"] * -1})]
    if case_name == "omnigen":
        return [("prompt", {**x, "input_ids": x["input_ids"].flip(-1)})]
    if case_name == "ernie_image":
        return [("prompt", {**x, "text_bth": x["text_bth"] * -1})]
    if case_name == "z_image":
        return [("prompt", {**x, "cap_feats": [c * -1 for c in x["cap_feats"]]})]
    if case_name == "flux2_klein":  # no guidance embedder: a guidance value is ignored
        return [("guidance_ignored", {**x, "guidance": torch.full_like(x["timestep"], 3.0)})]
    if case_name == "hunyuan_dit_12":  # >= 1.2 ignores size and style
        return [("image_meta_size_ignored", {**x, "image_meta_size": x["image_meta_size"] * 2})]
    if case_name == "hidream":
        return [("t5_prompt", {**x, "encoder_hidden_states_t5": x["encoder_hidden_states_t5"] * -1})]
    return []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_changing_any_conditioning_misses_and_ignored_inputs_hit(case):
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    cache = apply_modulator_cache(model)
    forward(model, x)
    for name, changed in _misses(case.name, x):
        assert_miss_and_exact(cache, model, changed, forward, name)
    for name, changed in _hits(case.name, x):
        hits = cache.stats.hits
        with cache.disabled():
            expected = forward(model, changed)
        assert torch.equal(forward(model, changed), expected), name
        assert cache.stats.hits == hits + 1, name


LORA_TARGETS = {
    # the modulator Linears of each family (inside the site modules)
    "qwen_image": ["img_mod.1", "txt_mod.1", "norm_out.linear"],
    "flux2_dev": ["double_stream_modulation_img.linear", "double_stream_modulation_txt.linear",
                  "single_stream_modulation.linear", "norm_out.linear"],
    "z_image": r".*(refiner\.\d+\.adaLN_modulation\.0|layers\.\d+\.adaLN_modulation\.0|final_layer\..*\.adaLN_modulation\.1)",
    "chroma": ["distilled_guidance_layer.in_proj", "distilled_guidance_layer.out_proj"],
    "hidream": ["adaLN_modulation.1"],
    "lumina2": ["norm1.linear", "norm_out.linear_1"],
    "cogview4": ["norm1.linear", "norm_out.linear"],
    "krea2": ["time_mod_proj"],
    "qwen_image21": ["modulation.1", "norm_out.linear"],
    "hunyuan_image": ["norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"],
    "nucleusmoe_image": ["img_mod.1", "norm_out.linear"],
    "bria": ["norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"],
    "ovis_image": ["norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear"],
}
LORA_KWARG = {"flux2_dev": "joint_attention_kwargs", "z_image": "joint_attention_kwargs",
              "chroma": "joint_attention_kwargs", "ovis_image": "joint_attention_kwargs"}


@pytest.mark.parametrize("name", list(LORA_TARGETS))
def test_peft_lora_on_modulator_linears_is_served_exactly(name):
    case = CASE_BY_NAME[name]
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    cache = apply_modulator_cache(model)

    def check(**extra):
        with cache.disabled():
            expected = forward(model, x, **extra)
        assert torch.equal(forward(model, x, **extra), expected)
        assert torch.equal(forward(model, x, **extra), expected)
        return expected

    base = check()
    torch.manual_seed(1)
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=LORA_TARGETS[name], init_lora_weights=False))
    with_lora = check()
    assert not torch.equal(with_lora, base)
    half = check(**{LORA_KWARG.get(name, "attention_kwargs"): {"scale": 0.5}})
    assert not torch.equal(half, with_lora)
    model.disable_lora()
    assert torch.equal(check(), base)
    assert cache.stats.hits > 0


def test_flux2_reference_extract_call_runs_uncached_and_exact():
    case = CASE_BY_NAME["flux2_dev"]
    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_hi)
    extract = {**x, "kv_cache_mode": "extract", "num_ref_tokens": 4, "ref_fixed_timestep": 0.0}
    reference = forward(model, extract)
    cache = apply_modulator_cache(model)
    assert torch.equal(forward(model, extract), reference)
    assert cache.stats.bypassed == 1 and cache.stats.misses == 0
    forward(model, x)  # the plain call is served
    assert cache.stats.misses == 1


def test_z_image_omni_call_is_not_served_from_one_entry():
    model = build(CASE_BY_NAME["z_image"])
    fam = resolve_family(model)
    x = CASE_BY_NAME["z_image"].inputs(1, torch.float32)
    omni = {**x, "x": [[x["x"][0], x["x"][0]]], "cap_feats": [[x["cap_feats"][0]]]}
    assert fam.call_conditioning(model, (), omni) is None
    assert fam.call_conditioning(model, (), x) is not None


def test_compute_modulators_names_missing_required_conditioning():
    model = build(CASE_BY_NAME["hidream"])
    with pytest.raises(ValueError, match="pooled_embeds"):
        compute_modulators(model, torch.tensor([500.0]))
    model = build(CASE_BY_NAME["cogview4"])
    with pytest.raises(ValueError, match="original_size"):
        compute_modulators(model, torch.tensor([500.0]))


def test_unproven_layouts_are_refused_with_a_reason():
    model = build(CASE_BY_NAME["qwen_image"])
    model.transformer_blocks[1] = nn.Identity()
    with pytest.raises(UnsupportedModelError, match=r"transformer_blocks\.1 is a Identity"):
        apply_modulator_cache(model)
    model = build(CASE_BY_NAME["flux2_dev"])
    model.single_stream_modulation = nn.Linear(2, 2)
    with pytest.raises(UnsupportedModelError, match="single_stream_modulation"):
        apply_modulator_cache(model)
    model = build(CASE_BY_NAME["z_image"])
    model.layers[0].modulation = False
    with pytest.raises(UnsupportedModelError, match="layers.0 has no adaLN modulation"):
        apply_modulator_cache(model)

    class MyQwen(type(build(CASE_BY_NAME["qwen_image"]))):
        pass

    with pytest.raises(UnsupportedModelError, match="MyQwen"):
        resolve_family(MyQwen(num_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                              in_channels=8, axes_dims_rope=(2, 2, 4)))


def _graphs() -> int:
    import torch._dynamo

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen_image", "flux2_dev"])
def test_compiled_model_does_not_recompile_per_step(name):
    import torch._dynamo

    case = CASE_BY_NAME[name]
    model = build(case)
    ts = torch.linspace(case.t_hi, case.t_lo, 4).tolist()
    steps = [case.inputs(2, torch.float32, seed=0, t=t) for t in ts]
    eager = [forward(model, x) for x in steps]
    torch._dynamo.reset()
    cache = apply_modulator_cache(model)
    runner = torch.compile(model, backend="aot_eager")  # eager numerics: equality is bitwise
    outs = [forward(runner, steps[0])]
    graphs = _graphs()
    outs += [forward(runner, x) for x in steps[1:]]
    assert _graphs() == graphs  # new timesteps: no new graphs
    outs += [forward(runner, x) for x in steps]  # second render: all hits
    assert _graphs() == graphs
    assert cache.stats.hits == len(steps)
    for ref, out in zip(eager + eager, outs):
        assert torch.equal(ref, out)
    torch._dynamo.reset()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compute_modulators_armed_into_the_slots_reproduce_the_forward(case):
    """``compute_modulators`` (the ``mods=`` layout) gives the tensors the forward computes."""
    from fusion_diffusers.slots import SlotTable

    model = build(case)
    x = case.inputs(2, torch.float32, t=case.t_lo)
    reference = forward(model, x)
    cond = {k: x[k] for k in CONDITIONING.get(case.name, ())}
    mods = compute_modulators(model, x[_t_arg(case.name)], hidden_dtype=torch.float32, **cond)
    table = SlotTable.acquire(model, "test")
    previous = table.arm({k: (tuple(v) if isinstance(v, tuple) else v * 1.5) for k, v in mods.values.items()})
    try:
        assert not torch.equal(forward(model, x), reference)  # the armed values are what runs
    finally:
        table.restore(previous)
    previous = table.arm(mods.values)
    try:
        assert torch.equal(forward(model, x), reference)
    finally:
        table.restore(previous)
        table.release("test")


@pytest.mark.parametrize("name", ["qwen_image_layered", "flux2_dev"])
def test_autocast_calls_run_uncached_and_exact(name):
    """Under autocast the forwards cast modulator inputs to activation dtypes the call's inputs do
    not show (Qwen-Image-Layered's `addition_t_emb.to(hidden dtype)` after `img_in`): such calls
    are computed, not replayed."""
    case = CASE_BY_NAME[name]
    model = build(case)
    x = case.inputs(2, torch.float32, t=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = forward(model, x)
        cache = apply_modulator_cache(model)
        assert torch.equal(forward(model, x), reference) and torch.equal(forward(model, x), reference)
    assert cache.stats.bypassed == 2 and cache.stats.misses == 0
