"""The FSMN-VAD network (spec fsmn_vad.md §3) on our FSMN op, against an independent plain-PyTorch reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, needs_shared
from paraformer_ext import has_kernels
from paraformer_ext.vad.network import FsmnVadEncoder

SMALL = dict(input_dim=40, input_affine_dim=24, fsmn_layers=2, linear_dim=32, proj_dim=16, lorder=6,
             output_affine_dim=20, output_dim=12)


def _random_encoder(seed=0, **conf):
    torch.manual_seed(seed)
    enc = FsmnVadEncoder(**conf)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return enc.eval()


def _reference(enc: FsmnVadEncoder, x: torch.Tensor) -> torch.Tensor:
    """Spec §3.1 written like FunASR does it: depthwise Conv2d over a left-padded (B, D, T, 1) tensor."""
    sd = enc.state_dict()
    lin = lambda name, h, bias=True: F.linear(h, sd[f"{name}.linear.weight"], sd[f"{name}.linear.bias"] if bias else None)
    h = F.relu(lin("in_linear2", lin("in_linear1", x)))
    for i in range(len(enc.fsmn)):
        p = lin(f"fsmn.{i}.linear", h, bias=False)  # (B, T, P)
        w = sd[f"fsmn.{i}.fsmn_block.conv_left.weight"]  # (P, 1, K, 1)
        K = w.shape[2]
        xp = p.transpose(1, 2).unsqueeze(-1)  # (B, P, T, 1)
        conv = F.conv2d(F.pad(xp, (0, 0, K - 1, 0)), w, groups=w.shape[0])
        m = (xp + conv).squeeze(-1).transpose(1, 2)
        h = F.relu(lin(f"fsmn.{i}.affine", m))
    return torch.softmax(lin("out_linear2", lin("out_linear1", h)), dim=-1)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("T", [1, 2, 7, 19, 20, 21, 300])
def test_matches_reference(device, kernels, T):
    if kernels and not has_kernels():
        pytest.skip("compiled extension not built")
    enc = _random_encoder(kernels=kernels).to(device)
    x = torch.randn(2, T, 400, device=device)
    with torch.no_grad():
        y, cache = enc(x)
        ref = _reference(enc, x)
    assert y.shape == (2, T, 248) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, atol=2e-6, rtol=1e-5)
    assert len(cache) == 4 and all(c.shape == (2, 19, 128) for c in cache)


def test_empty_sequence():
    enc = _random_encoder(**SMALL)
    y, cache = enc(torch.zeros(1, 0, 40))
    assert y.shape == (1, 0, 12)
    assert all(torch.equal(c, torch.zeros(1, 5, 16)) for c in cache)  # an empty piece keeps the state


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_cache_equals_one_shot(device, seed):
    """Pieces of any size threaded through the cache give the one-shot output (the FSMN memory part is
    bit-exact; only the BLAS rounding of small matrix products may differ in the last bit)."""
    enc = _random_encoder(seed, **SMALL).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 200, 40, generator=g).to(device)
    with torch.no_grad():
        one, one_cache = enc(x)
        outs, cache, i = [], None, 0
        for n in [1, 3, 5, 1, 40, 2, 100, 48]:
            y, cache = enc(x[:, i : i + n], cache)
            outs.append(y)
            i += n
    assert i == 200
    torch.testing.assert_close(torch.cat(outs, 1), one, atol=1e-6, rtol=1e-6)
    for c, oc in zip(cache, one_cache):
        torch.testing.assert_close(c, oc, atol=1e-6, rtol=1e-6)


def test_cache_is_the_last_projected_frames():
    enc = _random_encoder(**SMALL)
    x = torch.randn(1, 30, 40)
    with torch.no_grad():
        _, cache = enc(x)
        h = F.relu(enc.in_linear2.linear(enc.in_linear1.linear(x)))
        p0 = enc.fsmn[0].linear.linear(h)
    torch.testing.assert_close(cache[0], p0[:, -5:], atol=0, rtol=0)


def test_bad_inputs():
    enc = _random_encoder(**SMALL)
    with pytest.raises(ValueError, match=r"\(B, T, 40\)"):
        enc(torch.zeros(5, 40))
    with pytest.raises(ValueError, match="cache has 1"):
        enc(torch.zeros(1, 3, 40), [torch.zeros(1, 5, 16)])
    with pytest.raises(ValueError, match="cache tensor"):
        enc(torch.zeros(1, 3, 40), [torch.zeros(2, 5, 16)] * 2)
    with pytest.raises(NotImplementedError, match="rorder"):
        FsmnVadEncoder(rorder=2)
    with pytest.raises(ValueError, match="unknown encoder_conf"):
        FsmnVadEncoder(num_heads=4)


def test_strict_loading_names_the_keys():
    enc = _random_encoder(**SMALL)
    good = {"encoder." + k: v.clone() for k, v in enc.state_dict().items()}
    fresh = FsmnVadEncoder(**SMALL)
    fresh.load_funasr_state_dict(good)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, good["encoder." + k])

    missing = dict(good)
    del missing["encoder.fsmn.1.affine.linear.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): encoder\.fsmn\.1\.affine\.linear\.bias\n"):
        FsmnVadEncoder(**SMALL).load_funasr_state_dict(missing)

    extra = dict(good, **{"encoder.fsmn.0.fsmn_block.conv_right.weight": torch.zeros(16, 1, 2, 1)})
    with pytest.raises(ValueError, match="unexpected keys.*conv_right"):
        FsmnVadEncoder(**SMALL).load_funasr_state_dict(extra)

    bad = dict(good, **{"encoder.fsmn.0.fsmn_block.conv_left.weight": torch.zeros(16, 1, 7, 1)})
    with pytest.raises(ValueError, match=r"conv_left.weight: checkpoint \(16, 1, 7, 1\) vs model \(16, 1, 6, 1\)"):
        FsmnVadEncoder(**SMALL).load_funasr_state_dict(bad)

    with pytest.raises(ValueError, match="missing keys"):  # no `encoder.` prefix
        FsmnVadEncoder(**SMALL).load_funasr_state_dict({k[8:]: v for k, v in good.items()})


def test_real_weights_load(vad_model_dir):
    import yaml

    conf = yaml.safe_load((vad_model_dir / "config.yaml").read_text())
    enc = FsmnVadEncoder(**conf["encoder_conf"])
    state = torch.load(vad_model_dir / "model.pt", map_location="cpu", weights_only=True)
    assert len(state) == 24 and sum(v.numel() for v in state.values()) == 428738
    enc.load_funasr_state_dict(state)


@needs_shared
@pytest.mark.parametrize("kernels", [True, False])
def test_golden_scores(vad_model_dir, device, kernels):
    """feats_head (FunASR's network input) → scores_head (its softmax output) within 1e-5."""
    import yaml

    if kernels and not has_kernels():
        pytest.skip("compiled extension not built")
    conf = yaml.safe_load((vad_model_dir / "config.yaml").read_text())
    enc = FsmnVadEncoder(kernels=kernels, **conf["encoder_conf"])
    enc.load_funasr_state_dict(torch.load(vad_model_dir / "model.pt", map_location="cpu", weights_only=True))
    enc = enc.to(device).eval()
    d = np.load(SHARED / "golden" / "vad" / "vad_62s.npz")
    feats = torch.from_numpy(d["feats_head"]).to(device)
    with torch.no_grad():
        scores, _ = enc(feats[None])
    ref = torch.from_numpy(d["scores_head"][: feats.shape[0]])
    err = (scores[0].cpu() - ref).abs().max().item()
    assert err < 1e-5, err
    assert (scores[0, :, 0].cpu() - ref[:, 0]).abs().max().item() < 1e-5
