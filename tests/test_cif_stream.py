"""The streaming CIF op (csrc/cif_stream_*.{cpp,cu}) against its reference `cif_stream_ref` (FunASR's
forward_chunk loop): bit for bit on random inputs and edge cases, every dtype pair, padded batches; opcheck;
bad inputs. The reference itself is checked on hand-computed cases and, end to end, by tests/test_streaming.py
against FunASR's goldens."""
from __future__ import annotations

import pytest
import torch

from conftest import cuda_ok
from paraformer_ext import has_kernels
from paraformer_ext.ops.cif_stream import cif_stream, cif_stream_fn, cif_stream_ref

needs_kernels = pytest.mark.skipif(not has_kernels(), reason="compiled paraformer_ext ops not built")
DEVICES = ["cpu"] + (["cuda"] if cuda_ok() else [])
HIDDEN = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _inputs(B, T, D, seed, ct=torch.float32, hd=torch.float32, device="cpu", hi=0.6, zeros=0.2):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(hd)
    a = (torch.rand(B, T, generator=g, dtype=torch.float64) * hi).to(ct)
    a = a.masked_fill(torch.rand(B, T, generator=g) < zeros, 0.0)
    lengths = torch.randint(0, T + 1, (B,), generator=g) if T else torch.zeros(B, dtype=torch.int64)
    ca = (torch.rand(B, generator=g, dtype=torch.float64) * 0.99).to(ct)
    ch = torch.randn(B, D, generator=g, dtype=torch.float64).to(ct)
    fin = torch.rand(B, generator=g) < 0.5
    return [t.to(device) for t in (h, a, lengths, ca, ch, fin)]


def _same(got, want):
    for x, y, name in zip(got, want, ("embeds", "token_num", "fire_slots", "carry_alpha", "carry_hidden")):
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x.cpu(), y.cpu()), name


# --- the reference on hand-computed cases --------------------------------------------------------------------


def test_ref_hand_computed():
    h = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    a = torch.tensor([[0.5, 0.25, 0.5, 0.5]])
    out = cif_stream_ref(h, a, torch.tensor([4]), torch.tensor([0.5]), torch.tensor([[8.0]]), torch.tensor([False]))
    # slots: carry 0.5·8 | 0.5·1 → fire (I = 1.0): 4 + 0.5 = 4.5; then I = 0, S = 0·1
    # 0.25·2 | 0.5·3 | 0.5·4: 0.25 + 0.5 = 0.75, + 0.5 = 1.25 ≥ 1 → fire: 0.5 + 1.5 + 0.25·4 = 3.0; I = 0.25, S = 1
    assert out.token_num.tolist() == [2] and out.embeds[0, :, 0].tolist() == [4.5, 3.0]
    assert out.fire_slots.tolist() == [[1, 4]]  # slot 0 is the carried state, slot t + 1 frame t
    assert out.carry_alpha.tolist() == [0.25] and out.carry_hidden.tolist() == [[4.0]]  # S / I = 1 / 0.25
    # final: the tail (a zero frame) can complete the token without adding to it
    fin = cif_stream_ref(h, a, torch.tensor([4]), torch.tensor([0.5]), torch.tensor([[8.0]]), torch.tensor([True]), 1.0, 0.75)
    assert fin.token_num.tolist() == [3] and fin.embeds[0, 2, 0].item() == 1.0 and fin.fire_slots[0, 2].item() == 5


def test_ref_no_fire_keeps_everything():
    h = torch.randn(1, 3, 4)
    a = torch.tensor([[0.1, 0.2, 0.3]])
    out = cif_stream_ref(h, a, torch.tensor([3]), torch.tensor([0.0]), torch.zeros(1, 4), torch.tensor([False]))
    assert out.token_num.tolist() == [0] and out.embeds.shape == (1, 0, 4) and out.fire_slots.shape == (1, 0)
    s = 0.1 * h[0, 0] + 0.2 * h[0, 1] + 0.3 * h[0, 2]
    assert abs(out.carry_alpha.item() - 0.6) < 1e-6
    torch.testing.assert_close(out.carry_hidden[0], s / out.carry_alpha[0])


# --- op vs reference -------------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ct", [torch.float32, torch.float64])
@pytest.mark.parametrize("hd", HIDDEN)
def test_op_equals_ref_random(device, ct, hd):
    for seed, (B, T, D) in enumerate([(1, 1, 1), (3, 7, 8), (5, 16, 64), (4, 15, 256), (2, 0, 5), (6, 12, 3)]):
        args = _inputs(B, T, D, seed, ct, hd, device)
        _same(cif_stream_fn(*args, 1.0, 0.45), cif_stream_ref(*args, 1.0, 0.45))
        _same(cif_stream_fn(*args, 1.0, 0.0), cif_stream_ref(*args, 1.0, 0.0))
        # large alphas (several fires per chunk) and another threshold
        args = _inputs(B, T, D, seed + 100, ct, hd, device, hi=1.0, zeros=0.0)
        _same(cif_stream_fn(*args, 0.9, 0.45), cif_stream_ref(*args, 0.9, 0.45))


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_op_edge_cases(device):
    D = 6
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 4, D, generator=g).to(device)
    lengths = torch.tensor([4, 1, 0, 4, 2], device=device)
    a = torch.tensor([[0.5, 0.5, 0.25, 0.75],  # I + a exactly at the threshold fires
                      [0.3, 0.0, 0.0, 0.0],  # length 1
                      [0.9, 0.9, 0.9, 0.9],  # empty chunk: only the carried slot (and the tail)
                      [1e-3, 1e-3, 1e-3, 1e-3],  # no fire
                      [0.6, 0.6, 0.0, 0.0]], device=device)
    ca = torch.tensor([0.0, 1.0, 0.5, 0.2, 0.4], device=device)  # stream 1 carries exactly the threshold
    ch = torch.randn(5, D, generator=g).to(device)
    for fin in ([False] * 5, [True] * 5, [True, False, True, False, True]):
        args = (h, a, lengths, ca, ch, torch.tensor(fin, device=device))
        out = cif_stream_fn(*args, 1.0, 0.45)
        _same(out, cif_stream_ref(*args, 1.0, 0.45))
        assert out.fire_slots[1, 0].item() == 0  # the carried state at the threshold fires at once
        assert out.fire_slots[0, :2].tolist() == [2, 4]
        assert int(out.token_num[3]) == 0  # 0.2 + 4e-3 (+ the 0.45 tail) stays below the threshold
    # padded frames never matter, even NaN
    hn, an = h.clone(), a.clone()
    for b, L in enumerate(lengths.tolist()):
        hn[b, L:] = float("nan")
        an[b, L:] = float("nan")
    fin = torch.tensor([True, False, True, False, True], device=device)
    _same(cif_stream_fn(hn, an, lengths, ca, ch, fin, 1.0, 0.45), cif_stream_fn(h, a, lengths, ca, ch, fin, 1.0, 0.45))
    # batch 0 and batched == alone
    empty = _inputs(0, 5, 4, 0, device=device)
    assert cif_stream_fn(*empty).embeds.shape == (0, 0, 4)
    args = _inputs(6, 10, 16, 3, device=device)
    whole = cif_stream_fn(*args, 1.0, 0.45)
    for b in range(6):
        one = cif_stream_fn(*[t[b: b + 1] for t in args], 1.0, 0.45)
        n = int(one.token_num[0])
        assert torch.equal(one.embeds[0, :n], whole.embeds[b, :n]) and torch.equal(one.carry_hidden[0], whole.carry_hidden[b])


@needs_kernels
def test_dispatch_follows_kernels():
    args = _inputs(3, 9, 8, 5)
    _same(cif_stream(*args, kernels=True), cif_stream_ref(*args))
    _same(cif_stream(*args, kernels=False), cif_stream_ref(*args))


@needs_kernels
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for seed, ct, hd in [(0, torch.float32, torch.float32), (1, torch.float64, torch.bfloat16)]:
        args = _inputs(4, 9, 8, seed, ct, hd, device)
        torch.library.opcheck(torch.ops.paraformer_ext.cif_stream.default, (*args, 1.0, 0.45))


@needs_kernels
def test_bad_inputs():
    h, a, lengths, ca, ch, fin = _inputs(2, 5, 4, 0)
    op = torch.ops.paraformer_ext.cif_stream
    cases = [
        ((h[0], a, lengths, ca, ch, fin), "hidden must be \\(B, T, D\\)"),
        ((h, a.half(), lengths, ca, ch, fin), "alphas must be float32 or float64"),
        ((h, a, lengths.int(), ca, ch, fin), "lengths must be \\(B,\\)"),
        ((h, a, torch.tensor([6, 1]), ca, ch, fin), "outside \\[0, T = 5\\]"),
        ((h, a, lengths, ca.double(), ch, fin), "carry_alpha must be"),
        ((h, a, lengths, ca, ch[:, :3], fin), "carry_hidden must be"),
        ((h, a, lengths, ca, ch, fin.int()), "is_final must be"),
    ]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            op(*args, 1.0, 0.45)
        with pytest.raises((ValueError, TypeError)):
            cif_stream_ref(*args, 1.0, 0.45)
