"""The counter-based dropout op against its plain-PyTorch twin (bit-equal masks and outputs), its statistics,
gradients, opcheck, torch.compile, bad inputs, and the model's Dropout module (kernels on and off)."""
import math

import pytest
import torch

from paraformer_ext import has_kernels
from paraformer_ext.model.layers import Dropout
from paraformer_ext.ops.dropout import draw_seed, dropout_fn, dropout_mask_ref, dropout_ref

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 0, 5), (7,), (2, 17, 33), (4, 150, 144), (1, 3, 5, 7)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_forward_equals_reference_bit_for_bit(device, dtype, shape, p):
    g = torch.Generator().manual_seed(hash((shape, p)) % 2**31)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    r = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    for seed in (0, 1, -1, 2**62 + 12345):
        for res in (None, r):
            out, ref = dropout_fn(x, p, seed, res), dropout_ref(x, p, seed, res)
            assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
            assert torch.equal(out, ref), (dtype, shape, p, seed)


def test_edge_probabilities_and_special_values():
    x = torch.tensor([1.0, -2.0, float("inf"), float("nan"), 0.0])
    assert torch.equal(dropout_fn(x[:3], 0.0, 5), x[:3])  # p = 0: the identity (scale exactly 1)
    assert torch.equal(dropout_fn(x[:2], 1.0, 5).abs(), torch.zeros(2))  # p = 1: nothing kept (-2 * 0 = -0)
    r = torch.arange(5.0)
    assert torch.equal(dropout_fn(x[:2], 1.0, 5, r[:2]), r[:2])  # ... and the residual alone
    # like torch's dropout, a dropped NaN or inf stays NaN (x * 0), never a silent 0
    out = dropout_fn(x, 1.0, 5)
    assert torch.isnan(out[2]) and torch.isnan(out[3])


def test_non_contiguous_input_reads_row_major_order():
    x = torch.randn(6, 8).t()  # a transposed view
    assert torch.equal(dropout_fn(x, 0.3, 9), dropout_fn(x.contiguous(), 0.3, 9))


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_rate_and_mean_are_unbiased(p):
    n = 1 << 20
    keep = dropout_mask_ref(n, p, 1234)
    rate = keep.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # five sigma
    out = dropout_fn(torch.ones(n), p, 1234)
    assert abs(out.double().mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_masks_are_independent_across_seeds_and_positions():
    n, p = 1 << 18, 0.5
    a = dropout_mask_ref(n, p, 1).double()
    b = dropout_mask_ref(n, p, 2).double()
    c = dropout_mask_ref(n, p, 1 + (1 << 32)).double()  # the seed's high word matters too
    bound = 5 / math.sqrt(n)
    for u, v in [(a, b), (a, c), (b, c), (a[1:], a[:-1]), (a[64:], a[:-64])]:  # seeds, neighbours, lag 64
        assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < bound


def test_draw_seed_follows_torch_manual_seed():
    torch.manual_seed(3)
    a = [draw_seed() for _ in range(3)]
    torch.manual_seed(3)
    assert [draw_seed() for _ in range(3)] == a and len(set(a)) == 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_is_the_same_mask(device, dtype):
    x = torch.randn(3, 40, 64, device=device, dtype=dtype, requires_grad=True)
    r = torch.randn(3, 40, 64, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 40, 64, device=device, dtype=dtype)
    dropout_fn(x, 0.3, 42, r).backward(g)
    assert torch.equal(x.grad, dropout_ref(g, 0.3, 42))
    assert torch.equal(r.grad, g)


def test_gradcheck_float64():
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dropout_fn(a, 0.4, 11, b), (x, r))
    assert torch.autograd.gradgradcheck(lambda a: dropout_fn(a, 0.4, 11), (x,))


def test_opcheck(device):
    x = torch.randn(2, 9, 8, device=device)
    r = torch.randn(2, 9, 8, device=device)
    for args in [(x, 0.1, 3, r), (x, 0.0, 0, None), (x.double().requires_grad_(), 0.5, -7, None),
                 (x.bfloat16(), 0.2, 5, r.bfloat16())]:
        torch.library.opcheck(torch.ops.paraformer_ext.dropout_hash.default, args)


def test_compiles_forward_and_backward():
    torch._dynamo.reset()
    x = torch.randn(2, 9, 8)
    r = torch.randn(2, 9, 8)
    g = torch.randn(2, 9, 8)

    def f(x, r):
        return dropout_fn(x, 0.2, 99, r)

    cf = torch.compile(f, fullgraph=True)
    assert torch.equal(cf(x, r), f(x, r))
    grads = []
    for fn in (f, cf):
        xs, rs = x.clone().requires_grad_(), r.clone().requires_grad_()
        (fn(xs, rs) * g).sum().backward()
        grads.append((xs.grad, rs.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    torch._dynamo.reset()


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match=r"p must be in \[0, 1\]"):
        dropout_fn(x, 1.5, 0)
    with pytest.raises(RuntimeError, match=r"p must be in \[0, 1\]"):
        dropout_fn(x, -0.1, 0)
    with pytest.raises(RuntimeError, match="residual must have x's shape"):
        dropout_fn(x, 0.1, 0, torch.randn(4, 6))
    with pytest.raises(RuntimeError, match="residual dtype"):
        dropout_fn(x, 0.1, 0, torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="must be float32"):
        dropout_fn(torch.ones(3, dtype=torch.int64), 0.1, 0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        dropout_ref(x, 2.0, 0)
    with pytest.raises(ValueError, match="residual must match"):
        dropout_ref(x, 0.1, 0, torch.randn(5, 4))


# --- the model's Dropout module ---------------------------------------------------------------------------


def test_module_without_kernels_is_torch_dropout():
    m = Dropout(0.3).train()
    x, r = torch.randn(5, 7), torch.randn(5, 7)
    torch.manual_seed(0)
    ours = m(x, r)
    torch.manual_seed(0)
    assert torch.equal(ours, r + torch.nn.functional.dropout(x, 0.3, True))
    assert torch.equal(m.eval()(x, r), r + x)  # eval: the identity plus the residual


def test_module_with_kernels_draws_a_seed_per_call():
    m = Dropout(0.3).train()
    m.kernels = True
    x, r = torch.randn(5, 7), torch.randn(5, 7)
    torch.manual_seed(0)
    seed = draw_seed()
    torch.manual_seed(0)
    assert torch.equal(m(x, r), dropout_ref(x, 0.3, seed, r))
    assert not torch.equal(m(x), m(x))  # a fresh mask each call
    assert torch.equal(m.eval()(x, r), r + x)
    assert isinstance(m, torch.nn.Dropout) and m.p == 0.3  # code that looks for nn.Dropout finds it
