"""The music21 reference data: real pieces, split by piece, cache reuse and rebuilds."""

import builtins
import shutil

import pytest
import torch

from fusion_train.data import (
    ReferenceDataConfig,
    build_reference_data,
    reference_cache_folder,
    split_pieces,
)
from fusion_train.data import corpus as corpus_module
from fusion_train.data import reference as reference_module

pytest.importorskip("music21")

TINY = ReferenceDataConfig(n_pieces=2, excerpts_per_piece=2, frames=48, val_fraction=0.5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    data = build_reference_data(TINY, cache_dir=root, progress=False, workers=1)
    return root, data


@pytest.fixture
def render_counter(monkeypatch):
    calls = []
    original = reference_module._render_piece

    def counting(piece_id, config_dict):
        calls.append(piece_id)
        return original(piece_id, config_dict)

    monkeypatch.setattr(reference_module, "_render_piece", counting)
    return calls


def _copy_cache(built, tmp_path):
    root, _ = built
    shutil.copytree(root, tmp_path / "cache")
    return tmp_path / "cache", reference_cache_folder(TINY, tmp_path / "cache")


def test_two_real_pieces(built):
    _, data = built
    assert data.cache_status == "built" and data.source == "music21"
    assert data.latents.shape == (4, 64, 48) and data.controls.shape == (4, 5, 48)
    assert data.piece_ids[0].split("/")[0] == "bach" and data.piece_ids[2].split("/")[0] == "monteverdi"
    assert set(data.pieces_in("train")).isdisjoint(data.pieces_in("val"))
    assert len(data.pieces_in("train")) == len(data.pieces_in("val")) == 1
    train_latents, _ = data.split("train")
    assert train_latents.mean(dim=(0, 2)).abs().max() < 1e-4  # standardised with train stats
    # real music: the body band is audible and varies, flux has onsets
    assert float(data.controls[:, 1].max()) > -40 and float(data.controls[:, 1].std()) > 1.0
    assert float(data.controls[:, 4].max()) > 1.0
    # the latent-domain extractor agrees with the clean-audio flux exactly and follows the bands
    features = data.control_extractor()(data.latents)
    assert torch.allclose(features[:, 4], data.controls[:, 4], atol=1e-4)
    for b in (1, 2):
        pair = torch.stack([features[:, b].flatten(), data.controls[:, b].flatten()])
        assert torch.corrcoef(pair)[0, 1] > 0.95


def test_second_build_reuses_the_cache(built, tmp_path, render_counter):
    root, folder = _copy_cache(built, tmp_path)
    mtime = (folder / "data.safetensors").stat().st_mtime_ns
    data = build_reference_data(TINY, cache_dir=root, progress=False)
    assert render_counter == [] and data.cache_status == "hit" and data.rendered_pieces == 0
    assert (folder / "data.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(data.latents, built[1].latents) and data.piece_ids == built[1].piece_ids


def test_cache_dir_from_environment(built, tmp_path, monkeypatch, render_counter):
    root, _ = _copy_cache(built, tmp_path)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(root))
    assert build_reference_data(TINY, progress=False).cache_status == "hit"
    assert render_counter == []


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("flip_byte", "checksum mismatch"),
        ("drop_manifest", "no manifest"),
    ],
)
def test_corrupt_or_partial_cache_is_rebuilt(built, tmp_path, render_counter, damage, reason):
    root, folder = _copy_cache(built, tmp_path)
    data_file = folder / "data.safetensors"
    if damage == "flip_byte":
        raw = bytearray(data_file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data_file.write_bytes(bytes(raw))
    else:
        (folder / "manifest.json").unlink()
    data = build_reference_data(TINY, cache_dir=root, progress=False)
    assert data.cache_status.startswith("rebuilt") and reason in data.cache_status
    assert render_counter == [] and data.rendered_pieces == 0  # assembled from the per-piece cache
    assert torch.equal(data.latents, built[1].latents)  # deterministic rebuild
    assert torch.equal(data.controls, built[1].controls)
    assert build_reference_data(TINY, cache_dir=root, progress=False).cache_status == "hit"


def test_interrupted_build_leaves_no_trusted_cache(tmp_path, monkeypatch, render_counter):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C between the data file and the manifest

    monkeypatch.setattr(reference_module, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        build_reference_data(TINY, cache_dir=tmp_path, progress=False)
    folder = reference_cache_folder(TINY, tmp_path)
    assert (folder / "data.safetensors").is_file() and not (folder / "manifest.json").exists()
    monkeypatch.undo()
    data = build_reference_data(TINY, cache_dir=tmp_path, progress=False)
    assert data.cache_status == "rebuilt: no manifest (new or partially written cache)"


def test_interrupted_render_resumes_from_finished_pieces(tmp_path, monkeypatch):
    """Ctrl-C after the first piece: that piece stays on disk and the next build renders only the
    rest; the result is bit-identical to an uninterrupted build."""
    calls = []
    original = reference_module._render_piece

    def interrupt_second(piece_id, config_dict):
        calls.append(piece_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(piece_id, config_dict)

    monkeypatch.setattr(reference_module, "_render_piece", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        build_reference_data(TINY, cache_dir=tmp_path / "a", progress=False)
    calls.clear()
    monkeypatch.setattr(reference_module, "_render_piece", lambda p, c: calls.append(p) or original(p, c))
    resumed = build_reference_data(TINY, cache_dir=tmp_path / "a", progress=False)
    assert len(calls) == 1 and resumed.rendered_pieces == 1
    fresh = build_reference_data(TINY, cache_dir=tmp_path / "b", progress=False)
    assert torch.equal(resumed.latents, fresh.latents) and torch.equal(resumed.controls, fresh.controls)
    assert resumed.piece_ids == fresh.piece_ids


def test_corrupt_piece_file_is_rendered_again(built, tmp_path, render_counter):
    root, folder = _copy_cache(built, tmp_path)
    (folder / "manifest.json").unlink()
    pieces = sorted((root / "reference_data" / "pieces").rglob("*.safetensors"))
    assert len(pieces) == 2
    pieces[0].write_bytes(b"not a safetensors file")
    data = build_reference_data(TINY, cache_dir=root, progress=False)
    assert len(render_counter) == 1 and torch.equal(data.latents, built[1].latents)


def test_cache_folder_is_reported(built):
    root, data = built
    assert data.cache_folder == str(reference_cache_folder(TINY, root))
    assert data.cache_folder in data.summary()


def test_different_config_gets_its_own_folder(built, tmp_path):
    other = ReferenceDataConfig(n_pieces=2, excerpts_per_piece=2, frames=48, val_fraction=0.5, seed=1)
    assert reference_cache_folder(other, tmp_path) != reference_cache_folder(TINY, tmp_path)


def test_split_by_piece_is_disjoint_and_deterministic():
    pieces = [f"bach/p{i}.mxl" for i in range(50)]
    train, val = split_pieces(pieces, 0.2, seed=0)
    assert len(val) == 10 and set(train).isdisjoint(val) and sorted(train + val) == sorted(pieces)
    assert split_pieces(list(reversed(pieces)), 0.2, seed=0) == (train, val)  # order-independent
    assert split_pieces(pieces, 0.2, seed=1)[1] != val
    assert split_pieces(pieces, 0.0, seed=0) == (sorted(pieces), [])
    with pytest.raises(ValueError, match="leaves no training piece"):
        split_pieces(["a", "b"], 0.9, seed=0)


def test_piece_selection_round_robins_collections():
    pieces = ["a/1", "a/2", "a/3", "b/1"]
    order = reference_module._candidate_order(pieces, ("a", "b"), seed=0)
    assert [p.split("/")[0] for p in order[:2]] == ["a", "b"] and sorted(order) == sorted(pieces)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_pieces": 0}, ValueError, "n_pieces must be a positive int"),
        ({"frames": 2.5}, ValueError, "frames must be a positive int"),
        ({"val_fraction": 1.0}, ValueError, "val_fraction must lie in"),
        ({"n_pieces": 1}, ValueError, "n_pieces must be >= 2"),
        ({"mel_scale": "bark"}, ValueError, "mel_scale must be one of"),
        ({"collections": "bach"}, TypeError, "collections must be a non-empty tuple"),
        ({"tempo_range": (10.0, 100.0)}, ValueError, "tempo_range"),
        ({"transpose": 13}, ValueError, "transpose"),
        ({"seed": -1}, ValueError, "seed"),
        ({"n_mels": 4}, ValueError, "no mel centre"),
    ],
)
def test_bad_config(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReferenceDataConfig(**kwargs)


def test_bad_build_arguments(tmp_path):
    with pytest.raises(TypeError, match="config must be a ReferenceDataConfig"):
        build_reference_data({"n_pieces": 2}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        build_reference_data(TINY, cache_dir=tmp_path, workers=0)
    with pytest.raises(ValueError, match="unknown corpus collection 'nope'"):
        build_reference_data(
            ReferenceDataConfig(n_pieces=2, collections=("nope",)), cache_dir=tmp_path, progress=False
        )


def test_missing_music21_gives_install_hint(monkeypatch):
    real_import = builtins.__import__

    def no_music21(name, *args, **kwargs):
        if name == "music21" or name.startswith("music21."):
            raise ImportError("No module named 'music21'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_music21)
    monkeypatch.setattr(corpus_module.importlib, "import_module", lambda name: no_music21(name))
    with pytest.raises(ImportError, match=r"pip install fusion-dit\[data\]"):
        corpus_module.import_music21()


@pytest.mark.slow
def test_slice_of_sixteen_pieces_and_parallel_build_is_identical(tmp_path):
    config = ReferenceDataConfig(n_pieces=16, excerpts_per_piece=2, frames=128)
    serial = build_reference_data(config, cache_dir=tmp_path / "a", progress=False, workers=1)
    parallel = build_reference_data(config, cache_dir=tmp_path / "b", progress=False, workers=2)
    assert torch.equal(serial.latents, parallel.latents)
    assert torch.equal(serial.controls, parallel.controls)
    assert serial.piece_ids == parallel.piece_ids
    assert len(serial) == 32 and {p.split("/")[0] for p in serial.piece_ids} == {
        "bach", "monteverdi", "palestrina", "ryansMammoth"
    }
    assert set(serial.pieces_in("train")).isdisjoint(serial.pieces_in("val"))


def test_description_round_trip_rebuilds_the_same_data_from_the_cache(built, render_counter):
    """What checkpoints record (describe_data) rebuilds the very same data set: a cache hit."""
    import json

    from fusion_train.data import data_from_description, describe_data

    root, data = built
    desc = json.loads(json.dumps(describe_data(data)))  # as stored in a checkpoint's JSON header
    again = data_from_description(desc, cache_dir=root, progress=False)
    assert again.cache_status == "hit" and render_counter == []
    assert torch.equal(again.latents, data.latents) and again.piece_ids == data.piece_ids
    with pytest.raises(ValueError, match="cannot rebuild data from the description"):
        data_from_description({"source": "elsewhere"})
