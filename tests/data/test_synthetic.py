"""The synthetic generator: analytic ground truth recovered from its audio; split; determinism."""

import pytest
import torch

from fusion_train.data import synthetic_data


@pytest.fixture(scope="module")
def data():
    return synthetic_data(12, frames=96, seed=5)


def test_shapes_and_names(data):
    assert data.latents.shape == (12, 64, 96)
    assert data.controls.shape == (12, 5, 96)
    assert data.control_names == (
        "rms_energy_bass",
        "rms_energy_body",
        "rms_energy_mid",
        "rms_energy_air",
        "spectral_flux",
    )
    assert data.source == "synthetic"
    # latents are standardised with train-split stats
    train = data.latents[data.train_index]
    assert train.mean(dim=(0, 2)).abs().max() < 1e-4
    db = data.destandardize_latents(data.latents)
    assert abs(float(db.amin()) + 100.0) < 1e-3  # silence sits at the amin floor (-100 dB)
    assert float(db.amax()) <= -6.0 - 3.0 + 1e-3  # loudest tone: -6 dBFS peak, i.e. -9 dB mean square


def test_measured_band_energy_matches_analytic_truth(data):
    truth = data.extras["band_db_truth"]
    measured = data.controls[:, :4]
    active = truth > -60.0
    assert int(active.sum()) > 200
    assert (measured - truth)[active].abs().max() < 0.01  # dB


def test_energy_rises_and_falls_with_the_envelope(data):
    envelope = data.extras["envelope"]
    energy = data.controls[:, :4]
    checked = 0
    for i in range(envelope.shape[0]):
        for b in range(4):
            env = envelope[i, b]
            if env.max() == 0:
                assert energy[i, b].max() < -70  # silent band stays near the floor
                continue
            peak = env.max()
            rising = torch.nonzero(env > 0.1 * peak).flatten()
            on, off = int(rising[0]), int(rising[-1])
            top = int(energy[i, b].argmax())
            assert on <= top <= off  # loudest frame lies inside the envelope
            assert energy[i, b, top] - energy[i, b, max(on - 3, 0)] > 10.0 or on < 3
            assert energy[i, b, top] - energy[i, b, min(off + 3, env.numel() - 1)] > 10.0 or off > env.numel() - 4
            checked += 1
    assert checked >= 20


def test_split_by_piece_and_determinism(data):
    assert set(data.pieces_in("train")).isdisjoint(data.pieces_in("val"))
    assert len(data.pieces_in("val")) == 3
    again = synthetic_data(12, frames=96, seed=5)
    assert torch.equal(again.latents, data.latents) and torch.equal(again.controls, data.controls)
    assert torch.equal(again.val_index, data.val_index)
    other = synthetic_data(12, frames=96, seed=6)
    assert not torch.equal(other.controls, data.controls)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be a positive int"),
        ({"n": 4, "frames": 4}, "frames must be an int >= 8"),
        ({"n": 4, "active_prob": 1.5}, "active_prob"),
        ({"n": 4, "level_db": (-10.0, 3.0)}, "level_db"),
        ({"n": 4, "val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_data(**kwargs)


def test_summary_names_sizes_and_channels(data):
    text = data.summary()
    assert text.splitlines()[0] == (
        "synthetic: 12 excerpts × [64, 96] at 21.53 Hz (4.46 s); train 9 / val 3 excerpts"
    )
    assert all(name in text for name in data.control_names)
