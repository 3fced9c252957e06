"""The user-facing helpers: pipeline-or-transformer arguments, errors naming the fixing call,
ModulatorCache's repr, and one progress bar in verify_equivalence."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DiTPipeline
from diffusers_tiny_models import make_dit, randomize
from fusion_diffusers import (
    disable_modulator_cache,
    enable_modulator_cache,
    get_modulator_cache,
    stats,
    verify_equivalence,
)
from test_diffusers_pipelines import tiny_vae


def _pipe():
    transformer = randomize(make_dit(), 0).eval()
    return DiTPipeline(transformer=transformer, vae=tiny_vae(4), scheduler=DDIMScheduler())


@pytest.mark.parametrize("target", ["pipe", "transformer"])
def test_enable_stats_disable_take_a_pipeline_or_a_transformer(target):
    pipe = _pipe()
    obj = pipe if target == "pipe" else pipe.transformer
    cache = enable_modulator_cache(obj)
    assert get_modulator_cache(pipe.transformer) is cache
    pipe(class_labels=[3], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert stats(obj) is cache.stats and stats(pipe) is stats(pipe.transformer)
    assert cache.stats.misses > 0
    disable_modulator_cache(obj)
    assert get_modulator_cache(pipe.transformer) is None
    assert not hasattr(pipe.transformer, "_reset_stateful_cache")
    disable_modulator_cache(obj)  # a no-op when not enabled


def test_errors_name_the_call_that_fixes_them():
    pipe = _pipe()
    with pytest.raises(ValueError, match=r"call fusion_diffusers\.enable_modulator_cache\(pipe\) first"):
        stats(pipe)
    with pytest.raises(ValueError, match=r"enable_modulator_cache\(transformer\) first"):
        stats(pipe.transformer)
    enable_modulator_cache(pipe)
    with pytest.raises(ValueError, match=r"already enabled .* call disable_modulator_cache\(\.\.\.\) first"):
        enable_modulator_cache(pipe.transformer)

    class UNetPipeline:
        unet = torch.nn.Linear(1, 1)

    for call in (enable_modulator_cache, disable_modulator_cache, stats, verify_equivalence):
        with pytest.raises(TypeError, match=rf"{call.__name__}\(pipe_or_transformer\) takes .* got UNetPipeline "
                                            r"\(a UNet pipeline"):
            call(UNetPipeline())


def test_repr_is_a_useful_one_line_summary():
    pipe = _pipe()
    cache = enable_modulator_cache(pipe)
    pipe(class_labels=[3], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    pipe(class_labels=[3], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    text = repr(cache)
    s = cache.stats
    assert text.startswith("ModulatorCache(family='dit', model=DiTTransformer2DModel, sites=")
    assert f"entries={s.entries}/" in text and f"hits={s.hits}," in text and f"misses={s.misses}," in text
    assert s.hits > 0 and "enabled" in text and "\n" not in text
    with cache.disabled():
        assert ", disabled," in repr(cache)


def test_verify_equivalence_shows_one_progress_bar(capsys):
    pipe = _pipe()
    pipe.set_progress_bar_config(leave=True)
    report = verify_equivalence(pipe, class_labels=[3], num_inference_steps=2)
    assert report.bit_equal and report.hits > 0
    err = capsys.readouterr().err
    assert err.count("verify_equivalence") >= 1
    assert "2/2" not in err  # the pipeline's own per-run denoising bars were silenced
    assert pipe._progress_bar_config == {"leave": True}  # and its settings restored
    verify_equivalence(pipe, class_labels=[3], num_inference_steps=2, progress=False)
    assert "verify_equivalence" not in capsys.readouterr().err
