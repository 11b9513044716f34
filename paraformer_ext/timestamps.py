"""Token timestamps exactly as FunASR's Paraformer computes them (spec §1.6, golden README quirks 1-2).

FunASR's ``funasr/utils/timestamp_tools.py::ts_prediction_lfr6_standard`` turns two per-frame vectors and the
token strings into ``[start_ms, end_ms]`` per token:

1. ``fire_place`` = frames where the *second* argument is >= 0.9999, minus 1.5 (float64).
2. If that does not give N+1 boundaries (N tokens), the *first* argument is rescaled in float32 to sum to N+1
   and integrated by ``cif_wo_hidden`` (threshold 0.9999, subtracting 0.9999 on each fire); the frames whose
   pre-reset integrator value is >= 0.9999 become the boundaries (minus 1.5).
3. Token i spans boundary i to boundary i+1, at most 12 frames (the rest becomes ``<sil>``); a leading
   ``<sil>`` is emitted when the first boundary is past frame 5; the last token ends at ``num_frames`` (the
   vector length) unless more than 5 frames remain, in which case it ends half-way there.
4. Milliseconds are ``int()`` (truncation toward zero) of float64 products, e.g. ``(9 - 1.5) * 0.06 * 1000``
   = 449.99999999999994 -> 449, so the float64 operation order below is FunASR's, step for step.

**Paraformer passes the arguments swapped** (model.py, ``inference``): it calls the function with
``(fires, alphas, tokens, vad_offset=begin_time, upsample_rate=1)``, so inside the function "alphas" is the
CIF *fires* vector and "peaks" is the sigmoid *alphas* vector. The sigmoid alphas never reach 0.9999 in
practice, so step 2 always runs on the rescaled fires. :func:`paraformer_timestamps` makes that call;
:func:`ts_prediction_lfr6_standard` is the function itself with FunASR's parameter names.

FunASR 1.4.16 (the goldens' version) passes each utterance's vectors cut to its own length + 1 (the tail slot
included); pass exactly that.

Where FunASR itself fails (it raises IndexError when the integrator finds more than N+1 boundaries, i.e.
N >= ~9998 tokens in one utterance, or when it finds none, or when a single boundary is followed by more than
5 frames) these functions raise ValueError saying so instead of inventing timestamps. Fewer than N+1
boundaries is *not* an error in FunASR: the trailing tokens then get no timestamp, and so it is here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "TimestampTrace",
    "cif_wo_hidden",
    "timestamp_trace",
    "ts_prediction_lfr6_standard",
    "paraformer_timestamps",
]

# FunASR's constants (frames of the input vectors).
START_END_THRESHOLD = 5
MAX_TOKEN_DURATION = 12
PEAK_THRESHOLD = 1.0 - 1e-4  # a Python float; FunASR compares float32 tensors with it, i.e. float32(0.9999)

_PEAK_F32 = np.float32(PEAK_THRESHOLD)


def _as_float32_vector(x, name: str) -> torch.Tensor:
    """A (T,) or (1, T)/(B, T) float tensor/array as a fresh float32 CPU (T,) tensor (row 0 of a 2-D input, as
    FunASR takes)."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.array(x, copy=True))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(x)
        except Exception as e:  # noqa: BLE001 - rephrased below
            raise TypeError(f"{name} must be a 1-D float tensor or array, got {type(x).__name__}") from e
    if t.dim() == 2:
        # FunASR: "support inference batch_size=1 only" - it takes row 0.
        if t.shape[0] == 0:
            raise ValueError(f"{name} is 2-D with 0 rows; pass one utterance's (T+1,) vector")
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (T+1,) (or 2-D, row 0 used), got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point vector, got dtype {t.dtype}")
    # FunASR computes on the model's float32 output; the CPU reduction order of torch.sum is what the goldens
    # were made with, so everything below runs on CPU.
    return t.to(device="cpu", dtype=torch.float32).clone()


def cif_wo_hidden(alphas, threshold: float = PEAK_THRESHOLD) -> np.ndarray:
    """FunASR's ``cif_wo_hidden`` for one utterance: a sequential float32 integrator without hidden states.

    alphas: (T,) float32 weights. At each frame ``integrate += alpha``; the value *before* any reset is
    recorded; when ``integrate >= float32(threshold)`` it is reduced by ``float32(threshold)`` (not by 1, and
    at most once per frame, so an excess carries over). Returns the recorded values, (T,) float32.
    """
    a = _as_float32_vector(alphas, "alphas").numpy()
    thr = np.float32(threshold)
    out = np.empty(a.shape[0], dtype=np.float32)
    acc = np.float32(0.0)
    for t in range(a.shape[0]):
        acc = np.float32(acc + a[t])
        out[t] = acc
        if acc >= thr:
            acc = np.float32(acc - thr)
    return out


@dataclass
class TimestampTrace:
    """Everything :func:`timestamp_trace` computed, for tests and debugging.

    cif_input: (T+1,) float32, the first argument after FunASR's in-place rescale (None if no rescale).
    cif_peaks: (T+1,) float32, ``cif_wo_hidden(cif_input)`` (None if no rescale).
    fire_place: float64 boundaries in frames (peak frame - 1.5).
    entries: ``(name, start_s, end_s)`` in FunASR's order, ``<sil>`` entries included (float seconds).
    text: FunASR's discarded string output ("tok start end;" ...).
    ms: ``[[start_ms, end_ms], ...]`` for the non-``<sil>`` entries (FunASR's second return value).
    """

    rescaled: bool
    cif_input: np.ndarray | None
    cif_peaks: np.ndarray | None
    fire_place: np.ndarray
    num_frames: int
    entries: list = field(default_factory=list)
    text: str = ""
    ms: list = field(default_factory=list)


def timestamp_trace(
    us_alphas,
    us_peaks,
    char_list,
    vad_offset: float = 0.0,
    force_time_shift: float = -1.5,
    sil_in_str: bool = True,
    upsample_rate: int = 3,
) -> TimestampTrace:
    """``ts_prediction_lfr6_standard`` with its intermediate values exposed. Arguments as there.

    The inputs are never modified (FunASR divides the caller's first argument in place; we work on a copy).
    """
    chars = list(char_list)
    if len(chars) == 0:
        return TimestampTrace(False, None, None, np.zeros(0, dtype=np.float64), 0, [], "", [])
    time_rate = 10.0 * 6 / 1000 / upsample_rate  # seconds per frame, FunASR's expression and order
    a = _as_float32_vector(us_alphas, "us_alphas (first argument)")
    p = _as_float32_vector(us_peaks, "us_peaks (second argument)")
    if a.shape[0] != p.shape[0]:
        raise ValueError(
            f"the two timestamp vectors must have the same length (T+1), got {a.shape[0]} and {p.shape[0]}"
        )
    if chars[-1] == "</s>":
        chars = chars[:-1]

    def boundaries(peaks_f32: np.ndarray) -> np.ndarray:
        idx = np.nonzero(peaks_f32 >= _PEAK_F32)[0].astype(np.int64)
        return idx + force_time_shift  # int64 + Python float -> float64, as numpy does in FunASR

    peaks = p.numpy()
    fire_place = boundaries(peaks)
    cif_in = cif_peaks = None
    rescaled = len(fire_place) != len(chars) + 1
    if rescaled:
        # float32 throughout: torch's CPU sum (its reduction order is part of the result), then a float32
        # tensor divided by a Python int, then the element-wise division.
        scale = a.sum() / (len(chars) + 1)
        cif_in = (a / scale).numpy()
        cif_peaks = cif_wo_hidden(cif_in, PEAK_THRESHOLD)
        peaks = cif_peaks
        fire_place = boundaries(peaks)
    num_frames = int(peaks.shape[0])
    fp = [float(x) for x in fire_place]  # float64 either way; Python floats give the same IEEE results

    if len(fp) == 0:
        raise ValueError(
            f"timestamps: no token boundary found in {num_frames} frames for {len(chars)} tokens (the first "
            "vector sums to 0 or is not finite); FunASR raises IndexError here. Check the fires/alphas passed."
        )
    if len(fp) - 1 > len(chars):
        raise ValueError(
            f"timestamps: {len(fp)} token boundaries for {len(chars)} tokens; FunASR raises IndexError here "
            "(its 0.9999 integrator over-counts for utterances of ~10,000 tokens). Split the audio (use VAD)."
        )

    names: list[str] = []
    spans: list[list[float]] = []
    if fp[0] > START_END_THRESHOLD:
        names.append("<sil>")
        spans.append([0.0, fp[0] * time_rate])
    for i in range(len(fp) - 1):
        names.append(chars[i])
        if MAX_TOKEN_DURATION < 0 or fp[i + 1] - fp[i] <= MAX_TOKEN_DURATION:
            spans.append([fp[i] * time_rate, fp[i + 1] * time_rate])
        else:
            # a long gap: the token keeps 12 frames, the rest is silence
            cut = fp[i] + MAX_TOKEN_DURATION
            spans.append([fp[i] * time_rate, cut * time_rate])
            spans.append([cut * time_rate, fp[i + 1] * time_rate])
            names.append("<sil>")
    if num_frames - fp[-1] > START_END_THRESHOLD:
        if not spans:
            raise ValueError(
                "timestamps: a single token boundary followed by more than 5 frames; FunASR raises IndexError "
                "here (it sets the end of a last entry that does not exist)."
            )
        mid = (num_frames + fp[-1]) * 0.5
        spans[-1][1] = mid * time_rate
        spans.append([mid * time_rate, num_frames * time_rate])
        names.append("<sil>")
    elif spans:
        spans[-1][1] = num_frames * time_rate
    if vad_offset:
        off = vad_offset / 1000.0
        for s in spans:
            s[0] = s[0] + off
            s[1] = s[1] + off

    text = "".join(
        "{} {} {};".format(n, str(s[0] + 0.0005)[:5], str(s[1] + 0.0005)[:5])
        for n, s in zip(names, spans)
        if sil_in_str or n != "<sil>"
    )
    ms = [[int(s[0] * 1000), int(s[1] * 1000)] for n, s in zip(names, spans) if n != "<sil>"]
    return TimestampTrace(
        rescaled=rescaled,
        cif_input=cif_in,
        cif_peaks=cif_peaks,
        fire_place=np.asarray(fire_place, dtype=np.float64),
        num_frames=num_frames,
        entries=[(n, s[0], s[1]) for n, s in zip(names, spans)],
        text=text,
        ms=ms,
    )


def ts_prediction_lfr6_standard(
    us_alphas,
    us_peaks,
    char_list,
    vad_offset: float = 0.0,
    force_time_shift: float = -1.5,
    sil_in_str: bool = True,
    upsample_rate: int = 3,
) -> tuple[str, list[list[int]]]:
    """FunASR's ``ts_prediction_lfr6_standard``, faithfully (see the module docstring).

    us_alphas: (T+1,) float weights that are rescaled and integrated when ``us_peaks`` does not give
        ``len(char_list) + 1`` peaks (2-D input: row 0 is used, as FunASR does).
    us_peaks: (T+1,) float; frames >= 0.9999 are peaks.
    char_list: the N token strings (ids 0/1/2 already removed); a trailing ``"</s>"`` is dropped.
    vad_offset: milliseconds added to every time (FunASR's ``begin_time``).
    upsample_rate: 1 for Paraformer (60 ms frames), 3 for BiCif models (20 ms).

    Returns ``(text, [[start_ms, end_ms], ...])``: one entry per token that got a span (all N unless the
    integrator found fewer than N+1 peaks); ``<sil>`` spans appear only in ``text``. N == 0 gives ``("", [])``.
    """
    tr = timestamp_trace(us_alphas, us_peaks, char_list, vad_offset, force_time_shift, sil_in_str, upsample_rate)
    return tr.text, tr.ms


def paraformer_timestamps(fires, alphas, tokens, vad_offset_ms: float = 0.0) -> list[list[int]]:
    """Per-token ``[start_ms, end_ms]`` as FunASR's ``Paraformer.inference`` gets them (before word merging).

    fires: (T+1,) the CIF predictor's fires vector of one utterance (tail slot included, cut to its length+1).
    alphas: (T+1,) the predictor's sigmoid alphas, same length.
    tokens: the N token strings after removing ids 0/1/2.

    Paraformer calls ``ts_prediction_lfr6_standard(fires, alphas, tokens, vad_offset=begin_time,
    upsample_rate=1)``: the fires vector goes where FunASR's parameter is named ``us_alphas`` and the alphas
    where it is named ``us_peaks``. This reproduces that swapped call on purpose: it is what the goldens contain.
    """
    return ts_prediction_lfr6_standard(fires, alphas, tokens, vad_offset=vad_offset_ms, upsample_rate=1)[1]
