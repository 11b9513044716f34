"""The fused SAN-M paths (ops/sanm.py *_fn) against FunASR's arithmetic (*_ref): random inputs, padded
masks, every dtype, Linear-like replacements, and whole encoder/decoder stacks."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from paraformer_ext import has_kernels
from paraformer_ext.model.attention import MultiHeadedAttentionCrossAtt, MultiHeadedAttentionSANM
from paraformer_ext.model.config import DecoderConfig, EncoderConfig
from paraformer_ext.model.decoder import ParaformerSANMDecoder
from paraformer_ext.model.encoder import SANMEncoder
from paraformer_ext.masks import length_mask
from paraformer_ext.model.layers import PositionwiseFeedForward
from paraformer_ext.ops.sanm import (
    cross_attention_fn,
    cross_attention_ref,
    ffn_fn,
    ffn_ref,
    sanm_self_attention_fn,
    sanm_self_attention_ref,
)

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _init(m: nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return m.eval()


def _lengths(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    return lens


class LinearLike(nn.Module):
    """Stands for an int8 Linear replacement: not an nn.Linear, the Linear-like protocol of ops/linear.py."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.inner = lin
        self.bias = lin.bias

    def forward(self, x, residual=None, relu=False):
        y = self.inner(x)
        y = torch.relu(y) if relu else y
        return y if residual is None else residual + y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_feat,with_residual", [(64, True), (80, False)])
def test_self_attention(device, dtype, in_feat, with_residual):
    B, T, D = 3, 29, 64
    attn = _init(MultiHeadedAttentionSANM(4, in_feat, D, 11), 0).to(device, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, in_feat, generator=g).to(device, dtype)
    res = torch.randn(B, T, D, generator=g).to(device, dtype) if with_residual else None
    lens = _lengths(B, T, 2).to(device)
    mask = length_mask(lens, T, device)
    with torch.no_grad():
        # float64 arithmetic on the same (dtype-rounded) weights and inputs: measures only the computation error
        ref64 = sanm_self_attention_ref(copy.deepcopy(attn).double(), x.double(), lens, mask, None if res is None else res.double())
        out = sanm_self_attention_fn(attn, x, lens, mask, res)
        ref = sanm_self_attention_ref(attn, x, lens, mask, res)
    assert out.dtype == dtype and out.shape == (B, T, D)
    assert rel(out, ref64) < RTOL[dtype]
    assert rel(ref, ref64) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_attention(device, dtype):
    B, N, T, D = 3, 9, 31, 64
    attn = _init(MultiHeadedAttentionCrossAtt(4, D), 3).to(device, dtype)
    attn64 = copy.deepcopy(attn).double()
    g = torch.Generator().manual_seed(4)
    x, mem, res = (torch.randn(*s, generator=g).to(device, dtype) for s in [(B, N, D), (B, T, D), (B, N, D)])
    mask = length_mask(_lengths(B, T, 5).to(device), T, device)
    with torch.no_grad():
        for r in (res, None):
            out = cross_attention_fn(attn, x, mem, mask, r)
            ref64 = cross_attention_ref(attn64, x.double(), mem.double(), mask, None if r is None else r.double())
            assert out.dtype == dtype and rel(out, ref64) < RTOL[dtype]
            assert rel(cross_attention_ref(attn, x, mem, mask, r), ref64) < RTOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ffn(device, dtype):
    ff = _init(PositionwiseFeedForward(64, 256), 6).to(device, dtype)
    x = torch.randn(2, 17, 64, device=device, dtype=dtype)
    res = torch.randn_like(x)
    with torch.no_grad():
        for r in (res, None):
            assert rel(ffn_fn(ff, x, r), ffn_ref(ff, x, r)) < RTOL[dtype]


def test_linear_like_replacements_take_the_generic_path(device):
    """An int8 (non-nn.Linear) module in any Linear slot must give the same result."""
    B, T, D = 2, 21, 64
    attn = _init(MultiHeadedAttentionSANM(4, D, D, 11), 7).to(device)
    cross = _init(MultiHeadedAttentionCrossAtt(4, D), 8).to(device)
    ff = _init(PositionwiseFeedForward(D, 128), 9).to(device)
    x = torch.randn(B, T, D, device=device)
    lens = _lengths(B, T, 10).to(device)
    mask = length_mask(lens, T, device)
    with torch.no_grad():
        want = (sanm_self_attention_fn(attn, x, lens, mask, x), cross_attention_fn(cross, x, x, mask, x), ffn_fn(ff, x, x))
        attn.linear_out, attn.linear_q_k_v = LinearLike(attn.linear_out), LinearLike(attn.linear_q_k_v)
        cross.linear_out, cross.linear_q = LinearLike(cross.linear_out), LinearLike(cross.linear_q)
        ff.w_2 = LinearLike(ff.w_2)
        got = (sanm_self_attention_fn(attn, x, lens, mask, x), cross_attention_fn(cross, x, x, mask, x), ffn_fn(ff, x, x))
        first = sanm_self_attention_fn(attn, x, lens, mask, None)
        assert rel(first, sanm_self_attention_ref(attn, x, lens, mask, None)) < 1e-5
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


def _stack(kernels: bool, enc: SANMEncoder, dec: ParaformerSANMDecoder):
    for m in list(enc.modules()) + list(dec.modules()):
        if hasattr(m, "kernels"):
            m.kernels = kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encoder_decoder_stacks_and_padded_batches(device, dtype):
    """Whole stacks: kernels == reference, and a padded batch gives each item its single result."""
    ecfg = EncoderConfig(output_size=64, attention_heads=4, linear_units=128, num_blocks=3, input_layer="pe", input_size=80)
    dcfg = DecoderConfig(attention_heads=4, linear_units=128, num_blocks=3, att_layer_num=2, kernel_size=11)
    enc = _init(SANMEncoder(ecfg), 11).to(device, dtype)
    dec = _init(ParaformerSANMDecoder(dcfg, 50, 64), 12).to(device, dtype)
    B, T, N = 3, 40, 12
    x = torch.randn(B, T, 80, device=device)
    lens = torch.tensor([T, 23, 7], device=device)
    tgt = torch.randn(B, N, 64, device=device, dtype=dtype)
    tlens = torch.tensor([N, 5, 1], device=device)
    outs = {}
    with torch.no_grad():
        for k in (False, True):
            _stack(k, enc, dec)
            h = enc(x, lens)
            outs[k] = (h, dec(h, lens, tgt, tlens))
        for b in range(B):  # item b alone, kernels on
            h1 = enc(x[b : b + 1, : lens[b]], lens[b : b + 1])
            y1 = dec(h1, lens[b : b + 1], tgt[b : b + 1, : tlens[b]], tlens[b : b + 1])
            assert rel(h1[0], outs[True][0][b, : lens[b]]) < RTOL[dtype]
            assert rel(y1[0], outs[True][1][b, : tlens[b]]) < RTOL[dtype]
    for b in range(B):
        assert rel(outs[True][0][b, : lens[b]], outs[False][0][b, : lens[b]]) < RTOL[dtype]
        assert rel(outs[True][1][b, : tlens[b]], outs[False][1][b, : tlens[b]]) < RTOL[dtype]


# --- gradients: training runs these fused paths under autograd (eval mode, grad on, as FunASR's goldens) -----------


def _gradcheck_module(module: nn.Module, *inputs, **kwargs):
    """gradcheck (float64) of module(*inputs, **kwargs) in eval mode with kernels on (the fused path), w.r.t.
    every floating input and every parameter."""
    module.kernels = True
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    float_at = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]

    def f(*args):
        xs = list(inputs)
        for i, a in zip(float_at, args):
            xs[i] = a
        return torch.func.functional_call(module, dict(zip(names, args[len(float_at):])), tuple(xs), kwargs)

    xs = [inputs[i].detach().clone().requires_grad_() for i in float_at]
    assert torch.autograd.gradcheck(f, (*xs, *params))


@pytest.mark.parametrize("in_feat,with_residual", [(8, True), (6, False)])
def test_gradcheck_self_attention_fn(in_feat, with_residual):
    B, T = 2, 5
    attn = _init(MultiHeadedAttentionSANM(2, in_feat, 8, 3, 0), 1).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, in_feat, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3])
    key_mask = length_mask(lengths, T, x.device)
    res = torch.randn(B, T, 8, generator=g, dtype=torch.float64) if with_residual else None
    norm = nn.LayerNorm(in_feat).double()  # the pre-norm travels unapplied, as in the encoder's eval path
    _gradcheck_module(attn, x, lengths, key_mask, res, norm=norm)


def test_gradcheck_cross_attention_fn():
    B, N, T = 2, 4, 5
    attn = _init(MultiHeadedAttentionCrossAtt(2, 8, 6), 3).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, N, 8, generator=g, dtype=torch.float64)
    mem = torch.randn(B, T, 6, generator=g, dtype=torch.float64)
    res = torch.randn(B, N, 8, generator=g, dtype=torch.float64)
    _gradcheck_module(attn, x, mem, length_mask(torch.tensor([5, 2]), T, x.device), res)


def test_gradcheck_ffn_fn_and_decoder_ffn():
    from paraformer_ext.model.layers import PositionwiseFeedForwardDecoderSANM

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    res = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    _gradcheck_module(_init(PositionwiseFeedForward(8, 12), 6).double(), x, res)
    _gradcheck_module(_init(PositionwiseFeedForwardDecoderSANM(8, 12), 7).double(), x)
