"""Every ```python block of README.md and docs/*.md runs as written (on tiny data).

A block may be preceded by a directive comment, ``<!-- snippet: NAME[, NAME…] -->``, where each
NAME is one of:

* a prelude below: hidden setup that defines what the prose says the reader already has (a
  pipeline ``pipe``, a ``model``, a trained checkpoint under ``runs/h1`` …), at tiny sizes;
* ``slow``: the block runs only with ``pytest -m slow`` (it renders real data or samples at the
  documented sizes);
* ``skip: <reason>``: the block is not run (keep these rare; the reason is shown).

Blocks run in a fresh temporary working directory with ``$FUSION_CACHE_DIR`` pointing into it.
Whenever a block leaves a cache named ``cache`` behind, it must have served hits.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_DIRECTIVE = re.compile(r"<!--\s*snippet:\s*(.*?)\s*-->\s*$")


def _blocks():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            found = _DIRECTIVE.search(before)
            names = [n.strip() for n in found.group(1).split(",")] if found else []
            yield path.relative_to(ROOT).as_posix(), line, match.group(1), names


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    # Tiny models: intra-op threads only add wake-up costs (large on a shared 2-core machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- preludes
def _tiny_head(in_channels=8, out_channels=2, dim=32, depth=1):
    from fusion_infer import ControlHead, ControlHeadConfig

    torch.manual_seed(0)
    return ControlHead(ControlHeadConfig(in_channels=in_channels, out_channels=out_channels, dim=dim,
                                         depth=depth, heads=2, freq_dim=32))


def _prelude_model(ns, monkeypatch):
    ns["model"] = _tiny_head()


def _prelude_trained_head(ns, monkeypatch):
    """A tiny head trained and exported exactly as `fusion-train head --out runs/h1` does."""
    from fusion_train.cli import main

    assert main(["head", "--synthetic", "8", "--frames", "16", "--steps", "2", "--batch-size", "2",
                 "--dim", "32", "--depth", "1", "--heads", "2", "--val-every", "1", "--val-seeds", "1",
                 "--val-t-buckets", "2", "--recipe", "adamw", "--no-progress", "--no-plot",
                 "--out", "runs/h1"]) == 0


def _prelude_dit_pipeline(ns, monkeypatch):
    """A DiTPipeline from tiny random components (class labels 0…999, null class 1000)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=8,
    ).eval()
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    ns["pipe"] = pipe


def _prelude_scaled_down(ns, monkeypatch):
    """The documented calls on synthetic data and a few steps instead of 200 pieces × 2000 steps."""
    import fusion_train
    import fusion_train.data
    from fusion_train.data import synthetic_data
    from fusion_train.training.loop import HeadTrainConfig

    def small_config(**kwargs):
        return HeadTrainConfig(**{**kwargs, "steps": 2, "batch_size": 2, "val_every": 1, "val_seeds": (0,),
                                  "val_t_buckets": 2, "progress": False})

    monkeypatch.setattr(fusion_train, "HeadTrainConfig", small_config)
    monkeypatch.setattr(fusion_train.data, "build_reference_data", lambda *a, **k: synthetic_data(8, frames=16))


def _prelude_training_loop(ns, monkeypatch):
    model = _tiny_head()
    g = torch.Generator().manual_seed(0)
    ns.update(
        model=model,
        loader=[(torch.randn(2, 8, 16, generator=g), torch.rand(2, generator=g)) for _ in range(3)],
        compute_loss=lambda m, batch: m(*batch).square().mean(),
        log=lambda scalars: None,
        validate=lambda m: None,
        export=lambda m: None,
    )


def _prelude_shrink(ns, monkeypatch):
    from fusion_train.data import synthetic_data

    ns["parent"] = _tiny_head(in_channels=64, out_channels=5, dim=64, depth=6)
    ns["x_noised"] = torch.randn(4, 64, 16)
    ns["t"] = torch.rand(4)
    ns["data"] = synthetic_data(12, frames=16)


PRELUDES = {
    "model": _prelude_model,
    "trained-head": _prelude_trained_head,
    "dit-pipeline": _prelude_dit_pipeline,
    "scaled-down": _prelude_scaled_down,
    "training-loop": _prelude_training_loop,
    "shrink": _prelude_shrink,
}


def _params():
    for doc, line, code, names in _blocks():
        marks = []
        for name in names:
            if name == "slow":
                marks.append(pytest.mark.slow)
            elif name.startswith("skip"):
                marks.append(pytest.mark.skip(reason=f"{doc}:{line}: {name}"))
        yield pytest.param(doc, line, code, names, marks=marks, id=f"{doc}:{line}")


@pytest.mark.parametrize("doc, line, code, names", list(_params()))
def test_snippet_runs_as_written(doc, line, code, names, tmp_path, monkeypatch, capsys):
    unknown = [n for n in names if n != "slow" and not n.startswith("skip") and n not in PRELUDES]
    assert not unknown, f"{doc}:{line}: unknown snippet directive(s) {unknown}; known: {sorted(PRELUDES)}"
    if any(n in ("dit-pipeline",) for n in names):
        pytest.importorskip("diffusers")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    ns: dict = {"__name__": "__snippet__"}
    for name in names:
        if name in PRELUDES:
            PRELUDES[name](ns, monkeypatch)
    exec(compile(code, f"{doc}:{line}", "exec"), ns)  # noqa: S102 - the documented code itself
    cache = ns.get("cache")
    if cache is not None and hasattr(cache, "stats"):
        assert cache.stats.hits > 0, f"{doc}:{line}: the example's cache served no hits ({cache.stats})"


def test_every_python_block_is_collected():
    """The README's three examples at least, and no directive hides a block by accident."""
    blocks = list(_blocks())
    readme = [b for b in blocks if b[0] == "README.md"]
    assert len(readme) >= 3
    # Multi-process examples (docs/distributed.md) cannot run in one pytest process; the
    # distributed tests run the same code under spawned process groups instead.
    skipped = [f"{doc}:{line}" for doc, line, _, names in blocks
               if any(n.startswith("skip") and "torchrun" not in n for n in names)]
    assert len(skipped) <= 2, f"too many skipped snippets: {skipped}"


def test_readme_cache_example_reports_hits(tmp_path, monkeypatch, capsys):
    """The README's TimeConditioningCache example prints `hits entries` with hits > 0."""
    doc, line, code, names = next(b for b in _blocks() if b[0] == "README.md" and "TimeConditioningCache" in b[2])
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for name in names:
        PRELUDES[name](ns, monkeypatch)
    capsys.readouterr()
    exec(compile(code, f"{doc}:{line}", "exec"), ns)  # noqa: S102
    hits, entries = (int(v) for v in capsys.readouterr().out.split()[-2:])
    assert hits > 0 and entries == 41
    assert not any(p.requires_grad for p in ns["head"].parameters())
