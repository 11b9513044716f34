"""Audio reading and resampling, as FunASR's `load_audio_text_image_video` does it (spec paraformer.md §1.3).

Files are read with soundfile as float32 (int16 PCM becomes int16 / 32768 exactly, as in FunASR), channels
are averaged to mono in float32, and any other sample rate is resampled to 16 kHz with the math of
torchaudio.transforms.Resample's defaults (windowed sinc, Hann window, 6 zero crossings, roll-off 0.99),
written here in plain torch so that torchaudio is not needed and it runs on CPU or CUDA.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from typing import Iterator

import numpy as np
import torch

__all__ = ["AudioError", "load_audio", "resample", "audio_num_samples", "read_audio_range", "iter_audio_file", "StreamResampler"]


class AudioError(ValueError):
    """An audio input that cannot be used: unreadable, empty, malformed. The message names the input."""


# ------------------------------------------------------------------------------------------------------------
# resampling
# ------------------------------------------------------------------------------------------------------------

_RESAMPLE_CHUNK = 1 << 22  # input elements gathered per matmul: bounds memory on hour-long audio


def _sinc_kernel(orig: int, new: int, k0: int, k1: int, lowpass_filter_width: int, rolloff: float) -> torch.Tensor:
    """Rows k0..k1−1 of the polyphase windowed-sinc kernel (new, 2·width + orig) for gcd-reduced rates
    orig → new, float32.

    Output phase k of a block reads the block's 2·width + orig input samples; input offset i sits at time
    t = (−k/new + (i − width)/orig) · base (in units of the cut-off's period), base = min(orig, new) · rolloff,
    and weighs sinc(πt) · cos²(πt / (2·lowpass_filter_width)) · base/orig, with t clamped to ±width zeros.
    Computed in float64 like torchaudio.transforms.Resample, whose k/new term is a float32 quotient.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig
    phase = (torch.arange(-k0, -k1, -1, dtype=torch.float64) / new).to(torch.float32).to(torch.float64)
    t = ((phase[:, None] + idx) * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * (math.pi / lowpass_filter_width / 2)) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=torch.float64), torch.sin(t) / torch.where(t == 0, 1.0, t))
    return (sinc * window * (base / orig)).to(torch.float32)


def _blocks(orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float) -> tuple[int, int, int]:
    """The resampler's block geometry: gcd-reduced rates (orig, new) and the kernel half-width, so that
    output block j (samples [j·new, (j+1)·new)) reads input [j·orig − width, j·orig + width + orig)."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    return orig, new, math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))


def _check_rate(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer, float)) or not float(v).is_integer() or v <= 0:
        raise ValueError(f"{name} must be a positive whole number of Hz, got {v!r}")
    return int(v)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int, *, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited resampling of wave (N,) or (B, N) from orig_sr to new_sr Hz, on wave's device.

    The math of torchaudio.transforms.Resample(orig_sr, new_sr) with its defaults: the output has
    ceil(N · new_sr / orig_sr) samples, sample j being Σ_n x[n] · h(n/orig − j/new) (rates reduced by their gcd),
    h a Hann-windowed sinc cut at rolloff × the lower Nyquist. Equal rates return `wave` itself. Float dtypes
    only; float32 accumulation for float32 input.
    """
    orig_sr, new_sr = _check_rate("orig_sr", orig_sr), _check_rate("new_sr", new_sr)
    if not torch.is_tensor(wave):
        raise TypeError(f"wave must be a torch.Tensor, got {type(wave).__name__}")
    if not wave.is_floating_point():
        raise TypeError(f"wave must be a float tensor, got {wave.dtype}")
    if wave.dim() not in (1, 2):
        raise ValueError(f"wave must be (N,) or (B, N), got shape {tuple(wave.shape)}")
    if not (isinstance(lowpass_filter_width, int) and lowpass_filter_width > 0):
        raise ValueError(f"lowpass_filter_width must be a positive int, got {lowpass_filter_width!r}")
    if not 0 < rolloff <= 1:
        raise ValueError(f"rolloff must be in (0, 1], got {rolloff!r}")
    if orig_sr == new_sr:
        return wave
    orig, new, width = _blocks(orig_sr, new_sr, lowpass_filter_width, rolloff)
    x = wave if wave.dim() == 2 else wave[None]
    B, N = x.shape
    out_len = -(-new * N // orig)
    K = 2 * width + orig
    xp = torch.nn.functional.pad(x, (width, width + orig))
    blocks = xp.unfold(1, K, orig)  # (B, J, K) view: block j starts at input sample j·orig − width
    J = -(-out_len // new)  # only the blocks that reach the output
    phases = min(new, out_len)  # a short input needs only its first phases
    out = torch.empty(B, J, new, dtype=wave.dtype, device=wave.device)
    # rates with a small gcd (e.g. 16001 Hz) give a huge kernel: build it a slice of phases at a time
    kstep = max(1, _RESAMPLE_CHUNK // K)
    jstep = max(1, _RESAMPLE_CHUNK // (K * max(B, 1)))
    for k0 in range(0, phases, kstep):
        k1 = min(phases, k0 + kstep)
        kernel = _sinc_kernel(orig, new, k0, k1, lowpass_filter_width, rolloff)
        kernel_t = kernel.to(device=wave.device, dtype=wave.dtype).t()  # (K, k1 - k0)
        for j0 in range(0, J, jstep):
            j1 = min(J, j0 + jstep)
            out[:, j0:j1, k0:k1] = (blocks[:, j0:j1].reshape(-1, K) @ kernel_t).view(B, j1 - j0, k1 - k0)
    out = out.view(B, J * new)[:, :out_len]
    return out if wave.dim() == 2 else out[0]


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------


def _int_scale(arr: np.ndarray) -> np.ndarray:
    """Integer PCM to float in [-1, 1): signed by 2^(bits−1) (int16 / 32768), unsigned centred first."""
    bits = arr.dtype.itemsize * 8
    full = float(1 << (bits - 1))
    if arr.dtype.kind == "u":
        return ((arr.astype(np.float64) - full) / full).astype(np.float32)
    return (arr.astype(np.float64) / full).astype(np.float32)


def _to_float_tensor(x, what: str) -> torch.Tensor:
    if torch.is_tensor(x):
        if x.is_complex() or x.dtype == torch.bool:
            raise AudioError(f"{what}: unsupported sample dtype {x.dtype}")
        if x.is_floating_point():
            return x.to(torch.float32)
        if x.dtype == torch.uint8:
            return (x.to(torch.float64) - 128.0).div(128.0).to(torch.float32)
        bits = {torch.int8: 8, torch.int16: 16, torch.int32: 32, torch.int64: 64}.get(x.dtype)
        if bits is None:
            raise AudioError(f"{what}: unsupported sample dtype {x.dtype}")
        return x.to(torch.float64).div(float(1 << (bits - 1))).to(torch.float32)
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype.kind in "iu":
        arr = _int_scale(arr)
    else:
        raise AudioError(f"{what}: unsupported sample dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _mono(x: torch.Tensor, what: str) -> torch.Tensor:
    """(N,) as is; 2-D arrays are averaged over their channel axis, the shorter one ((C, N) or (N, C))."""
    if x.dim() == 1:
        return x
    if x.dim() != 2:
        raise AudioError(f"{what}: expected samples (N,) or channels × samples (C, N) / (N, C), "
                         f"got shape {tuple(x.shape)}")
    ch = 0 if x.size(0) <= x.size(1) else 1
    return x.mean(dim=ch) if x.size(ch) > 1 else x.select(ch, 0)


def _read_file(src, what: str) -> tuple[torch.Tensor, int]:
    import soundfile as sf

    try:
        data, sr = sf.read(src, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors (LibsndfileError, RuntimeError, TypeError on odd objects, …)
        raise AudioError(f"cannot read audio {what}: {e} (supported: the formats of libsndfile, "
                         f"e.g. wav, flac, ogg, mp3)") from e
    if data.shape[0] == 0:
        raise AudioError(f"audio {what} is empty (0 samples)")
    return _mono_frames(data), int(sr)


def _mono_frames(data: np.ndarray) -> torch.Tensor:
    """soundfile's (N, C) float32 frames → (N,), channels averaged in float32 like FunASR's soundfile path."""
    x = torch.from_numpy(data)
    return x[:, 0].contiguous() if x.size(1) == 1 else x.mean(dim=1)


def load_audio(path_or_array, sample_rate: int | None = None, target_sr: int = 16000) -> torch.Tensor:
    """Read audio as a 1-D float32 mono tensor at target_sr Hz.

    path_or_array: a file path (str / PathLike), the bytes of an audio file or a binary file object (read with
    soundfile: int16 PCM gives int16 / 32768, several channels are averaged), or samples as a numpy array or
    torch tensor, (N,) or (C, N) / (N, C) (the shorter axis is taken as channels). Float samples are taken
    as they are (expected in [-1, 1]); integer samples are scaled by their dtype's range (int16 / 32768, uint8
    centred on 128).
    sample_rate: the rate of an array input; None means it is already at target_sr. For files the header's
    rate is used, and a different sample_rate is an error.
    Returns a CPU tensor for files and arrays, and stays on a tensor input's device.
    Raises AudioError naming the input when it is missing, unreadable, empty or holds NaN/inf samples.
    """
    target_sr = _check_rate("target_sr", target_sr)
    if sample_rate is not None:
        sample_rate = _check_rate("sample_rate", sample_rate)
    if isinstance(path_or_array, (str, os.PathLike)):
        path = os.fspath(path_or_array)
        what = f"file {path!r}"
        if not os.path.exists(path):
            raise AudioError(f"audio {what} does not exist")
        if os.path.isdir(path):
            raise AudioError(f"audio {what} is a directory")
        wave, sr = _read_file(path, what)
    elif isinstance(path_or_array, (bytes, bytearray, memoryview)) or hasattr(path_or_array, "read"):
        if isinstance(path_or_array, (bytes, bytearray, memoryview)):
            what = f"<{len(path_or_array)} bytes>"
            src = io.BytesIO(bytes(path_or_array))
        else:
            name = getattr(path_or_array, "name", None)
            what = f"file {name!r}" if isinstance(name, (str, os.PathLike)) else "<file object>"
            src = path_or_array
        wave, sr = _read_file(src, what)
    else:
        what = f"{type(path_or_array).__name__} input"
        if isinstance(path_or_array, (list, tuple)):
            raise AudioError(f"{what}: pass one audio at a time (a path, bytes or an array), not a "
                             f"{type(path_or_array).__name__}")
        wave = _mono(_to_float_tensor(path_or_array, what), what)
        if wave.numel() == 0:
            raise AudioError(f"{what} is empty (0 samples)")
        sr = target_sr if sample_rate is None else sample_rate
        sample_rate = None
        peak = float(wave.abs().max()) if bool(torch.isfinite(wave).all()) else 0.0
        if peak > 2.0:
            warnings.warn(f"{what}: float samples reach {peak:.4g}; expected [-1, 1] (int16-scaled floats must "
                          "be divided by 32768, or pass the int16 array itself)", stacklevel=2)
    if sample_rate is not None and sample_rate != sr:
        raise AudioError(f"{what} is {sr} Hz but sample_rate={sample_rate} was given; leave sample_rate "
                         "out for files (their header gives the rate)")
    if not bool(torch.isfinite(wave).all()):
        raise AudioError(f"{what} has NaN or infinite samples")
    if sr != target_sr:
        wave = resample(wave, sr, target_sr)
    return wave.contiguous()


# ------------------------------------------------------------------------------------------------------------
# lazy reading: lengths from the header, sample ranges from the file (long audio in bounded memory)
# ------------------------------------------------------------------------------------------------------------


def _check_path(path) -> tuple[str, str]:
    path = os.fspath(path)
    what = f"file {path!r}"
    if not os.path.exists(path):
        raise AudioError(f"audio {what} does not exist")
    if os.path.isdir(path):
        raise AudioError(f"audio {what} is a directory")
    return path, what


def _info(path) -> tuple[int, int, str]:
    import soundfile as sf

    path, what = _check_path(path)
    try:
        info = sf.info(path)
    except Exception as e:
        raise AudioError(f"cannot read audio {what}: {e} (supported: the formats of libsndfile, "
                         f"e.g. wav, flac, ogg, mp3)") from e
    if info.frames <= 0:
        raise AudioError(f"audio {what} is empty (0 samples)")
    return int(info.frames), int(info.samplerate), what


def _resampled_length(n: int, orig_sr: int, new_sr: int) -> int:
    g = math.gcd(orig_sr, new_sr)
    return -(-(new_sr // g) * n // (orig_sr // g))


def audio_num_samples(path, target_sr: int = 16000) -> int:
    """Number of samples `load_audio(path, target_sr=...)` returns, from the file header alone."""
    n, sr, _ = _info(path)
    return n if sr == target_sr else _resampled_length(n, sr, target_sr)


def read_audio_range(path, start: int, stop: int, target_sr: int = 16000, *, lowpass_filter_width: int = 6,
                     rolloff: float = 0.99) -> torch.Tensor:
    """Samples [start, stop) of `load_audio(path, target_sr=...)`, reading only the part of the file they
    depend on. At another rate the resampler works in blocks (gcd-reduced orig → new: output block j reads
    input [j·orig − width, j·orig + width + orig)), so the slice starts on a block boundary far enough back
    that every needed block sees the same input as in the whole-file call."""
    import soundfile as sf

    n, sr, what = _info(path)
    total = n if sr == target_sr else _resampled_length(n, sr, target_sr)
    if not 0 <= start <= stop <= total:
        raise ValueError(f"range [{start}, {stop}) is outside [0, {total}] for {what}")
    if sr == target_sr:
        s0, e0, skip = start, stop, start
    else:
        o, nw, width = _blocks(sr, target_sr, lowpass_filter_width, rolloff)
        j0 = max(0, start // nw - (-(-width // o)))
        s0, e0, skip = j0 * o, min(n, -(-stop // nw) * o + width), j0 * nw
    try:
        data = sf.read(path, start=s0, stop=e0, dtype="float32", always_2d=True)[0]
    except Exception as e:
        raise AudioError(f"cannot read audio {what}: {e}") from e
    x = _mono_frames(data)
    if not bool(torch.isfinite(x).all()):
        raise AudioError(f"{what} has NaN or infinite samples")
    if sr != target_sr:
        x = resample(x, sr, target_sr, lowpass_filter_width=lowpass_filter_width, rolloff=rolloff)
    return x[start - skip : stop - skip].contiguous()


def iter_audio_file(path, n: int, target_sr: int = 16000) -> Iterator[torch.Tensor]:
    """A file's 16 kHz mono samples, about n at a time, as `load_audio` gives them, read from disk piece by
    piece (other sample rates are resampled on the fly by `StreamResampler`). What soundfile cannot open
    goes to `load_audio`, which reads it whole or says what is wrong."""
    import soundfile as sf

    try:
        f = sf.SoundFile(os.fspath(path))
    except Exception:
        f = None
    if f is None:
        x = load_audio(path, target_sr=target_sr)
        for i in range(0, x.numel(), n):
            yield x[i : i + n]
        return
    with f:
        rs = StreamResampler(f.samplerate, target_sr) if f.samplerate != target_sr else None
        # read about n output samples' worth of input per piece
        step = max(1, n * f.samplerate // target_sr)
        while True:
            try:
                block = f.read(step, dtype="float32", always_2d=True)
            except Exception as e:
                raise AudioError(f"cannot read audio file {os.fspath(path)!r}: {e}") from e
            if block.shape[0] == 0:
                break
            x = _mono_frames(block)
            if not bool(torch.isfinite(x).all()):
                raise AudioError(f"audio file {os.fspath(path)!r} has NaN or infinite samples")
            yield rs.accept(x) if rs is not None else x
        if rs is not None:
            yield rs.finish()


class StreamResampler:
    """`paraformer_ext.audio.resample(x, orig_sr, 16000)` of a whole signal, computed piece by piece.

    resample() works on blocks: with the rates reduced by their gcd (orig → new), output samples
    [j·new, (j+1)·new) come from input samples [j·orig − width, j·orig − width + 2·width + orig) (zeros
    outside the signal). Each call resamples a window that starts `ctx` samples (a multiple of orig, ≥ width)
    before the first block still to do, keeps the blocks whose whole input lies inside the window, and
    carries the rest of the window over. The values equal the one-shot result up to float rounding (the
    matrix products run over other row counts); the memory is a window, not the file.
    """

    def __init__(self, orig_sr: int, new_sr: int = 16000, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        self.sr, self.new_sr = orig_sr, new_sr
        self.o, self.nw, self.width = _blocks(orig_sr, new_sr, lowpass_filter_width, rolloff)
        self.kw = dict(lowpass_filter_width=lowpass_filter_width, rolloff=rolloff)
        self.ctx = -(-self.width // self.o) * self.o
        self.buf = torch.zeros(0)
        self.done = 0  # blocks already emitted
        self.n_in = 0
        # resample() rebuilds its kernel on every call: wait for about a second of input per call
        self.min_window = self.ctx + self.width + self.o + orig_sr

    def accept(self, x: torch.Tensor) -> torch.Tensor:
        self.n_in += x.numel()
        self.buf = torch.cat([self.buf, x]) if self.buf.numel() else x
        if self.buf.numel() < self.min_window:
            return torch.zeros(0)
        skip = 0 if self.done == 0 else self.ctx // self.o  # blocks of the window already emitted
        last = (self.buf.numel() - self.width - self.o) // self.o  # last block with all its input here
        if last < skip:
            return torch.zeros(0)
        out = resample(self.buf, self.sr, self.new_sr, **self.kw)[skip * self.nw : (last + 1) * self.nw]
        self.done += last + 1 - skip
        start = (last + 1) * self.o - self.ctx  # window offset of the next window's start
        self.buf = self.buf[start:].clone()
        return out

    def finish(self) -> torch.Tensor:
        if self.n_in == 0 or self.buf.numel() == 0:
            return torch.zeros(0)
        total = -(-self.nw * self.n_in // self.o)  # resample()'s output length for the whole signal
        skip = 0 if self.done == 0 else self.ctx // self.o
        out = resample(self.buf, self.sr, self.new_sr, **self.kw)[skip * self.nw :]
        return out[: total - self.done * self.nw]
