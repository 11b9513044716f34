"""The fused-epilogue Linear (ops/linear.py) against plain PyTorch: dtypes, residual / ReLU, strided inputs,
the cached oneDNN weight following weight updates, and the Linear-like protocol."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from paraformer_ext.ops.linear import linear_fn, linear_ref, uses_onednn

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _lin(K, N, bias, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K**0.5)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=g))
    return lin.to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("mode", ["plain", "relu", "residual"])
@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 17, 64), (2, 100, 512), (0, 5, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(device, dtype, mode, shape, bias):
    K, N = shape[-1], 96
    lin = _lin(K, N, bias, dtype, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g).to(device, dtype)
    res = torch.randn(*shape[:-1], N, generator=g).to(device, dtype) if mode == "residual" else None
    with torch.no_grad():
        out = linear_fn(lin, x, residual=res, relu=mode == "relu")
        ref = linear_ref(lin, x, residual=res, relu=mode == "relu")
        # float64 arithmetic on the same (dtype-rounded) weights and inputs: measures only the GEMM's error
        ref64 = linear_ref(copy.deepcopy(lin).double(), x.double(), None if res is None else res.double(), mode == "relu")
    assert out.dtype == dtype and out.shape == (*shape[:-1], N)
    if out.numel():
        assert rel(out, ref64) < TOL[dtype]
        assert rel(ref, ref64) < TOL[dtype]
    if mode == "relu":
        assert bool((out >= 0).all())


def test_strided_inputs(device):
    lin = _lin(64, 48, True, torch.float32, device)
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(4, 9, 192, generator=g).to(device)
    x = wide[..., 64:128]  # a column slice, as V inside a QKV projection
    xt = torch.randn(64, 4, 9, generator=g).to(device).permute(1, 2, 0)  # a transposed view
    res = torch.randn(9, 4, 48, generator=g).to(device).transpose(0, 1)
    with torch.no_grad():
        for inp in (x, xt):
            assert rel(linear_fn(lin, inp), linear_ref(lin, inp)) < 1e-6
            assert rel(linear_fn(lin, inp, residual=res), linear_ref(lin, inp, residual=res)) < 1e-6


def test_weight_updates_reach_the_cached_layout():
    lin = _lin(32, 16, True, torch.float32, "cpu")
    x = torch.randn(5, 32)
    with torch.no_grad():
        before = linear_fn(lin, x)
        lin.weight.mul_(2.0)  # in place: the cached oneDNN copy must be remade
        after = linear_fn(lin, x)
        assert rel(after, linear_ref(lin, x)) < 1e-6
        assert rel(after - lin.bias, 2 * (before - lin.bias)) < 1e-6
        lin.load_state_dict({"weight": torch.zeros(16, 32), "bias": torch.ones(16)})
        assert torch.equal(linear_fn(lin, x), torch.ones(5, 16))


def test_onednn_is_used_on_cpu_inference_only():
    lin = _lin(32, 16, True, torch.float32, "cpu")
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert uses_onednn(lin, x) == torch.backends.mkldnn.is_available()
    # with autograd on, the plain path runs (oneDNN's fused op has no backward) and gradients flow
    x.requires_grad_(True)
    assert not uses_onednn(lin, x)
    linear_fn(lin, x, relu=True).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_linear_like_modules_get_the_epilogue_arguments():
    calls = []

    class LinearLike(nn.Module):
        def forward(self, x, residual=None, relu=False):
            calls.append((residual is not None, relu))
            return x

    m, x = LinearLike(), torch.randn(2, 4)
    linear_fn(m, x, relu=True)
    linear_fn(m, x, residual=x)
    assert calls == [(False, True), (True, False)]


def test_relu_with_residual_is_refused():
    lin = _lin(8, 8, True, torch.float32, "cpu")
    with pytest.raises(ValueError, match="relu and residual"):
        linear_fn(lin, torch.randn(2, 8), residual=torch.randn(2, 8), relu=True)


def test_packed_weights_give_the_same_result(monkeypatch):
    import paraformer_ext.ops.linear as L

    lin = _lin(64, 32, True, torch.float32, "cpu")
    x, res = torch.randn(7, 64), torch.randn(7, 32)
    with torch.no_grad():
        plain = (L.linear_fn(lin, x), L.linear_fn(lin, x, residual=res), L.linear_fn(lin, x, relu=True))
        monkeypatch.setattr(L, "PACK_WEIGHTS", True)
        packed = (L.linear_fn(lin, x), L.linear_fn(lin, x, residual=res), L.linear_fn(lin, x, relu=True))
    for a, b in zip(plain, packed):
        assert rel(a, b) < 1e-6


@pytest.mark.parametrize("m", [1, 15, 16, 17, 1024, 1025])
@pytest.mark.parametrize("mode", ["plain", "relu", "residual", "gemm_into"])
def test_row_bucketing_changes_no_row(monkeypatch, m, mode):
    """Padding M to a multiple of ROW_BUCKET (small layers, oneDNN) gives the unpadded rows, the right shape and a
    contiguous output; a large layer is not padded."""
    from paraformer_ext.ops import linear

    lin = _lin(64, 96, True, torch.float32, "cpu")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(m, 64, generator=g)
    res = torch.randn(m, 96, generator=g)

    def run():
        with torch.no_grad():
            if mode == "gemm_into":
                return linear.gemm_into(res + lin.bias, lin, x)
            return linear_fn(lin, x, residual=res if mode == "residual" else None, relu=mode == "relu")

    big = nn.Linear(512, 512)
    assert linear._bucket_rows(torch.randn(17, 512), big).shape == (17, 512)  # K x N >= SMALL_GEMM
    assert linear._bucket_rows(torch.randn(17, 64), lin).shape == (32, 64)
    assert linear._bucket_rows(torch.randn(1025, 64), lin).shape == (1025, 64)  # over PAD_ROWS_MAX
    padded = run()
    monkeypatch.setattr(linear, "ROW_BUCKET", 1)
    plain = run()
    assert padded.shape == plain.shape == (m, 96) and padded.is_contiguous()
    torch.testing.assert_close(padded, plain, rtol=1e-6, atol=1e-6)
