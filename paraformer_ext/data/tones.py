"""Do espeak-ng's Mandarin tones come through? An F0 tracker and the tone-2 rise / tone-4 fall of a voice.

Mandarin is tonal: 妈 麻 马 骂 differ only in the pitch contour. espeak-ng's `cmn-latn-pinyin` realizes the four
contours, but with excursions of only 2-3 semitones, and some voice variants flatten them (a pitch span of
105-115 Hz) or turn them upside down (a span given high-to-low). A corpus spoken by such voices teaches a model to
guess tones. `tone_excursions` measures a voice; benchmarks/espeak_tones.py measures them all, and
corpus.VARIANTS keeps those whose tones come through.
"""
from __future__ import annotations

import numpy as np

SYLLABLES = ("ma", "yi", "bao", "shi")


def f0_track(x: np.ndarray, sr: int, fmin: float = 50.0, fmax: float = 450.0) -> np.ndarray:
    """x (n,) float samples → F0 in Hz of its voiced 10 ms frames (autocorrelation over 40 ms windows; a frame
    is voiced when its normalized autocorrelation peak reaches 0.3). Unvoiced and silent frames are dropped."""
    n, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = int(sr / fmax), int(sr / fmin)
    out = []
    for s in range(0, len(x) - n, hop):
        fr = x[s:s + n] - x[s:s + n].mean()
        if np.sqrt(np.mean(fr ** 2)) < 0.02:
            continue
        ac = np.correlate(fr, fr, "full")[n - 1:]
        seg = ac[lo:hi]
        if seg.max() < 0.3 * ac[0]:
            continue
        # the first peak within 10 % of the best: a period's multiples score almost as well as the period
        peaks = np.nonzero((seg[1:-1] >= seg[:-2]) & (seg[1:-1] >= seg[2:]) & (seg[1:-1] >= 0.9 * seg.max()))[0]
        out.append(sr / (lo + 1 + int(peaks[0]) if len(peaks) else lo + int(np.argmax(seg))))
    return np.asarray(out)


def contour_change(f0: np.ndarray) -> float:
    """Semitones from the first quarter of a syllable's voiced frames to the last (medians: 3/4 of a straight
    glide's span); frames more than
    7 semitones from the median are octave errors of the tracker and are dropped. NaN when too few frames."""
    if len(f0) < 6:
        return float("nan")
    st = 12 * np.log2(f0 / np.median(f0))
    st = st[np.abs(st) < 7]
    q = len(st) // 4
    return float(np.median(st[-q:]) - np.median(st[:q])) if q else float("nan")


def tone_excursions(variant: str, pitch_range: str = "medium", speed: int = 160) -> tuple[float, float]:
    """(tone-2 rise, tone-4 fall) in semitones, medians over SYLLABLES, of `variant` speaking each syllable alone
    at `speed` and SSML prosody range `pitch_range` (corpus.synthesize's route, no effects or noise). A voice
    whose tones come through rises and falls by well over 1.5 semitones."""
    from .corpus import SAMPLE_RATE, synthesize

    cond = {"voice": variant, "speed": speed, "pitch": 50, "range": pitch_range, "effects": [], "noise": None}
    change = {2: [], 4: []}
    for syl in SYLLABLES:
        for tone in change:
            change[tone].append(contour_change(f0_track(synthesize([f"{syl}{tone}"], cond), SAMPLE_RATE)))
    return float(np.nanmedian(change[2])), float(np.nanmedian(change[4]))
