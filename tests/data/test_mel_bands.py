"""Mel scale, filterbank and band definitions shared by fusion_infer and fusion_train.data."""

import math

import pytest
import torch

from fusion_infer.controls.mel_bands import (
    DEFAULT_CONTROL_BANDS,
    ControlBand,
    MelSpec,
    band_fft_mask,
    band_mel_weights,
    fft_frequencies,
    hz_to_mel,
    mel_center_frequencies,
    mel_filterbank,
    mel_to_hz,
)


def test_mel_scale_anchor_values():
    # HTK: 1000 Hz is ~1000 mel by construction; Slaney: 1 kHz = 15 mel, 6.4 kHz = 15 + 27 = 42 mel.
    assert float(hz_to_mel(1000.0, "htk")) == pytest.approx(999.9855, abs=1e-3)
    assert float(hz_to_mel(1000.0, "slaney")) == pytest.approx(15.0)
    assert float(hz_to_mel(6400.0, "slaney")) == pytest.approx(42.0)
    assert float(hz_to_mel(500.0, "slaney")) == pytest.approx(7.5)  # linear part: 200/3 Hz per mel


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_round_trip(scale):
    f = torch.tensor([0.0, 20.0, 440.0, 999.0, 1000.0, 5000.0, 11025.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(f, scale), scale), f, atol=1e-8)


def _reference_filterbank(spec: MelSpec) -> torch.Tensor:
    """Element-by-element triangle formula, written independently of the vectorised code."""
    lo = float(hz_to_mel(spec.f_min, spec.mel_scale))
    hi = float(hz_to_mel(spec.upper_hz, spec.mel_scale))
    step = (hi - lo) / (spec.n_mels + 1)
    corners = [float(mel_to_hz(lo + i * step, spec.mel_scale)) for i in range(spec.n_mels + 2)]
    out = torch.zeros(spec.n_mels, spec.n_freqs, dtype=torch.float64)
    for m in range(spec.n_mels):
        a, b, c = corners[m], corners[m + 1], corners[m + 2]
        for k in range(spec.n_freqs):
            f = k * spec.sample_rate / spec.n_fft
            if a < f <= b:
                out[m, k] = (f - a) / (b - a)
            elif b < f < c:
                out[m, k] = (c - f) / (c - b)
            if spec.norm == "slaney":
                out[m, k] *= 2.0 / (c - a)
    return out


@pytest.mark.parametrize(
    "spec",
    [
        MelSpec(n_fft=512, hop=256, n_mels=20),
        MelSpec(n_fft=512, hop=256, n_mels=16, mel_scale="slaney", norm="slaney", f_min=30.0, f_max=8000.0),
    ],
)
def test_filterbank_matches_direct_computation(spec):
    assert torch.allclose(mel_filterbank(spec, torch.float64), _reference_filterbank(spec), atol=1e-12)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filterbank_triangles_and_partition_of_unity(scale):
    spec = MelSpec(mel_scale=scale)
    fb = mel_filterbank(spec, torch.float64)
    freqs = fft_frequencies(spec)
    centres = mel_center_frequencies(spec)
    assert fb.shape == (64, 1025) and bool((fb >= 0).all()) and bool((fb <= 1).all())
    for m in range(spec.n_mels):
        row = fb[m]
        support = (row > 0).nonzero().flatten()
        # one contiguous support, rising then falling around the centre
        assert int(support[-1] - support[0]) + 1 == support.numel()
        peak = int(row.argmax())
        assert abs(float(freqs[peak]) - float(centres[m])) <= spec.sample_rate / spec.n_fft
        assert bool((row[support[0] : peak + 1].diff() >= 0).all())
        assert bool((row[peak : support[-1] + 1].diff() <= 0).all())
    # coverage: between the first and last centre every bin's weights sum to exactly 1
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    assert torch.allclose(fb[:, inside].sum(0), torch.ones(int(inside.sum()), dtype=torch.float64))


def test_filterbank_rejects_empty_filters():
    with pytest.raises(ValueError, match="cover no FFT bin"):
        mel_filterbank(MelSpec(n_fft=64, hop=32, n_mels=64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mel_scale": "bark"}, "mel_scale must be one of"),
        ({"norm": "area"}, "norm must be one of"),
        ({"n_mels": 0}, "n_mels must be a positive int"),
        ({"hop": 4096}, "must not exceed n_fft"),
        ({"f_max": 20000.0}, "f_min < f_max"),
        ({"amin": 0.0}, "amin"),
    ],
)
def test_melspec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MelSpec(**kwargs)


def test_default_bands_and_weights():
    spec = MelSpec()
    assert [(b.name, b.low_hz, b.high_hz) for b in DEFAULT_CONTROL_BANDS] == [
        ("bass", 20.0, 120.0),
        ("body", 120.0, 600.0),
        ("mid", 600.0, 2500.0),
        ("air", 2500.0, None),
    ]
    weights = band_mel_weights(spec)
    centres = mel_center_frequencies(spec)
    # every mel bin belongs to exactly one band (all centres are >= 20 Hz), in frequency order
    assert torch.equal(weights.sum(0), torch.ones(64))
    owner = weights.argmax(0)
    assert bool((owner.diff() >= 0).all())
    assert float(centres[owner == 0].max()) < 120.0 <= float(centres[owner == 1].min())
    # mel bins per band (documented in docs/reference_data.md); htk gives bass three bins
    assert weights.sum(1).tolist() == [3.0, 11.0, 21.0, 29.0]
    mask = band_fft_mask(spec)
    freqs = fft_frequencies(spec)
    assert bool(mask[3, -1] == 1)  # the air band includes Nyquist
    assert float(freqs[mask[0].bool()].min()) >= 20.0 and float(freqs[mask[0].bool()].max()) < 120.0
    assert torch.equal(mask.sum(0)[freqs >= 20.0], torch.ones(int((freqs >= 20.0).sum())))


def test_slaney_norm_band_weights_undo_area_scaling():
    plain, slaney = MelSpec(), MelSpec(norm="slaney")
    power = torch.rand(plain.n_freqs, dtype=torch.float64)
    a = band_mel_weights(plain, dtype=torch.float64) @ (mel_filterbank(plain, torch.float64) @ power)
    b = band_mel_weights(slaney, dtype=torch.float64) @ (mel_filterbank(slaney, torch.float64) @ power)
    assert torch.allclose(a, b, rtol=1e-10)


def test_band_errors():
    with pytest.raises(ValueError, match="no mel centre"):
        band_mel_weights(MelSpec(n_mels=8), (ControlBand("narrow", 20.0, 40.0),))
    with pytest.raises(ValueError, match="unique"):
        band_mel_weights(MelSpec(), (ControlBand("a", 20.0, 100.0), ControlBand("a", 100.0, 200.0)))
    with pytest.raises(TypeError, match="ControlBand"):
        band_mel_weights(MelSpec(), (("bass", 20.0, 120.0),))
    with pytest.raises(ValueError, match="low_hz < high_hz"):
        ControlBand("bad", 100.0, 50.0)
    assert math.isclose(MelSpec().frame_rate, 22050 / 1024)
