"""MWER with negative sampling: the properties of spec training.md §3."""
from __future__ import annotations

import pytest
import torch

from paraformer_ext.training.mwer import (
    MwerConfig,
    candidate_errors,
    mwer_from_scores,
    mwer_loss,
    scored_mask,
)


def _batch(B=3, L=7, V=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64).to(dtype)
    lengths = torch.tensor([L, L - 2, 3][:B])
    target = torch.randint(3, V, (B, L), generator=g)
    target[torch.arange(L)[None, :] >= lengths[:, None]] = -1
    target[torch.arange(B), lengths - 1] = 2  # eos
    return logits, target, lengths


def test_gradient_wrt_scores_is_closed_form():
    g = torch.Generator().manual_seed(1)
    S = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randint(0, 6, (5, 4), generator=g).double()
    mwer_from_scores(S, W).sum().backward()
    P = torch.softmax(S.detach(), 0)
    want = P * (W - (P * W).sum(0, keepdim=True))
    torch.testing.assert_close(S.grad, want, rtol=0, atol=1e-6)


def test_shift_invariance_and_equal_errors():
    g = torch.Generator().manual_seed(2)
    S = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randint(0, 5, (4, 3), generator=g).double()
    l1 = mwer_from_scores(S, W).sum()
    (g1,) = torch.autograd.grad(l1, S)
    l2 = mwer_from_scores(S, W + 7.0).sum()
    (g2,) = torch.autograd.grad(l2, S)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g1, g2)
    l3 = mwer_from_scores(S, torch.full((4, 3), 3.0, dtype=torch.float64)).sum()
    (g3,) = torch.autograd.grad(l3, S)
    assert float(l3.detach()) == 0.0 and bool((g3 == 0).all())


def test_pads_and_eos_never_matter():
    logits, target, lengths = _batch()
    cfg = MwerConfig(n_candidates=6)
    x = logits.clone().requires_grad_(True)
    out = mwer_loss(x, target, lengths, cfg, torch.Generator().manual_seed(3))
    out.loss.backward()
    mask = scored_mask(lengths, logits.shape[1], exclude_eos=True)
    assert bool((x.grad[~mask] == 0).all()) and bool((x.grad[mask] != 0).any())
    # change everything outside the scored positions (pads, the eos slot): same loss
    noisy = torch.where(mask[..., None], logits, torch.randn_like(logits) * 10)
    noisy_target = torch.where(mask, target, torch.randint_like(target, 0, 11))
    again = mwer_loss(noisy, noisy_target, lengths, cfg, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.loss, out.loss.detach())


def test_candidates_reproducible_and_top1_or_top2():
    logits, target, lengths = _batch()
    for sampler in ("bernoulli", "k_flip"):
        cfg = MwerConfig(n_candidates=5, sampler=sampler, include_greedy=True)
        a = mwer_loss(logits, target, lengths, cfg, torch.Generator().manual_seed(4))
        b = mwer_loss(logits, target, lengths, cfg, torch.Generator().manual_seed(4))
        assert torch.equal(a.candidates, b.candidates)
        top2 = logits.topk(2, -1).indices
        c = a.candidates
        assert bool(((c == top2[None, ..., 0]) | (c == top2[None, ..., 1])).all())
        assert torch.equal(c[0], top2[..., 0])  # include_greedy
        mask = scored_mask(lengths, logits.shape[1], True)
        flips = ((c != top2[None, ..., 0]) & mask[None]).sum(-1)[1:]
        if sampler == "k_flip":
            n = mask.sum(1)
            assert bool(((flips >= 1) & (flips <= torch.clamp(n, max=3))).all())


def test_levenshtein_errors_drop_specials():
    cands = torch.tensor([[[5, 6, 7, 2]], [[5, 0, 7, 2]], [[6, 5, 7, 2]]])  # (N=3, B=1, L=4)
    target = torch.tensor([[5, 6, 7, 2]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    assert candidate_errors(cands, target, mask, "levenshtein").flatten().tolist() == [0.0, 1.0, 2.0]
    assert candidate_errors(cands, target, mask, "hamming").flatten().tolist() == [0.0, 1.0, 2.0]


def test_mwer_steps_raise_the_best_candidates_probability():
    logits, target, lengths = _batch(B=2, L=6, V=6, seed=5)
    param = logits.clone().requires_grad_(True)
    cfg = MwerConfig(n_candidates=4)
    first = mwer_loss(param, target, lengths, cfg, torch.Generator().manual_seed(6))
    cands, W = first.candidates, first.errors
    mask = scored_mask(lengths, 6, True)

    def best_prob():
        lp = torch.log_softmax(param.detach(), -1)
        S = torch.where(mask[None], lp[None].expand(4, -1, -1, -1).gather(-1, cands[..., None]).squeeze(-1), 0.0).sum(-1)
        P = torch.softmax(S, 0)
        return P.gather(0, W.argmin(0, keepdim=True)).squeeze(0)

    before = best_prob()
    opt = torch.optim.SGD([param], lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        mwer_loss(param, target, lengths, cfg, torch.Generator().manual_seed(6)).loss.backward()
        opt.step()
    after = best_prob()
    assert bool((after > before).all()), (before, after)


def test_bf16_autocast_is_finite():
    logits, target, lengths = _batch()
    x = logits.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mwer_loss(x.to(torch.bfloat16), target, lengths, MwerConfig(), torch.Generator().manual_seed(7))
    out.loss.backward()
    assert torch.isfinite(out.loss) and bool(torch.isfinite(x.grad).all())


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="n_candidates.*>= 2"):
        MwerConfig(n_candidates=1)
    with pytest.raises(ValueError, match="sampler"):
        MwerConfig(sampler="gumbel")
