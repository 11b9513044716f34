"""Paraformer timestamps (spec §1.6): FunASR's goldens bit for bit, plus constructed inputs for every branch.

Hand-derived expectations use FunASR's arithmetic: boundary = peak frame - 1.5, seconds = boundary * 0.06,
ms = int(seconds * 1000) (truncation toward zero of a float64 product).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED, needs_shared
from paraformer_ext.timestamps import (
    cif_wo_hidden,
    paraformer_timestamps,
    timestamp_trace,
    ts_prediction_lfr6_standard,
)

GOLDEN_WAVS = ["small_asr_example", "small_long", "large_asr_example", "large_long"]
F32_THR = np.float32(0.9999)


def _golden(name):
    g = SHARED / "golden"
    return np.load(g / f"{name}.npz"), json.loads((g / f"{name}.json").read_text(encoding="utf-8"))


def _peaks_at(n_frames, frames, dtype=torch.float32):
    """A 'peaks' vector (FunASR's second argument) that is exactly 1.0 at `frames` and 0.3 elsewhere."""
    p = torch.full((n_frames,), 0.3, dtype=dtype)
    p[list(frames)] = 1.0
    return p


# ---------------------------------------------------------------------------------------------------------------
# Goldens


@needs_shared
@pytest.mark.parametrize("name", GOLDEN_WAVS)
def test_golden_per_token_and_intermediates(name):
    z, j = _golden(name)
    tokens = j["tokens"]
    tr = timestamp_trace(z["fires"], z["alphas"], tokens, upsample_rate=1)
    # FunASR's README: the sigmoid alphas never reach 0.9999, so the rescale branch runs
    assert tr.rescaled and j["timestamp_fn_args"]["rescale_branch_taken"]
    assert tr.cif_input.dtype == np.float32 and tr.cif_peaks.dtype == np.float32
    np.testing.assert_array_equal(tr.cif_input, z["ts_cif_input"])  # bit-exact float32
    np.testing.assert_array_equal(tr.cif_peaks, z["ts_cif_peaks"])
    assert tr.ms == z["timestamps_raw"].tolist() == j["timestamps_raw_per_token"]
    assert tr.text == j["timestamp_string"]  # FunASR's (discarded) string output, <sil> entries included
    assert tr.num_frames == z["fires"].shape[0]
    np.testing.assert_array_equal(tr.fire_place, np.nonzero(z["ts_cif_peaks"] >= F32_THR)[0] - 1.5)


@needs_shared
@pytest.mark.parametrize("name", GOLDEN_WAVS)
def test_golden_swapped_call_and_input_forms(name):
    z, j = _golden(name)
    fires, alphas, tokens = z["fires"], z["alphas"], j["tokens"]
    f_before, a_before = fires.copy(), alphas.copy()
    want = z["timestamps_raw"].tolist()
    assert paraformer_timestamps(fires, alphas, tokens) == want
    np.testing.assert_array_equal(fires, f_before)  # FunASR rescales in place; we must not
    np.testing.assert_array_equal(alphas, a_before)
    # tensors, 2-D (row 0, as FunASR takes), float64 holding the same float32 values
    assert paraformer_timestamps(torch.from_numpy(fires), torch.from_numpy(alphas), tokens) == want
    assert paraformer_timestamps(fires[None], alphas[None], tokens) == want
    assert paraformer_timestamps(fires.astype(np.float64), alphas.astype(np.float64), tokens) == want
    # the argument order matters: the unswapped call integrates the alphas instead and disagrees
    assert ts_prediction_lfr6_standard(alphas, fires, tokens, upsample_rate=1)[1] != want


@needs_shared
@pytest.mark.parametrize("preset", ["small", "large"])
def test_golden_batch_items(preset):
    """FunASR 1.4.16 passes each item's rows cut to its length + 1; that reproduces its per-item timestamps,
    and the unpadded item's equal its batch-1 golden."""
    g = SHARED / "golden"
    z = np.load(g / f"{preset}_batch.npz")
    j = json.loads((g / f"{preset}_batch.json").read_text(encoding="utf-8"))
    lens = z["encoder_out_lens"]
    for i, item in enumerate(j["items"]):
        n = int(lens[i]) + 1
        got = paraformer_timestamps(z["fires"][i, :n], z["alphas"][i, :n], item["tokens"])
        assert got == z[f"item{i}_timestamps_raw"].tolist() == item["timestamps_raw_per_token"]
        if not item["padded"]:
            zb, _ = _golden(f"{preset}_{item['wav'].removesuffix('.wav')}")
            # (its fires differ from batch 1 by float32 noise only: other kernel shapes)
            np.testing.assert_allclose(z["fires"][i, :n], zb["fires"], atol=2e-5)
            assert got == zb["timestamps_raw"].tolist()


# ---------------------------------------------------------------------------------------------------------------
# cif_wo_hidden


def test_cif_wo_hidden_subtracts_threshold_not_one():
    out = cif_wo_hidden(np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32))
    assert out.dtype == np.float32
    carry = np.float32(1.0) - F32_THR  # 1e-4 stays after the fire at frame 1, not 0
    assert out[1] == np.float32(1.0)
    assert out[2] == np.float32(carry + np.float32(0.5))
    assert out[3] == np.float32(out[2] + np.float32(0.5))
    assert (out >= F32_THR).tolist() == [False, True, False, True]


def test_cif_wo_hidden_compares_in_float32():
    # float32(0.9999) < 0.9999 as a double: FunASR's float32 tensor comparison still counts it as a fire
    out = cif_wo_hidden(np.array([F32_THR, 0.0], dtype=np.float32))
    assert out[0] == F32_THR and out[1] == np.float32(0.0)


def test_cif_wo_hidden_fires_once_per_frame():
    # 2.5 at one frame fires once; the excess carries and fires on the following frames
    out = cif_wo_hidden(np.array([2.5, 0.0, 0.0, 0.0], dtype=np.float32))
    assert (out >= F32_THR).tolist() == [True, True, False, False]
    assert out[0] == np.float32(2.5)


def test_cif_wo_hidden_random_matches_float64_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(0, 1.2, size=rng.integers(1, 300)).astype(np.float32)
        out = cif_wo_hidden(a)
        acc, ref = 0.0, []
        for x in a.astype(np.float64):
            acc += x
            ref.append(acc)
            if acc >= 0.9999:
                acc -= 0.9999
        np.testing.assert_allclose(out, ref, atol=1e-4)
        close = np.abs(np.array(ref) - 0.9999) < 1e-4
        np.testing.assert_array_equal((out >= F32_THR)[~close], (np.array(ref) >= 0.9999)[~close])


# ---------------------------------------------------------------------------------------------------------------
# Constructed inputs, one per branch


def test_no_tokens():
    assert ts_prediction_lfr6_standard(torch.ones(5), torch.ones(5), []) == ("", [])
    assert paraformer_timestamps(np.zeros(0, np.float32), np.zeros(0, np.float32), []) == []


def test_direct_peaks_gap_and_tail_silence():
    """Peaks given directly (N+1 of them, no rescale): frames 1, 4, 20, 23 of 30 -> boundaries -0.5, 2.5,
    18.5, 21.5. Token 0: -0.5..2.5 (negative start). Token 1: gap 16 > 12 frames, so 2.5..14.5 then <sil>
    14.5..18.5. Token 2: 30 - 21.5 = 8.5 > 5 frames remain, so it ends at (30 + 21.5) / 2 = 25.75 and <sil>
    runs to 30. 18.5 * 0.06 * 1000 = 1109.9999999999998 -> 1109."""
    first = torch.rand(30)  # unused: no rescale when the peaks already count N+1
    tr = timestamp_trace(first, _peaks_at(30, [1, 4, 20, 23]), ["甲", "乙", "丙"], upsample_rate=1)
    assert not tr.rescaled and tr.cif_input is None
    assert tr.ms == [[-30, 150], [150, 870], [1109, 1545]]
    assert [e[0] for e in tr.entries] == ["甲", "乙", "<sil>", "丙", "<sil>"]
    assert tr.entries[-1][2] == 30 * 0.06
    assert tr.text.startswith("甲 -0.02 0.150;乙 0.150 0.870;<sil> 0.870 1.110;")  # str(x + 0.0005)[:5]


def test_gap_of_exactly_12_frames_is_one_token():
    """Boundaries 0.5, 12.5, 25.5: the first gap is 12 frames (kept whole), the second 13 (the token keeps 12,
    then <sil>). 30 - 25.5 <= 5 frames remain, so the *last entry* ends at num_frames: that entry is the
    <sil>, the token keeps its 12-frame end."""
    tr = timestamp_trace(torch.zeros(30), _peaks_at(30, [2, 14, 27]), ["甲", "乙"], upsample_rate=1)
    assert [e[0] for e in tr.entries] == ["甲", "乙", "<sil>"]
    assert tr.ms == [[30, 750], [750, 1470]]
    assert tr.entries[2][1:] == (24.5 * 0.06, 30 * 0.06)


def test_end_threshold_is_strictly_more_than_5_frames():
    # with force_time_shift=-1 the boundaries are whole frames: exactly 5 remaining frames is not "more than 5"
    _, ms = ts_prediction_lfr6_standard(
        torch.zeros(10), _peaks_at(10, [1, 6]), ["甲"], force_time_shift=-1.0, upsample_rate=1
    )
    assert ms == [[0, 600]]  # boundaries 0, 5; ends at num_frames = 10
    _, ms = ts_prediction_lfr6_standard(
        torch.zeros(10), _peaks_at(10, [1, 5]), ["甲"], force_time_shift=-1.0, upsample_rate=1
    )
    assert ms == [[0, 420]]  # boundaries 0, 4: 6 frames remain, the token ends half-way, (10 + 4) / 2 = 7


def test_leading_silence_and_end_at_num_frames():
    """First peak at frame 8 -> boundary 6.5 > 5: a leading <sil> 0..0.39 s (string only). Last peak at the
    tail slot 9 of 10 frames: 10 - 7.5 = 2.5 <= 5, so the last token ends at num_frames = 10 -> 600 ms."""
    text, ms = ts_prediction_lfr6_standard(torch.zeros(10), _peaks_at(10, [8, 9]), ["甲"], upsample_rate=1)
    assert ms == [[390, 600]]
    assert text == "<sil> 0.000 0.390;甲 0.390 0.600;"
    text, _ = ts_prediction_lfr6_standard(
        torch.zeros(10), _peaks_at(10, [8, 9]), ["甲"], sil_in_str=False, upsample_rate=1
    )
    assert text == "甲 0.390 0.600;"


def test_trailing_eos_token_is_dropped():
    # FunASR drops a last "</s>" from the token list (then 2 peaks suffice for 1 token)
    _, ms = ts_prediction_lfr6_standard(torch.zeros(10), _peaks_at(10, [8, 9]), ["甲", "</s>"], upsample_rate=1)
    assert ms == [[390, 600]]


def test_rescale_branch_first_peak_at_frame_zero():
    """Peaks below 0.9999 everywhere -> the first vector is rescaled to sum N+1 = 3 (already does) and
    integrated: fires at frames 0, 3 (1e-4 carried) and 6 -> boundaries -1.5, 1.5, 4.5 -> -90 ms start."""
    first = torch.tensor([1, 0, 0, 1, 0, 0, 1], dtype=torch.float32)
    tr = timestamp_trace(first, torch.full((7,), 0.5), ["甲", "乙"], upsample_rate=1)
    assert tr.rescaled
    np.testing.assert_array_equal(tr.cif_input, first.numpy())
    assert tr.fire_place.tolist() == [-1.5, 1.5, 4.5]
    assert tr.ms == [[-90, 90], [90, 420]]  # last end = 7 frames * 60 ms


def test_rescale_is_float32_division_by_sum_over_n_plus_1():
    first = torch.tensor([0.5, 2.0, 0.25, 1.0, 3.0], dtype=torch.float32)
    tr = timestamp_trace(first, torch.zeros(5), ["甲", "乙", "丙"], upsample_rate=1)
    scale = np.float32(first.numpy().sum(dtype=np.float32) / np.float32(4))
    np.testing.assert_array_equal(tr.cif_input, (first.numpy() / scale).astype(np.float32))
    assert first.tolist() == [0.5, 2.0, 0.25, 1.0, 3.0]  # not modified in place


def test_fewer_peaks_than_tokens_drop_trailing_tokens():
    """All mass in the last frame: it fires only once, so 2 tokens get 1 boundary and no span (FunASR
    returns [] here without error)."""
    first = torch.tensor([0, 0, 0, 1], dtype=torch.float32)
    assert ts_prediction_lfr6_standard(first, torch.zeros(4), ["甲", "乙"], upsample_rate=1) == ("", [])
    # sums to N+1 = 4 already; fires at 0, 3 and once at 6 (2.0002 there, but one fire per frame): 3
    # boundaries for 3 tokens, so the last token gets no span
    first = torch.tensor([1, 0, 0, 1, 0, 0, 2], dtype=torch.float32)
    _, ms = ts_prediction_lfr6_standard(first, torch.zeros(7), ["甲", "乙", "丙"], upsample_rate=1)
    assert ms == [[-90, 90], [90, 420]]


def test_vad_offset_and_truncation_toward_zero():
    """vad_offset (ms) is added in seconds before the *1000: first peak at frame 0 with a 20 ms offset gives
    (-0.09 + 0.02) * 1000 = -69.99999999999999 -> -69 (int() truncates toward zero, floor would give -70)."""
    _, ms = ts_prediction_lfr6_standard(
        torch.zeros(6), _peaks_at(6, [0, 3]), ["甲"], vad_offset=20, upsample_rate=1
    )
    assert ms == [[-69, 380]]  # end: 6 frames * 0.06 + 0.02 = 0.38 s
    _, ms0 = ts_prediction_lfr6_standard(torch.zeros(6), _peaks_at(6, [0, 3]), ["甲"], upsample_rate=1)
    assert ms0 == [[-90, 360]]


def test_upsample_rate_3_uses_20ms_frames():
    _, ms = ts_prediction_lfr6_standard(torch.zeros(10), _peaks_at(10, [3, 6, 9]), ["甲", "乙"])
    assert ms == [[30, 90], [90, 200]]  # boundaries 1.5, 4.5, 7.5 frames of 20 ms; end 10 * 20 ms


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_accepts_float_dtypes(dtype):
    _, ms = ts_prediction_lfr6_standard(
        torch.zeros(30, dtype=dtype), _peaks_at(30, [1, 4, 20, 23], dtype), ["甲", "乙", "丙"], upsample_rate=1
    )
    assert ms == [[-30, 150], [150, 870], [1109, 1545]]


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        paraformer_timestamps(torch.rand(10), torch.rand(9), ["甲"])
    with pytest.raises(TypeError, match="floating-point"):
        paraformer_timestamps(torch.arange(10), torch.rand(10), ["甲"])
    with pytest.raises(ValueError, match="1-D"):
        paraformer_timestamps(torch.rand(2, 3, 4), torch.rand(2, 3, 4), ["甲"])
    with pytest.raises(ValueError, match="no token boundary"):  # FunASR: IndexError on fire_place[0]
        paraformer_timestamps(torch.zeros(10), torch.zeros(10), ["甲"])
    with pytest.raises(ValueError, match="no token boundary"):
        paraformer_timestamps(torch.full((10,), float("nan")), torch.zeros(10), ["甲"])


def test_more_boundaries_than_tokens_is_an_error():
    """The 0.9999 integrator keeps 1e-4 per fire: over ~10,000 tokens that adds a whole extra boundary and
    FunASR indexes past its token list. We raise instead."""
    n = 10100
    first = torch.ones(n + 200)  # rescaled to (n+1)/(n+200) per frame
    with pytest.raises(ValueError, match="boundaries for 10100 tokens"):
        paraformer_timestamps(first, torch.zeros(n + 200), ["甲"] * n)
