"""The FSMN memory op against its plain-PyTorch twin: random shapes, masks, dtypes, gradients, opcheck."""
import pytest
import torch

from paraformer_ext import has_kernels
from paraformer_ext.ops.fsmn import fsmn_left, fsmn_memory, fsmn_memory_fn, fsmn_memory_ref

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _inputs(B, T, D, K, dtype, device, seed, with_lengths=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, K, generator=g, dtype=torch.float64) / K**0.5
    res = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g) if with_lengths else None
    if lengths is not None and B > 0:
        lengths[0] = T  # the longest item spans the batch, as in a real padded batch
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(w), res, lengths.to(device) if lengths is not None else None, cast(res)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "B,T,D,K,left",
    [
        (1, 1, 8, 11, 5),  # length 1
        (2, 7, 16, 11, 5),  # T shorter than the kernel
        (3, 50, 64, 11, 5),  # SAN-M encoder/decoder shape (K=11, symmetric)
        (2, 40, 128, 20, 19),  # FSMN-VAD: causal, 20 taps
        (2, 33, 40, 21, 15),  # shifted (sanm_shfit=5)
        (1, 300, 520, 3, 0),  # look-ahead only, D not a multiple of 128
        (4, 97, 512, 11, 5),  # paraformer-large width
    ],
)
def test_forward_matches_reference(device, dtype, B, T, D, K, left):
    for seed, with_res in [(0, False), (1, True)]:
        x, w, _, lengths, res = _inputs(B, T, D, K, dtype, device, seed)
        res = res if with_res else None
        out = fsmn_memory_fn(x, w, lengths, left, res)
        ref = fsmn_memory_ref(x.double(), w.double(), lengths, left, None if res is None else res.double())
        assert out.dtype == dtype and out.shape == (B, T, D)
        scale = ref.abs().max().clamp_min(1.0)
        assert (out.double() - ref).abs().max() <= TOL[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_strided_input_bias_and_residual(device, dtype):
    """x read in place as the V slice of a QKV projection; residual and bias added after the mask."""
    B, T, D, K = 3, 37, 64, 11
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(B, T, 3 * D, generator=g, dtype=torch.float64)
    v = qkv[..., 2 * D :]
    w = torch.randn(D, K, generator=g, dtype=torch.float64) / 3
    res = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    bias = torch.randn(D, generator=g, dtype=torch.float64)
    lengths = torch.tensor([T, 20, 1], device=device)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    vs = cast(qkv)[..., 2 * D :]
    assert not vs.is_contiguous() and vs.stride(-1) == 1
    out = fsmn_memory_fn(vs, cast(w), lengths, 5, cast(res), cast(bias))
    ref = fsmn_memory_ref(v, w, lengths.cpu(), 5, res, bias)
    assert (out.double().cpu() - ref).abs().max() <= TOL[dtype] * ref.abs().max().clamp_min(1.0)
    # masked frames hold exactly residual + bias
    assert torch.allclose(out[2, 1:].double().cpu(), (cast(res)[2, 1:] + cast(bias)).double().cpu(), atol=TOL[dtype] * 10)


def test_padded_frames_are_zero_and_ignored(device):
    x, w, _, _, _ = _inputs(2, 30, 32, 11, torch.float32, device, 3, with_lengths=False)
    lengths = torch.tensor([30, 12], device=device)
    out = fsmn_memory_fn(x, w, lengths)
    assert out[1, 12:].abs().max() == 0
    # garbage in padded frames must not leak into valid ones
    x2 = x.clone()
    x2[1, 12:] = 1e6
    assert torch.equal(fsmn_memory_fn(x2, w, lengths), out)
    # a padded item equals the same item alone
    alone = fsmn_memory_fn(x[1:2, :12].contiguous(), w)
    assert torch.allclose(out[1, :12], alone[0], atol=1e-6)


def test_noncontiguous_and_conv_weight_layout(device):
    x, w, _, lengths, _ = _inputs(3, 25, 48, 11, torch.float32, device, 4)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not xt.is_contiguous()
    w3 = w[:, None, :]  # Conv1d depthwise (D, 1, K)
    assert torch.allclose(fsmn_memory_fn(xt, w3, lengths), fsmn_memory_ref(x, w, lengths), atol=1e-5)


def test_empty_batch_and_empty_time(device):
    w = torch.randn(8, 11, device=device)
    for shape in [(0, 5, 8), (2, 0, 8)]:
        x = torch.randn(*shape, device=device)
        assert fsmn_memory_fn(x, w).shape == shape


def test_gradcheck(device):
    x, w, _, lengths, res = _inputs(2, 13, 6, 5, torch.float64, device, 5)
    bias = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    x.requires_grad_(), w.requires_grad_(), res.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c, d: fsmn_memory_fn(a, b, lengths, 3, c, d), (x, w, res, bias))
    assert torch.autograd.gradcheck(lambda a, b: fsmn_memory_fn(a, b, None, 0), (x, w))
    wide = torch.randn(2, 13, 18, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fsmn_memory_fn(a[..., 12:], b, lengths, 2), (wide, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_matches_reference(device, dtype):
    x, w, _, lengths, res = _inputs(3, 40, 64, 11, dtype, device, 6)
    xs = [t.detach().clone().requires_grad_() for t in (x, w, res)]
    xr = [t.detach().double().requires_grad_() for t in (x, w, res)]
    g = torch.randn(3, 40, 64, dtype=torch.float64, device=device)
    fsmn_memory_fn(xs[0], xs[1], lengths, 5, xs[2]).backward(g.to(dtype))
    fsmn_memory_ref(xr[0], xr[1], lengths, 5, xr[2]).backward(g)
    for a, b in zip(xs, xr):
        rel = (a.grad.double() - b.grad).norm() / b.grad.norm()
        assert rel < {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]


def test_opcheck(device):
    x, w, _, lengths, res = _inputs(2, 9, 8, 5, torch.float32, device, 7)
    bias = torch.randn(8, device=device)
    for args in [(x, w, lengths, 2, res), (x, w, None, 0, None), (x, w, lengths, 1, res, bias),
                 (x.double().requires_grad_(), w.double(), lengths, 4, None)]:
        torch.library.opcheck(torch.ops.paraformer_ext.fsmn_memory.default, args)
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.paraformer_ext.fsmn_memory_weight_grad.default, (g, x, lengths, 2, 5))


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 5, 8)
    with pytest.raises(RuntimeError, match="weight dtype"):
        fsmn_memory_fn(x, torch.randn(8, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="channels"):
        fsmn_memory_fn(x, torch.randn(7, 3))
    with pytest.raises(RuntimeError, match="left must be"):
        fsmn_memory_fn(x, torch.randn(8, 3), left=3)
    with pytest.raises(RuntimeError, match="lengths"):
        fsmn_memory_fn(x, torch.randn(8, 3), torch.tensor([5, 6]))
    with pytest.raises(RuntimeError, match=r"\(B, T, D\)"):
        fsmn_memory_fn(torch.randn(5, 8), torch.randn(8, 3))
    with pytest.raises(RuntimeError, match="integer"):
        fsmn_memory_fn(x, torch.randn(8, 3), torch.tensor([5.0, 2.0]))


@pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")
def test_out_of_range_lengths_raise_on_every_backend(device):
    """lengths must be in [0, T] for the op and its weight gradient; CUDA checks them on the host like the
    CPU instead of clamping them in the kernel."""
    x = torch.randn(2, 5, 8, device=device)
    w = torch.randn(8, 3, device=device)
    for bad in ([5, 6], [-1, 2]):
        lengths = torch.tensor(bad, device=device)
        with pytest.raises(RuntimeError, match=r"lengths\[\d\] = -?\d is outside \[0, T = 5\]"):
            fsmn_memory_fn(x, w, lengths)
        with pytest.raises(RuntimeError, match=r"is outside \[0, T = 5\]"):
            torch.ops.paraformer_ext.fsmn_memory_weight_grad(x, x, lengths, 1, 3)
    ok = torch.tensor([0, 5], device=device)  # both ends of the range are valid
    assert torch.equal(fsmn_memory_fn(x, w, ok)[0], torch.zeros_like(x[0]))


def test_dispatch_falls_back_to_reference():
    x = torch.randn(1, 6, 4)
    w = torch.randn(4, 11)
    assert torch.allclose(fsmn_memory(x, w, kernels=False), fsmn_memory(x, w), atol=1e-6)
    assert fsmn_left(11, 0) == 5 and fsmn_left(11, 5) == 10 and fsmn_left(21, 0) == 10
