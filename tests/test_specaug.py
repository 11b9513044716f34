"""training/specaug.py: FunASR's SpecAugLFR masks, their draw order, and when compute_loss applies them."""
from __future__ import annotations

import pytest
import torch

from paraformer_ext.training.specaug import spec_aug

LARGE_CONF = {"apply_time_warp": False, "time_warp_window": 5, "time_warp_mode": "bicubic",
              "apply_freq_mask": True, "freq_mask_width_range": [0, 30], "lfr_rate": 6,
              "num_freq_mask": 1, "apply_time_mask": True, "time_mask_width_range": [0, 12], "num_time_mask": 1}


def test_masks_follow_funasr_draws():
    B, T, F = 3, 50, 560
    x = torch.randn(B, T, F) + 10.0  # no zero before masking
    out = spec_aug(x, "SpecAugLFR", LARGE_CONF, torch.Generator().manual_seed(7))
    assert (x != 0).all()  # the input is left alone
    # FunASR's draws, in its order: freq widths, freq starts (over 80 = 560 / 7), time widths, time starts
    g = torch.Generator().manual_seed(7)
    fw = torch.randint(0, 30, (B, 1), generator=g)
    fs = torch.randint(0, max(1, 80 - int(fw.max())), (B, 1), generator=g)
    tw = torch.randint(0, 12, (B, 1), generator=g)
    ts = torch.randint(0, max(1, T - int(tw.max())), (B, 1), generator=g)
    f = torch.arange(F)
    t = torch.arange(T)
    for b in range(B):
        band = ((f % 80) >= fs[b]) & ((f % 80) < fs[b] + fw[b])  # the same band in each of the 7 blocks
        rows = (t >= ts[b]) & (t < ts[b] + tw[b])
        want = band[None, :] | rows[:, None]
        assert torch.equal(out[b] == 0, want)
        assert torch.equal(out[b][~want], x[b][~want])


def test_variable_width_time_mask_and_reproducibility():
    conf = {**LARGE_CONF, "time_mask_width_range": None, "time_mask_width_ratio_range": [0.0, 0.2], "num_time_mask": 2,
            "apply_freq_mask": False}
    x = torch.ones(2, 40, 560)
    a = spec_aug(x, "SpecAugLFR", conf, torch.Generator().manual_seed(1))
    b = spec_aug(x, "SpecAugLFR", conf, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    zero_rows = (a == 0).all(-1)
    assert ((a == 0) == zero_rows[..., None]).all()  # whole frames only
    assert (zero_rows.sum(-1) <= 2 * 7).all()  # two masks of width < ⌊40 · 0.2⌋ = 8


def test_unbuilt_and_bad_configs_say_so():
    x = torch.ones(1, 10, 560)
    with pytest.raises(NotImplementedError, match="time warping"):
        spec_aug(x, "SpecAugLFR", {**LARGE_CONF, "apply_time_warp": True})
    with pytest.raises(NotImplementedError, match="only SpecAugLFR"):
        spec_aug(x, "SpecAug", {})
    with pytest.raises(ValueError, match="does not take"):
        spec_aug(x, "SpecAugLFR", {**LARGE_CONF, "freq_mask_ratio": 1})
    with pytest.raises(ValueError, match="exactly one of"):
        spec_aug(x, "SpecAugLFR", {**LARGE_CONF, "time_mask_width_ratio_range": [0, 0.1]})
