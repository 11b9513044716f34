"""Checked against the libraries we imitate (issue 10, point 6), on seeded random configurations:

* `audio.resample` against `torchaudio.transforms.Resample` — the transform FunASR's loader calls, whose kernel
  audio.py reproduces (float64 kernel math, float32 phase quotient, cast to float32; note that
  `torchaudio.functional.resample` computes its kernel in the waveform's dtype instead, so it is not the
  reference for float32 input).
* `frontend.kaldi_fbank` against `torchaudio.compliance.kaldi.fbank` (what FunASR's WavFrontend calls) and
  `kaldi-native-fbank` (what FunASR falls back to, and what made the golden data), both fed the waveform × 32768
  with dither 0 and energy_floor 0, as WavFrontend does, including its frame_length = min(frame_length, len/fs·1000)
  for clips shorter than one window.

Both references are test-only extras (pyproject `[test]`, installed by scripts/setup.sh). Without them these
tests skip, unless PARAFORMER_EXT_REQUIRE_REFERENCES=1 (scripts/test.sh sets it) or CI is set, where a missing
reference is a failure.

torchaudio on a CPU-only torch: PyPI's torchaudio wheel (2.11.1, py3-none, `torch>=2.11`) is the CUDA build: its
`_torchaudio.so` links libc10_cuda.so / libtorch_cuda.so, which a CPU torch does not ship, so `import torchaudio`
raises OSError. The version pin is not the problem (it accepts torch 2.13). The functions used here are pure
Python/PyTorch and never call `torch.ops.torchaudio`, so `_torchaudio()` imports the package with its C++
extension marked unavailable when (and only when) that load fails.
"""
from __future__ import annotations

import math
import os
import sys
import types

import numpy as np
import pytest
import torch

from paraformer_ext.audio import _blocks, _sinc_kernel, resample
from paraformer_ext.frontend import FrontendConfig, kaldi_fbank
from paraformer_ext.synthetic import synthetic_speech

REQUIRE = os.environ.get("PARAFORMER_EXT_REQUIRE_REFERENCES") == "1" or bool(os.environ.get("CI"))
EPS32 = float(torch.finfo(torch.float32).eps)


def _missing(what: str):
    msg = f"{what} not installed (test extra: `pip install -e .[test]` or scripts/setup.sh)"
    if REQUIRE:
        pytest.fail(msg + "; PARAFORMER_EXT_REQUIRE_REFERENCES=1 requires it")
    pytest.skip(msg)


def _torchaudio():
    """torchaudio, with its C++ extension disabled when it cannot load against this torch (see the docstring)."""
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        _missing("torchaudio")
    except OSError as e:  # the CUDA build's extension on a CPU torch: retry without the extension
        if "Could not load this library" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        stub = types.ModuleType("torchaudio._extension")
        stub._IS_TORCHAUDIO_EXT_AVAILABLE = False
        stub._IS_ALIGN_AVAILABLE = False
        stub.fail_if_no_align = lambda f: f  # forced_align only, unused here
        sys.modules["torchaudio._extension"] = stub
        import torchaudio  # noqa: F401
    import torchaudio.compliance.kaldi  # noqa: F401
    import torchaudio.transforms  # noqa: F401

    return sys.modules["torchaudio"]


def _knf():
    try:
        import kaldi_native_fbank
    except ImportError:
        _missing("kaldi-native-fbank")
    return kaldi_native_fbank


# --- resample vs torchaudio.transforms.Resample ------------------------------------------------------------------

COMMON_RATES = [8000, 16000, 22050, 44100, 48000]
ODD_RATES = [7, 3, 11025, 12345, 24000, 32000, 96000, 12000, 44099, 9973]
MAX_KERNEL = 3_000_000  # new·K elements after gcd reduction: torchaudio builds float64 temporaries of this size


def _resample_configs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rates = COMMON_RATES + ODD_RATES
    out = []
    while len(out) < n:
        orig, new = (int(v) for v in rng.choice(rates, 2))
        if orig == new:
            continue
        width = int(rng.choice([1, 2, 3, 6, 6, 6, 10, 16]))
        rolloff = 0.99 if rng.random() < 0.4 else float(rng.uniform(0.3, 1.0))
        o, nw, w = _blocks(orig, new, width, rolloff)
        if nw * (2 * w + o) > MAX_KERNEL:  # e.g. 44099 -> 9973: coprime rates, a (9973, 44099+) kernel
            continue
        length = int(rng.choice([1, 2, 3, 7, 50, 333, int(rng.integers(1, 6000))]))
        batch = int(rng.choice([0, 1, 3]))  # 0: a 1-D wave
        out.append((orig, new, width, rolloff, length, batch))
    return out


RESAMPLE_CONFIGS = _resample_configs(24, seed=2026)


@pytest.mark.parametrize("orig,new,width,rolloff,length,batch", RESAMPLE_CONFIGS)
def test_resample_matches_torchaudio_transforms_resample(orig, new, width, rolloff, length, batch):
    ta = _torchaudio()
    tr = ta.transforms.Resample(orig, new, lowpass_filter_width=width, rolloff=rolloff)
    # the kernel: the same float32 values (torchaudio's (new, 1, K) conv weight = our phase rows). Tolerance 1e-38
    # only admits subnormals (a sinc tail ~1e-45 can flush differently in the two expressions), nothing else.
    o, nw, _ = _blocks(orig, new, width, rolloff)
    ours_k = _sinc_kernel(o, nw, 0, nw, width, rolloff)
    assert ours_k.shape == tr.kernel[:, 0].shape
    torch.testing.assert_close(ours_k, tr.kernel[:, 0], rtol=0, atol=1e-38)

    g = torch.Generator().manual_seed(orig * 31 + new + length)
    x = torch.randn((batch, length) if batch else (length,), generator=g)
    want = tr(x)
    got = resample(x, orig, new, lowpass_filter_width=width, rolloff=rolloff)
    assert got.shape == want.shape  # ceil(length · new / orig), for short inputs too
    # Same kernel, same taps: only the float32 summation order differs (oneDNN conv1d vs our GEMM), so the error is
    # a few ulps of Σ|x·h| ≤ ~5 (unit-variance noise, |h| summing to ~1.3): 1e-5 is ~10x the worst seen (1.2e-6).
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # in float64 the order is the only difference left: agreement to ~1e-15 shows the math is the same
    want64 = tr.to(torch.float64)(x.double())
    got64 = resample(x.double(), orig, new, lowpass_filter_width=width, rolloff=rolloff)
    torch.testing.assert_close(got64, want64, rtol=0, atol=1e-12)


def test_resample_configs_cover_common_rates_and_short_inputs():
    pairs = {(c[0], c[1]) for c in RESAMPLE_CONFIGS}
    assert any(o in COMMON_RATES and n in COMMON_RATES for o, n in pairs)
    assert any(o not in COMMON_RATES or n not in COMMON_RATES for o, n in pairs)
    assert any(c[4] <= 7 for c in RESAMPLE_CONFIGS) and any(c[4] > 1000 for c in RESAMPLE_CONFIGS)
    assert any(c[2] != 6 for c in RESAMPLE_CONFIGS) and any(c[3] != 0.99 for c in RESAMPLE_CONFIGS)


def test_resample_is_what_funasr_loads_with():
    """FunASR's loader: torchaudio.transforms.Resample(fs, 16000) with defaults, on a (1, N) float32 wave."""
    ta = _torchaudio()
    x = torch.from_numpy(synthetic_speech(0.7, seed=3, sr=44100))
    want = ta.transforms.Resample(44100, 16000)(x[None])[0]
    torch.testing.assert_close(resample(x, 44100, 16000), want, rtol=0, atol=1e-5)


# --- kaldi_fbank vs torchaudio.compliance.kaldi.fbank and kaldi-native-fbank -------------------------------------

WINDOWS = ["hamming", "hanning", "povey", "rectangular", "blackman"]
FBANK_RATES = [8000, 16000, 22050, 44100, 48000, 11025, 12345]


def _fbank_configs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fs = int(rng.choice(FBANK_RATES))
        out.append(dict(
            fs=fs, n_mels=int(rng.integers(10, 81)), frame_length=float(rng.choice([20, 25, 25, 32, 40, 25.5])),
            frame_shift=float(rng.choice([10, 10, 12.5, 5, 20])), window=str(rng.choice(WINDOWS)),
            snip_edges=bool(rng.random() < 0.6), seed=i,
            # a batch of 2: one clip of up to 0.3 s, one random length that is sometimes under one window
            lengths=[int(rng.integers(int(0.03 * fs), int(0.3 * fs))), int(rng.integers(2, int(0.06 * fs)))],
        ))
    return out


FBANK_CONFIGS = _fbank_configs(24, seed=10)


def _wave(L: int, fs: int, seed: int) -> torch.Tensor:
    """Speech-like audio (quiet and loud parts) or white noise, in [-1, 1]."""
    if seed % 2:
        return torch.from_numpy(synthetic_speech(L / fs + 0.01, seed, sr=fs)[:L]).float()
    return 0.1 * torch.randn(L, generator=torch.Generator().manual_seed(seed))


def _tolerance(ours: torch.Tensor) -> torch.Tensor:
    """Allowed |ours − reference| per log-mel value.

    Everything before the log is float32 on samples × 32768 (mean removal, pre-emphasis, window, FFT, mel sum);
    its round-off is relative to the frame's total power E_tot, not to each bin's: a bin of power E carries an
    error of about eps·sqrt(E_tot·E) in power, i.e. eps·sqrt(E_tot/E) in log. The constant 256 leaves ~3x over the
    worst seen against either library in 200 random configurations (~90; torchaudio and kaldi-native-fbank differ
    from each other by as much), and 1e-5 covers the float32 rounding of the log values themselves (|log E| < 40).
    E_tot is estimated by the sum over the frame's mel bins (the triangles tile 20 Hz .. Nyquist).
    """
    e = ours.double().exp()
    return (1e-5 + 256 * EPS32 * (e.sum(-1, keepdim=True) / e).sqrt()).float()


def _frames_expected(L: int, W: int, S: int, snip: bool) -> int:
    if snip:
        return 0 if L < W else 1 + (L - W) // S
    return (L + S // 2) // S


def _ta_fbank(ta, x: torch.Tensor, cfg: FrontendConfig, frame_length: float) -> torch.Tensor:
    # FunASR's WavFrontend.forward (funasr/frontends/wav_frontend.py): waveform × (1 << 15), then this call
    return ta.compliance.kaldi.fbank(
        x[None] * (1 << 15), num_mel_bins=cfg.n_mels, frame_length=frame_length, frame_shift=cfg.frame_shift,
        dither=0.0, energy_floor=0.0, window_type=cfg.window, sample_frequency=cfg.fs, snip_edges=cfg.snip_edges)


def _knf_fbank(knf, x: torch.Tensor, cfg: FrontendConfig, frame_length: float) -> torch.Tensor:
    # FunASR's kaldi-native-fbank path (funasr/utils/fbank.py, and funasr_onnx's WavFrontend) with dither 0
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = cfg.fs
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = cfg.window
    opts.frame_opts.frame_length_ms = frame_length
    opts.frame_opts.frame_shift_ms = cfg.frame_shift
    opts.frame_opts.snip_edges = cfg.snip_edges
    opts.mel_opts.num_bins = cfg.n_mels
    opts.energy_floor = 0.0
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(cfg.fs, (x * (1 << 15)).tolist())
    fb.input_finished()
    rows = [fb.get_frame(i) for i in range(fb.num_frames_ready)]
    return torch.tensor(np.array(rows, dtype=np.float32).reshape(-1, cfg.n_mels))


def _knf_window(fs: int, ms: float) -> int:
    # kaldi-native-fbank stores frame_length_ms as a C++ float: W = int(fs · 0.001 · float32(ms))
    return int(fs * 0.001 * float(np.float32(ms)))


def _needs_repeated_reflection(L: int, W: int, S: int, n: int, snip: bool) -> bool:
    """Whether a frame reaches past one mirror image of the clip (snip_edges=False, window longer than the clip).

    Kaldi (and kaldi-native-fbank) reflect sample indices again and again until they fall inside the clip;
    frontend.py reflects once at each end and then clamps, which is the same whenever every frame stays within
    [-L, 2L − 1]. torchaudio refuses windows longer than the clip, so there it is only checked against Kaldi.
    """
    if snip:
        return False
    pad = W // 2 - S // 2
    first, last = -pad, (n - 1) * S - pad + W - 1
    return first < -L or last > 2 * L - 1


_compared = {"torchaudio": 0, "kaldi-native-fbank": 0}


@pytest.mark.parametrize("shorten", [True, False], ids=["WavFrontend", "WavFrontendOnline"])
@pytest.mark.parametrize("conf", FBANK_CONFIGS, ids=lambda c: f"{c['fs']}-{c['window']}-{c['n_mels']}-{c['seed']}")
def test_kaldi_fbank_matches_torchaudio_and_kaldi_native_fbank(conf, shorten):
    ta, knf = _torchaudio(), _knf()
    conf = dict(conf)
    lengths, seed = conf.pop("lengths"), conf.pop("seed")
    cfg = FrontendConfig(**conf)
    waves = [_wave(L, cfg.fs, seed * 2 + i) for i, L in enumerate(lengths)]
    batch = torch.zeros(len(waves), max(lengths))
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w
    ours, counts = kaldi_fbank(batch, torch.tensor(lengths), cfg, shorten_short_window=shorten)
    for b, (x, L) in enumerate(zip(waves, lengths)):
        # WavFrontend: frame_length = min(frame_length, len/fs·1000); WavFrontendOnline keeps it
        ms = min(cfg.frame_length, L / cfg.fs * 1000) if shorten else cfg.frame_length
        W = int(cfg.fs * ms * 0.001)
        n = int(counts[b])
        assert n == (_frames_expected(L, W, cfg.window_shift, cfg.snip_edges) if W >= 2 else 0)
        got = ours[b, :n]
        assert not ours[b, n:].any()
        if n == 0:  # torchaudio raises on zero frames, kaldi-native-fbank returns none: nothing to compare
            continue
        tol = _tolerance(got)
        if W <= L:  # torchaudio asserts a window no longer than the clip (Kaldi reflects the edges instead)
            want = _ta_fbank(ta, x, cfg, ms)
            assert want.shape == got.shape
            assert ((got - want).abs() <= tol).all(), float((got - want).abs().max())
            _compared["torchaudio"] += 1
        if _needs_repeated_reflection(L, W, cfg.window_shift, n, cfg.snip_edges):
            continue  # a known difference: test_clip_shorter_than_the_reflected_window_differs_from_kaldi
        if _knf_window(cfg.fs, ms) != W:
            # kaldi-native-fbank rounds the window from a float32 frame_length: for a shortened (fractional-ms)
            # window it can be one sample shorter than torchaudio's; we follow torchaudio (FunASR's first choice)
            continue
        try:
            want = _knf_fbank(knf, x, cfg, ms)
        except ValueError as e:
            # Kaldi refuses mel bins that cover no FFT bin; torchaudio (and we) give them log(FLT_EPSILON)
            assert "num_mel_bins too large" in str(e)
            assert (got == math.log(EPS32)).all(0).any()
            continue
        assert want.shape == got.shape
        assert ((got - want).abs() <= tol).all(), float((got - want).abs().max())
        _compared["kaldi-native-fbank"] += 1


def test_fbank_comparisons_were_not_vacuous():
    """Runs after the parametrized comparisons (file order): most items must have met both references."""
    if _compared["torchaudio"] == 0:
        pytest.skip("the fbank comparisons did not run (selected alone, or references missing)")
    n_items = 2 * 2 * len(FBANK_CONFIGS)
    assert _compared["torchaudio"] >= n_items * 0.7, _compared
    assert _compared["kaldi-native-fbank"] >= n_items * 0.6, _compared


def test_fbank_of_digital_silence_and_a_pure_tone_match_kaldi_native_fbank():
    """Corner values: all-zero frames floor at log(FLT_EPSILON) in both; a full-scale tone (clipping range)."""
    knf = _knf()
    cfg = FrontendConfig()
    t = torch.arange(8000) / 16000
    x = torch.cat([torch.zeros(4000), 0.999 * torch.sin(2 * math.pi * 1000.0 * t)])
    ours, n = kaldi_fbank(x[None], None, cfg)
    want = _knf_fbank(knf, x, cfg, cfg.frame_length)
    got = ours[0, : int(n[0])]
    assert got.shape == want.shape
    assert (got[:20] == want[:20]).all() and (got[:20] == math.log(EPS32)).all()  # silent frames: exact
    assert ((got - want).abs() <= _tolerance(got)).all()


def test_clip_shorter_than_the_reflected_window_matches_kaldi():
    """snip_edges=False on a clip shorter than about half a window: Kaldi reflects the index repeatedly (it once
    reflected once and then clamped here, up to 3 apart in log-mel)."""
    knf = _knf()
    cfg = FrontendConfig(fs=12345, n_mels=31, frame_length=40.0, frame_shift=5.0, window="rectangular",
                         snip_edges=False)
    x = _wave(60, cfg.fs, seed=5)  # W = 493 samples over a 60-sample clip
    assert _needs_repeated_reflection(60, cfg.window_size, cfg.window_shift, 1, False)
    ours, n = kaldi_fbank(x[None], None, cfg, shorten_short_window=False)
    got = ours[0, : int(n[0])]
    want = _knf_fbank(knf, x, cfg, cfg.frame_length)
    assert got.shape == want.shape
    assert ((got - want).abs() <= _tolerance(got)).all(), float((got - want).abs().max())
