"""The fused output projection + log_softmax + argmax against its plain-PyTorch twin: shapes, chunks, dtypes
(float and int8 weights), strided inputs, exact ties, non-finite logits, bounded scratch memory, opcheck and
bad inputs."""
import math
import sys

import pytest
import torch
from torch import nn

from conftest import REPO
from paraformer_ext import has_kernels
from paraformer_ext.ops.int8 import quantize_rows_ref
from paraformer_ext.ops.out_proj import (
    out_proj_argmax,
    out_proj_argmax_fn,
    out_proj_argmax_ref,
    out_proj_logits_ref,
)

sys.path.insert(0, str(REPO / "benchmarks"))
from common import peak_cpu_alloc_bytes  # noqa: E402  (the benchmark measures scratch memory the same way)

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

KINDS = ["fp32", "fp16", "bf16", "int8"]
FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _int8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a float (V, D) weight: (int8 weight, (V,) float32 scale)."""
    ws = w.abs().amax(1).clamp_min(1e-8) / 127
    return torch.round(w / ws[:, None]).clamp(-127, 127).to(torch.int8), ws.float()


def _inputs(M, D, V, kind, device, seed, with_bias=True, logit_std=2.0):
    """x (M, D), weight (V, D), bias (V,) float32 or None, weight_scale or None; logits ~ N(0, logit_std²)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, D, generator=g)
    w = torch.randn(V, D, generator=g) * (logit_std / D**0.5)
    b = torch.randn(V, generator=g) if with_bias else None
    ws = None
    if kind == "int8":
        w, ws = _int8_weight(w)
        ws = ws.to(device)
    else:
        x, w = x.to(FLOAT[kind]), w.to(FLOAT[kind])
    return x.to(device), w.to(device), None if b is None else b.to(device), ws


def _tol(kind, logits):
    """Allowed |logp - logp_ref| (and top-1/top-2 gap below which the ids may differ).

    fp32 and int8: the logits agree to an ulp or two (int8: bit for bit: exact int32 products, same
    dequantization order), so only the float32 sums differ: 1e-5. fp16/bf16: the GEMM rounds each logit
    to the dtype, and a GEMM blocked differently (one chunk of columns, a GEMV for chunk = 1) may round it to
    the neighbouring value: one ulp of the largest logit moves logp by at most about that much, so allow two
    ulps of it."""
    if kind in ("fp32", "int8"):
        return 1e-5
    amax = logits.float().abs().max().item() if logits.numel() else 0.0
    return 1e-5 + 2 * torch.finfo(FLOAT[kind]).eps * max(amax, 1.0)


def _assert_matches(ids, logp, x, w, b, ws, kind, max_differ_frac=0.01):
    ref_ids, ref_logp = out_proj_argmax_ref(x, w, b, ws)
    assert ids.dtype == torch.int64 and logp.dtype == torch.float32
    assert ids.shape == ref_ids.shape and logp.shape == ref_logp.shape
    assert ids.device == x.device and logp.device == x.device
    if ids.numel() == 0:
        return
    logits = out_proj_logits_ref(x.reshape(-1, x.size(-1)), w, b, ws)
    tol = _tol(kind, logits)
    assert (logp - ref_logp).abs().max().item() <= tol
    differ = (ids != ref_ids).reshape(-1)
    if differ.any():
        # Only near-ties may disagree, and the op's pick must then be (almost) as likely as the reference's.
        full = torch.log_softmax(logits.float(), dim=-1)
        top = full.topk(min(2, full.size(1)), dim=-1).values
        gap = top[:, 0] - top[:, -1]
        assert (gap[differ] <= tol).all(), "ids differ where the reference's top-1 is clearly ahead"
        picked = full.gather(1, ids.reshape(-1, 1))[:, 0]
        assert (picked[differ] >= ref_logp.reshape(-1)[differ] - tol).all()
        assert int(differ.sum()) <= max(1, int(max_differ_frac * differ.numel()))


SHAPES = [  # (M, D, V): every M in {0, 1, 5, 17, 300}, D in {1, 64, 512}, V in {1, 7, 1000, 8404}
    (0, 64, 1000),
    (1, 512, 8404),
    (5, 1, 7),
    (17, 64, 1000),
    (300, 512, 8404),
    (5, 64, 1),
    (17, 1, 8404),
    (300, 64, 7),
    (1, 1, 1),
    (17, 512, 8404),  # CPU: few rows, big product: the vocabulary is split among the threads
]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("M,D,V", SHAPES, ids=[f"{m}x{d}x{v}" for m, d, v in SHAPES])
def test_matches_reference(device, M, D, V, kind, with_bias):
    if device.type == "cuda" and kind == "int8" and D % 8:
        pytest.skip("int8 on CUDA needs D % 8 == 0 (test_int8_cuda_needs_d_multiple_of_8)")
    x, w, b, ws = _inputs(M, D, V, kind, device, seed=M * 7 + D * 3 + V)
    for chunk in [0, 1, 100, 4096, V + 1]:
        ids, logp = out_proj_argmax_fn(x, w, b, ws, chunk)
        _assert_matches(ids, logp, x, w, b, ws, kind)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_any_thread_count(kind):
    """CPU work split: row blocks per thread, or the vocabulary split when rows are few (parts merged at the
    end); the answer must not depend on how many threads there are."""
    saved = torch.get_num_threads()
    try:
        for M in (17, 64, 300, 1100):
            x, w, b, ws = _inputs(M, 512, 8404, kind, "cpu", seed=M)
            for threads in (1, 2, 3, 4):
                torch.set_num_threads(threads)
                ids, logp = out_proj_argmax_fn(x, w, b, ws)
                _assert_matches(ids, logp, x, w, b, ws, kind)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("kind", KINDS)
def test_strided_and_batched_x(device, kind):
    """x read in place as a column slice of a wider tensor; a transposed view (copied); leading dims."""
    M, D, V = 45, 64, 1000
    x, w, b, ws = _inputs(M, D, V, kind, device, seed=3)
    wide = torch.randn(M, D + 24, device=device).to(x.dtype)
    wide[:, 10 : 10 + D] = x
    xs = wide[:, 10 : 10 + D]
    assert not xs.is_contiguous() and xs.stride(-1) == 1
    xt = x.t().contiguous().t()
    assert xt.stride(-1) != 1
    ref = out_proj_argmax_fn(x, w, b, ws, 100)
    for view in (xs, xt):
        ids, logp = out_proj_argmax_fn(view, w, b, ws, 100)
        assert torch.equal(ids, ref[0]) and torch.equal(logp, ref[1])
        _assert_matches(ids, logp, view, w, b, ws, kind)
    ids, logp = out_proj_argmax_fn(x.reshape(5, 9, D), w, b, ws)
    assert ids.shape == (5, 9) and logp.shape == (5, 9)
    _assert_matches(ids, logp, x.reshape(5, 9, D), w, b, ws, kind)


def test_bias_of_another_dtype(device):
    x, w, b, _ = _inputs(33, 64, 1000, "fp16", device, seed=4)
    for bias in (b.double(), b.bfloat16(), b.half()):
        ids, logp = out_proj_argmax_fn(x, w, bias, None, 100)
        _assert_matches(ids, logp, x, w, bias, None, "fp16")
    xq, wq, bq, ws = _inputs(33, 64, 1000, "int8", device, seed=4)
    ids, logp = out_proj_argmax_fn(xq, wq, bq.double(), ws, 100)
    _assert_matches(ids, logp, xq, wq, bq.double(), ws, "int8")


def _first_max(logits: torch.Tensor) -> torch.Tensor:
    """Lowest column holding each row's maximum (from first principles, no argmax)."""
    is_max = logits == logits.max(dim=1, keepdim=True).values
    cols = torch.arange(logits.size(1), device=logits.device).expand_as(logits)
    return torch.where(is_max, cols, logits.size(1)).min(dim=1).values


@pytest.mark.parametrize("kind", KINDS)
def test_exact_ties_pick_the_lowest_index(device, kind):
    """Integer-valued inputs make the logits exact in every dtype, so equal logits are really equal; duplicate
    weight rows in later chunks tie with earlier ones."""
    M, D, V = 200, 64, 1000
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-1, 2, (M, D), generator=g).float()
    x[x.abs().sum(1) == 0, 0] = 1.0  # int8: a zero row would quantize to scale 0 (all logits equal 0)
    w = torch.randint(-1, 2, (V, D), generator=g).float()
    src = torch.randint(0, V // 2, (150,), generator=g)
    w[src + torch.randint(1, V // 2, (150,), generator=g)] = w[src]  # duplicates later, often in another chunk
    exact = x.double() @ w.double().t()  # |logit| <= 64: exact in float32, float16 and bfloat16
    assert int(((exact == exact.max(1, keepdim=True).values).sum(1) > 1).sum()) > 20, "too few ties to test"
    expected = _first_max(exact).to(device)
    if kind == "int8":
        # every row's absmax is 1: q = 127 x exactly; equal channel scales keep equal products equal
        wq, ws = w.to(torch.int8).to(device), torch.full((V,), 0.01, device=device)
        args = (x.to(device), wq, None, ws)
    else:
        args = (x.to(device, FLOAT[kind]), w.to(device, FLOAT[kind]), None, None)
    for chunk in [0, 1, 3, 100, 128]:
        ids, logp = out_proj_argmax_fn(*args, chunk=chunk)
        assert torch.equal(ids, expected), f"chunk={chunk}"
        assert torch.isfinite(logp).all() and (logp <= 0).all()
    ref_ids, ref_logp = out_proj_argmax_ref(*args)
    assert torch.equal(ref_ids, expected)
    assert (logp - ref_logp).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_max_in_the_last_and_first_chunk(device, kind):
    M, D, V = 6, 64, 1000
    g = torch.Generator().manual_seed(6)
    x = torch.randn(M, D, generator=g)
    w = torch.randn(V, D, generator=g) / D**0.5
    w[V - 1] = 6 * x[0] / x[0].norm()  # row 0's logit there: 6 |x0| ~ 48; the others ~ N(0, 1)
    w[0] = 6 * x[1] / x[1].norm()
    ws = None
    if kind == "int8":
        w, ws = _int8_weight(w)
        x, w, ws = x.to(device), w.to(device), ws.to(device)
    else:
        x, w = x.to(device, FLOAT[kind]), w.to(device, FLOAT[kind])
    for chunk in [0, 100, 999, 7]:
        ids, logp = out_proj_argmax_fn(x, w, None, ws, chunk)
        assert ids[0].item() == V - 1 and ids[1].item() == 0
        _assert_matches(ids, logp, x, w, None, ws, kind)


@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_large_logits_do_not_overflow(device, shift):
    """Logits around ±1e4 (exp would overflow or underflow without the max subtracted): same log-probs as the
    unshifted logits, up to float32 rounding of the shifted logits themselves (ulp(1e4) ~ 1e-3)."""
    M, D, V = 50, 64, 1000
    x, w, b, _ = _inputs(M, D, V, "fp32", device, seed=7)
    ids, logp = out_proj_argmax_fn(x, w, b + shift, None, 100)
    assert torch.isfinite(logp).all()
    ref_ids, ref_logp = out_proj_argmax_ref(x, w, b)  # log_softmax is shift-invariant
    assert (logp - ref_logp).abs().max() <= 4 * torch.finfo(torch.float32).eps * abs(shift)
    ids_r, logp_r = out_proj_argmax_ref(x, w, b + shift)
    assert (logp - logp_r).abs().max() <= 4 * torch.finfo(torch.float32).eps * abs(shift)
    # spread ±1e4: the top logit dominates, logp ~ 0 (−exp(−gap)), nothing overflows
    ids, logp = out_proj_argmax_fn(x * 3e3, w, b, None, 100)
    ref_ids, ref_logp = out_proj_argmax_ref(x * 3e3, w, b)
    assert torch.isfinite(logp).all() and torch.equal(ids, ref_ids)
    assert (logp - ref_logp).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_logits(device, kind):
    M, D, V = 8, 64, 1000
    x, w, b, ws = _inputs(M, D, V, kind, device, seed=8)
    for chunk in [0, 100]:
        # NaN at column 523 for every row: logp NaN, id = the NaN's column (torch.argmax's rule on logits)
        bn = b.clone()
        bn[523] = float("nan")
        bn[700] = float("nan")
        ids, logp = out_proj_argmax_fn(x, w, bn, ws, chunk)
        assert torch.isnan(logp).all() and (ids == 523).all()
        # +inf at one column: probability 1 there; at two columns: each 1/2, the first wins
        bi = b.clone()
        bi[345] = float("inf")
        ids, logp = out_proj_argmax_fn(x, w, bi, ws, chunk)
        assert (ids == 345).all() and (logp == 0).all()
        bi[901] = float("inf")
        ids, logp = out_proj_argmax_fn(x, w, bi, ws, chunk)
        assert (ids == 345).all() and torch.allclose(logp, torch.full_like(logp, -math.log(2)))
        # -inf columns drop out (log_softmax is defined: compare with the reference)
        bm = b.clone()
        bm[::3] = float("-inf")
        ids, logp = out_proj_argmax_fn(x, w, bm, ws, chunk)
        _assert_matches(ids, logp, x, w, bm, ws, kind)
        # every column -inf: the uniform limit, id 0 and logp = -log V
        ids, logp = out_proj_argmax_fn(x, w, torch.full_like(b, float("-inf")), ws, chunk)
        assert (ids == 0).all() and torch.allclose(logp, torch.full_like(logp, -math.log(V)))
    # NaN in one row of x: that row's logp is NaN (its id some valid column), the other rows are untouched
    xn = x.clone()
    xn[2, 5] = float("nan")
    ids, logp = out_proj_argmax_fn(xn, w, b, ws, 100)
    assert torch.isnan(logp[2]) and 0 <= ids[2].item() < V
    keep = torch.arange(M, device=device) != 2
    _assert_matches(ids[keep], logp[keep], x[keep], w, b, ws, kind)


def test_int8_quantization_rule():
    """ops/int8.py's rule: scale = absmax / 127, round half to even, zero row -> scale 0, inf -> scale inf
    (finite / inf = 0, inf / inf = NaN -> +127); the op reads the same q back through one-hot weights
    (logits = q * scale): a q off by one would move logp."""
    x = torch.tensor([
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, -0.5, 0.25, 0.0, 0.0],
        [127.0, 126.5, 125.5, -127.0, 0.5],  # scale exactly 1: 126.5 -> 126, 125.5 -> 126, 0.5 -> 0
        [1.0, float("inf"), 0.0, 0.0, 0.0],
    ])
    q, s = quantize_rows_ref(x)
    assert s[0] == 0 and (q[0] == 0).all()
    assert s[1] == torch.tensor(1.0) / 127 and q[1].tolist() == [127, -64, 32, 0, 0]
    assert s[2] == 1 and q[2].tolist() == [127, 126, 126, -127, 0]
    assert s[3] == float("inf") and q[3].tolist() == [0, 127, 0, 0, 0]
    w, ws = torch.eye(5, dtype=torch.int8), torch.ones(5)
    ids, logp = out_proj_argmax_fn(x, w, None, ws)
    ref_ids, ref_logp = out_proj_argmax_ref(x, w, None, ws)
    assert torch.equal(ids, ref_ids) and ids.tolist() == [0, 0, 0, 0]
    assert (logp[:3] - ref_logp[:3]).abs().max() <= 1e-6 and torch.isnan(logp[3]) and torch.isnan(ref_logp[3])
    assert abs(logp[0].item() + math.log(5)) < 1e-6
    assert abs(logp[2].item() + math.log(1 + 2 * math.exp(-1))) < 1e-6  # away from zero would tie at 127


def test_scratch_memory_does_not_grow_with_v_or_m():
    """What the op holds at its peak is its outputs and, per thread, one tile and a few vectors: bounded by
    the tile budget, far below the M x V float32 logits the reference materialises (twice)."""
    threads = torch.get_num_threads()
    for M, V in [(2000, 8404), (4000, 8404), (2000, 30000)]:
        logits_bytes = M * V * 4
        bound = threads * ((4 << 20) + 64 * 1024) + M * 64  # tiles (<= 4 MB each) + vectors; outputs, states
        for kind in ("fp32", "int8"):
            x, w, b, ws = _inputs(M, 64, V, kind, "cpu", seed=9)
            out_proj_argmax_fn(x[:50], w, b, ws)  # first-call initialisation stays out of the measurement
            peak = peak_cpu_alloc_bytes(lambda: out_proj_argmax_fn(x, w, b, ws))
            assert 0 < peak <= bound and peak < logits_bytes / 10, (M, V, kind, peak)
    assert peak_cpu_alloc_bytes(lambda: out_proj_argmax_ref(x, w, b, ws)) >= logits_bytes  # the measurement works


def test_opcheck(device):
    x, w, b, _ = _inputs(20, 64, 300, "fp32", device, seed=10)
    xh, wh, _, _ = _inputs(20, 64, 300, "bf16", device, seed=10)
    xq, wq, bq, ws = _inputs(20, 64, 300, "int8", device, seed=10)
    wide = torch.randn(20, 80, device=device)[:, 8:72]
    for args in [(x, w, b, None, 0), (x, w, None, None, 7), (xh, wh, b, None, 100), (xq, wq, bq, ws, 64),
                 (wide, w, b, None, 0), (x[:0], w, b, None, 0), (xq, wq, None, ws, 0)]:
        torch.library.opcheck(torch.ops.paraformer_ext.out_proj_argmax.default, args)


def test_outputs_do_not_require_grad():
    lin = nn.Linear(16, 50)
    x = torch.randn(4, 16, requires_grad=True)
    ids, logp = out_proj_argmax(x, lin)
    assert not logp.requires_grad and not ids.requires_grad
    ref_ids, ref_logp = out_proj_argmax(x, lin, kernels=False)
    assert torch.equal(ids, ref_ids) and torch.allclose(logp, ref_logp.detach(), atol=1e-5)


def test_dispatch_and_module_arguments():
    lin = nn.Linear(32, 100)
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        a = out_proj_argmax(x, lin)
        r = out_proj_argmax(x, lin, kernels=False)
        t = out_proj_argmax(x, lin.weight, lin.bias, chunk=10)
    assert a[0].shape == (3, 7) and torch.equal(a[0], r[0]) and torch.equal(a[0], t[0])
    assert torch.allclose(a[1], r[1], atol=1e-5)

    class Int8Linear(nn.Module):  # stands for an int8 replacement: int8 `weight`, `weight_scale`, `bias`
        def __init__(self, lin):
            super().__init__()
            wq, ws = _int8_weight(lin.weight.detach())
            self.register_buffer("weight", wq)
            self.register_buffer("weight_scale", ws)
            self.register_buffer("bias", lin.bias.detach().clone())

    q = Int8Linear(lin)
    a = out_proj_argmax(x, q)
    r = out_proj_argmax(x, q, kernels=False)
    assert torch.equal(a[0], r[0]) and torch.allclose(a[1], r[1], atol=1e-5)
    with pytest.raises(ValueError, match="only with a weight tensor"):
        out_proj_argmax(x, lin, lin.bias)


def test_bad_inputs_raise_clear_errors():
    op = torch.ops.paraformer_ext.out_proj_argmax
    x, w, b = torch.randn(4, 8), torch.randn(10, 8), torch.randn(10)
    wq, ws = _int8_weight(w)
    with pytest.raises(RuntimeError, match="weight dtype"):
        out_proj_argmax_fn(x, w.double())
    with pytest.raises(RuntimeError, match="weight dtype"):
        out_proj_argmax_fn(x, w.half())
    with pytest.raises(RuntimeError, match="needs weight_scale"):
        out_proj_argmax_fn(x, wq)
    with pytest.raises(RuntimeError, match="weight_scale is only for int8"):
        out_proj_argmax_fn(x, w, None, ws)
    with pytest.raises(RuntimeError, match="weight_scale must be float32"):
        out_proj_argmax_fn(x, wq, None, ws.double())
    with pytest.raises(RuntimeError, match=r"weight_scale must be \(V,\)"):
        out_proj_argmax_fn(x, wq, None, ws[:5])
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        out_proj_argmax_fn(x.double(), w.double())
    with pytest.raises(RuntimeError, match="x must be float32, float16 or bfloat16"):
        out_proj_argmax_fn(x.to(torch.int8), wq, None, ws)
    with pytest.raises(RuntimeError, match=r"x must be \(M, D\)"):
        op(torch.randn(2, 4, 8), w, None, None, 0)
    with pytest.raises(RuntimeError, match=r"weight must be \(V, D\)"):
        op(x, torch.randn(10, 8, 1), None, None, 0)
    with pytest.raises(RuntimeError, match="input features but x has D = 8"):
        out_proj_argmax_fn(x, torch.randn(10, 7))
    with pytest.raises(RuntimeError, match=r"bias must be \(V,\)"):
        out_proj_argmax_fn(x, w, torch.randn(9))
    with pytest.raises(RuntimeError, match="bias must be float"):
        out_proj_argmax_fn(x, w, torch.ones(10, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="no rows"):
        out_proj_argmax_fn(x, torch.randn(0, 8))
    with pytest.raises(RuntimeError, match="no features"):
        out_proj_argmax_fn(torch.randn(4, 0), torch.randn(10, 0))
    with pytest.raises(RuntimeError, match="chunk must be >= 0"):
        out_proj_argmax_fn(x, w, b, None, -1)
    with pytest.raises(RuntimeError, match="same device"):  # the fake impl's check (meta dispatch)
        out_proj_argmax_fn(x, w.to("meta"))


def test_device_mismatch(device):
    if device.type != "cuda":
        pytest.skip("needs a second device kind")
    x, w, b = torch.randn(20, 8, device=device), torch.randn(10, 8), torch.randn(10)
    wq, ws = _int8_weight(w)
    with pytest.raises(RuntimeError, match="same device"):
        out_proj_argmax_fn(x, w)
    with pytest.raises(RuntimeError, match="same device"):
        out_proj_argmax_fn(x.cpu(), w.to(device))
    with pytest.raises(RuntimeError, match="same device"):
        out_proj_argmax_fn(x, w.to(device), b)
    with pytest.raises(RuntimeError, match="same device"):
        out_proj_argmax_fn(x, wq.to(device), None, ws)


def test_int8_cuda_needs_d_multiple_of_8(device):
    if device.type != "cuda":
        pytest.skip("a CUDA-only restriction")
    x = torch.randn(20, 12, device=device)
    wq, ws = _int8_weight(torch.randn(10, 12))
    with pytest.raises(RuntimeError, match="multiple of 8"):
        out_proj_argmax_fn(x, wq.to(device), None, ws.to(device))
