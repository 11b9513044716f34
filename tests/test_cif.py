"""The CIF op against float64 references: FunASR's golden CIF vectors, the golden model tensors, a randomized
sweep with adversarial inputs (fire positions must match exactly), gradients, opcheck, dtypes, bad inputs.

Three independent oracles: `cif_ref` (the vectorised-over-batch torch loop, autograd-capable), `_loop64`
below (a plain Python float64 loop per utterance, the literal text of spec §3.4), and the golden files'
`ref64_fire_frames` (FunASR's float64 loop)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import SHARED, needs_shared
from paraformer_ext import CifOutput, cif, cif_cumsum, cif_fn, cif_ref, has_kernels

needs_kernels = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _loop64(alphas, length, threshold=1.0, tail=0.0, hidden=None):
    """Spec §3.4 in plain Python floats (IEEE float64) for one utterance: frames t < length, then the tail
    slot. Returns fire frames, fires values, and (with hidden) the embeddings and each token's Σ|w|·max|h|."""
    frames = list(range(length)) + ([length] if tail > 0 else [])
    D = 0 if hidden is None else hidden.shape[1]
    zero = np.zeros(D)
    I, F, scale = 0.0, zero, 0.0
    hmax = float(np.abs(hidden[:length]).max()) if hidden is not None and length and D else 0.0
    fire_frames, fires, rows, scales = [], [], [], []
    for t in frames:
        a = float(alphas[t]) if t < length else tail
        h = hidden[t] if (hidden is not None and t < length) else zero
        c = 1.0 - I
        pre = I + a
        fires.append(pre)
        if pre >= threshold:
            cur = c
            rem = a - cur
            if hidden is not None:
                rows.append(F + cur * h)
                scales.append(scale + abs(cur) * hmax)
                F, scale = rem * h, abs(rem) * hmax
            fire_frames.append(t)
            I = pre - 1.0
        else:
            if hidden is not None:
                F, scale = F + a * h, scale + abs(a) * hmax
            I = pre
    return fire_frames, fires, rows, scales


def _check_against_loop(out: CifOutput, hidden, alphas, lengths, threshold, tail, check_embeds=True):
    """Exact fire frames, token counts and fires values; embeddings within the accumulation tolerance."""
    B, T, D = hidden.shape
    a64 = alphas.detach().double().cpu().numpy()
    h64 = hidden.detach().double().cpu().numpy()
    lens = [T] * B if lengths is None else [int(x) for x in lengths]
    N = out.acoustic_embeds.shape[1]
    assert out.token_num.dtype == torch.int64 and out.fire_frames.dtype == torch.int64
    assert out.fires.shape == (B, T + (1 if tail > 0 else 0)) and out.fires.dtype == alphas.dtype
    counts = []
    for b in range(B):
        ff, fires, rows, scales = _loop64(a64[b], lens[b], threshold, tail, h64[b] if check_embeds else None)
        n = len(ff)
        counts.append(n)
        assert int(out.token_num[b]) == n, f"item {b}: {int(out.token_num[b])} tokens, loop {n}"
        assert out.fire_frames[b, :n].tolist() == ff, f"item {b}: fire frames differ"
        assert (out.fire_frames[b, n:] == -1).all()
        m = len(fires)
        expect = torch.tensor(fires, dtype=torch.float64).to(alphas.dtype)
        got = out.fires[b, :m].cpu()
        assert torch.equal(got, expect), f"item {b}: fires differ at {(got != expect).nonzero().flatten()[:5]}"
        assert (out.fires[b, m:] == 0).all()
        emb = out.acoustic_embeds[b].double().cpu()
        assert (emb[n:] == 0).all()
        if check_embeds and n and D:
            ref = torch.from_numpy(np.stack(rows))
            tol = TOL[hidden.dtype] * (torch.tensor(scales)[:, None] + 1e-30) + 1e-30
            assert ((emb[:n] - ref).abs() <= tol).all(), f"item {b}: max err {(emb[:n] - ref).abs().max():.3e}"
    assert N == max(counts, default=0)


# --- golden CIF vectors (FunASR 1.4.16's cif / cif_v1 on crafted inputs) --------------------------------------

def _golden_cases():
    if SHARED is None:
        return []
    return json.loads((SHARED / "golden" / "cif" / "cases.json").read_text())["cases"]


@needs_shared
@pytest.mark.parametrize("impl", ["op", "ref"])
def test_golden_cif_cases(device, impl):
    if impl == "op" and not has_kernels():
        pytest.skip("compiled extension not built")
    if impl == "ref" and device.type != "cpu":
        pytest.skip("reference checked once")
    fn = cif_fn if impl == "op" else cif_ref
    cases = _golden_cases()
    assert len(cases) == 20
    for c in cases:
        z = np.load(SHARED / "golden" / "cif" / f"case_{c['case']:02d}.npz")
        h = torch.from_numpy(z["hidden"]).to(device)
        a = torch.from_numpy(z["alphas"]).to(device)
        thr = float(z["threshold"])
        out = fn(h, a, thr)
        counts = [len(f) for f in c["ref64_fire_frames"]]
        assert out.token_num.tolist() == counts, f"case {c['case']}"
        assert out.acoustic_embeds.shape == (c["B"], max(counts), c["D"]), f"case {c['case']}"
        assert out.acoustic_embeds.dtype == h.dtype and out.fires.dtype == a.dtype
        for b, ff in enumerate(c["ref64_fire_frames"]):
            assert out.fire_frames[b, : len(ff)].tolist() == ff, f"case {c['case']} item {b}"
        # float64 truth (a different implementation: the Python loop)
        _check_against_loop(out, h, a, None, thr, 0.0)
        # FunASR's own float32 loop `cif`, wherever its fires agree with float64 (all but case 10)
        if c["cif"]["fire_frames_equal_ref64"]:
            n = out.acoustic_embeds.shape[1]
            ce = torch.from_numpy(z["cif_embeds"])
            extra = ce[:, n:]
            assert (extra == 0).all()  # FunASR pads to round(sum) rows; those rows are zero
            diff = (ce[:, :n].double() - out.acoustic_embeds.cpu().double()).abs().max() if n else 0.0
            assert diff <= 2e-5, f"case {c['case']}: {diff}"
            fd = (torch.from_numpy(z["cif_fires"]).double() - out.fires.cpu().double()).abs().max()
            assert fd <= 2e-5, f"case {c['case']}: fires {fd}"
    # the cases where FunASR's cif_v1 differs from float64, and where it crashes, are really in the data
    by_id = {c["case"]: c for c in cases}
    assert not by_id[10]["cif_v1"]["fire_frames_equal_ref64"] and not by_id[11]["cif_v1"]["fire_frames_equal_ref64"]
    assert "cif_v1_embeds" not in np.load(SHARED / "golden" / "cif" / "case_15.npz").files


# --- golden model tensors: the predictor's CIF on real encoder output -----------------------------------------

def _wav_golden(name):
    z = np.load(SHARED / "golden" / f"{name}.npz")
    j = json.loads((SHARED / "golden" / f"{name}.json").read_text())
    return z, j


@needs_shared
@needs_kernels
def test_golden_model_cif(device):
    """CifPredictorV2's CIF (tail 0.45) on the golden encoder output: FunASR's tokens, fires and embeddings."""
    items = []
    for name in ["small_asr_example", "small_long"]:
        z, j = _wav_golden(name)
        T = z["encoder_out"].shape[0]
        h = torch.from_numpy(z["encoder_out"])[None].to(device)
        a = torch.from_numpy(z["alphas"][:T])[None].to(device)  # golden alphas carry the tail slot at index T
        out = cif(h, a, tail_threshold=0.45)
        assert out.token_num.tolist() == [int(z["token_num"])]
        assert out.fire_frames[0].tolist() == j["fire_frames"]
        assert (out.fires[0].cpu() - torch.from_numpy(z["fires"])).abs().max() <= 2e-5
        assert (out.acoustic_embeds[0].cpu() - torch.from_numpy(z["acoustic_embeds"])).abs().max() <= 2e-4
        items.append((h[0], a[0], out))
    # the same two utterances as one padded batch: each item gives exactly its batch-1 result
    T = max(h.shape[0] for h, _, _ in items)
    D = items[0][0].shape[1]
    hb = torch.full((2, T, D), float("nan"), device=device)  # padded frames must never be read
    ab = torch.full((2, T), 0.9, device=device)
    for i, (h, a, _) in enumerate(items):
        hb[i, : h.shape[0]] = h
        ab[i, : a.shape[0]] = a
    lengths = torch.tensor([h.shape[0] for h, _, _ in items], device=device)
    out = cif(hb, ab, lengths=lengths, tail_threshold=0.45)
    for i, (h, _, single) in enumerate(items):
        n, L = int(single.token_num[0]), h.shape[0]
        assert int(out.token_num[i]) == n
        assert torch.equal(out.acoustic_embeds[i, :n], single.acoustic_embeds[0])
        assert (out.acoustic_embeds[i, n:] == 0).all()
        assert torch.equal(out.fires[i, : L + 1], single.fires[0])
        assert (out.fires[i, L + 1 :] == 0).all()
        assert torch.equal(out.fire_frames[i, :n], single.fire_frames[0])


@needs_shared
@needs_kernels
def test_golden_model_fires_large(device):
    for name in ["large_asr_example", "large_long"]:
        z, j = _wav_golden(name)
        T = j["n_lfr_frames"]
        a = torch.from_numpy(z["alphas"][:T])[None].to(device)
        h = torch.randn(1, T, 8, device=device)
        out = cif(h, a, tail_threshold=0.45)
        assert out.fire_frames[0].tolist() == j["fire_frames"] and int(out.token_num[0]) == int(z["token_num"])
        assert (out.fires[0].cpu() - torch.from_numpy(z["fires"])).abs().max() <= 2e-5


# --- randomized sweep against the float64 loop -----------------------------------------------------------------

def _sweep_case(i: int, g: torch.Generator):
    """One batch (hidden, alphas, lengths, threshold, tail, check_embeds) of kind i % 12."""
    kind = i % 12
    B = int(torch.randint(1, 6, (1,), generator=g))
    T = int(torch.randint(1, 120, (1,), generator=g))
    D = int(torch.randint(1, 6, (1,), generator=g))
    adtype = torch.float32
    thr, tail = 1.0, float([0.0, 0.45][i % 2])
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if kind == 0:  # typical predictor output
        a = 0.05 + 0.5 * u(B, T)
    elif kind == 1:  # binary-exact alphas whose prefix sums hit integers exactly (fire on ==)
        grid = torch.tensor([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 1.0], dtype=torch.float64)
        a = grid[torch.randint(0, len(grid), (B, T), generator=g)]
    elif kind == 2:  # exactly 0.25 / 0.5 / 1.0, and one-ulp (float32) perturbations of them
        base = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)[torch.randint(0, 3, (B, 1), generator=g)]
        a = base.expand(B, T).clone()
        eps = 2.0**-24
        pert = torch.randint(-1, 2, (B, T), generator=g).double() * eps * (u(B, T) < 0.2)
        a = (a + pert).clamp(0, 1.0)
    elif kind == 3:  # float64 alphas with prefix sums steered to within 1e-7..1e-15 of an integer
        adtype = torch.float64
        a = 0.1 + 0.4 * u(B, T)
        for b in range(B):
            t = int(torch.randint(0, T, (1,), generator=g))
            s = float(a[b, :t].sum()) if t else 0.0
            delta = [0.0, 1e-7, -1e-7, 1e-9, -1e-9, 1e-12, -1e-12, 1e-15, -1e-15][i % 9]
            target = math.floor(s) + 1.0 + delta
            a[b, t] = max(0.0, min(0.999, target - s))
    elif kind == 4:  # float32 prefix sums within ~1e-7 of integers (the case-10/11 pattern)
        a = torch.full((B, T), 0.5, dtype=torch.float64)
        idx = torch.randint(0, T, (B,), generator=g)
        a[torch.arange(B), idx] = 0.5 - 2.0**-24
        a = a + (u(B, T) < 0.1).double() * 2.0**-25
    elif kind == 5:  # alphas >= 1 (training after rescaling): at most one fire per frame, no out-of-bounds
        a = 0.3 + 2.2 * u(B, T)
        T_small = min(T, 40)
        a = a[:, :T_small]
        T = T_small
    elif kind == 6:  # tiny alphas (not representable in the fixed-point fast path) mixed with normal ones
        a = torch.where(u(B, T) < 0.5, 1e-12 * u(B, T), 0.2 + 0.6 * u(B, T))
    elif kind == 7:  # no fire anywhere / all-zero alphas / zero-fire item last
        a = 0.9 / T * u(B, T) if i % 3 else torch.zeros(B, T, dtype=torch.float64)
        if i % 3 == 2 and B > 1:
            a[:-1] = 0.2 + 0.3 * u(B - 1, T)  # only the last item has no fire
    elif kind == 8:  # other thresholds (sequential float64 path)
        thr = [0.9, 1.1, 0.5][i % 3]
        a = 0.1 + 0.5 * u(B, T)
    elif kind == 9:  # float64 alphas, random
        adtype = torch.float64
        a = 0.6 * u(B, T)
    elif kind == 10:  # alphas near 1
        a = 0.97 + 0.0299 * u(B, T)
    else:  # sparse: mostly zero with occasional large weights
        a = torch.where(u(B, T) < 0.3, 0.9 * u(B, T), torch.zeros(B, T, dtype=torch.float64))
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[int(torch.randint(0, B, (1,), generator=g))] = T
    if i % 5 == 0:
        lengths[-1] = int(torch.randint(0, 2, (1,), generator=g))  # length 0 and 1 items
    h = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    hdtype = torch.float64 if i % 4 == 0 else torch.float32
    return h.to(hdtype), a.to(adtype), lengths, thr, tail


@needs_kernels
def test_randomized_sweep_matches_float64_loop(device):
    g = torch.Generator().manual_seed(20240601)
    n_cases = 1200
    for i in range(n_cases):
        h, a, lengths, thr, tail = _sweep_case(i, g)
        use_len = i % 7 != 3
        out = cif_fn(h.to(device), a.to(device), thr, lengths.to(device) if use_len else None, tail)
        _check_against_loop(out, h, a, lengths if use_len else None, thr, tail)


@needs_kernels
@pytest.mark.parametrize("T,B", [(100_000, 1), (30_000, 2)])
def test_long_inputs(device, T, B):
    g = torch.Generator().manual_seed(T)
    a = (0.05 + 0.5 * torch.rand(B, T, generator=g)).float()
    if B > 1:
        a[1] = a[1].double().clamp(max=0.999).float()
        a[1, ::7] = 1e-12  # forces the sequential float64 path for this item
    h = torch.randn(B, T, 2, generator=g)
    lengths = torch.tensor([T] + [T - 17] * (B - 1))
    out = cif_fn(h.to(device), a.to(device), 1.0, lengths.to(device), 0.45)
    _check_against_loop(out, h, a, lengths, 1.0, 0.45)


# --- batched == single, exactly --------------------------------------------------------------------------------

@needs_kernels
@pytest.mark.parametrize("hdtype", [torch.float32, torch.float16])
def test_batched_equals_single(device, hdtype):
    g = torch.Generator().manual_seed(7)
    B, T, D = 6, 80, 40
    h = torch.randn(B, T, D, generator=g).to(hdtype).to(device)
    a = (0.1 + 0.5 * torch.rand(B, T, generator=g)).to(device)
    lengths = torch.tensor([80, 1, 0, 33, 79, 50], device=device)
    h[1, 1:] = float("nan")  # garbage in padded frames is ignored
    a[2] = float("nan")
    for tail in [0.0, 0.45]:
        out = cif_fn(h, a, 1.0, lengths, tail)
        for b in range(B):
            L = int(lengths[b])
            one = cif_fn(h[b : b + 1, :L], a[b : b + 1, :L], 1.0, None, tail)
            n = int(one.token_num[0])
            assert int(out.token_num[b]) == n
            assert torch.equal(out.acoustic_embeds[b, :n], one.acoustic_embeds[0, :n])
            assert torch.equal(out.fire_frames[b, :n], one.fire_frames[0, :n])
            assert torch.equal(out.fires[b, : one.fires.shape[1]], one.fires[0])


# --- dtypes, layouts, shapes ------------------------------------------------------------------------------------

@needs_kernels
@pytest.mark.parametrize("hdtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("adtype", [torch.float32, torch.float64])
def test_dtypes_match_reference(device, hdtype, adtype):
    g = torch.Generator().manual_seed(3)
    B, T = 3, 60
    for D in [512, 37]:  # 37: not a multiple of any vector width, so the CUDA kernels' scalar variant runs too
        h = torch.randn(B, T, D, generator=g).to(hdtype).to(device)
        a = (0.1 + 0.5 * torch.rand(B, T, generator=g)).to(adtype).to(device)
        lengths = torch.tensor([60, 41, 7], device=device)
        out = cif_fn(h, a, 1.0, lengths, 0.45)
        ref = cif_ref(h.double(), a, 1.0, lengths, 0.45)
        assert out.acoustic_embeds.dtype == hdtype and out.fires.dtype == adtype
        assert torch.equal(out.fire_frames, ref.fire_frames) and torch.equal(out.token_num, ref.token_num)
        assert torch.equal(out.fires, ref.fires)
        err = (out.acoustic_embeds.double() - ref.acoustic_embeds).abs().max()
        assert err <= 4 * TOL[hdtype] * ref.acoustic_embeds.abs().max().clamp_min(1)


@needs_kernels
def test_noncontiguous_inputs(device):
    g = torch.Generator().manual_seed(4)
    h = torch.randn(40, 3, 24, generator=g).to(device).transpose(0, 1)  # (3, 40, 24), non-contiguous
    a = (0.1 + 0.5 * torch.rand(3, 80, generator=g)).to(device)[:, ::2]
    lengths = torch.tensor([40, 0, 40, 22, 0, 13], device=device)[::2]
    assert not h.is_contiguous() and not a.is_contiguous() and not lengths.is_contiguous()
    out = cif_fn(h, a, 1.0, lengths, 0.45)
    ref = cif_fn(h.contiguous(), a.contiguous(), 1.0, lengths.contiguous(), 0.45)
    for x, y in zip(out, ref):
        assert torch.equal(x, y)
    _check_against_loop(out, h, a, lengths.cpu(), 1.0, 0.45)


@needs_kernels
def test_empty_shapes(device):
    for B, T, D in [(0, 5, 4), (2, 0, 4), (2, 5, 0), (0, 0, 0)]:
        h = torch.randn(B, T, D, device=device)
        a = torch.full((B, T), 0.6, device=device)
        for tail in [0.0, 0.45, 1.0]:
            out = cif_fn(h, a, 1.0, None, tail)
            ref = cif_ref(h, a, 1.0, None, tail)
            assert out.acoustic_embeds.shape == ref.acoustic_embeds.shape
            for x, y in zip(out, ref):
                assert torch.equal(x.cpu(), y.cpu())
    # T = 0 with a tail that fires: one token with a zero embedding (the tail frame is zero)
    out = cif_fn(torch.randn(1, 0, 3, device=device), torch.zeros(1, 0, device=device), 1.0, None, 1.0)
    assert out.token_num.tolist() == [1] and out.fire_frames.tolist() == [[0]]
    assert (out.acoustic_embeds == 0).all() and out.acoustic_embeds.shape == (1, 1, 3)


@needs_kernels
def test_training_rescale(device):
    g = torch.Generator().manual_seed(5)
    B, T, D = 4, 50, 16
    h = torch.randn(B, T, D, generator=g).to(device)
    a = torch.rand(B, T, generator=g).to(device)
    lengths = torch.tensor([50, 30, 9, 0], device=device)
    target = torch.tensor([12, 20, 3, 5], device=device)  # item 1: > 1 alpha per frame on average
    out = cif_fn(h, a, 1.0, lengths, 0.45, target_lengths=target)
    ref = cif_ref(h.double(), a, 1.0, lengths, 0.45, target_lengths=target)
    assert out.fires.shape == (B, T)  # no tail in training
    assert out.acoustic_embeds.shape[1] == 20  # N = max target
    assert torch.equal(out.fire_frames, ref.fire_frames) and torch.equal(out.fires, ref.fires)
    assert (out.acoustic_embeds.double() - ref.acoustic_embeds).abs().max() <= 1e-4
    assert int(out.token_num[3]) == 0  # all-zero alphas stay zero
    # rescaled alphas sum to the target (float32, as FunASR computes it)
    from paraformer_ext.ops.cif import rescale_alphas

    scaled, mx = rescale_alphas(a, target, lengths)
    assert mx == 20
    assert torch.allclose(scaled.sum(-1).double(), torch.tensor([12.0, 20.0, 3.0, 0.0], device=device).double(), atol=1e-4)


@needs_kernels
def test_training_rescale_reaches_integer_targets(device):
    # The float32 rescale misses an integer target by a few ulps about half the time; without the correction
    # the float64 decisions would then drop the last token. Every utterance must fire exactly its target, the
    # last fire at its last valid frame, and the correction must not change the gradient.
    from paraformer_ext.ops.cif import rescale_alphas

    g = torch.Generator().manual_seed(21)
    B, T, D = 64, 97, 4
    a = (0.05 + 0.6 * torch.rand(B, T, generator=g)).to(device)
    h = torch.randn(B, T, D, generator=g).to(device)
    lengths = torch.randint(40, T + 1, (B,), generator=g).to(device)
    target = torch.randint(5, 20, (B,), generator=g).to(device)  # rescaled alphas stay < 1 (one fire per frame)
    valid = torch.arange(T, device=device)[None, :] < lengths[:, None]
    plain = torch.where(valid, a, 0.0)
    plain = plain * (target / plain.sum(-1))[:, None]
    assert int((plain.double().sum(-1) < target).sum()) > 5  # the case the correction exists for occurs
    scaled, _ = rescale_alphas(a, target, lengths)
    exact = scaled.double().sum(-1)
    assert (exact >= target).all() and (exact - target < 1e-5).all()
    assert ((scaled - plain).abs() > 0).sum(-1).le(1).all()  # at most the last alpha moves, by a few ulps
    for fn in (cif_fn, cif_ref):
        out = fn(h, a, 1.0, lengths, 0.0, target_lengths=target)
        assert torch.equal(out.token_num, target.long())
        last = out.fire_frames.gather(1, (target - 1)[:, None].long()).squeeze(1)
        assert torch.equal(last, lengths - 1)
    a_req = a.clone().requires_grad_()
    (gs,) = torch.autograd.grad((rescale_alphas(a_req, target, lengths)[0] * h[..., 0]).sum(), a_req)
    a_req2 = a.clone().requires_grad_()
    p2 = torch.where(valid, a_req2, 0.0)
    (gp,) = torch.autograd.grad((p2 * (target / p2.sum(-1))[:, None] * h[..., 0]).sum(), a_req2)
    assert torch.equal(gs, gp)


# --- gradients --------------------------------------------------------------------------------------------------

def _grad_inputs(device, B=3, T=10, D=4, seed=0, lo=0.1, hi=0.6):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g, dtype=torch.float64).to(device).requires_grad_()
    a = (lo + (hi - lo) * torch.rand(B, T, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    return h, a


@needs_kernels
@pytest.mark.parametrize(
    "tail,target,lo,hi",
    [(0.0, None, 0.1, 0.6), (0.45, None, 0.1, 0.6), (0.0, [4.5, 3.5, 0.5], 0.1, 0.6), (0.0, None, 0.4, 2.0)],
)
def test_gradcheck(device, tail, target, lo, hi):
    # Fractional targets keep the rescaled sum away from an integer, i.e. away from a fire-decision jump
    # (integer targets put the last fire exactly on the boundary, where no derivative exists).
    h, a = _grad_inputs(device, lo=lo, hi=hi)
    lengths = torch.tensor([10, 6, 2], device=device)
    tl = None if target is None else torch.tensor(target, dtype=torch.float64, device=device)
    for fn in [cif_fn, cif_ref]:
        def f(h, a, fn=fn):
            o = fn(h, a, 1.0, lengths, tail, target_lengths=tl)
            return o.acoustic_embeds, o.fires

        assert torch.autograd.gradcheck(f, (h, a))


@needs_kernels
@pytest.mark.parametrize("hdtype", [torch.float32, torch.float16])
def test_backward_matches_reference(device, hdtype):
    g = torch.Generator().manual_seed(11)
    B, T, D = 4, 70, 72
    h0 = torch.randn(B, T, D, generator=g)
    a0 = 0.1 + 0.5 * torch.rand(B, T, generator=g)
    lengths = torch.tensor([70, 3, 44, 0], device=device)
    grads = []
    for fn, dt in [(cif_fn, hdtype), (cif_ref, torch.float64)]:
        h = h0.to(device=device, dtype=dt).requires_grad_()
        a = a0.to(device=device).requires_grad_()
        o = fn(h, a, 1.0, lengths, 0.45)
        gE = torch.randn(o.acoustic_embeds.shape, generator=torch.Generator().manual_seed(1)).to(device, dt)
        gF = torch.randn(o.fires.shape, generator=torch.Generator().manual_seed(2)).to(device)
        loss = (o.acoustic_embeds * gE).sum() + (o.fires * gF).sum()
        grads.append([x.double() for x in torch.autograd.grad(loss, (h, a))])
    tol = 1e-4 if hdtype == torch.float32 else 2e-2
    for x, y in zip(*grads):
        assert (x - y).abs().max() <= tol * y.abs().max().clamp_min(1)
    assert (grads[0][0][1, 3:] == 0).all() and (grads[0][1][3] == 0).all()  # padded frames get no gradient


@needs_kernels
def test_backward_only_embeds_or_hidden(device):
    h, a = _grad_inputs(device, B=2, T=12, D=3, seed=3)
    o = cif_fn(h, a.detach(), 1.0, None, 0.45)
    (gh,) = torch.autograd.grad(o.acoustic_embeds.sum(), (h,))
    o2 = cif_ref(h, a.detach(), 1.0, None, 0.45)
    (gh2,) = torch.autograd.grad(o2.acoustic_embeds.sum(), (h,))
    assert torch.allclose(gh, gh2, atol=1e-12)
    o = cif_fn(h.detach(), a, 1.0, None, 0.45)
    (ga,) = torch.autograd.grad(o.fires.sum(), (a,))  # through fires only
    o2 = cif_ref(h.detach(), a, 1.0, None, 0.45)
    (ga2,) = torch.autograd.grad(o2.fires.sum(), (a,))
    assert torch.allclose(ga, ga2, atol=1e-12)


@needs_kernels
def test_opcheck(device):
    g = torch.Generator().manual_seed(9)
    h = torch.randn(3, 20, 8, generator=g, dtype=torch.float64).to(device).requires_grad_()
    a = (0.1 + 0.5 * torch.rand(3, 20, generator=g, dtype=torch.float64)).to(device).requires_grad_()
    lengths = torch.tensor([20, 11, 4], device=device)
    for args in [(h, a, lengths, 1.0, 0.45, 0), (h, a, None, 1.0, 0.0, 9), (h.detach().float(), a.detach().float(), lengths, 1.0, 0.45, 0)]:
        torch.library.opcheck(torch.ops.paraformer_ext.cif.default, args)


# --- errors ------------------------------------------------------------------------------------------------------

@needs_kernels
def test_bad_inputs(device):
    h = torch.randn(2, 5, 4, device=device)
    a = torch.full((2, 5), 0.4, device=device)
    with pytest.raises(RuntimeError, match=r"hidden must be \(B, T, D\)"):
        cif_fn(h[0], a)
    with pytest.raises(RuntimeError, match=r"alphas must be \(B, T\)"):
        cif_fn(h, a[..., None])
    with pytest.raises(RuntimeError, match="alphas must be float32 or float64"):
        cif_fn(h, a.half())
    with pytest.raises(RuntimeError, match="alphas must be float32 or float64"):
        cif_fn(h, a.long())
    with pytest.raises(RuntimeError, match="hidden must be float32"):
        cif_fn(h.long(), a)
    with pytest.raises(RuntimeError, match=r"must be \(B, T\) of hidden"):
        cif_fn(h, a[:, :4])
    with pytest.raises(RuntimeError, match="integer"):
        cif_fn(h, a, lengths=torch.tensor([5.0, 2.0], device=device))
    with pytest.raises(RuntimeError, match="lengths must have shape"):
        cif_fn(h, a, lengths=torch.tensor([5], device=device))
    with pytest.raises(RuntimeError, match=r"lengths.*\[0, T"):
        cif_fn(h, a, lengths=torch.tensor([6, 2], device=device))
    with pytest.raises(RuntimeError, match=r"lengths.*\[0, T"):
        cif_fn(h, a, lengths=torch.tensor([-1, 2], device=device))
    with pytest.raises(RuntimeError, match="threshold must be a finite number > 0"):
        cif_fn(h, a, 0.0)
    with pytest.raises(RuntimeError, match="tail_threshold must be"):
        cif_fn(h, a, 1.0, None, -0.1)
    bad = a.clone()
    bad[1, 2] = -0.5
    with pytest.raises(RuntimeError, match="alphas must be finite and >= 0"):
        cif_fn(h, bad)
    bad[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="alphas must be finite and >= 0"):
        cif_fn(h, bad)
    # the same NaN past the utterance's length is ignored
    cif_fn(h, bad, lengths=torch.tensor([5, 2], device=device))
    with pytest.raises(ValueError, match="target_lengths must have shape"):
        cif_fn(h, a, target_lengths=torch.tensor([3]))
    if device.type == "cuda":
        with pytest.raises(RuntimeError, match="same device"):
            cif_fn(h, a.cpu())
    with pytest.raises(ValueError, match="alphas must be finite"):
        cif_ref(h, bad)


# --- the other references and the dispatcher ---------------------------------------------------------------------

def test_cumsum_reference_agrees_on_typical_inputs():
    g = torch.Generator().manual_seed(12)
    B, T, D = 4, 200, 16
    h = torch.randn(B, T, D, generator=g)
    a = 0.1 + 0.4 * torch.rand(B, T, generator=g)
    lengths = torch.tensor([200, 150, 1, 0])
    for tail in [0.0, 0.45]:
        x, y = cif_cumsum(h, a, 1.0, lengths, tail), cif_ref(h.double(), a, 1.0, lengths, tail)
        assert torch.equal(x.fire_frames, y.fire_frames) and torch.equal(x.token_num, y.token_num)
        assert (x.fires.double() - y.fires.double()).abs().max() <= 1e-5
        assert (x.acoustic_embeds.double() - y.acoustic_embeds).abs().max() <= 1e-4


def test_dispatch_falls_back_to_reference():
    g = torch.Generator().manual_seed(13)
    h = torch.randn(2, 30, 5, generator=g, dtype=torch.float64)
    a = 0.1 + 0.5 * torch.rand(2, 30, generator=g, dtype=torch.float64)
    x = cif(h, a, lengths=[30, 12], tail_threshold=0.45, kernels=False)
    assert isinstance(x, CifOutput)
    _check_against_loop(x, h, a, [30, 12], 1.0, 0.45)
    if has_kernels():
        y = cif(h, a, lengths=[30, 12], tail_threshold=0.45)
        assert torch.equal(x.fire_frames, y.fire_frames) and torch.equal(x.fires, y.fires)
        assert (x.acoustic_embeds - y.acoustic_embeds).abs().max() <= 1e-12
