"""FSMN-VAD post-processing: frame posteriors → speech segments [start_ms, end_ms] (spec fsmn_vad.md §4–§7).

This is the part of FunASR's `FsmnVADStreaming` that decides segments: the per-frame speech/silence
decision (§5), the 200 ms window detector and the segment state machine (§6), the offline driver's 60 s
chunk emulation with its dynamic end-silence schedule (§4.2–§4.3) and what is reported when (§7).

It runs on the CPU over plain Python floats (the decisions use double-precision exp/log exactly like
FunASR, so given FunASR's posteriors the segments are identical), and it is incremental: posteriors can
be fed in pieces of any size and the result is the same as feeding them all at once.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from ..frontend import num_frames

__all__ = [
    "VadOptions",
    "VadPostprocessor",
    "segments_from_posteriors",
    "DEFAULT_SILENCE_SCHEDULE",
    "OFFLINE_CHUNK_MS",
]

# FunASR's non-streaming schedule (model.py DEFAULT_SILENCE_SCHEDULE): (accumulated speech ms, end silence ms).
DEFAULT_SILENCE_SCHEDULE: tuple[tuple[float, float], ...] = (
    (10000, 2000),
    (20000, 1000),
    (30000, 800),
    (40000, 600),
    (50000, 400),
    (60000, 200),
    (math.inf, 100),
)
# FunASR's offline `chunk_size`: the file is processed in 60 s pieces, which only matters for the schedule.
OFFLINE_CHUNK_MS = 60000
# Speech threshold the dynamic mode forces, whatever the configuration says (spec §0).
DYNAMIC_SPEECH_NOISE_THRES = 0.5

# Window detector outputs (same numbering as FunASR's AudioChangeState, used by the golden npz files).
SPEECH2SPEECH, SPEECH2SIL, SIL2SIL, SIL2SPEECH = 0, 1, 2, 3
_START, _IN_SPEECH, _DONE = 0, 1, 2

@dataclass(frozen=True)
class VadOptions:
    """The `model_conf` of an fsmn-vad config.yaml, with FunASR's defaults for absent keys (spec §1.1).

    Times are in ms. `max_end_silence_time` and `speech_noise_thres` are the fixed-mode values; the
    default (dynamic) mode ignores both (spec §0).
    """

    sample_rate: int = 16000
    detect_mode: int = 1  # 1: many utterances per file; 0: stop after the first one
    max_end_silence_time: float = 800
    max_start_silence_time: float = 3000  # only used by detect_mode 0
    window_size_ms: int = 200
    sil_to_speech_time_thres: int = 150
    speech_to_sil_time_thres: int = 150
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1
    lookback_time_start_point: int = 200
    lookahead_time_end_point: int = 100
    max_single_segment_time: float = 60000
    snr_thres: float = -100.0
    noise_frame_num_used_for_snr: int = 100
    decibel_thres: float = -100.0
    speech_noise_thres: float = 0.6
    fe_prior_thres: float = 1e-4
    silence_pdf_num: int = 1
    sil_pdf_ids: tuple[int, ...] = (0,)
    frame_in_ms: int = 10
    frame_length_ms: int = 25
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_config(cls, model_conf: dict | None) -> "VadOptions":
        """Build from config.yaml's `model_conf`. Keys that cannot change a segment in FunASR's offline path
        (snr_mode, do_start/end_point_detection, speech_noise_thresh_low/high, output_frame_probs,
        nn_eval_block_size, dcd_block_size; spec §1.1) or that FunASR does not know are accepted, as FunASR
        accepts them, and listed in `ignored`."""
        conf = dict(model_conf or {})
        known = {f.name for f in fields(cls)} - {"ignored"}
        kwargs, ignored = {}, []
        for k, v in conf.items():
            if k in known:
                kwargs[k] = tuple(int(i) for i in v) if k == "sil_pdf_ids" else v
            else:
                ignored.append(k)
        opts = cls(**kwargs, ignored=tuple(sorted(ignored)))
        opts.validate()
        return opts

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"invalid fsmn-vad model_conf: {msg}")

        if self.frame_in_ms <= 0 or self.frame_length_ms < self.frame_in_ms:
            bad(f"need 0 < frame_in_ms <= frame_length_ms, got {self.frame_in_ms} and {self.frame_length_ms}")
        if int(self.window_size_ms / self.frame_in_ms) < 1:
            bad(f"window_size_ms ({self.window_size_ms}) must cover at least one frame of {self.frame_in_ms} ms")
        if not self.sil_pdf_ids:
            bad("sil_pdf_ids is empty")
        if len(self.sil_pdf_ids) != self.silence_pdf_num:
            bad(f"silence_pdf_num = {self.silence_pdf_num} but sil_pdf_ids has {len(self.sil_pdf_ids)} entries")
        if self.detect_mode not in (0, 1):
            bad(f"detect_mode must be 0 or 1, got {self.detect_mode}")
        if self.noise_frame_num_used_for_snr < 1:
            bad("noise_frame_num_used_for_snr must be >= 1")

    @property
    def uses_energy(self) -> bool:
        """Whether the per-frame energy can change a decision (spec §5.2): dB ≥ −60 always and the running
        noise level stays ≤ +26 dB for samples in [−1, 1], so FunASR's −100 thresholds never fire."""
        return self.decibel_thres > -60.0 or self.snr_thres > -86.1


def _is_speech_exact(p: float, thr: float, ratio: float) -> bool:
    """FunASR's GetFrameState test, in double precision: exp(log(1 − p)) ≥ exp(ratio · log p) + thr.

    p = 0 or 1 make FunASR raise (log of 0); here they count as certain speech / certain silence.
    """
    if p <= 0.0:
        return 1.0 >= thr
    if p >= 1.0:
        return False
    return math.exp(math.log(1.0 - p)) >= math.exp(math.log(p) * ratio) + thr


def _speech_decisions(p_sil: np.ndarray, thr: float, ratio: float) -> np.ndarray:
    """Vectorised `_is_speech_exact`; frames whose margin is within rounding of the boundary are redone
    with math.exp/math.log so that numpy's exp/log (which may differ from libm in the last ulp) can
    never flip a decision."""
    p = np.asarray(p_sil, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lhs = np.exp(np.log(1.0 - p))
        rhs = np.exp(np.log(p) * ratio) + thr
    out = lhs >= rhs
    unsure = ~(np.abs(lhs - rhs) > 1e-12) | (p <= 0.0) | (p >= 1.0)
    for i in np.flatnonzero(unsure):
        out[i] = _is_speech_exact(float(p[i]), thr, ratio)
    return out


class VadPostprocessor:
    """The VAD state machine for one file, fed with silence posteriors in order.

    Args:
        options: the model's `VadOptions`.
        max_end_silence_time: None → FunASR's default dynamic mode; a number (ms) → fixed mode with end
            silence `max_end_silence_time − speech_to_sil_time_thres` (spec §0).
        speech_noise_thres: fixed mode only (default: options.speech_noise_thres); the dynamic mode
            always uses 0.5.
        dynamic: force the mode (FunASR's `dynamic_silence`); default: dynamic iff max_end_silence_time is None.
        silence_schedule: the dynamic schedule ((limit_ms, silence_ms), ...), default FunASR's.
        chunk_ms: FunASR's offline chunk (60000); only the dynamic schedule depends on it.
        lfr_right: right context of the LFR stacking in frames ((lfr_m − 1) − (lfr_m − 1) // 2 = 2 for m = 5);
            with the frame geometry it fixes where FunASR's chunk borders fall in frames (spec §4.2).

    Use `accept(p_sil)` for each piece of posteriors and `accept(p_last, final=True, num_samples=N)` for the
    last one (it may be empty). Each call returns the segments that were completed by it, as
    [start_ms, end_ms] int lists; the final call also returns a segment still open at the end.
    A segment is never changed once returned, so the concatenated returns are the file's segments.
    """

    def __init__(
        self,
        options: VadOptions | None = None,
        max_end_silence_time: float | None = None,
        speech_noise_thres: float | None = None,
        *,
        dynamic: bool | None = None,
        silence_schedule: Sequence[tuple[float, float]] | None = None,
        chunk_ms: int = OFFLINE_CHUNK_MS,
        lfr_right: int = 2,
    ):
        o = options or VadOptions()
        o.validate()
        self.options = o
        self.dynamic = (max_end_silence_time is None) if dynamic is None else bool(dynamic)
        self.schedule = tuple(silence_schedule) if silence_schedule is not None else DEFAULT_SILENCE_SCHEDULE
        if self.dynamic and not self.schedule:
            raise ValueError("silence_schedule is empty")
        met = o.max_end_silence_time if max_end_silence_time is None else max_end_silence_time
        # FunASR's max_end_sil_frame_cnt_thresh, which despite its name is in ms.
        self.end_sil_ms = met - o.speech_to_sil_time_thres
        if not self.dynamic and not o.do_extend and self.end_sil_ms < 0:
            # the end-point lookback would point past the current frame (FunASR then fails or misbehaves)
            raise ValueError(
                f"with do_extend 0, max_end_silence_time ({met}) must be at least speech_to_sil_time_thres "
                f"({o.speech_to_sil_time_thres})"
            )
        self.thr = float(o.speech_noise_thres if speech_noise_thres is None else speech_noise_thres)
        fms = o.frame_in_ms
        self._fms = fms
        self._win = int(o.window_size_ms / fms)
        self._s2sp = int(o.sil_to_speech_time_thres / fms)
        self._sp2s = int(o.speech_to_sil_time_thres / fms)
        self._latency = self._win + (int(o.lookback_time_start_point / fms) if o.do_extend else 0)
        self._lookahead = int(o.lookahead_time_end_point / fms)
        self._max_frames = o.max_single_segment_time / fms  # float compare, as FunASR
        self._ratio = float(o.speech_2_noise_ratio)
        self._speech_allowed = math.fabs(1.0) > o.fe_prior_thres  # FunASR's (odd) prior test

        # chunk emulation (spec §4.2): frames emitted once chunk_samples·(k+1) samples have been read
        self._chunk_samples = int(chunk_ms * o.sample_rate / 1000)
        if self._chunk_samples <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        self._flen = int(o.frame_length_ms * o.sample_rate / 1000)
        self._fshift = int(o.frame_in_ms * o.sample_rate / 1000)
        self._lfr_right = lfr_right
        self._chunk = 0
        self._next_border = self._border_frame(0)
        self._acc_ms = 0
        self._acc_in_speech = False
        self._closed_in_chunk = 0
        self.chunk_end_sil_ms: list[float] = []  # per emulated chunk, for tests and diagnostics

        # window detector (§6.1)
        self._ring = [0] * self._win
        self._ring_pos = 0
        self._win_sum = 0
        self._win_speech = False
        # segment state (§6.2)
        self._state = _START
        self._sil_run = 0
        self._start = -1
        self._last_voice = 0
        self._next_free = 0
        self._n_ended = 0
        self._seg: list[int] | None = None  # open segment [start_ms, end_ms]
        self._noise_db = -100.0
        self._t = 0  # global index of the next frame
        self._finished = False
        self.record_frames = False  # when True, frame_states / change_states collect per-frame values
        self.frame_states: list[int] = []
        self.change_states: list[int] = []
        self._begin_chunk()

    # --- chunk emulation and the dynamic schedule (§4.2, §4.3) ----------------------------------------

    def _border_frame(self, k: int) -> int:
        """Global frame index at which FunASR's chunk k + 1 starts (if the file reaches it)."""
        return num_frames(self._chunk_samples * (k + 1), self._flen, self._fshift) - self._lfr_right

    def _begin_chunk(self) -> None:
        if not self.dynamic:
            self.chunk_end_sil_ms.append(self.end_sil_ms)
            return
        if self._state == _IN_SPEECH or self._acc_in_speech:
            self._acc_ms += self._chunk_samples * 1000 // self.options.sample_rate
            self._acc_in_speech = True
        for limit, silence in self.schedule:
            if self._acc_ms <= limit:
                self.end_sil_ms = max(silence - self.options.speech_to_sil_time_thres, 0)
                self.thr = DYNAMIC_SPEECH_NOISE_THRES
                break
        self.chunk_end_sil_ms.append(self.end_sil_ms)

    def _cross_border(self) -> None:
        if self.dynamic and self._closed_in_chunk > 0:  # the chunk reported a segment
            self._acc_ms = 0
            self._acc_in_speech = False
        self._closed_in_chunk = 0
        self._chunk += 1
        self._next_border = self._border_frame(self._chunk)
        self._begin_chunk()

    # --- public -----------------------------------------------------------------------------------

    @property
    def frames_seen(self) -> int:
        return self._t

    def accept(
        self,
        p_sil,
        *,
        final: bool = False,
        num_samples: int | None = None,
        decibels=None,
    ) -> list[list[int]]:
        """Feed the next frames' silence posteriors (T,) (float; column 0 of the network's softmax).

        final: this piece ends the file (its last frame is FunASR's final frame).
        num_samples: the file's length in samples, needed with `final` to know whether the file reaches
            FunASR's next chunk border (two lengths with the same frame count can differ there). Default:
            the shortest length with this many frames. Non-final pieces must only hold frames that a
            streaming frontend can emit (their LFR right context has been read), which implies every
            chunk border inside them is real.
        decibels: per-frame energies 10·log10(Σx² + 1e-6) of the frame's 400 samples (in [−1, 1] units),
            needed only when the options enable the energy tests (`options.uses_energy`).
        Returns the segments completed by this call.
        """
        if self._finished:
            raise RuntimeError("VadPostprocessor already received its final frames; create a new one per file")
        p = np.asarray(p_sil.detach().cpu() if hasattr(p_sil, "detach") else p_sil, dtype=np.float64).reshape(-1)
        if p.size and not np.all(np.isfinite(p)):
            raise ValueError("silence posteriors contain NaN or inf")
        db = None
        if self.options.uses_energy:
            if decibels is None:
                raise ValueError("these VAD options use frame energies (decibel_thres/snr_thres); pass decibels")
            db = np.asarray(decibels, dtype=np.float64).reshape(-1)
            if db.shape != p.shape:
                raise ValueError(f"decibels has {db.size} values for {p.size} frames")
        n = p.size
        total = self._t + n
        if final:
            if num_samples is None:
                num_samples = 0 if total == 0 else (total - 1) * self._fshift + self._flen
            elif num_frames(num_samples, self._flen, self._fshift) != total:
                raise ValueError(
                    f"num_samples = {num_samples} gives {num_frames(num_samples, self._flen, self._fshift)} "
                    f"frames but {total} posteriors were given"
                )
        out: list[list[int]] = []
        i = 0
        while i < n:
            # process up to the next chunk border in one run
            stop = n if self._next_border < self._t else min(n, i + self._next_border - self._t)
            if stop == i:
                border_real = not final or num_samples >= self._chunk_samples * (self._chunk + 1)
                if border_real:
                    self._cross_border()
                    continue
                stop = n
            # decisions per run: the threshold may only change at a chunk border
            speech = _speech_decisions(p[i:stop], self.thr, self._ratio)
            self._run(speech, None if db is None else db[i:stop], final and stop == n, out)
            i = stop
        if final:
            if self._seg is not None:  # a segment opened on the final frame stays open (§7)
                out.append(self._seg)
                self._seg = None
            self._finished = True
        return out

    def finish(self, num_samples: int | None = None) -> list[list[int]]:
        """`accept([], final=True, num_samples=...)`: use when the last frames were fed as a non-final piece
        (then the last of them was not treated as FunASR's final frame; prefer passing final=True)."""
        return self.accept(np.zeros(0), final=True, num_samples=num_samples)

    # --- the per-frame state machine (§5, §6) --------------------------------------------------------

    def _run(self, speech: np.ndarray, db: np.ndarray | None, last_is_final: bool, out: list) -> None:
        o = self.options
        fms = self._fms
        ring, win = self._ring, self._win
        record = self.record_frames
        n = len(speech)
        for i in range(n):
            t = self._t
            self._t = t + 1
            is_final = last_is_final and i == n - 1
            if self._state == _DONE:  # detect_mode 0 after its one utterance: frames are ignored
                continue
            # frame decision (§5)
            sp = bool(speech[i]) and self._speech_allowed
            if db is not None:
                d = float(db[i])
                if d < o.decibel_thres:
                    sp = False
                elif speech[i]:
                    if d - self._noise_db < o.snr_thres:
                        sp = False
                else:
                    if self._noise_db < -99.9:
                        self._noise_db = d
                    else:
                        n_snr = o.noise_frame_num_used_for_snr
                        self._noise_db = (d + self._noise_db * (n_snr - 1)) / n_snr
            # window detector (§6.1)
            v = 1 if sp else 0
            pos = self._ring_pos
            self._win_sum += v - ring[pos]
            ring[pos] = v
            self._ring_pos = (pos + 1) % win
            if not self._win_speech and self._win_sum >= self._s2sp:
                self._win_speech = True
                change = SIL2SPEECH
            elif self._win_speech and self._win_sum <= self._sp2s:
                self._win_speech = False
                change = SPEECH2SIL
            else:
                change = SPEECH2SPEECH if self._win_speech else SIL2SIL
            if record:
                self.frame_states.append(v)
                self.change_states.append(change)
            # segment state machine (§6.3)
            ended = False
            if change == SIL2SPEECH:
                self._sil_run = 0
                if self._state == _START:
                    s = max(self._next_free, t - self._latency)
                    self._open(s)
                    for f in range(s + 1, t + 1):
                        self._add(f)
                elif self._state == _IN_SPEECH:
                    for f in range(self._last_voice + 1, t):
                        self._add(f)
                    ended = self._speech_frame(t, is_final, out)
            elif change == SIL2SIL:
                self._sil_run += 1
                if self._state == _START:
                    if (o.detect_mode == 0 and self._sil_run * fms > o.max_start_silence_time) or (
                        is_final and self._n_ended == 0
                    ):
                        # no speech (yet): FunASR's "fake" start/end, which outputs nothing
                        self._n_ended += 1
                        ended = True
                    elif t >= self._latency:
                        self._next_free = max(self._next_free, t - self._latency)
                elif self._state == _IN_SPEECH:
                    E = self.end_sil_ms
                    if self._sil_run * fms >= E:
                        back = int(E / fms)
                        if o.do_extend:
                            back = max(0, back - self._lookahead - 1)
                        self._end(t - back, out)
                        ended = True
                    elif t - self._start + 1 > self._max_frames:
                        self._end(t, out)
                        ended = True
                    elif o.do_extend and not is_final:
                        if self._sil_run <= self._lookahead:
                            self._add(t)
                    elif is_final:
                        self._end(t, out)
                        ended = True
            else:  # SPEECH2SIL, SPEECH2SPEECH
                self._sil_run = 0
                if self._state == _IN_SPEECH:
                    ended = self._speech_frame(t, is_final, out)
            if ended:
                if o.detect_mode == 1:
                    self._reset()
                else:
                    self._state = _DONE

    def _speech_frame(self, t, is_final, out) -> bool:
        if t - self._start + 1 > self._max_frames or is_final:
            self._end(t, out)
            return True
        self._add(t)
        return False

    def _open(self, s: int) -> None:
        self._start = s
        self._seg = [s * self._fms, (s + 1) * self._fms]
        self._next_free = max(self._next_free, s) + 1
        self._state = _IN_SPEECH

    def _add(self, f: int) -> None:
        self._last_voice = f
        self._seg[1] = (f + 1) * self._fms
        self._next_free = max(self._next_free, f) + 1

    def _end(self, f: int, out) -> None:
        for g in range(self._last_voice + 1, f):
            self._add(g)
        self._seg[1] = (f + 1) * self._fms
        self._next_free = max(self._next_free, f) + 1
        self._n_ended += 1
        out.append(self._seg)
        self._seg = None
        self._closed_in_chunk += 1

    def _reset(self) -> None:
        self._state = _START
        self._sil_run = 0
        self._last_voice = 0
        self._start = -1
        self._ring[:] = [0] * self._win  # in place: _run holds a reference
        self._ring_pos = 0
        self._win_sum = 0
        self._win_speech = False


def segments_from_posteriors(
    p_sil,
    options: VadOptions | None = None,
    max_end_silence_time: float | None = None,
    *,
    num_samples: int | None = None,
    speech_noise_thres: float | None = None,
    dynamic: bool | None = None,
) -> list[list[int]]:
    """A whole file's segments from its silence posteriors (T,) — FunASR's post-processing alone.

    num_samples: the file's length in samples (see `VadPostprocessor.accept`); default the shortest
    length with T frames. Returns [[start_ms, end_ms], ...].
    """
    pp = VadPostprocessor(options, max_end_silence_time, speech_noise_thres, dynamic=dynamic)
    return pp.accept(p_sil, final=True, num_samples=num_samples)
