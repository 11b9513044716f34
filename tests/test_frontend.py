"""WavFrontend (fbank → LFR → CMVN) against FunASR's golden data, a float64 Kaldi reference, and its own
batch-1 results (spec paraformer.md §5, fsmn_vad.md §2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

import paraformer_ext.frontend as fe
from paraformer_ext.frontend import (
    FrontendConfig,
    WavFrontend,
    apply_cmvn,
    apply_lfr,
    kaldi_fbank,
    load_cmvn,
)

from conftest import SHARED, golden_checkpoint, needs_shared

LOG_EPS = math.log(float(np.finfo(np.float32).eps))  # -15.942385


# ---------------------------------------------------------------------------------------------------------
# an independent float64 Kaldi fbank, one frame at a time, written from the spec (§5.2)
# ---------------------------------------------------------------------------------------------------------


def ref_window(kind, W):
    n = np.arange(W, dtype=np.float64)
    a = 2 * np.pi / (W - 1)
    return {
        "hamming": 0.54 - 0.46 * np.cos(a * n),
        "hanning": 0.5 - 0.5 * np.cos(a * n),
        "povey": (0.5 - 0.5 * np.cos(a * n)) ** 0.85,
        "rectangular": np.ones(W),
        "blackman": 0.42 - 0.5 * np.cos(a * n) + 0.08 * np.cos(2 * a * n),
    }[kind]


def ref_mel_banks(fs, P, n_mels):
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(fs / 2)
    d = (hi - lo) / (n_mels + 1)
    banks = np.zeros((n_mels, P // 2 + 1))
    for i in range(n_mels):
        left, center, right = lo + i * d, lo + (i + 1) * d, lo + (i + 2) * d
        for j in range(P // 2):  # the Nyquist bin keeps weight 0
            m = mel(j * fs / P)
            if left < m < right:
                banks[i, j] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    return banks


def ref_fbank(x, cfg: FrontendConfig, shorten=True):
    """x: 1-D float64 samples in [-1, 1] → (T, n_mels) float64."""
    x = np.asarray(x, dtype=np.float64) * (32768.0 if cfg.upsacle_samples else 1.0)
    L = len(x)
    fl = min(cfg.frame_length, L / cfg.fs * 1000) if shorten else cfg.frame_length
    W, S = int(cfg.fs * fl * 0.001), int(cfg.fs * cfg.frame_shift * 0.001)
    if L < 2 or W < 2:
        return np.zeros((0, cfg.n_mels))
    if cfg.snip_edges:
        T = 0 if L < W else 1 + (L - W) // S
        starts = [t * S for t in range(T)]
    else:
        T = (L + S // 2) // S
        starts = [t * S - (W // 2 - S // 2) for t in range(T)]
    P = 1
    while P < W:
        P *= 2
    banks, win = ref_mel_banks(cfg.fs, P, cfg.n_mels), ref_window(cfg.window, W)
    out = np.zeros((T, cfg.n_mels))
    for t, s in enumerate(starts):
        idx = np.arange(s, s + W)
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx >= L, 2 * L - 1 - idx, idx)
        f = x[idx].copy()
        f -= f.mean()
        f = f - 0.97 * np.concatenate([f[:1], f[:-1]])
        f *= win
        e = banks @ np.abs(np.fft.rfft(f, P)) ** 2
        out[t] = np.log(np.maximum(e, np.finfo(np.float32).eps))
    return out


def ref_lfr(feats, m, n):
    """Direct formula: row i = frames i·n − (m−1)//2 + r, clamped to [0, T−1]."""
    T = len(feats)
    rows = []
    for i in range(-(-T // n)):
        rows.append(np.concatenate([feats[min(max(i * n - (m - 1) // 2 + r, 0), T - 1)] for r in range(m)]))
    return np.stack(rows) if rows else np.zeros((0, m * feats.shape[1]), feats.dtype)


def noise(n, seed, amp=0.1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * amp


# ---------------------------------------------------------------------------------------------------------
# golden data
# ---------------------------------------------------------------------------------------------------------


def _wav(name):
    import soundfile as sf

    x, sr = sf.read(str(SHARED / "audio" / f"{name}.wav"), dtype="float32")
    assert sr == 16000
    return torch.from_numpy(x)


@pytest.fixture(scope="module")
def ckpt():
    d = golden_checkpoint("small")
    conf = yaml.safe_load((d / "config.yaml").read_text())["frontend_conf"]
    return FrontendConfig.from_dict(conf), load_cmvn(d / "am.mvn")


@needs_shared
@pytest.mark.parametrize("name", ["asr_example", "long"])
def test_golden_fbank_and_features(ckpt, name, device):
    cfg, cmvn = ckpt
    gold = np.load(SHARED / "golden" / f"small_{name}.npz")
    wave = _wav(name).to(device)
    fb, n = kaldi_fbank(wave[None], None, cfg)
    assert fb.shape == (1,) + gold["fbank"].shape and n.tolist() == [gold["fbank"].shape[0]]
    d_fb = np.abs(fb[0].cpu().numpy() - gold["fbank"]).max()
    feats, lens = WavFrontend(cfg, cmvn).to(device)(wave[None])
    assert feats.shape == (1,) + gold["features"].shape and lens.tolist() == [gold["features"].shape[0]]
    assert feats.dtype == torch.float32 and lens.dtype == torch.int64
    d_ft = np.abs(feats[0].cpu().numpy() - gold["features"]).max()
    print(f"\n{name} on {device}: max |fbank - golden| = {d_fb:.3g}, max |features - golden| = {d_ft:.3g}")
    assert d_fb <= 5e-3 and d_ft <= 1e-3
    # the large preset has the same frontend and am.mvn
    large = np.load(SHARED / "golden" / f"large_{name}.npz")
    assert np.abs(feats[0].cpu().numpy() - large["features"]).max() <= 1e-3


@needs_shared
@pytest.mark.parametrize("name", ["asr_example", "long"])
def test_lfr_cmvn_of_golden_fbank_is_bit_exact(ckpt, name):
    """FunASR's LFR and CMVN are plain float32 copies and adds/multiplies: ours must give the same bits."""
    cfg, cmvn = ckpt
    gold = np.load(SHARED / "golden" / f"small_{name}.npz")
    fb = torch.from_numpy(gold["fbank"])[None]
    x, lens = apply_lfr(fb, torch.tensor([fb.shape[1]]), cfg.lfr_m, cfg.lfr_n)
    assert torch.equal(apply_cmvn(x, cmvn, lens)[0], torch.from_numpy(gold["features"]))


@needs_shared
def test_padded_batch_equals_batch_of_one(ckpt, device):
    cfg, cmvn = ckpt
    waves = [_wav("asr_example"), _wav("long")]
    front = WavFrontend(cfg, cmvn).to(device)
    singles = [kaldi_fbank(w[None].to(device), None, cfg) for w in waves]
    single_feats = [front(w[None].to(device)) for w in waves]
    for order in ([0, 1], [1, 0]):
        N = max(len(w) for w in waves) + 1234
        batch = noise(len(waves) * N, 7, amp=0.9).float().view(len(waves), N)  # garbage padding must not leak
        for i, k in enumerate(order):
            batch[i, : len(waves[k])] = waves[k]
        lens = torch.tensor([len(waves[k]) for k in order])
        fb, n = kaldi_fbank(batch.to(device), lens.to(device), cfg)
        ft, fl = front(batch.to(device), lens.to(device))
        for i, k in enumerate(order):
            T, TL = singles[k][0].shape[1], single_feats[k][0].shape[1]
            assert n[i] == T and fl[i] == TL
            assert torch.equal(fb[i, :T], singles[k][0][0]), "padded batch changed an item's fbank"
            assert torch.equal(ft[i, :TL], single_feats[k][0][0]), "padded batch changed an item's features"
            assert not fb[i, T:].any() and not ft[i, TL:].any()


@needs_shared
def test_vad_frontend_shapes_and_golden_features(device):
    """The VAD's fbank (no window shortening) + LFR(5, 1) against FunASR's `feats_head` (first 300 frames).

    feats_head used the VAD model's am.mvn, which the tests do not have; CMVN is an affine map per
    dimension, so fit one per dimension and require our LFR features to explain feats_head up to float noise.
    """
    import soundfile as sf

    x, sr = sf.read(str(SHARED / "golden" / "vad" / "vad_62s.wav"), dtype="float32")
    cfg = FrontendConfig()
    fb, n = kaldi_fbank(torch.from_numpy(x)[None].to(device), None, cfg, shorten_short_window=False)
    assert n.tolist() == [1 + (len(x) - 400) // 160] == [6210]
    lfr, ln = apply_lfr(fb, n, 5, 1)
    assert lfr.shape == (1, 6210, 400) and ln.tolist() == [6210]
    assert np.array_equal(lfr[0, :40].cpu().numpy(), ref_lfr(fb[0, :].cpu().numpy(), 5, 1)[:40])
    gold = np.load(SHARED / "golden" / "vad" / "vad_62s.npz")["feats_head"].astype(np.float64)
    X = lfr[0, : len(gold)].cpu().double().numpy()
    worst = 0.0
    for d in range(X.shape[1]):
        A = np.stack([X[:, d], np.ones(len(X))], 1)
        coef, *_ = np.linalg.lstsq(A, gold[:, d], rcond=None)
        assert 0.05 < coef[0] < 1.0  # a 1/std scale, not a degenerate fit
        worst = max(worst, np.abs(gold[:, d] - A @ coef).max())
    print(f"\nVAD feats_head: max residual of a per-dim affine fit = {worst:.3g}")
    assert worst <= 1e-3


# ---------------------------------------------------------------------------------------------------------
# fbank properties and the float64 reference
# ---------------------------------------------------------------------------------------------------------


def test_digital_silence_is_log_flt_epsilon(device):
    out, n = kaldi_fbank(torch.zeros(2, 16000, device=device), torch.tensor([16000, 4000]), FrontendConfig())
    assert n.tolist() == [98, 23]
    assert torch.equal(out[0], torch.full_like(out[0], LOG_EPS))
    assert torch.equal(out[1, :23], torch.full_like(out[1, :23], LOG_EPS)) and not out[1, 23:].any()
    assert abs(float(out[0, 0, 0]) - (-15.942385)) < 1e-6


@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"window": "hanning"},
        {"window": "povey"},
        {"window": "rectangular"},
        {"window": "blackman"},
        {"snip_edges": False},
        {"snip_edges": False, "frame_length": 20, "frame_shift": 8},
        {"n_mels": 40, "frame_length": 32},
        {"fs": 8000, "n_mels": 23},
        {"upsacle_samples": False},
    ],
)
def test_fbank_matches_float64_reference(conf, device):
    cfg = FrontendConfig(**conf)
    lens = [cfg.fs, 3 * cfg.fs // 4 + 37, cfg.window_size, cfg.window_size + cfg.window_shift - 1]
    N = max(lens)
    waves = torch.zeros(len(lens), N, dtype=torch.float64)
    for i, L in enumerate(lens):
        waves[i, :L] = noise(L, 10 + i) * (1 + 3 * i)
    out, n = kaldi_fbank(waves.to(device), torch.tensor(lens), cfg)
    assert out.dtype == torch.float32
    for i, L in enumerate(lens):
        ref = ref_fbank(waves[i, :L].numpy(), cfg)
        assert n[i] == len(ref)
        err = np.abs(out[i, : len(ref)].cpu().double().numpy() - ref).max()
        assert err < 1e-3, f"item {i} (L={L}): max error {err}"
        assert not out[i, len(ref):].any()


@pytest.mark.parametrize("L", [2, 3, 50, 100, 129, 200, 256, 300, 399, 400, 401])
def test_audio_shorter_than_a_window(L, device):
    """WavFrontend shortens the window to the clip (one frame, its own FFT size); the VAD variant gives none."""
    cfg = FrontendConfig()
    x = noise(L, L)
    out, n = kaldi_fbank(x[None].to(device), None, cfg)
    ref = ref_fbank(x.numpy(), cfg)
    assert n.tolist() == [1] and len(ref) == 1
    assert np.abs(out[0].cpu().double().numpy() - ref).max() < 1e-3
    vad, nv = kaldi_fbank(x[None].to(device), None, cfg, shorten_short_window=False)
    assert nv.tolist() == [1 if L >= 400 else 0] and vad.shape == (1, nv.item(), 80)
    if L >= 400:
        assert torch.equal(vad, out)


def test_short_items_in_a_batch_keep_their_own_window(device):
    cfg = FrontendConfig(lfr_m=7, lfr_n=6)
    lens = [0, 1, 150, 399, 400, 16000, 5000]
    N = max(lens)
    waves = noise(len(lens) * N, 3).float().view(len(lens), N)
    out, n = kaldi_fbank(waves.to(device), torch.tensor(lens), cfg)
    assert n.tolist() == [0, 0, 1, 1, 1, 98, 29]
    for i, L in enumerate(lens):
        one, n1 = kaldi_fbank(waves[i : i + 1, :L].to(device), None, cfg)
        assert n1[0] == n[i] and torch.equal(out[i, : n[i]], one[0])
        assert not out[i, n[i]:].any()
    ft, fl = WavFrontend(cfg, None).to(device)(waves.to(device), torch.tensor(lens))
    assert fl.tolist() == [0, 0, 1, 1, 1, 17, 5] and ft.shape == (7, 17, 560)


def test_empty_batch_and_no_frames(device):
    cfg = FrontendConfig()
    out, n = kaldi_fbank(torch.zeros(3, 0, device=device), None, cfg)
    assert out.shape == (3, 0, 80) and n.tolist() == [0, 0, 0]
    out, n = kaldi_fbank(torch.zeros(0, 500, device=device), None, cfg)
    assert out.shape == (0, 0, 80) and n.shape == (0,)
    ft, fl = WavFrontend(FrontendConfig(lfr_m=7, lfr_n=6), torch.zeros(2, 560)).to(device)(torch.zeros(2, 100))
    assert ft.shape[0] == 2 and fl.tolist() == [1, 1]  # 100 samples: one shortened frame, one LFR row


def test_chunking_does_not_change_results(monkeypatch):
    cfg = FrontendConfig()
    waves = noise(3 * 20000, 5).float().view(3, 20000)
    lens = torch.tensor([20000, 12345, 777])
    ref = kaldi_fbank(waves, lens, cfg)
    for rows in (1, 7, 100):
        monkeypatch.setattr(fe, "_CHUNK_ROWS", rows)
        got = kaldi_fbank(waves, lens, cfg)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_dither_uses_the_generator():
    cfg = FrontendConfig(dither=1.0)
    x = noise(8000, 1).float()[None]
    a, _ = kaldi_fbank(x, None, cfg, generator=torch.Generator().manual_seed(0))
    b, _ = kaldi_fbank(x, None, cfg, generator=torch.Generator().manual_seed(0))
    c, _ = kaldi_fbank(x, None, cfg, generator=torch.Generator().manual_seed(1))
    clean, _ = kaldi_fbank(x, None, FrontendConfig())
    assert torch.equal(a, b) and not torch.equal(a, c)
    # unit-variance noise in int16 units barely moves speech-level energies, but it does move them
    assert 0 < (a - clean).abs().max() < 0.05
    # silence + dither: the floor is replaced by the noise's own energy (~log(Σ banks · |W|²)), well above it
    s, _ = kaldi_fbank(torch.zeros(1, 4000), None, cfg, generator=torch.Generator().manual_seed(0))
    assert s.min() > LOG_EPS + 5


def test_input_validation():
    cfg = FrontendConfig()
    with pytest.raises(TypeError, match="float"):
        kaldi_fbank(torch.zeros(1, 800, dtype=torch.int16), None, cfg)
    with pytest.raises(ValueError, match="lengths must be in"):
        kaldi_fbank(torch.zeros(2, 800), torch.tensor([800, 801]), cfg)
    with pytest.raises(ValueError, match="shape"):
        kaldi_fbank(torch.zeros(2, 800), torch.tensor([800]), cfg)
    with pytest.raises(ValueError, match="NaN"):
        kaldi_fbank(torch.full((1, 800), float("nan")), None, cfg)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        kaldi_fbank(torch.zeros(1, 1, 800), None, cfg)
    # 1-D and float64 inputs are accepted and computed in float32
    a, _ = kaldi_fbank(noise(800, 0), None, cfg)
    b, _ = kaldi_fbank(noise(800, 0).float()[None], None, cfg)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------
# LFR
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n", [(7, 6), (5, 1), (1, 1), (3, 2), (1, 3)])
def test_lfr_matches_the_clamp_gather_formula(m, n, device):
    F = 3
    for T in range(1, 61):
        x = torch.randn(1, T, F, generator=torch.Generator().manual_seed(T))
        out, ln = apply_lfr(x.to(device), torch.tensor([T]), m, n)
        ref = ref_lfr(x[0].numpy(), m, n)
        assert ln.tolist() == [len(ref)] and out.shape == (1, -(-T // n), m * F)
        assert np.array_equal(out[0].cpu().numpy(), ref), f"T={T}"


@pytest.mark.parametrize("m,n", [(7, 6), (5, 1)])
def test_lfr_padded_batch_repeats_each_items_own_last_frame(m, n, device):
    lens = [60, 1, 13, 0, 37]
    T, F = max(lens), 4
    x = torch.randn(len(lens), T, F, generator=torch.Generator().manual_seed(0)) + 100  # nonzero padding
    out, ln = apply_lfr(x.to(device), torch.tensor(lens).to(device), m, n)
    assert out.shape == (len(lens), -(-T // n), m * F)
    for b, L in enumerate(lens):
        ref = ref_lfr(x[b, :L].numpy(), m, n)
        assert ln[b] == len(ref) == -(-L // n)
        assert np.array_equal(out[b, : len(ref)].cpu().numpy(), ref)
        assert not out[b, len(ref):].any()


def test_lfr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="lfr_m"):
        apply_lfr(torch.zeros(1, 5, 2), None, 0, 1)
    with pytest.raises(ValueError, match=r"lengths must be in \[0, 5\]"):
        apply_lfr(torch.zeros(2, 5, 2), torch.tensor([5, 6]), 7, 6)
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        apply_lfr(torch.zeros(5, 2), None, 7, 6)


# ---------------------------------------------------------------------------------------------------------
# CMVN
# ---------------------------------------------------------------------------------------------------------

GOOD_MVN = """<Nnet>
<Splice> 3 3
[ 0 ]
<AddShift> 3 3
<LearnRateCoef> 0 [ -1.5 2 0.25 ]
<Rescale> 3 3
<LearnRateCoef> 0 [ 0.5 1e-1 4 ]
</Nnet>
"""


def test_load_cmvn(tmp_path):
    p = tmp_path / "am.mvn"
    p.write_text(GOOD_MVN)
    c = load_cmvn(p)
    assert c.dtype == torch.float32 and torch.equal(c, torch.tensor([[-1.5, 2, 0.25], [0.5, 0.1, 4]]))
    # a vector wrapped over lines reads the same
    p.write_text(GOOD_MVN.replace("[ -1.5 2 0.25 ]", "[ -1.5\n 2\n 0.25 ]"))
    assert torch.equal(load_cmvn(p), c)


@needs_shared
def test_load_golden_cmvn():
    c = load_cmvn(golden_checkpoint("small") / "am.mvn")
    assert c.shape == (2, 560) and c.dtype == torch.float32
    assert torch.equal(c[:, :80].repeat(1, 7), c)  # the golden am.mvn tiles 80 values 7 times
    assert abs(float(c[0, 0]) - (-8.050189)) < 1e-6 and abs(float(c[1, 0]) - 0.228178) < 1e-6


@pytest.mark.parametrize(
    "text,msg",
    [
        (GOOD_MVN.replace("<AddShift> 3 3\n<LearnRateCoef> 0 [ -1.5 2 0.25 ]\n", ""), "no <AddShift>"),
        (GOOD_MVN.replace("<Rescale>", "<Scale>"), "no <Rescale>"),
        (GOOD_MVN.replace("0.25", "abc"), "could not convert"),
        (GOOD_MVN.replace("[ 0.5 1e-1 4 ]", "[ 0.5 1e-1 ]"), "declares dimension 3 but has 2"),
        (GOOD_MVN.replace("<Rescale> 3 3", "<Rescale>").replace("[ 0.5 1e-1 4 ]", "[ 0.5 1e-1 ]"),
         "has 3 values but <Rescale> has 2"),
        (GOOD_MVN.replace("[ -1.5 2 0.25 ]", "[ -1.5 2 0.25"), "no closing"),
        (GOOD_MVN.replace("<LearnRateCoef> 0 [ -1.5", "-1.5"), "expected '<LearnRateCoef>"),
        (GOOD_MVN.replace("[ -1.5 2 0.25 ]", "[ ]").replace("<AddShift> 3 3", "<AddShift>"), "is empty"),
        (GOOD_MVN.replace("0.25", "nan"), "non-finite"),
        ("", "no <AddShift>"),
    ],
)
def test_load_cmvn_rejects_malformed_files(tmp_path, text, msg):
    p = tmp_path / "bad.mvn"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg) as e:
        load_cmvn(p)
    assert str(p) in str(e.value)


def test_load_cmvn_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mvn"):
        load_cmvn(tmp_path / "nope.mvn")


def test_apply_cmvn(device):
    cmvn = torch.tensor([[1.0, -2.0, 0.5], [2.0, 0.5, -1.0]])
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    out = apply_cmvn(x.to(device), cmvn, torch.tensor([4, 2]))
    ref = (x + cmvn[0]) * cmvn[1]
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1, :2].cpu(), ref[1, :2])
    assert not out[1, 2:].any()
    assert torch.equal(apply_cmvn(x, cmvn), ref)  # no lengths: every frame is valid
    with pytest.raises(ValueError, match="dimension 3 but the features have 5"):
        apply_cmvn(torch.zeros(1, 2, 5), cmvn)
    with pytest.raises(ValueError, match=r"\(2, dim\)"):
        apply_cmvn(x, cmvn[0])


# ---------------------------------------------------------------------------------------------------------
# config and module
# ---------------------------------------------------------------------------------------------------------


def test_frontend_config():
    d = FrontendConfig()
    assert (d.fs, d.window, d.n_mels, d.frame_length, d.frame_shift, d.lfr_m, d.lfr_n, d.dither, d.snip_edges,
            d.upsacle_samples) == (16000, "hamming", 80, 25, 10, 1, 1, 0.0, True, True)
    assert (d.window_size, d.window_shift, d.output_size) == (400, 160, 80)
    conf = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 7,
            "lfr_n": 6, "dither": 0, "cmvn_file": "/x/am.mvn"}
    c = FrontendConfig.from_dict(conf)
    assert (c.lfr_m, c.lfr_n, c.dither, c.output_size) == (7, 6, 0.0, 560)
    assert FrontendConfig.from_dict(None) == FrontendConfig()
    assert FrontendConfig.from_dict({"fs": 16000.0, "lfr_m": 7.0}) == FrontendConfig(lfr_m=7)
    with pytest.raises(ValueError, match=r"\['n_fft', 'zz'\]"):
        FrontendConfig.from_dict({**conf, "zz": 1, "n_fft": 512})
    for bad in ({"window": "hann"}, {"lfr_m": 0}, {"dither": -1.0}, {"frame_length": 0.05}, {"fs": 0},
                {"snip_edges": "yes"}):
        with pytest.raises(ValueError, match="invalid frontend config"):
            FrontendConfig.from_dict(bad)


def test_wav_frontend_module(device):
    cfg = FrontendConfig(lfr_m=7, lfr_n=6)
    with pytest.raises(ValueError, match=r"\(2, 560\)"):
        WavFrontend(cfg, torch.zeros(2, 80))
    cmvn = torch.stack([torch.linspace(-1, 1, 560), torch.linspace(0.5, 2, 560)])
    front = WavFrontend(cfg, cmvn).to(device)
    assert front.output_size == 560 and front.cmvn.device.type == torch.device(device).type
    x = noise(2 * 9000, 2).float().view(2, 9000).to(device)
    feats, lens = front(x, torch.tensor([9000, 4000], device=device))
    assert feats.shape == (2, 9, 560) and lens.tolist() == [9, 4] and lens.dtype == torch.int64
    fb, n = kaldi_fbank(x, torch.tensor([9000, 4000]), cfg)
    lfr, ln = apply_lfr(fb, n, 7, 6)
    assert torch.equal(feats, apply_cmvn(lfr, cmvn, ln))
    nocmvn, _ = WavFrontend(cfg, None).to(device)(x, torch.tensor([9000, 4000]))
    assert torch.equal(nocmvn, lfr)
