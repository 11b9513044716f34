"""FunASR's WavFrontend: Kaldi fbank → LFR → CMVN, batched float32 torch (spec paraformer.md §5, fsmn_vad.md §2).

Per utterance this computes what `funasr/frontends/wav_frontend.py::WavFrontend` computes with
`torchaudio.compliance.kaldi.fbank` / kaldi-native-fbank (the golden data came from the latter):

    x = wave[:len] × 32768                                   (upsacle_samples)
    frames of W = fs·frame_length ms, shift S = fs·frame_shift ms (snip_edges: T = 1 + (len − W) // S)
    [+ dither · N(0, 1)] → − frame mean → pre-emphasis 0.97 (x'[0] = x[0] − 0.97·x[0]) → window
    → zero-pad to P = next power of two ≥ W → |rfft|² → Kaldi mel triangles (20 Hz … fs/2)
    → log(max(E, FLT_EPSILON))
    LFR (m, n): row i = frames i·n − (m−1)//2 + r, r < m, each index clamped to the utterance's [0, T−1]
    CMVN: (x + shift) · scale with am.mvn's <AddShift> / <Rescale>

Batching never mixes utterances: every padded item gets bit-for-bit its batch-1 result. That is why the mel
projection is a fixed-order sparse sum instead of a GEMM (BLAS changes its summation order with the number of
rows, which would make a frame's value depend on the batch), why the frame mean is a fixed pairwise sum rather
than a torch reduction, and why LFR clamps to each item's own last frame. Clips shorter than one window get
their own window and FFT size (one small group each). Long audio is processed in chunks of frames so that
memory stays a small multiple of the output (an hour: peak ~2x the features).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import torch

from .masks import length_mask

FLT_EPSILON = float(torch.finfo(torch.float32).eps)  # Kaldi's log floor: log(1.1920929e-07) = -15.942385
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Kaldi's mel low cut-off (Hz); high cut-off 0 means Nyquist
WINDOWS = ("hamming", "hanning", "povey", "rectangular", "blackman")

# Rows (frames × utterances) processed per chunk; each row costs ~7 KB of temporaries at W = 400, P = 512,
# so a chunk holds ~7 MB on CPU (cache-sized: 1024 rows ran fastest on 2 cores, 1.5x faster than 8192) and
# ~120 MB on CUDA (fewer kernel launches), whatever the audio length. Results do not depend on it.
_CHUNK_ROWS = 1024
_CHUNK_ROWS_GPU = 16384


# ------------------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------------------


@dataclass
class FrontendConfig:
    """WavFrontend's `frontend_conf`. Defaults are FunASR's constructor defaults except `dither` (0.0 here:
    FunASR's 1.0 adds random noise to every feature; see spec §5.4)."""

    fs: int = 16000
    window: str = "hamming"
    n_mels: int = 80
    frame_length: float = 25
    frame_shift: float = 10
    lfr_m: int = 1
    lfr_n: int = 1
    dither: float = 0.0
    snip_edges: bool = True
    upsacle_samples: bool = True  # (sic) FunASR's spelling, kept so config.yaml keys map one to one

    # WavFrontend constructor arguments that FunASR stores but never uses
    _IGNORED = ("cmvn_file", "filter_length_min", "filter_length_max")

    def __post_init__(self):
        problems = []
        if not (isinstance(self.fs, int) and self.fs > 0):
            problems.append(f"fs must be a positive int (Hz), got {self.fs!r}")
        if self.window not in WINDOWS:
            problems.append(f"window must be one of {WINDOWS}, got {self.window!r}")
        for name in ("n_mels", "lfr_m", "lfr_n"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                problems.append(f"{name} must be an int >= 1, got {v!r}")
        for name in ("frame_length", "frame_shift"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                problems.append(f"{name} must be a positive number of milliseconds, got {v!r}")
        if not (isinstance(self.dither, (int, float)) and math.isfinite(self.dither) and self.dither >= 0):
            problems.append(f"dither must be a number >= 0, got {self.dither!r}")
        for name in ("snip_edges", "upsacle_samples"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not problems:
            if self.window_size < 2:
                problems.append(f"frame_length {self.frame_length} ms at {self.fs} Hz gives a window of "
                                f"{self.window_size} samples; Kaldi needs at least 2")
            if self.window_shift < 1:
                problems.append(f"frame_shift {self.frame_shift} ms at {self.fs} Hz gives a shift of 0 samples")
        if problems:
            raise ValueError("invalid frontend config: " + "; ".join(problems))

    @property
    def window_size(self) -> int:
        """Frame length in samples, as torchaudio/Kaldi round it (truncation of fs·ms·0.001)."""
        return _window_samples(self.fs, self.frame_length)

    @property
    def window_shift(self) -> int:
        return _window_samples(self.fs, self.frame_shift)

    def window_for(self, num_samples: int) -> int:
        """The window WavFrontend uses for an utterance: FunASR's min(frame_length, len/fs·1000), so a clip
        shorter than one window still gives one frame."""
        if num_samples / self.fs * 1000 < self.frame_length:
            return _window_samples(self.fs, num_samples / self.fs * 1000)
        return self.window_size

    def feature_frames(self, num_samples: int) -> int:
        """Feature (LFR) frames WavFrontend produces for an utterance of num_samples, without computing them."""
        fb = num_frames(num_samples, self.window_for(num_samples), self.window_shift, self.snip_edges)
        return -(-fb // self.lfr_n)

    @property
    def output_size(self) -> int:
        return self.n_mels * self.lfr_m

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        """Build from config.yaml's `frontend_conf`. `cmvn_file` (and FunASR's unused filter_length_min/max) are
        ignored; any other unknown key raises ValueError naming it."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"frontend_conf must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in known and k not in cls._IGNORED)
        if unknown:
            raise ValueError(f"unknown frontend_conf key(s) {unknown}; WavFrontend accepts {sorted(known)} "
                             f"(and ignores {list(cls._IGNORED)})")
        kw = {k: v for k, v in d.items() if k in known}
        # YAML gives ints for "25" and floats for "25.0"; both mean the same here
        for name in ("fs", "n_mels", "lfr_m", "lfr_n"):
            if isinstance(kw.get(name), float) and kw[name].is_integer():
                kw[name] = int(kw[name])
        if isinstance(kw.get("dither"), int) and not isinstance(kw.get("dither"), bool):
            kw["dither"] = float(kw["dither"])
        return cls(**kw)


def _window_samples(fs: int, ms: float) -> int:
    # torchaudio: int(sample_frequency * frame_length * MILLISECONDS_TO_SECONDS), in Python floats
    return int(fs * ms * 0.001)


# ------------------------------------------------------------------------------------------------------------
# am.mvn
# ------------------------------------------------------------------------------------------------------------


def load_cmvn(path) -> torch.Tensor:
    """Read a Kaldi nnet1 text am.mvn (spec §5.3) into a (2, dim) float32 tensor: row 0 the <AddShift> values
    (−mean), row 1 the <Rescale> values (1/std).

    As FunASR, the values are those of the `<LearnRateCoef> r [ v0 v1 … ]` line after each component tag;
    a vector wrapped over several lines is read up to its `]`. Raises FileNotFoundError, or ValueError naming
    the file and what is wrong with it.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"am.mvn not found: {path!r} (the model directory's CMVN file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read am.mvn {path!r}: {e}") from e

    def bad(msg):
        return ValueError(f"malformed am.mvn {path!r}: {msg}")

    vectors = {}
    for i, line in enumerate(lines):
        tok = line.split()
        if not tok or tok[0] not in ("<AddShift>", "<Rescale>"):
            continue
        tag = tok[0]
        if tag in vectors:
            raise bad(f"{tag} appears twice (line {i + 1})")
        declared = None
        if len(tok) >= 3:
            try:
                declared = int(tok[1]), int(tok[2])
            except ValueError:
                raise bad(f"line {i + 1}: expected '{tag} <out-dim> <in-dim>', got {line.strip()!r}") from None
        j = i + 1
        while j < len(lines) and not lines[j].split():
            j += 1
        nxt = lines[j].split() if j < len(lines) else []
        if not nxt or nxt[0] != "<LearnRateCoef>":
            raise bad(f"line {j + 1}: expected '<LearnRateCoef> 0 [ values ]' after {tag}")
        if len(nxt) < 3 or nxt[2] != "[":
            raise bad(f"line {j + 1}: expected '<LearnRateCoef> 0 [ values ]', got {lines[j].strip()[:60]!r}")
        toks = nxt[3:]
        while "]" not in toks:
            j += 1
            if j >= len(lines) or lines[j].split()[:1] in (["<AddShift>"], ["<Rescale>"], ["</Nnet>"]):
                raise bad(f"the {tag} vector starting on line {i + 2} has no closing ']'")
            toks += lines[j].split()
        end = toks.index("]")
        if end != len(toks) - 1:
            raise bad(f"unexpected text after the {tag} vector's ']': {' '.join(toks[end + 1:])[:60]!r}")
        try:
            vals = [float(v) for v in toks[:end]]
        except ValueError as e:
            raise bad(f"{tag} vector: {e}") from None
        if not vals:
            raise bad(f"{tag} vector is empty")
        if not all(math.isfinite(v) for v in vals):
            raise bad(f"{tag} vector has non-finite values")
        if declared is not None and declared[0] != len(vals):
            raise bad(f"{tag} declares dimension {declared[0]} but has {len(vals)} values")
        vectors[tag] = vals
    for tag in ("<AddShift>", "<Rescale>"):
        if tag not in vectors:
            raise bad(f"no {tag} component (is this a Kaldi nnet1 CMVN file?)")
    shift, scale = vectors["<AddShift>"], vectors["<Rescale>"]
    if len(shift) != len(scale):
        raise bad(f"<AddShift> has {len(shift)} values but <Rescale> has {len(scale)}")
    # float32 from the decimal text, as numpy's astype(float32) does in FunASR
    return torch.tensor([shift, scale], dtype=torch.float64).to(torch.float32)


# ------------------------------------------------------------------------------------------------------------
# fbank
# ------------------------------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=64)
def _window_cpu(kind: str, W: int) -> torch.Tensor:
    """Kaldi's window functions (symmetric: the denominator is W − 1), float64 → float32."""
    n = torch.arange(W, dtype=torch.float64)
    a = 2 * math.pi / (W - 1)
    if kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * n)
    elif kind == "hanning":
        w = 0.5 - 0.5 * torch.cos(a * n)
    elif kind == "povey":
        w = (0.5 - 0.5 * torch.cos(a * n)).pow(0.85)
    elif kind == "rectangular":
        w = torch.ones(W, dtype=torch.float64)
    elif kind == "blackman":
        w = 0.42 - 0.5 * torch.cos(a * n) + 0.08 * torch.cos(2 * a * n)
    else:  # pragma: no cover - FrontendConfig validates
        raise ValueError(f"unknown window {kind!r}")
    return w.to(torch.float32)


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Round float64 values to float32 (kept in float64): emulates one float32 operation per call."""
    return t.to(torch.float32).to(torch.float64)


def _mel32(f: torch.Tensor) -> torch.Tensor:
    # 1127 ln(1 + f/700), each operation rounded to float32 as kaldi-native-fbank's MelScale computes it
    return _f32(1127.0 * _f32(torch.log(_f32(1.0 + _f32(f / 700.0)))))


@functools.lru_cache(maxsize=64)
def _mel_banks_cpu(fs: int, P: int, n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi mel triangles for a P-point FFT as a sparse (n_mels, K) pair: fft-bin indices and weights.

    FFT bin j < P/2 (f = j·fs/P) has weight (mel − left)/(center − left) on the rising and (right − mel)/
    (right − center) on the falling side of each triangle, in the mel domain, mel(f) = 1127 ln(1 + f/700), for
    n_mels triangles equally spaced between mel(20 Hz) and mel(fs/2); the Nyquist bin has weight 0. The
    arithmetic is float32, operation by operation, as in kaldi-native-fbank (which made the golden data; it
    matches it bit for bit on about half of the golden fbank values, against 10% for float64 weights). Each
    triangle covers a contiguous run of bins; shorter runs are padded with weight 0.
    """
    nyquist = 0.5 * fs
    if not LOW_FREQ < nyquist:
        raise ValueError(f"sample rate {fs} Hz is too low for Kaldi's 20 Hz mel low cut-off")
    f64 = torch.float64
    mel_lo, mel_hi = _mel32(torch.tensor(LOW_FREQ, dtype=f64)), _mel32(torch.tensor(nyquist, dtype=f64))
    delta = _f32((mel_hi - mel_lo) / (n_mels + 1))
    i = torch.arange(n_mels, dtype=f64)[:, None]
    left = _f32(mel_lo + _f32(i * delta))
    center = _f32(mel_lo + _f32((i + 1) * delta))
    right = _f32(mel_lo + _f32((i + 2) * delta))
    mel = _mel32(_f32(_f32(torch.tensor(fs / P, dtype=f64)) * torch.arange(P // 2, dtype=f64)))[None, :]
    up = _f32(_f32(mel - left) / _f32(center - left))
    down = _f32(_f32(right - mel) / _f32(right - center))
    inside = (mel > left) & (mel < right)
    dense = torch.where(inside, torch.where(mel <= center, up, down), 0.0).to(torch.float32)  # (n_mels, P/2)
    nz = dense > 0
    first = torch.where(nz.any(1), nz.float().argmax(1), torch.zeros(n_mels, dtype=torch.long))
    last = torch.where(nz.any(1), P // 2 - 1 - nz.flip(1).float().argmax(1), first)
    K = int((last - first + 1).max())
    idx = first[:, None] + torch.arange(K)[None, :]
    inrun = idx <= last[:, None]
    idx = torch.where(inrun, idx, first[:, None])
    wts = torch.where(inrun, dense.gather(1, idx), torch.zeros((), dtype=torch.float32))
    return idx, wts


@functools.lru_cache(maxsize=64)
def _consts(kind: str, W: int, fs: int, P: int, n_mels: int, device: torch.device):
    """Window (W,), and the mel triangles flattened k-major: bin indices (K·n_mels,), weights (K·n_mels, 1)."""
    idx, wts = _mel_banks_cpu(fs, P, n_mels)
    return (_window_cpu(kind, W).to(device), idx.t().reshape(-1).to(device),
            wts.t().reshape(-1, 1).contiguous().to(device))


def num_frames(L: int, W: int, S: int, snip_edges: bool = True) -> int:
    """Kaldi frames of L samples with a window of W samples and a shift of S (the one copy of this rule:
    the frontend, the engine's planning and the VAD's streaming all count with it)."""
    if L < 2 or W < 2:
        return 0
    if snip_edges:
        return 0 if L < W else 1 + (L - W) // S
    return (L + S // 2) // S


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    """(M, W) → (M, 1) row sums by a fixed pairwise tree of elementwise adds.

    torch's reductions may split a row differently as the number of rows changes (CUDA splits rows over
    blocks when there are few of them); elementwise adds give every frame the same bits in any batch.
    """
    while x.size(1) > 1:
        h = x.size(1) // 2
        s = x[:, :h] + x[:, h : 2 * h]
        if x.size(1) % 2:
            s[:, :1] += x[:, 2 * h :]
        x = s
    return x


def _fbank_group(wave, lens, W, S, cfg, dither, generator, out, rows):
    """Fbank of the utterances `wave` (G, N) (lengths `lens`, all with window W) into out[rows, :T]."""
    G = wave.size(0)
    dev = wave.device
    P = _next_pow2(W)
    window, mel_idx, mel_w = _consts(cfg.window, W, cfg.fs, P, cfg.n_mels, dev)
    T = max(num_frames(L, W, S, cfg.snip_edges) for L in lens)
    if T == 0:
        return
    scale = 32768.0 if cfg.upsacle_samples else 1.0
    if cfg.snip_edges:
        framed = wave[:, : (T - 1) * S + W].unfold(1, W, S)  # (G, T, W) view
    else:
        # Kaldi's reflection at both ends, around each utterance's own end
        pad = W // 2 - S // 2
        Ls = torch.tensor(lens, device=dev)[:, None, None]
    C = min(T, max(1, (_CHUNK_ROWS if dev.type == "cpu" else _CHUNK_ROWS_GPU) // G))
    # the FFT input, zero past W once and for all: rfft then needs no padding copy
    ybuf = torch.zeros(G * C, P, dtype=torch.float32, device=dev)
    for t0 in range(0, T, C):
        t1 = min(T, t0 + C)
        M = G * (t1 - t0)
        if cfg.snip_edges:
            x = framed[:, t0:t1].reshape(M, W) * scale  # a fresh tensor: safe to modify in place
        else:
            s = (torch.arange(t0, t1, device=dev) * S - pad)[:, None] + torch.arange(W, device=dev)
            s = s[None].expand(G, -1, -1)
            # Kaldi reflects again and again while the index is outside the clip: that is a fold into one period
            # of 2L, mirrored in its upper half (a window longer than the clip reaches past one mirror image)
            period = (2 * Ls).clamp_min(1)
            s = torch.remainder(s, period)
            s = torch.where(s >= Ls, period - 1 - s, s).clamp_min(0)
            x = wave.gather(1, s.reshape(G, -1)).reshape(M, W) * scale
        if dither > 0:
            x += torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype) * dither
        x -= _row_sums(x) / W
        y = ybuf[:M]
        yw = y[:, 1:W]
        torch.mul(x[:, :-1], PREEMPHASIS, out=yw)
        torch.sub(x[:, 1:], yw, out=yw)  # x[j] − 0.97·x[j−1]
        y[:, :1] = x[:, :1] - PREEMPHASIS * x[:, :1]
        del x
        y[:, :W] *= window
        spec = torch.view_as_real(torch.fft.rfft(y)).square_()  # (M, P/2 + 1, 2)
        # power spectrum as bins × rows, so that gathering a triangle's bins copies contiguous rows
        power = torch.empty(spec.size(1), M, dtype=torch.float32, device=dev)
        torch.add(spec[..., 0].t(), spec[..., 1].t(), out=power)
        del spec
        # each triangle summed bin by bin, left to right (as kaldi-native-fbank does): a frame's value never
        # depends on the other rows, unlike a GEMM whose blocking changes with the number of rows
        terms = power.index_select(0, mel_idx).mul_(mel_w).view(-1, cfg.n_mels, M)  # (K, n_mels, rows)
        mel = terms[0]
        for k in range(1, terms.size(0)):
            mel.add_(terms[k])
        mel = mel.clamp_min_(FLT_EPSILON).log_().t().view(G, t1 - t0, -1)
        if rows is None:
            out[:, t0:t1] = mel
        else:
            out[rows, t0:t1] = mel


def _check_waveforms(waveforms: torch.Tensor, lengths) -> tuple[torch.Tensor, list[int]]:
    if not torch.is_tensor(waveforms):
        raise TypeError(f"waveforms must be a torch.Tensor (B, N), got {type(waveforms).__name__}")
    if waveforms.dim() == 1:
        waveforms = waveforms[None]
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must be (B, N) (or (N,)), got shape {tuple(waveforms.shape)}")
    if not waveforms.is_floating_point():
        raise TypeError(f"waveforms must be float in [-1, 1], got {waveforms.dtype}; "
                        "convert integer PCM with paraformer_ext.audio.load_audio")
    waveforms = waveforms.to(torch.float32)
    B, N = waveforms.shape
    if lengths is None:
        lens = [N] * B
    else:
        lt = torch.as_tensor(lengths)
        if lt.dim() != 1 or lt.numel() != B or lt.is_floating_point() or lt.dtype == torch.bool:
            raise ValueError(f"lengths must be an integer tensor of shape ({B},), got {lt.dtype} {tuple(lt.shape)}")
        lens = [int(v) for v in lt.tolist()]
        if any(v < 0 or v > N for v in lens):
            raise ValueError(f"lengths must be in [0, {N}] (the padded waveform length), got {lens}")
    return waveforms, lens


def kaldi_fbank(
    waveforms: torch.Tensor,
    lengths: torch.Tensor | None,
    cfg: FrontendConfig,
    shorten_short_window: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi log-mel fbank of each utterance, as FunASR's WavFrontend computes it.

    waveforms: (B, N) float in [-1, 1], zero padded (any float dtype; computed in float32); lengths: (B,) ints,
    samples per utterance (None = all N). Returns (B, T_max, n_mels) float32, zero past each utterance's frames,
    and (B,) int64 frame counts on the waveforms' device.

    shorten_short_window: WavFrontend uses frame_length = min(frame_length, len/fs·1000), so an utterance
    shorter than one window still gives one frame (with its own window and FFT size); the VAD's
    WavFrontendOnline does not (False: 0 frames under one window). Utterances of fewer than 2 samples give
    0 frames (FunASR raises there). dither > 0 adds N(0, dither²) noise per sample (from `generator`, else the
    global RNG) before the mean removal, as torchaudio does.
    """
    waveforms, lens = _check_waveforms(waveforms, lengths)
    B, N = waveforms.shape
    dev = waveforms.device
    W, S = cfg.window_size, cfg.window_shift
    win = [cfg.window_for(L) if shorten_short_window else W for L in lens]
    counts = [num_frames(L, Wb, S, cfg.snip_edges) for L, Wb in zip(lens, win)]
    T = max(counts, default=0)
    out = torch.empty(B, T, cfg.n_mels, dtype=torch.float32, device=dev)
    if T:
        main = [b for b in range(B) if win[b] == W and counts[b] > 0]
        if len(main) == B:
            _fbank_group(waveforms, lens, W, S, cfg, cfg.dither, generator, out, None)
        elif main:
            rows = torch.tensor(main, device=dev)
            _fbank_group(waveforms.index_select(0, rows), [lens[b] for b in main], W, S, cfg, cfg.dither,
                         generator, out, rows)
        for b in range(B):  # only utterances shorter than one window: each has its own window and FFT size
            if win[b] != W and counts[b] > 0:
                _fbank_group(waveforms[b : b + 1, : lens[b]], [lens[b]], win[b], S, cfg, cfg.dither,
                             generator, out, torch.tensor([b], device=dev))
    counts_t = torch.tensor(counts, dtype=torch.int64, device=dev)
    if T:
        valid = length_mask(counts_t, T)
        out.masked_fill_(~valid[:, :, None], 0.0)
        # NaN/inf samples inside an utterance surface as NaN/inf features (finite log-mels are within ±100)
        if not bool(torch.isfinite(out.sum())):
            bad = [b for b in range(B) if not bool(torch.isfinite(out[b].sum()))]
            raise ValueError(f"waveforms contain NaN or infinite samples (batch items {bad})")
    return out, counts_t


# ------------------------------------------------------------------------------------------------------------
# LFR and CMVN
# ------------------------------------------------------------------------------------------------------------


def apply_lfr(
    feats: torch.Tensor, lengths: torch.Tensor | None, lfr_m: int, lfr_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low frame rate stacking (spec §5.2 step 3), per utterance.

    feats: (B, T, F); lengths: (B,) frame counts (None = all T). Returns (B, ceil(T/n), m·F) — row i of item b
    is frames i·n − (m−1)//2 + r (r < m) concatenated, each index clamped to [0, len_b − 1], so the item's own
    first/last frame repeats, never padding — and the (B,) int64 LFR lengths ceil(len_b / n). Rows past an
    item's length are 0. m = n = 1 returns feats unchanged.
    """
    if feats.dim() != 3:
        raise ValueError(f"feats must be (B, T, F), got shape {tuple(feats.shape)}")
    for name, v in (("lfr_m", lfr_m), ("lfr_n", lfr_n)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    B, T, F = feats.shape
    dev = feats.device
    if lengths is None:
        lens = torch.full((B,), T, dtype=torch.int64, device=dev)
    else:
        lens = torch.as_tensor(lengths).to(dev, torch.int64)
        if lens.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lens.shape)}")
        if B and not (0 <= int(lens.min()) and int(lens.max()) <= T):
            raise ValueError(f"lengths must be in [0, {T}] (the padded frame count), got {lens.tolist()}")
    if lfr_m == 1 and lfr_n == 1:
        return feats, lens
    T_out = -(-T // lfr_n)
    out_lens = torch.div(lens + lfr_n - 1, lfr_n, rounding_mode="floor")
    j = (torch.arange(T_out, device=dev) * lfr_n - (lfr_m - 1) // 2)[:, None] + torch.arange(lfr_m, device=dev)
    last = (lens - 1).clamp_min(0)[:, None, None]
    j = torch.minimum(j.clamp_min(0)[None], last)  # (B, T_out, m)
    j = j + (torch.arange(B, device=dev) * T)[:, None, None]
    out = feats.reshape(B * T, F).index_select(0, j.reshape(-1)).view(B, T_out, lfr_m * F)
    valid = length_mask(out_lens, T_out)
    return out.masked_fill_(~valid[:, :, None], 0.0), out_lens


def apply_cmvn(feats: torch.Tensor, cmvn: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(feats + cmvn[0]) · cmvn[1] per dimension, in float32, as FunASR (spec §5.2 step 4).

    feats: (B, T, D) or (T, D); cmvn: (2, D); lengths: (B,) valid frames (None = all). Frames past a length
    are 0 in the output. Returns a new float32 tensor.
    """
    return _cmvn(feats, cmvn, lengths, inplace=False)


def _cmvn(feats, cmvn, lengths, inplace):
    if cmvn.dim() != 2 or cmvn.size(0) != 2:
        raise ValueError(f"cmvn must be (2, dim) (shift, scale), got shape {tuple(cmvn.shape)}")
    D = feats.size(-1)
    if cmvn.size(1) != D:
        raise ValueError(f"cmvn has dimension {cmvn.size(1)} but the features have {D} "
                         f"(am.mvn must match n_mels · lfr_m of the frontend config)")
    if lengths is not None and feats.dim() != 3:
        raise ValueError("lengths need batched feats (B, T, D)")
    c = cmvn.to(device=feats.device, dtype=torch.float32)
    if inplace and feats.dtype == torch.float32:
        out = feats.add_(c[0])
    else:
        out = feats.to(torch.float32) + c[0]
    out.mul_(c[1])
    if lengths is not None:
        valid = length_mask(lengths, feats.size(1), feats.device)
        out.masked_fill_(~valid[:, :, None], 0.0)
    return out


# ------------------------------------------------------------------------------------------------------------
# the module
# ------------------------------------------------------------------------------------------------------------


class WavFrontend(torch.nn.Module):
    """FunASR's WavFrontend: waveforms (B, N) in [-1, 1] → (B, T, n_mels·lfr_m) float32 features.

    cmvn: (2, n_mels·lfr_m) from `load_cmvn`, or None for no normalisation. Move the module with `.to(device)`
    (the CMVN is a buffer); the computation runs on the waveforms' device.
    """

    def __init__(self, cfg: FrontendConfig, cmvn: torch.Tensor | None):
        super().__init__()
        self.cfg = cfg
        self.output_size = cfg.n_mels * cfg.lfr_m
        if cmvn is not None:
            if cmvn.dim() != 2 or cmvn.shape != (2, self.output_size):
                raise ValueError(f"cmvn must be (2, {self.output_size}) for n_mels={cfg.n_mels}, "
                                 f"lfr_m={cfg.lfr_m}; got {tuple(cmvn.shape)}")
            cmvn = cmvn.to(torch.float32)
        self.register_buffer("cmvn", cmvn, persistent=False)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: (B, N) float, zero padded; lengths: (B,) samples (None = all N). Returns features
        (B, T, output_size) float32, zero padded, and (B,) int64 LFR frame counts on the waveforms' device."""
        feats, lens = kaldi_fbank(waveforms, lengths, self.cfg, shorten_short_window=True, generator=generator)
        feats, lens = apply_lfr(feats, lens, self.cfg.lfr_m, self.cfg.lfr_n)
        if self.cmvn is not None:
            feats = _cmvn(feats, self.cmvn, lens, inplace=True)  # feats is ours: peak memory ~2x the output
        return feats, lens

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"fs={c.fs}, n_mels={c.n_mels}, window={c.window}, lfr=({c.lfr_m}, {c.lfr_n}), "
                f"dither={c.dither}, cmvn={'yes' if self.cmvn is not None else 'no'}")
