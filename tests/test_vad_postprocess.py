"""FSMN-VAD post-processing alone (spec fsmn_vad.md §4–§7): FunASR's posteriors in, FunASR's segments out."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import SHARED, needs_shared
from paraformer_ext.frontend import num_frames
from paraformer_ext.vad.postprocess import (
    SIL2SIL,
    SIL2SPEECH,
    VadOptions,
    VadPostprocessor,
    segments_from_posteriors,
)

STEMS = ["asr_example", "mid", "long", "vad_62s", "vad_4min"]
MODES = {"default": None, "fixed800": 800}


def _golden():
    g = SHARED / "golden" / "vad"
    files = json.loads((g / "segments.json").read_text())["files"]
    return files, np.load(g / "p_sil_all.npz")


def _check_well_formed(segs, T):
    prev_end = 0
    for s, e in segs:
        assert isinstance(s, int) and isinstance(e, int)
        assert s % 10 == 0 and e % 10 == 0
        assert prev_end <= s < e <= 10 * T
        prev_end = e


@needs_shared
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stem", STEMS)
def test_golden_segments_from_funasr_posteriors(stem, mode):
    files, p_all = _golden()
    info = files[stem + ".wav"]
    pp = VadPostprocessor(VadOptions(), MODES[mode])
    segs = pp.accept(p_all[stem], final=True, num_samples=info["num_samples"])
    assert segs == info["segments"][mode]
    assert pp.chunk_end_sil_ms == [c["max_end_sil_ms"] for c in info["chunks"][mode]]
    assert pp.thr == info["chunks"][mode][-1]["speech_noise_thres"]
    _check_well_formed(segs, info["num_frames"])


@needs_shared
@pytest.mark.parametrize("mode", MODES)
def test_golden_frame_and_window_states(mode):
    d = np.load(SHARED / "golden" / "vad" / "vad_62s.npz")
    pp = VadPostprocessor(VadOptions(), MODES[mode])
    pp.record_frames = True
    segs = pp.accept(d["p_sil"], final=True, num_samples=993985)
    np.testing.assert_array_equal(np.array(pp.frame_states), d[f"frame_state_{mode}"])
    np.testing.assert_array_equal(np.array(pp.change_states), d[f"change_state_{mode}"])
    assert segs == d[f"segments_{mode}"].tolist()
    if mode == "default":
        assert pp.chunk_end_sil_ms == d["chunk_max_end_sil_ms_default"].tolist()


@needs_shared
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_piecewise_feeding_equals_one_shot(mode, seed):
    """Posteriors fed in random pieces (chunk borders fall anywhere in them) give the same segments, and
    every segment is returned by the call that completes it."""
    files, p_all = _golden()
    rng = np.random.default_rng(seed)
    p = p_all["vad_4min"]
    n = files["vad_4min.wav"]["num_samples"]
    pp = VadPostprocessor(VadOptions(), MODES[mode])
    got, i = [], 0
    cuts = np.sort(rng.choice(np.arange(1, p.size - 1), size=40, replace=False))
    for j in cuts:
        got += pp.accept(p[i:j])
        i = j
    got += pp.accept(p[i:], final=True, num_samples=n)
    assert got == files["vad_4min.wav"]["segments"][mode]


def test_config_yaml_options(vad_model_dir):
    conf = yaml.safe_load((vad_model_dir / "config.yaml").read_text())
    o = VadOptions.from_config(conf["model_conf"])
    assert o == VadOptions()  # the shipped config equals FunASR's defaults on every key that matters
    assert set(o.ignored) == {
        "snr_mode", "do_start_point_detection", "do_end_point_detection", "speech_noise_thresh_low",
        "speech_noise_thresh_high", "output_frame_probs",
    }
    assert not o.uses_energy


def test_options_are_read_from_config():
    o = VadOptions.from_config({"max_single_segment_time": 20000, "speech_noise_thres": 0.8, "sil_pdf_ids": [0]})
    assert o.max_single_segment_time == 20000 and o.speech_noise_thres == 0.8 and o.sil_pdf_ids == (0,)
    with pytest.raises(ValueError, match="silence_pdf_num"):
        VadOptions.from_config({"sil_pdf_ids": [0, 1]})
    with pytest.raises(ValueError, match="detect_mode"):
        VadOptions.from_config({"detect_mode": 3})


# --- synthetic posteriors: rules of spec §6 that the golden files do not isolate --------------------------

SPEECH, SIL = 0.05, 0.9


def _run(p, n_samples=None, max_end_silence_time=None, speech_noise_thres=None, **options):
    """Segments of posteriors p; max_end_silence_time / speech_noise_thres are the runtime (generate())
    arguments, other keywords are model_conf options."""
    return segments_from_posteriors(
        np.asarray(p, dtype=np.float64), VadOptions(**options), max_end_silence_time,
        num_samples=n_samples, speech_noise_thres=speech_noise_thres,
    )


def test_no_speech_gives_empty():
    assert _run(np.full(3000, SIL)) == []
    assert _run(np.full(3000, SIL), max_end_silence_time=800) == []
    assert _run(np.zeros(0)) == []
    assert _run(np.full(1, SPEECH)) == []  # one frame cannot fill the window


def test_single_utterance_rules():
    # silence 100 frames, speech 200, silence 300: window confirms speech at frame 114, segment starts
    # 40 frames earlier; the end is 11 frames into the silence for E >= 110 ms.
    p = np.r_[np.full(100, SIL), np.full(200, SPEECH), np.full(300, SIL)]
    T = p.size
    # window: speech frames enter at 100, Sil2Speech when 15 of 20 are speech (frame 114); start = 114 - 40
    start = (100 + 14 - 40) * 10
    # window flips back at frame 304 (sum <= 15); the Sil2Sil run starts at 305; end (r + 11)·10
    end = (305 + 11) * 10
    assert _run(p) == [[start, end]]
    assert _run(p, max_end_silence_time=800) == [[start, end]]
    # E = 50 ms: end at (r + 5)·10; E = 0 ms ends on the run's first frame
    assert _run(p, max_end_silence_time=200) == [[start, (305 + 5) * 10]]
    assert _run(p, max_end_silence_time=150) == [[start, (305 + 1) * 10]]
    # a file ending inside speech: the last segment ends at T·10
    assert _run(p[:250]) == [[start, 2500]]
    _check_well_formed(_run(p), T)


def test_short_gap_only_splits_in_fixed_mode():
    # a 100-frame gap: longer than 650 ms (fixed) but shorter than 1850 ms (dynamic)
    p = np.r_[np.full(50, SIL), np.full(300, SPEECH), np.full(100, SIL), np.full(300, SPEECH), np.full(300, SIL)]
    assert len(_run(p)) == 1
    fixed = _run(p, max_end_silence_time=800)
    assert len(fixed) == 2 and fixed[0][1] <= fixed[1][0]


def test_thresholds_per_mode():
    # p_sil = 0.22: speech for the dynamic threshold (<= 0.25), silence for fixed 0.6 (> 0.2)
    p = np.r_[np.full(50, SIL), np.full(300, 0.22), np.full(300, SIL)]
    assert len(_run(p)) == 1
    assert _run(p, max_end_silence_time=800) == []
    assert len(_run(p, max_end_silence_time=800, speech_noise_thres=0.5)) == 1
    # the dynamic mode ignores a configured speech_noise_thres
    assert len(_run(p, speech_noise_thres=0.9)) == 1


def test_boundary_values_and_exact_decision():
    # p = 0.25 exactly: both sides are 0.75 → speech (dynamic); p = 0 / 1 (FunASR raises) → speech / silence
    for p_speech in (0.25, 0.0):
        p = np.r_[np.full(50, SIL), np.full(300, p_speech), np.full(300, 1.0)]
        assert len(_run(p)) == 1, p_speech
    assert _run(np.r_[np.full(50, SIL), np.full(300, 0.25 + 1e-9), np.full(300, SIL)]) == []


def test_max_single_segment_time():
    # 150 s of continuous speech: cut every 6000 frames, end = start + 60010, the next starts there
    n = 150 * 16000
    p = np.full(num_frames(n, 400, 160), SPEECH)
    segs = _run(p, n)
    assert segs[0] == [0, 60010] and segs[1] == [60010, 120020]
    assert segs[2][0] == 120020 and segs[2][1] == num_frames(n, 400, 160) * 10
    # the limit comes from config.yaml (model_conf)
    segs = _run(p, n, max_single_segment_time=20000)
    assert [s[1] - s[0] for s in segs[:-1]] == [20010] * (len(segs) - 1)


def test_dynamic_schedule_thresholds():
    """Spec §4.3: continuous speech keeps a segment open across chunk borders → 1850, 50, then 0 ms when the
    previous chunk started inside a segment and reported nothing (needs max segment > 60 s)."""
    n = 200 * 16000
    p = np.full(num_frames(n, 400, 160), SPEECH)
    pp = VadPostprocessor(VadOptions())
    pp.accept(p, final=True, num_samples=n)
    assert pp.chunk_end_sil_ms == [1850, 50, 50, 50]
    pp = VadPostprocessor(VadOptions(max_single_segment_time=200000))
    pp.accept(p, final=True, num_samples=n)
    assert pp.chunk_end_sil_ms == [1850, 50, 0, 0]
    # fixed mode: the same threshold everywhere
    pp = VadPostprocessor(VadOptions(), 800)
    pp.accept(p, final=True, num_samples=n)
    assert pp.chunk_end_sil_ms == [650] * 4


@pytest.mark.parametrize("n", [960000, 960000 - 1, 960000 + 80, 960000 - 80, 2 * 960000])
def test_chunk_count_at_exact_multiples_of_60s(n):
    """FunASR cuts N samples into N // 960000 + 1 chunks, so an exact multiple of 60 s has a last chunk of
    2 frames; 960000 ± 80 samples have the same frame count but different chunk counts."""
    T = num_frames(n, 400, 160)
    pp = VadPostprocessor(VadOptions())
    pp.accept(np.full(T, SPEECH), final=True, num_samples=n)
    assert len(pp.chunk_end_sil_ms) == n // 960000 + 1


def test_chunk_border_changes_the_end_rule():
    # A segment open at the 60 s border gets E = 50 ms from there on (vad_62s's last segment, in small):
    # speech frames 5000..5989, silence after, 6210 frames. The window flips back at 5994, so the Sil2Sil
    # run starts at r = 5995, one frame before the border (5996).
    n = 993985
    T = num_frames(n, 400, 160)
    p = np.r_[np.full(5000, SIL), np.full(990, SPEECH), np.full(T - 5990, SIL)]
    start = (5000 + 14 - 40) * 10
    assert _run(p, n) == [[start, (5995 + 5) * 10]]  # 50 ms rule: end (r + 5)·10
    assert _run(p, n, max_end_silence_time=800) == [[start, (5995 + 11) * 10]]  # 650 ms rule: (r + 11)·10
    # the same pattern 10 s earlier, away from the border, keeps the 1850 ms rule: (r + 11)·10
    assert _run(p[1000:], n - 160000) == [[start - 10000, (4995 + 11) * 10]]


def test_num_samples_is_checked():
    with pytest.raises(ValueError, match="frames"):
        VadPostprocessor().accept(np.full(100, SIL), final=True, num_samples=16000)
    pp = VadPostprocessor()
    pp.accept(np.full(10, SIL), final=True)
    with pytest.raises(RuntimeError, match="final"):
        pp.accept(np.full(10, SIL))
    with pytest.raises(ValueError, match="NaN"):
        VadPostprocessor().accept(np.array([0.5, np.nan]))


def test_detect_mode_single_utterance():
    p = np.r_[np.full(50, SIL), np.full(300, SPEECH), np.full(300, SIL), np.full(300, SPEECH), np.full(300, SIL)]
    assert len(_run(p)) == 2
    assert _run(p, detect_mode=0) == _run(p)[:1]


def test_energy_thresholds_need_decibels():
    opts = VadOptions(decibel_thres=-30.0)
    assert opts.uses_energy
    p = np.r_[np.full(50, SIL), np.full(300, SPEECH), np.full(300, SIL)]
    with pytest.raises(ValueError, match="decibels"):
        VadPostprocessor(opts).accept(p, final=True)
    # quiet frames (below decibel_thres) are silence whatever the network says
    quiet = np.full(p.size, -50.0)
    assert VadPostprocessor(opts).accept(p, final=True, decibels=quiet) == []
    loud = np.full(p.size, -10.0)
    assert VadPostprocessor(opts).accept(p, final=True, decibels=loud) == _run(p)


def test_window_states_are_recorded():
    p = np.r_[np.full(30, SIL), np.full(40, SPEECH)]
    pp = VadPostprocessor()
    pp.record_frames = True
    pp.accept(p, final=True)
    cs = pp.change_states
    assert cs[:44] == [SIL2SIL] * 44 and cs[44] == SIL2SPEECH  # 15th speech frame in the window


def test_unusable_fixed_settings_are_rejected():
    # do_extend 0 with a negative end silence would end segments in the future (FunASR crashes there)
    with pytest.raises(ValueError, match="do_extend 0"):
        VadPostprocessor(VadOptions(do_extend=0), 100)
    VadPostprocessor(VadOptions(do_extend=0), 150)
    VadPostprocessor(VadOptions(), 0)  # with do_extend the lookback is clamped at 0: fine
