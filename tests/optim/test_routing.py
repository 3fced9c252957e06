"""Parameter routing: structure-aware rules, forcing, errors, summaries (with hypothesis)."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fusion_train import build_param_groups, summarise_groups

from .conftest import TinyDiT


def _route_map(groups):
    return {n: (g["group_type"], g.get("ns_split", 1)) for g in groups for n in g["param_names"]}


def test_dit_routing_defaults():
    r = _route_map(build_param_groups(TinyDiT()))
    assert r["x_embedder.weight"][0] == "scalar"  # input projection from latent space
    assert r["y_embedder.weight"][0] == "scalar"  # embedding table (128 wide: shape alone would say spectral)
    assert r["proj_out.weight"][0] == "scalar"  # final output projection
    assert r["blocks.0.qkv.weight"][0] == "spectral"
    assert r["blocks.1.fc2.weight"][0] == "spectral"
    assert r["blocks.0.adaLN_mod.1.weight"] == ("spectral", 1)  # modulator d -> 6d
    assert r["t_embedder.0.weight"][0] == "spectral"
    for name in ("blocks.0.norm.weight", "blocks.0.qkv.bias", "final_norm.bias"):
        assert r[name][0] == "scalar"


def test_input_projection_routed_scalar_even_when_shape_says_spectral():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in = nn.Linear(256, 256)  # latent width 256: a shape check alone mis-routes it
            self.hidden = nn.Linear(256, 256)
            self.proj_out = nn.Linear(256, 256)

    r = _route_map(build_param_groups(M()))
    assert r["proj_in.weight"][0] == "scalar" and r["proj_out.weight"][0] == "scalar"
    assert r["hidden.weight"][0] == "spectral"


def test_split_adaln_orthogonalises_chunks():
    groups = build_param_groups(TinyDiT(), split_adaln=True)
    r = _route_map(groups)
    assert r["blocks.0.adaLN_mod.1.weight"] == ("spectral", 6)
    assert r["blocks.0.qkv.weight"] == ("spectral", 1)


def test_split_adaln_trains_with_per_chunk_scale():
    from fusion_train import FusionOpt, lr_shape_scale, orthogonalize

    lin = nn.Linear(128, 6 * 128, bias=False)
    model = nn.Module()
    model.adaLN_mod = lin
    opt = FusionOpt(build_param_groups(model, split_adaln=True), lr=0.1, recipe="muon", momentum=0.0,
                    nesterov=False, lr_scale="original", hot_dtype="fp32")
    w0 = lin.weight.detach().clone()
    lin(torch.randn(16, 128)).square().sum().backward()
    G = lin.weight.grad.detach().reshape(6, 128, 128)
    opt.step()
    expected = w0 - 0.1 * lr_shape_scale(128, 128, "original") * orthogonalize(G, hot_dtype="fp32").reshape(768, 128)
    torch.testing.assert_close(lin.weight.detach(), expected, rtol=1e-5, atol=1e-6)


def test_conv_flatten_option():
    conv = nn.Conv2d(128, 128, 3)
    assert _route_map(build_param_groups(conv))["weight"][0] == "spectral"
    assert _route_map(build_param_groups(conv, flatten_conv=False))["weight"][0] == "scalar"


def test_force_rules():
    m = TinyDiT()
    r = _route_map(build_param_groups(m, force_scalar=[r"qkv"], force_spectral=[r"^proj_out\.weight$"], min_dim=8))
    assert r["blocks.0.qkv.weight"][0] == "scalar"
    assert r["proj_out.weight"][0] == "spectral"


def test_force_spectral_on_vector_raises():
    with pytest.raises(ValueError, match="force_spectral matched 'blocks.0.qkv.bias'.*not a matrix"):
        build_param_groups(TinyDiT(), force_spectral=[r"qkv\.bias"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="force_scalar: invalid regular expression"):
        build_param_groups(TinyDiT(), force_scalar=["("])
    with pytest.raises(ValueError, match="min_dim"):
        build_param_groups(TinyDiT(), min_dim=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        build_param_groups([nn.Parameter(torch.zeros(2))])


def test_frozen_and_tied_parameters():
    m = TinyDiT()
    m.x_embedder.requires_grad_(False)
    m.blocks[1].proj.weight = m.blocks[0].proj.weight  # tied
    names = [n for g in build_param_groups(m) for n in g["param_names"]]
    assert "x_embedder.weight" not in names
    assert len(names) == len(set(names))
    assert sum(1 for n in names if n.endswith("proj.weight") and "blocks" in n) == 1


def test_options_are_merged_into_groups():
    groups = build_param_groups(TinyDiT(), spectral_options={"lr": 0.02}, scalar_options={"weight_decay": 0.0})
    assert all(g["lr"] == 0.02 for g in groups if g["group_type"] == "spectral")
    assert all(g["weight_decay"] == 0.0 for g in groups if g["group_type"] == "scalar")


def test_summary_table():
    text = summarise_groups(TinyDiT())
    assert re.search(r"blocks\.0\.adaLN_mod\.1\.weight\s+768x128\s+spectral\s+adaLN modulator", text)
    assert re.search(r"y_embedder\.weight\s+10x128\s+scalar\s+embedding table", text)
    assert "spectral:" in text and "scalar:" in text
    assert summarise_groups(build_param_groups(TinyDiT())) == text


NAMES = [n for n, _ in TinyDiT().named_parameters()]


@settings(max_examples=40, deadline=None)
@given(forced=st.sets(st.sampled_from(NAMES)), min_dim=st.integers(1, 300), split=st.booleans())
def test_every_parameter_routed_exactly_once(forced, min_dim, split):
    m = TinyDiT()
    pattern = [f"^{re.escape(n)}$" for n in forced]
    groups = build_param_groups(m, force_scalar=pattern, min_dim=min_dim, split_adaln=split)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(NAMES)
    r = _route_map(groups)
    for n in forced:
        assert r[n][0] == "scalar"
    params = dict(m.named_parameters())
    for n, (gtype, _) in r.items():
        if gtype == "spectral":
            p = params[n]
            assert p.ndim >= 2 and min(p.shape[0], p[0].numel()) >= min_dim
