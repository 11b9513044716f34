"""The int8 (W8A8) ops against their plain-PyTorch twins: shape and dtype sweeps, all-zero rows, outliers,
exact rounding ties, strided inputs, the fused LayerNorm variants, opcheck and error messages."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from paraformer_ext import has_kernels
from paraformer_ext.ops import int8 as I

needs_kernels = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MS = [0, 1, 7, 17, 100, 333]
KS = [1, 8, 64, 512, 2048]
NS = [8, 512, 2048, 8404]
TIE_STEP = 2.0**-4  # a power of two: scale = (127 * step) / 127 and the ties (k + 0.5) * step are all exact


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _activations(M, K, dtype, device, seed, specials=True, huge=None):
    """Random rows, plus (when there is room) an all-zero row, a row with one huge value and a row of ties."""
    g = _gen(seed)
    x = torch.randn(M, K, generator=g, dtype=torch.float64) * torch.exp(torch.randn(M, 1, generator=g))
    if specials and M >= 3:
        x[0] = 0
        if huge is None:
            huge = {torch.float32: 1e30, torch.float16: 6e4, torch.bfloat16: 1e30}[dtype]
        x[1, K // 2] = min(huge, 6e4) if dtype == torch.float16 else huge
        x[2] = _tie_row(K, g)
    return x.to(dtype=dtype, device=device)


def _tie_row(K, g):
    """Values exactly at rounding ties x = (k + 0.5) * step, k in [-127, 126], plus 127 * step as the absmax."""
    k = torch.randint(-127, 127, (K,), generator=g).double()
    row = (k + 0.5) * TIE_STEP
    row[0] = 127 * TIE_STEP
    return row


def _assert_q_equal(q, s, q_ref, s_ref):
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert q.shape == q_ref.shape and s.shape == s_ref.shape
    assert q.is_contiguous()
    assert torch.equal(s.cpu(), s_ref.cpu()), (s.cpu() - s_ref.cpu()).abs().max()
    assert torch.equal(q.cpu(), q_ref.cpu()), (q.cpu().int() - q_ref.cpu().int()).abs().max()


def _assert_q_close(q, s, q_ref, s_ref, max_frac=1e-3):
    """LayerNorm variants: the statistics are summed in another order than F.layer_norm, so a q value sitting
    next to a rounding tie may move by one level; scales agree to 1e-6 relative."""
    assert q.dtype == torch.int8 and q.shape == q_ref.shape and s.shape == s_ref.shape
    torch.testing.assert_close(s.cpu(), s_ref.cpu(), rtol=1e-6, atol=0)
    d = (q.cpu().int() - q_ref.cpu().int()).abs()
    assert d.numel() == 0 or d.max() <= 1
    assert d.numel() == 0 or (d != 0).float().mean() <= max_frac, (d != 0).float().mean()


def _assert_within_one_ulp(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    out, ref = out.cpu(), ref.cpu()
    if out.dtype == torch.float32:
        assert torch.equal(out, ref), (out - ref).abs().max()
        return
    a, b = out.view(torch.int16).int(), ref.view(torch.int16).int()
    same_sign = (a < 0) == (b < 0)
    assert bool(((a - b).abs() <= 1)[same_sign].all()) and bool((out == ref)[~same_sign].all())


# --- quantize_rows ------------------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K", list(itertools.product(MS, KS)))
def test_quantize_rows_matches_reference(device, dtype, M, K):
    x = _activations(M, K, dtype, device, seed=M * 7919 + K)
    q, s = I.quantize_rows_fn(x)
    q_ref, s_ref = I.quantize_rows_ref(x)
    _assert_q_equal(q, s, q_ref, s_ref)
    if M >= 3:
        assert s[0] == 0 and q[0].abs().max() == 0  # the all-zero row
        assert q[1].abs().max() == 127  # the outlier keeps the full range


def test_quantize_rows_ref_ties_round_half_to_even():
    """The reference rounds exact ties to even (Python's round): an oracle independent of both implementations."""
    row = _tie_row(300, _gen(3)).float()[None]
    q, s = I.quantize_rows_ref(row)
    assert s.item() == TIE_STEP
    expected = torch.tensor([round(v / TIE_STEP) for v in row[0].tolist()], dtype=torch.int8)
    assert torch.equal(q[0], expected)
    assert (row[0, 1:] / TIE_STEP).frac().abs().eq(0.5).all()  # they really are ties


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_rows_ties_and_nonfinite(device, dtype):
    g = _gen(5)
    x = torch.stack([_tie_row(512, g), -_tie_row(512, g), torch.randn(512, generator=g)]).to(dtype)
    expected = torch.tensor([[round(v / TIE_STEP) for v in r.tolist()] for r in x[:2].double()], dtype=torch.int8)
    x = x.to(device)
    q, s = I.quantize_rows_fn(x)
    assert torch.equal(q[:2].cpu(), expected)
    _assert_q_equal(q, s, *I.quantize_rows_ref(x))
    # non-finite rows: defined and identical everywhere (NaN scale -> q 127; inf absmax -> 0 / 127)
    y = torch.randn(3, 64, generator=g).to(dtype)
    y[0, 5] = float("nan")
    y[1, 7] = float("inf")
    y[2, 9] = -float("inf")
    y = y.to(device)
    q, s = I.quantize_rows_fn(y)
    q_ref, s_ref = I.quantize_rows_ref(y)
    assert torch.equal(q.cpu(), q_ref.cpu())
    torch.testing.assert_close(s.cpu(), s_ref.cpu(), equal_nan=True, rtol=0, atol=0)
    assert (q[0] == 127).all()


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_rows_noncontiguous(device, dtype):
    g = _gen(9)
    wide = torch.randn(50, 600, generator=g).to(dtype=dtype, device=device)
    col = wide[:, 37:549]  # rows strided, last dim contiguous: read in place
    assert not col.is_contiguous() and col.stride(-1) == 1
    _assert_q_equal(*I.quantize_rows_fn(col), *I.quantize_rows_ref(col.contiguous()))
    odd = wide[:, 1:]  # misaligned rows: the scalar CUDA path
    _assert_q_equal(*I.quantize_rows_fn(odd), *I.quantize_rows_ref(odd.contiguous()))
    tr = torch.randn(512, 33, generator=g).to(dtype=dtype, device=device).t()  # last dim strided: copied
    assert tr.stride(-1) != 1
    _assert_q_equal(*I.quantize_rows_fn(tr), *I.quantize_rows_ref(tr.contiguous()))
    every_other = wide[::2, :512]
    _assert_q_equal(*I.quantize_rows_fn(every_other), *I.quantize_rows_ref(every_other.contiguous()))


def test_quantize_weight_ref():
    g = _gen(11)
    w = torch.randn(64, 300, generator=g)
    w[3] = 0
    wq, ws = I.quantize_weight_ref(w)
    assert wq.dtype == torch.int8 and ws.dtype == torch.float32 and wq.shape == w.shape and ws.shape == (64,)
    assert ws[3] == 0 and wq[3].abs().max() == 0
    keep = torch.arange(64) != 3
    assert torch.equal(ws[keep], w[keep].abs().amax(1) / 127)
    assert (wq[keep].abs().amax(1) == 127).all()
    err = (wq.float() * ws[:, None] - w).abs()
    assert (err <= ws[:, None] / 2 * (1 + 1e-6)).all()  # round to nearest: at most half a level off
    with pytest.raises(ValueError, match="2-D"):
        I.quantize_weight_ref(torch.randn(3, 4, 5))


# --- int8_linear_epilogue -------------------------------------------------------------------------------------


def _epilogue_inputs(M, N, device, seed):
    g = _gen(seed)
    acc = torch.randint(-(1 << 22), 1 << 22, (M, N), generator=g, dtype=torch.int32)
    if M * N > 0:  # some accumulators beyond 2^24, where float(acc) itself rounds
        flat = acc.view(-1)
        idx = torch.randint(0, M * N, (max(1, M * N // 50),), generator=g)
        flat[idx] = torch.randint(-(1 << 31) + 1, (1 << 31) - 1, idx.shape, generator=g, dtype=torch.int64).int()
    rs = torch.rand(M, generator=g) * 1e-2
    if M > 2:
        rs[2] = 0  # an all-zero activation row
    cs = torch.rand(N, generator=g) * 1e-3
    bias = torch.randn(N, generator=g)
    res = torch.randn(M, N + 24, generator=g)
    return acc.to(device), rs.to(device), cs.to(device), bias.to(device), res.to(device)


# (bias dtype or None, relu, residual)
EPILOGUE_OPTIONS = [(None, False, False), (torch.float32, True, True), (torch.float16, False, True),
                    (torch.bfloat16, True, False)]


@needs_kernels
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,N", list(itertools.product(MS, NS)))
def test_epilogue_matches_reference(device, out_dtype, M, N):
    acc, rs, cs, bias, res_wide = _epilogue_inputs(M, N, device, seed=M * 31 + N)
    for bias_dtype, relu, with_res in EPILOGUE_OPTIONS:
        b = None if bias_dtype is None else bias.to(bias_dtype)
        res = res_wide.to(out_dtype)[:, 8 : 8 + N] if with_res else None  # strided rows, offset start
        out = I.int8_linear_epilogue_fn(acc, rs, cs, b, res, relu, out_dtype)
        ref = I.int8_linear_epilogue_ref(acc, rs, cs, b, res, relu, out_dtype)
        _assert_within_one_ulp(out, ref)
        assert out.is_contiguous() and out.device == acc.device


@needs_kernels
def test_epilogue_noncontiguous_and_misaligned(device):
    acc, rs, cs, bias, res_wide = _epilogue_inputs(40, 132, device, seed=3)
    acc_t = acc.t().contiguous().t()  # column-major acc: copied
    res = res_wide[:, 1:133]  # rows strided and misaligned
    cs_view = torch.cat([cs, cs])[1:133]  # a misaligned view
    for out_dtype in DTYPES:
        r = res.to(out_dtype)
        out = I.int8_linear_epilogue_fn(acc_t, rs, cs_view, bias, r, True, out_dtype)
        _assert_within_one_ulp(out, I.int8_linear_epilogue_ref(acc, rs, cs_view, bias, r, True, out_dtype))
    res_t = torch.randn(132, 40, device=device).t()  # last dim strided: copied
    out = I.int8_linear_epilogue_fn(acc, rs, cs, None, res_t, False, torch.float32)
    assert torch.equal(out, I.int8_linear_epilogue_ref(acc, rs, cs, None, res_t, False, torch.float32))


# --- int8_linear_epilogue_quantize ------------------------------------------------------------------------------


def _ln_params(N, device, seed):
    g = _gen(seed)
    return (1 + 0.3 * torch.randn(N, generator=g)).to(device), (0.1 * torch.randn(N, generator=g)).to(device)


@needs_kernels
@pytest.mark.parametrize("M,N", list(itertools.product(MS, NS + [13000])))
def test_epilogue_quantize_matches_reference(device, M, N):
    acc, rs, cs, bias, _ = _epilogue_inputs(M, N, device, seed=M * 17 + N)
    lw, lb = _ln_params(N, device, seed=N)
    for b, relu in [(None, False), (bias, True), (bias.half(), False)]:
        q, s = I.int8_linear_epilogue_quantize_fn(acc, rs, cs, b, relu)
        _assert_q_equal(q, s, *I.int8_linear_epilogue_quantize_ref(acc, rs, cs, b, relu))
        for ln_b in [lb, None]:
            q, s = I.int8_linear_epilogue_quantize_fn(acc, rs, cs, b, relu, lw, ln_b, 1e-5)
            q_ref, s_ref = I.int8_linear_epilogue_quantize_ref(acc, rs, cs, b, relu, lw, ln_b, 1e-5)
            if M > 2 and b is None:  # row 2 (scale 0) is all zero here: it LayerNorms to ln_bias (or 0) exactly
                assert torch.equal(q[2].cpu(), q_ref[2].cpu())
            _assert_q_close(q, s, q_ref, s_ref)


@needs_kernels
def test_epilogue_quantize_is_epilogue_then_quantize(device):
    """Without LayerNorm the fusion equals the two compiled ops run one after the other, bit for bit."""
    acc, rs, cs, bias, _ = _epilogue_inputs(64, 2048, device, seed=21)
    h = I.int8_linear_epilogue_fn(acc, rs, cs, bias, None, True, torch.float32)
    _assert_q_equal(*I.int8_linear_epilogue_quantize_fn(acc, rs, cs, bias, True), *I.quantize_rows_fn(h))


# --- layer_norm_quantize_rows ---------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K", list(itertools.product(MS, KS)))
def test_layer_norm_quantize_matches_reference(device, dtype, M, K):
    # The outlier stays below 1e19: beyond it F.layer_norm's float32 variance overflows (NaN for K = 1).
    x = _activations(M, K, dtype, device, seed=M * 13 + K, huge=1e6)
    w, b = _ln_params(K, device, seed=K)
    for eps in [1e-12, 1e-5]:
        q, s = I.layer_norm_quantize_rows_fn(x, w, b, eps)
        _assert_q_close(q, s, *I.layer_norm_quantize_rows_ref(x, w, b, eps))


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_quantize_strided_and_param_dtypes(device, dtype):
    g = _gen(23)
    wide = (torch.randn(77, 700, generator=g) * 3 + 1).to(dtype=dtype, device=device)
    x = wide[:, 100:612]
    w, b = _ln_params(512, device, seed=1)
    for wd in [torch.float32, dtype]:
        q, s = I.layer_norm_quantize_rows_fn(x, w.to(wd), b.to(wd))
        _assert_q_close(q, s, *I.layer_norm_quantize_rows_ref(x.contiguous(), w.to(wd), b.to(wd)))
    xt = torch.randn(512, 20, generator=g).to(dtype=dtype, device=device).t()
    _assert_q_close(*I.layer_norm_quantize_rows_fn(xt, w, b), *I.layer_norm_quantize_rows_ref(xt, w, b))


# --- the composed linear ----------------------------------------------------------------------------------------


def _linear_inputs(lead, K, N, device, seed, dtype=torch.float32):
    g = _gen(seed)
    x = torch.randn(*lead, K, generator=g).to(dtype=dtype, device=device)
    w = torch.randn(N, K, generator=g) / K**0.5
    bias = (0.1 * torch.randn(N, generator=g)).to(device)
    wq, ws = I.quantize_weight_ref(w)
    return x, w.to(device), bias, wq.to(device), ws.to(device)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,K,N", [((0,), 64, 8), ((1,), 64, 64), ((7,), 512, 512), ((2, 50), 512, 1536),
                                      ((3, 0, 5), 64, 16), ((333,), 2048, 512), ((16,), 8, 8), ((17,), 64, 8)])
def test_int8_linear_matches_reference(device, dtype, lead, K, N):
    x, _, bias, wq, ws = _linear_inputs(lead, K, N, device, seed=K + N, dtype=dtype)
    res = torch.randn(*lead, N, device=device).to(dtype)
    options = [(None, None, False, None), (bias, res, True, None), (bias, None, False, torch.float32),
               (bias.half(), None, True, torch.bfloat16)]
    for b, r, relu, out_dtype in options:
        r = None if r is None else r.to(out_dtype or dtype)
        out = I.int8_linear_fn(x, wq, ws, b, r, relu, out_dtype)
        ref = I.int8_linear_ref(x, wq, ws, b, r, relu, out_dtype)
        assert out.shape == (*lead, N) and out.dtype == (out_dtype or dtype)
        _assert_within_one_ulp(out, ref)


@needs_kernels
def test_int8_linear_from_quantized(device):
    """The pre-norm path: layer_norm_quantize_rows -> GEMM -> epilogue, and the FFN's fused middle."""
    g = _gen(31)
    x = torch.randn(2, 40, 512, generator=g).to(device)
    lw, lb = _ln_params(512, device, seed=2)
    _, _, b1, w1q, w1s = _linear_inputs((1,), 512, 2048, device, seed=3)
    _, _, b2, w2q, w2s = _linear_inputs((1,), 2048, 512, device, seed=4)
    q, s = I.layer_norm_quantize_rows_fn(x.reshape(-1, 512), lw, lb)
    out = I.int8_linear_from_quantized_fn(q, s, w1q, w1s, b1, None, True, torch.float32)
    assert torch.equal(out, I.int8_linear_from_quantized_ref(q, s, w1q, w1s, b1, None, True, torch.float32))
    acc = I.int_mm(q, w1q)
    q2, s2 = I.int8_linear_epilogue_quantize_fn(acc, s, w1s, b1, True)
    res = x.reshape(-1, 512)
    out2 = I.int8_linear_from_quantized_fn(q2.reshape(2, 40, 2048), s2.reshape(2, 40), w2q, w2s, b2, x, False)
    assert out2.shape == (2, 40, 512)
    ref2 = I.int8_linear_from_quantized_ref(*I.int8_linear_epilogue_quantize_ref(acc, s, w1s, b1, True), w2q, w2s, b2,
                                            res, False)
    assert torch.equal(out2.reshape(-1, 512), ref2)


@needs_kernels
def test_int8_linear_vs_float(device):
    """The quantization error itself, against an fp32 F.linear on Gaussian data (per-row/per-channel int8 is
    about 1% relative); the exact check is against int8_linear_ref above."""
    errs = {}
    for K, N in [(512, 1536), (2048, 512), (512, 2048)]:
        x, w, bias, wq, ws = _linear_inputs((300,), K, N, device, seed=K * N)
        out = I.int8_linear_fn(x, wq, ws, bias)
        ref = F.linear(x, w, bias)
        errs[(K, N)] = ((out - ref).norm() / ref.norm()).item()
    print("int8_linear relative error vs fp32 F.linear:", {k: f"{v:.4f}" for k, v in errs.items()})
    assert all(e < 0.03 for e in errs.values()), errs
    assert all(e > 1e-4 for e in errs.values()), errs  # it is really quantized


@needs_kernels
def test_empty_inputs(device):
    x, _, bias, wq, ws = _linear_inputs((0,), 64, 8, device, seed=1)
    assert I.int8_linear_fn(x, wq, ws, bias).shape == (0, 8)
    assert I.int8_linear_fn(x.reshape(2, 0, 64), wq, ws, bias, relu=True).shape == (2, 0, 8)
    q, s = I.quantize_rows_fn(x)
    assert q.shape == (0, 64) and s.shape == (0,)
    acc = torch.empty(0, 8, dtype=torch.int32, device=device)
    assert I.int8_linear_epilogue_fn(acc, s, ws, bias).shape == (0, 8)
    assert I.int8_linear_epilogue_quantize_fn(acc, s, ws, bias, False, bias, bias)[0].shape == (0, 8)
    w = torch.ones(64, device=device)
    assert I.layer_norm_quantize_rows_fn(x, w, w)[0].shape == (0, 64)
    q, s = I.quantize_rows_fn(torch.randn(3, 0, device=device))  # K = 0: empty rows, scale 0
    assert q.shape == (3, 0) and torch.equal(s.cpu(), torch.zeros(3))


@needs_kernels
def test_cuda_gemm_shape_rule(device):
    if device.type != "cuda":
        pytest.skip("the _int_mm shape rule only applies on CUDA")
    for M in [1, 5, 16, 17]:  # M <= 16 is padded
        q = torch.randint(-127, 128, (M, 64), dtype=torch.int8, device=device)
        w = torch.randint(-127, 128, (24, 64), dtype=torch.int8, device=device)
        assert torch.equal(I.int_mm(q, w).cpu(), (q.double() @ w.double().t()).int().cpu())
    with pytest.raises(ValueError, match="multiples of 8.*keep this layer in float"):
        I.int_mm(torch.zeros(20, 12, dtype=torch.int8, device=device),
                 torch.zeros(8, 12, dtype=torch.int8, device=device))


# --- split activations ------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K", list(itertools.product([0, 1, 7, 100], [1, 64, 512])))
def test_quantize_rows_split_matches_reference(device, dtype, M, K):
    x = _activations(M, K, dtype, device, seed=M * 31 + K)
    q, s, s_lo = I.quantize_rows_split_fn(x)
    q_ref, s_ref, s_lo_ref = I.quantize_rows_split_ref(x)
    assert q.shape == (2 * M, K)
    _assert_q_equal(q[:M], s, q_ref[:M], s_ref)
    _assert_q_equal(q[M:], s_lo, q_ref[M:], s_lo_ref)
    # the high half is exactly quantize_rows; together they carry ~7 more bits
    _assert_q_equal(q[:M], s, *I.quantize_rows_ref(x))
    if M and K > 1:
        xf = x.float().cpu()
        fin = torch.isfinite(xf).all(1) & (xf.abs().amax(1) < 1e20)
        one = q[:M].float().cpu() * s.cpu()[:, None]
        two = one + q[M:].float().cpu() * s_lo.cpu()[:, None]
        e1, e2 = (one - xf)[fin].abs().max(), (two - xf)[fin].abs().max()
        assert e2 <= e1 / 100 or e1 == 0


@needs_kernels
def test_quantize_rows_split_with_layer_norm_and_strides(device):
    x = _activations(50, 512, torch.float32, device, seed=7, specials=False)
    w, b = _ln_params(512, device, seed=8)
    q, s, s_lo = I.quantize_rows_split_fn(x, w, b, 1e-12)
    q_ref, s_ref, s_lo_ref = I.quantize_rows_split_ref(x, w, b, 1e-12)
    _assert_q_close(q[:50], s, q_ref[:50], s_ref)
    # the error rows are tiny quantities: compare the reconstruction instead of individual levels
    h = F.layer_norm(x.float(), (512,), w, b, 1e-12).cpu()
    two = (q[:50].float() * s[:, None] + q[50:].float() * s_lo[:, None]).cpu()
    assert (two - h).abs().max() < 2e-4 * h.abs().max()
    wide = _activations(20, 192, torch.bfloat16, device, seed=9)
    got = I.quantize_rows_split_fn(wide[:, 64:128])
    want = I.quantize_rows_split_ref(wide[:, 64:128].contiguous())
    for a, r in zip(got, want):
        assert torch.equal(a.cpu(), r.cpu())


@needs_kernels
def test_int8_linear_split_kernels_equal_reference(device):
    g = _gen(3)
    x = torch.randn(2, 33, 256, generator=g).to(device)
    wq, ws = I.quantize_weight_ref(torch.randn(96, 256, generator=g).to(device))
    bias = torch.randn(96, generator=g).to(device)
    for dt in DTYPES:
        got = I.int8_linear_split(x.to(dt), wq, ws, bias, kernels=True)
        want = I.int8_linear_split(x.to(dt), wq, ws, bias, kernels=False)
        assert got.dtype == dt and torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("kernels", [False, pytest.param(True, marks=needs_kernels)])
def test_int8_linear_split_adds_residual_in_float32(device, kernels):
    """The epilogue's rule, as in int8_linear: act(...) + residual in float32, rounded to out_dtype once.
    Casting first and adding the residual in bfloat16 rounds twice, which moves many outputs."""
    g = _gen(5)
    x = torch.randn(3, 40, 128, generator=g).to(device)
    wq, ws = I.quantize_weight_ref(torch.randn(64, 128, generator=g).to(device))
    bias = torch.randn(64, generator=g).to(device)
    res = (torch.randn(3, 40, 64, generator=g) * 7).to(device, torch.bfloat16)
    for relu in (False, True):
        y = I.int8_linear_split(x, wq, ws, bias, None, relu, torch.float32, kernels=kernels)
        want = (y + res.float()).to(torch.bfloat16)
        got = I.int8_linear_split(x, wq, ws, bias, res, relu, torch.bfloat16, kernels=kernels)
        assert got.dtype == torch.bfloat16 and torch.equal(got.cpu(), want.cpu())
        assert not torch.equal(want, y.to(torch.bfloat16) + res)  # the test tells the two orders apart


# --- opcheck and errors ---------------------------------------------------------------------------------------


@needs_kernels
def test_opcheck(device):
    x = _activations(9, 64, torch.float32, device, seed=41)
    acc, rs, cs, bias, res = _epilogue_inputs(9, 64, device, seed=42)
    w, b = _ln_params(64, device, seed=43)
    ops = torch.ops.paraformer_ext
    torch.library.opcheck(ops.quantize_rows.default, (x,))
    torch.library.opcheck(ops.quantize_rows.default, (x.half()[:, 1:],))
    for args in [(acc, rs, cs, None, None, False, torch.float32), (acc, rs, cs, bias, res[:, :64], True, torch.float32),
                 (acc, rs, cs, bias.half(), res[:, :64].half(), False, torch.float16)]:
        torch.library.opcheck(ops.int8_linear_epilogue.default, args)
    for args in [(acc, rs, cs, None, False, None, None, 1e-5), (acc, rs, cs, bias, True, w, b, 1e-12),
                 (acc, rs, cs, bias, True, w, None, 1e-5)]:
        torch.library.opcheck(ops.int8_linear_epilogue_quantize.default, args)
    torch.library.opcheck(ops.layer_norm_quantize_rows.default, (x, w, b, 1e-5))
    torch.library.opcheck(ops.layer_norm_quantize_rows.default, (x.bfloat16(), w, b, 1e-12))
    torch.library.opcheck(ops.quantize_rows_split.default, (x, None, None, 1e-12))
    torch.library.opcheck(ops.quantize_rows_split.default, (x.clamp(-1e4, 1e4).half(), w, b, 1e-12))  # no inf: NaN != NaN


@needs_kernels
def test_bad_inputs_raise_clear_errors(device):
    x = torch.randn(4, 16, device=device)
    acc = torch.zeros(4, 8, dtype=torch.int32, device=device)
    rs, cs = torch.ones(4, device=device), torch.ones(8, device=device)
    w16 = torch.ones(16, device=device)
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16, got Char"):
        I.quantize_rows_fn(x.to(torch.int8))
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16, got Double"):
        I.quantize_rows_fn(x.double())
    with pytest.raises(RuntimeError, match=r"x must be 2-D \(M, K\).*reshape"):
        I.quantize_rows_fn(x[None])
    with pytest.raises(RuntimeError, match="acc must be int32"):
        I.int8_linear_epilogue_fn(acc.float(), rs, cs)
    with pytest.raises(RuntimeError, match="acc must be 2-D"):
        I.int8_linear_epilogue_fn(acc[None], rs, cs)
    with pytest.raises(RuntimeError, match=r"row_scale must have shape \(M,\) = \(4,\)"):
        I.int8_linear_epilogue_fn(acc, rs[:3], cs)
    with pytest.raises(RuntimeError, match=r"col_scale must have shape \(N,\) = \(8,\)"):
        I.int8_linear_epilogue_fn(acc, rs, torch.ones(9, device=device))
    with pytest.raises(RuntimeError, match="row_scale must be float32"):
        I.int8_linear_epilogue_fn(acc, rs.half(), cs)
    with pytest.raises(RuntimeError, match=r"bias must have shape \(N,\)"):
        I.int8_linear_epilogue_fn(acc, rs, cs, torch.ones(7, device=device))
    with pytest.raises(RuntimeError, match="residual dtype .* differs from out_dtype"):
        I.int8_linear_epilogue_fn(acc, rs, cs, None, torch.zeros(4, 8, device=device), False, torch.float16)
    with pytest.raises(RuntimeError, match=r"residual must have acc's shape"):
        I.int8_linear_epilogue_fn(acc, rs, cs, None, torch.zeros(4, 9, device=device))
    with pytest.raises(RuntimeError, match="out_dtype must be"):
        I.int8_linear_epilogue_fn(acc, rs, cs, None, None, False, torch.float64)
    with pytest.raises(RuntimeError, match="ln_bias was given without ln_weight"):
        I.int8_linear_epilogue_quantize_fn(acc, rs, cs, None, False, None, cs)
    with pytest.raises(RuntimeError, match=r"ln_weight must have shape \(N,\)"):
        I.int8_linear_epilogue_quantize_fn(acc, rs, cs, None, False, w16, None)
    with pytest.raises(RuntimeError, match="eps must be"):
        I.layer_norm_quantize_rows_fn(x, w16, w16, -1.0)
    with pytest.raises(RuntimeError, match=r"weight must have shape \(K,\) = \(16,\)"):
        I.layer_norm_quantize_rows_fn(x, cs, w16)
    with pytest.raises(RuntimeError, match="LayerNorm over an empty row"):
        I.layer_norm_quantize_rows_fn(x[:, :0], w16[:0], w16[:0])
    with pytest.raises(ValueError, match="wq is"):
        I.int8_linear_fn(x, torch.zeros(8, 12, dtype=torch.int8, device=device), cs)
    with pytest.raises(ValueError, match="int8"):
        I.int8_linear_fn(x, torch.zeros(8, 16, device=device), cs)
    with pytest.raises(ValueError, match="w_scale"):
        I.int8_linear_fn(x, torch.zeros(8, 16, dtype=torch.int8, device=device), rs)
    if device.type == "cuda":  # one tensor on the other device
        with pytest.raises(RuntimeError, match="row_scale is on cpu but acc is on cuda"):
            I.int8_linear_epilogue_fn(acc, rs.cpu(), cs)
        with pytest.raises(RuntimeError, match="is on cuda.* but acc is on cpu"):
            I.int8_linear_epilogue_fn(acc.cpu(), rs, cs.cpu())
        with pytest.raises(RuntimeError, match="weight is on cpu but x is on cuda"):
            I.layer_norm_quantize_rows_fn(x, w16.cpu(), w16)
        with pytest.raises(RuntimeError, match="on cuda"):
            I.int8_linear_epilogue_quantize_fn(acc.cpu(), rs.cpu(), cs.cpu(), None, False, w16[:8], None)


@needs_kernels
def test_dispatch_falls_back_to_reference():
    x, _, bias, wq, ws = _linear_inputs((5, 7), 64, 32, "cpu", seed=51)
    assert torch.equal(I.int8_linear(x, wq, ws, bias, kernels=False), I.int8_linear(x, wq, ws, bias))
    assert torch.equal(I.quantize_rows(x[0], kernels=False)[0], I.quantize_rows(x[0])[0])
