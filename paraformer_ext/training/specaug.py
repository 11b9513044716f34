"""FunASR's SpecAugLFR (funasr/models/specaug/specaug.py, mask_along_axis.py; spec paraformer.md §5.6): masks on
LFR features (B, T, lfr_m·n_mels), training only, applied before the encoder.

What FunASR's code does (read from its source, which differs from spec §5.6 on the time mask):
* frequency masks (MaskAlongAxisLFR, lfr_rate + 1 = 7 blocks): D = F // 7 (80); per utterance and mask a width
  w ~ randint(lo, hi) and a start p ~ randint(0, max(1, D − max w over the batch)); the same band
  [p, p + w) is zeroed in every one of the 7 blocks (p + k·D);
* time masks: MaskAlongAxisLFR forces lfr_rate = 1 for the time axis, so it is a plain mask: w ~ randint(lo, hi),
  p ~ randint(0, max(1, T − max w)) over the *padded* T (lengths are not consulted), frames [p, p + w) zeroed;
  or, with time_mask_width_ratio_range, widths from ⌊T·r0⌋..⌊T·r1⌋ (MaskAlongAxisVariableMaxWidth);
* draw order: all widths of a mask kind, then all starts; frequency before time. Masked values are 0.
Time warping (apply_time_warp) is not built. Unlike FunASR (masked_fill_ in place) the input is not modified.
"""
from __future__ import annotations

import math

import torch

# SpecAugLFR's constructor defaults (FunASR), overridden by config.yaml's specaug_conf
DEFAULTS = {
    "apply_time_warp": True, "time_warp_window": 5, "time_warp_mode": "bicubic",
    "apply_freq_mask": True, "freq_mask_width_range": (0, 20), "num_freq_mask": 2, "lfr_rate": 0,
    "apply_time_mask": True, "time_mask_width_range": None, "time_mask_width_ratio_range": None, "num_time_mask": 2,
}


def _randint(lo: int, hi: int, shape, generator, device) -> torch.Tensor:
    # drawn where the generator lives (FunASR: the global RNG of the features' device), then moved
    where = generator.device if generator is not None else device
    return torch.randint(lo, hi, shape, generator=generator, device=where).to(device)


def mask_along_axis(spec: torch.Tensor, width_range, num_mask: int, dim: int, lfr_rate: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """spec (B, T, F) with num_mask bands per utterance zeroed along dim (1: time, 2: frequency); with
    lfr_rate > 1 the axis is lfr_rate equal blocks and each band repeats in every block."""
    lo, hi = width_range
    B, full = spec.size(0), spec.size(dim)
    D = full // lfr_rate
    width = _randint(lo, hi, (B, num_mask), generator, spec.device)[..., None]
    start = _randint(0, max(1, D - int(width.max())), (B, num_mask), generator, spec.device)[..., None]
    if lfr_rate > 1:
        width = width.repeat(1, lfr_rate, 1)
        start = torch.cat([start + D * k for k in range(lfr_rate)], dim=1)
    ar = torch.arange(full, device=spec.device)[None, None, :]
    mask = ((start <= ar) & (ar < start + width)).any(dim=1)  # (B, full)
    return spec.masked_fill(mask[:, :, None] if dim == 1 else mask[:, None, :], 0.0)


def _range(v, name: str):
    r = (0, v) if isinstance(v, (int, float)) else tuple(v)
    if len(r) != 2 or not r[1] > r[0]:
        raise ValueError(f"specaug_conf.{name} must be (low, high) with high > low, got {v!r}")
    return r


def spec_aug(speech: torch.Tensor, name: str, conf: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply config.yaml's `specaug` (only SpecAugLFR is built) with its specaug_conf to speech (B, T, F)."""
    if name != "SpecAugLFR":
        raise NotImplementedError(f"config.yaml: specaug {name!r} is not built; only SpecAugLFR is (spec §5.6)")
    unknown = sorted(set(conf) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config.yaml: specaug_conf has keys SpecAugLFR does not take: {unknown}")
    c = {**DEFAULTS, **conf}
    if c["apply_time_warp"]:
        raise NotImplementedError("specaug_conf.apply_time_warp: time warping is not built; set it false "
                                  "(as paraformer-large's config does)")
    if not (c["apply_freq_mask"] or c["apply_time_mask"]):
        raise ValueError("specaug_conf: one of apply_time_warp, apply_freq_mask, apply_time_mask must be true")
    if c["apply_freq_mask"]:
        lfr = c["lfr_rate"] + 1
        if speech.size(2) % lfr:
            raise ValueError(f"SpecAugLFR: {speech.size(2)} feature dims do not split into lfr_rate + 1 = {lfr} blocks")
        speech = mask_along_axis(speech, _range(c["freq_mask_width_range"], "freq_mask_width_range"),
                                 c["num_freq_mask"], 2, lfr, generator)
    if c["apply_time_mask"]:
        fixed, ratio = c["time_mask_width_range"], c["time_mask_width_ratio_range"]
        if (fixed is None) == (ratio is None):
            raise ValueError("specaug_conf: give exactly one of time_mask_width_range and time_mask_width_ratio_range")
        if fixed is not None:
            speech = mask_along_axis(speech, _range(fixed, "time_mask_width_range"), c["num_time_mask"], 1, 1, generator)
        else:
            r0, r1 = _range(ratio, "time_mask_width_ratio_range")
            T = speech.size(1)
            lo, hi = max(0, math.floor(T * r0)), min(T, math.floor(T * r1))
            if hi > lo:
                speech = mask_along_axis(speech, (lo, hi), c["num_time_mask"], 1, 1, generator)
    return speech
