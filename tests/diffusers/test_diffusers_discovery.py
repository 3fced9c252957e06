"""Site discovery: every registered family lists every modulator site of its class, and nothing else.

The provenance trace (:mod:`fusion_diffusers.provenance`) runs one forward of a tiny instance and
finds the modules whose outputs depend on the timestep/conditioning but not on the token streams.
Families are taken from ``families.FAMILIES`` at collection time, so a family added later is
covered without editing this file; its tiny cases come from the test ``CASES`` lists
(``diffusers_tiny_models``, ``tiny_image_models``, ``tiny_video_models`` when present) or, for a
class without a case, from :func:`fusion_diffusers.tiny.tiny_case`.
"""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers_tiny_models import build
from fusion_diffusers import (
    UnsupportedModelError,
    apply_modulator_cache,
    get_modulator_cache,
    remove_modulator_cache,
    selfcheck,
)
from fusion_diffusers.families import FAMILIES, site_paths
from fusion_diffusers.provenance import token_arguments, trace_forward
from fusion_diffusers.selfcheck import family_problems, trace_for_family
from fusion_diffusers.tiny import TinyInstanceError, reduced_config, tiny_case


def _case_lists() -> list:
    cases = []
    for name in ("diffusers_tiny_models", "tiny_image_models", "tiny_video_models"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        cases.extend(getattr(module, "CASES", []))
    return cases


CASES = _case_lists()


def _instances(cls: type) -> list[tuple[str, torch.nn.Module, dict]]:
    """(case name, tiny model, batch-2 inputs) for every test case of ``cls``; the generic tiny
    builder when no case builds that class."""
    out = []
    for case in CASES:
        model = build(case)
        if type(model) is cls:
            out.append((case.name, model, case.inputs(2, torch.float32)))
    if not out:
        model, inputs = tiny_case(cls)
        out.append((f"tiny:{cls.__name__}", model, inputs))
    return out


FAMILY_LIST = sorted(FAMILIES.values(), key=lambda f: f.name)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=[f.name for f in FAMILY_LIST])
def test_family_lists_every_modulator_site(family):
    for name, model, inputs in _instances(family.model_class):
        trace = trace_for_family(model, family, inputs)
        assert trace.sites, f"{name}: the trace found no modulator site at all"
        assert family_problems(model, family, trace) == [], name


@pytest.mark.parametrize("family", FAMILY_LIST, ids=[f.name for f in FAMILY_LIST])
def test_a_site_left_out_fails(family):
    name, model, inputs = _instances(family.model_class)[0]
    trace = trace_for_family(model, family, inputs)
    listed = site_paths(model, family)
    checked = 0
    for path in sorted(trace.sites):
        # the listed site that covers this one (itself, or an enclosing module)
        cover = next(s for s in listed if path == s or path.startswith(s + "."))
        fewer = [s for s in listed if s != cover]
        problems = family_problems(model, family, trace, sites=fewer)
        assert any(path in p and "not listed" in p for p in problems), (name, path, problems)
        checked += 1
    assert checked > 0


def test_a_site_fed_by_an_argument_missing_from_the_key_fails():
    fam = FAMILIES[FluxTransformer2DModel]
    model, inputs = tiny_case(FluxTransformer2DModel)
    trace = trace_forward(model, inputs)
    problems = family_problems(model, dataclasses.replace(fam, conditioning=("guidance",)), trace)
    assert any("pooled_projections" in p and "key" in p for p in problems)


def test_a_site_that_depends_on_tokens_fails():
    fam = FAMILIES[SD3Transformer2DModel]
    model, inputs = tiny_case(SD3Transformer2DModel)
    trace = trace_forward(model, inputs)
    bad = dataclasses.replace(fam, model_sites=(*fam.model_sites, "context_embedder"))
    problems = family_problems(model, bad, trace)
    assert any("context_embedder" in p and "token" in p for p in problems)


def test_trace_labels_follow_the_data():
    model, inputs = tiny_case(FluxTransformer2DModel, {"guidance_embeds": True})
    trace = trace_forward(model, inputs)
    assert token_arguments(inputs) == {"hidden_states", "encoder_hidden_states"}
    assert trace.labels["time_text_embed"] == {"timestep", "guidance", "pooled_projections"}
    assert trace.labels["time_text_embed.timestep_embedder"] == {"timestep"}
    assert trace.modules["x_embedder"].impure_calls == trace.modules["x_embedder"].calls > 0
    assert not trace.is_modulator("pos_embed")  # rotary tables: ids only, no timestep
    assert "time_text_embed" not in trace.sites  # feeds only other sites
    assert "transformer_blocks.1.norm1_context.linear" in trace.sites


def test_reduced_config_keeps_switches_and_shrinks_sizes():
    big = reduced_config(FluxTransformer2DModel, {"guidance_embeds": True, "num_layers": 19,
                                                   "attention_head_dim": 128, "axes_dims_rope": (16, 56, 56)})
    assert big["guidance_embeds"] is True and big["num_layers"] == 2 and big["num_single_layers"] == 2
    assert big["attention_head_dim"] == 16 and sum(big["axes_dims_rope"]) == 16
    with pytest.raises(TinyInstanceError, match="required forward argument 'timestep_r'"):
        from diffusers import AceStepTransformer1DModel

        tiny_case(AceStepTransformer1DModel)


def test_tiny_spec_defaults_fill_unbuildable_class_defaults_and_a_config_wins():
    from diffusers import CogView4Transformer2DModel, EasyAnimateTransformer3DModel
    from fusion_diffusers.tiny import tiny_model

    # EasyAnimate's __init__ defaults leave in_channels/patch_size None: the spec's defaults fill them...
    assert reduced_config(EasyAnimateTransformer3DModel)["in_channels"] is None
    assert tiny_model(EasyAnimateTransformer3DModel).config.in_channels == 16
    # ...but a model's own config wins over them.
    assert tiny_model(EasyAnimateTransformer3DModel, {"in_channels": 12}).config.in_channels == 12
    # CogView4's rope_axes_dim is a position-table size: the generic rules would shrink it.
    assert tuple(reduced_config(CogView4Transformer2DModel)["rope_axes_dim"]) != (256, 256)
    assert tuple(tiny_model(CogView4Transformer2DModel).config.rope_axes_dim) == (256, 256)
    assert tuple(tiny_model(CogView4Transformer2DModel, {"rope_axes_dim": (64, 32)}).config.rope_axes_dim) == (64, 32)


# ---------------------------------------------------------------------------------------------
# diffusers versions


@pytest.fixture
def other_version(monkeypatch):
    monkeypatch.setattr(selfcheck, "installed_version", lambda: "0.99.0")
    monkeypatch.setattr(selfcheck, "_RESULTS", {})
    calls = []
    real = selfcheck.self_check

    def counting(cls, config=None, **hooks):
        calls.append(cls)
        return real(cls, config, **hooks)

    monkeypatch.setattr(selfcheck, "self_check", counting)
    return calls


def test_other_version_runs_the_self_check_once_per_class(other_version):
    a, _ = tiny_case(DiTTransformer2DModel, seed=1)
    b, _ = tiny_case(DiTTransformer2DModel, seed=2)
    apply_modulator_cache(a)
    apply_modulator_cache(b)
    remove_modulator_cache(a)
    apply_modulator_cache(a)
    assert other_version == [DiTTransformer2DModel]


@pytest.mark.parametrize("family", FAMILY_LIST, ids=[f.name for f in FAMILY_LIST])
def test_every_family_passes_its_self_check(family):
    # What an unverified diffusers version runs at the first apply. A family whose class cannot be
    # built small generically needs a TinySpec in fusion_diffusers.tiny.SPECS, or it would be
    # refused on every diffusers version but the verified ones.
    reason = selfcheck.self_check(family.model_class, apply=apply_modulator_cache, remove=remove_modulator_cache)
    assert reason is None, f"{family.model_class.__name__}: {reason}"


def test_verified_version_skips_the_self_check(monkeypatch, other_version):
    monkeypatch.setattr(selfcheck, "installed_version", lambda: "0.42.1")
    apply_modulator_cache(tiny_case(DiTTransformer2DModel)[0])
    assert other_version == []


def test_other_version_refuses_when_the_self_check_fails(monkeypatch, other_version):
    # Stand in for a diffusers release whose DiT modulators read a new input: the family's key
    # no longer covers what its sites depend on.
    fam = FAMILIES[DiTTransformer2DModel]
    monkeypatch.setitem(FAMILIES, DiTTransformer2DModel, dataclasses.replace(fam, conditioning=()))
    model = tiny_case(DiTTransformer2DModel)[0]
    with pytest.raises(UnsupportedModelError, match=r"0\.99\.0.*self-check failed.*class_labels"):
        apply_modulator_cache(model)
    assert get_modulator_cache(model) is None  # nothing half-applied
    with pytest.raises(UnsupportedModelError):  # cached: refused again without a second check
        apply_modulator_cache(model)
    assert other_version == [DiTTransformer2DModel]


def test_self_check_catches_a_cache_that_replays_wrong_bits(monkeypatch):
    fam = FAMILIES[DiTTransformer2DModel]

    def stale(model, cond):  # every call gets the modulators of timestep 0
        from dataclasses import replace as _r

        return fam.compute(model, _r(cond, timestep=torch.zeros_like(cond.timestep)))

    monkeypatch.setitem(FAMILIES, DiTTransformer2DModel, dataclasses.replace(fam, compute=stale))
    reason = selfcheck.self_check(DiTTransformer2DModel, apply=apply_modulator_cache, remove=remove_modulator_cache)
    assert reason is not None and "differs" in reason


def test_without_diffusers_the_import_says_how_to_install(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "diffusers" or name.startswith("diffusers."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None
        sys.meta_path.insert(0, Block())
        try:
            import fusion_diffusers
        except ImportError as exc:
            print("MSG:", exc)
        else:
            print("imported")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=None, timeout=120)
    assert "MSG:" in out.stdout and "pip install fusion-dit[diffusers]" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# python -m fusion_diffusers.discover


def test_discover_prints_sites_per_block_class_and_a_skeleton(capsys):
    from fusion_diffusers.discover import main

    assert main(["SD3Transformer2DModel"]) == 0
    out = capsys.readouterr().out
    assert "registered family: sd3" in out
    assert "transformer_blocks[*] (JointTransformerBlock): ['norm1.linear', 'norm1_context.linear']" in out
    assert "sites feed on: ['timestep', 'pooled_projections']" in out
    skeleton = out.split("----\n", 1)[1]
    compile(skeleton, "<skeleton>", "exec")  # a module a developer can start from
    assert "model_sites=('norm_out.linear',)" in skeleton


def test_discover_reports_modulators_fed_by_tokens_and_bad_names(capsys):
    import json

    from fusion_diffusers.discover import main

    assert main(["MochiTransformer3DModel", "--json"]) == 0
    proposal = json.loads(capsys.readouterr().out)
    assert "transformer_blocks.0.norm1.linear" in proposal["token_fed"]  # pooled text feeds the blocks
    assert main(["NoSuchTransformer"]) == 2
    assert "class_name" in capsys.readouterr().err
