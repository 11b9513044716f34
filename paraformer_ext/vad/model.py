"""FunASR's fsmn-vad end to end: audio → frontend → FSMN network → post-processing → segments.

The whole path is streaming: audio goes in by pieces (a file is read 60 s at a time), the fbank and LFR
carry the samples / frames they still need across pieces, the network carries its FSMN caches, and the
state machine its state, so the result equals the one-shot computation while memory is bounded by the
piece size, not by the file length (spec fsmn_vad.md §2–§4).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .._ext import use_kernels
from ..audio import AudioError, iter_audio_file, load_audio
from ..frontend import FrontendConfig, apply_cmvn, apply_lfr, kaldi_fbank, load_cmvn, num_frames
from .network import FsmnVadEncoder
from .postprocess import VadOptions, VadPostprocessor
from .weights import resolve_model_dir

__all__ = ["FsmnVad", "VadStream", "DEFAULT_CHUNK_SECONDS"]

DEFAULT_CHUNK_SECONDS = 60.0
_SAMPLE_RATE = 16000
# Frames per evaluation block of the fbank and of the network. A matrix product's rounding can depend on
# its number of rows (BLAS picks other kernels for a few rows), so every computation runs on blocks of
# exactly this many frames counted from the start of the file (the last block holds the rest): the
# result is then the same bits whatever the sizes of the pieces the audio arrives in.
BLOCK_FRAMES = 1000


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


class _FeatureStream:
    """Samples (1-D float in [−1, 1], 16 kHz) in pieces → normalised LFR frames, equal to the one-shot result.

    Fbank frame t covers samples [S·t, S·t + L); the samples not yet covered by a whole frame wait in
    `_buf`. LFR frame t stacks fbank frames t − left … t + right (clamped to the file); the last
    left + right fbank frames wait in `_hist` until their neighbours arrive or the file ends.
    """

    def __init__(self, cfg: FrontendConfig, cmvn: torch.Tensor, device: torch.device, energy: bool):
        self.cfg = cfg
        self.cmvn = cmvn
        self.device = device
        self.flen = cfg.window_size
        self.fshift = cfg.window_shift
        self.left = (cfg.lfr_m - 1) // 2
        self.right = cfg.lfr_m - 1 - self.left
        self.energy = energy
        self._buf = torch.zeros(0, dtype=torch.float32, device=device)
        self._hist = torch.zeros(0, cfg.n_mels, dtype=torch.float32, device=device)
        self._hist_db = np.zeros(0, dtype=np.float64)
        self._hist_start = 0  # global index of _hist[0]
        self.n_fbank = 0
        self.n_lfr = 0
        self.num_samples = 0

    def accept(self, samples: torch.Tensor, final: bool = False) -> tuple[torch.Tensor, np.ndarray | None]:
        """Returns (feats (n, lfr_m·n_mels) float32, per-frame dB (n,) or None) for the frames now complete."""
        samples = samples.to(self.device, torch.float32).reshape(-1)
        self.num_samples += samples.numel()
        buf = torch.cat([self._buf, samples]) if self._buf.numel() else samples
        fbs, dbs = [], []
        while True:
            avail = num_frames(buf.numel(), self.flen, self.fshift)
            n = BLOCK_FRAMES if avail >= BLOCK_FRAMES else (avail if final else 0)
            if n == 0:
                break
            used = (n - 1) * self.fshift + self.flen
            fb, counts = kaldi_fbank(buf[None, :used], torch.tensor([used]), self.cfg, shorten_short_window=False)
            if int(counts[0]) != n:
                raise RuntimeError(f"fbank returned {int(counts[0])} frames for {used} samples, expected {n}")
            fbs.append(fb[0, :n])
            if self.energy:
                dbs.append(self._decibels(buf[:used], n))
            buf = buf[n * self.fshift :]
            self.n_fbank += n
        # keep a copy, not a view, so that the caller's (possibly huge) array can be freed
        self._buf = buf.clone()
        fb = torch.cat(fbs) if fbs else self._hist.new_zeros(0, self.cfg.n_mels)
        db = (np.concatenate(dbs) if dbs else np.zeros(0)) if self.energy else None
        return self._lfr(fb, db, final)

    def _decibels(self, x: torch.Tensor, n: int) -> np.ndarray:
        # FunASR's ComputeDecibel: float32 frames of the unscaled waveform, 10·log10(Σx² + 1e-6)
        fr = x.detach().cpu().numpy()[np.arange(n)[:, None] * self.fshift + np.arange(self.flen)[None, :]]
        return (10 * np.log10(np.sum(np.square(fr), axis=1) + 0.000001)).astype(np.float64)

    def _lfr(self, fb: torch.Tensor, db, final: bool):
        frames = torch.cat([self._hist, fb]) if self._hist.numel() else fb
        dbs = np.concatenate([self._hist_db, db]) if db is not None else None
        a = self._hist_start  # global index of frames[0]
        b = a + frames.size(0)
        stop = b if final else max(b - self.right, self.n_lfr)
        if stop > self.n_lfr and frames.size(0):
            # apply_lfr clamps at the window's borders; rows whose context lies inside the window (or
            # whose clamping is the file's own start / end) are exact, and those are the ones kept.
            lfr, _ = apply_lfr(frames[None], torch.tensor([frames.size(0)]), self.cfg.lfr_m, self.cfg.lfr_n)
            feats = apply_cmvn(lfr[0, self.n_lfr - a : stop - a], self.cmvn)
            out_db = dbs[self.n_lfr - a : stop - a] if dbs is not None else None
        else:
            feats = frames.new_zeros(0, self.cfg.lfr_m * self.cfg.n_mels)
            out_db = np.zeros(0) if dbs is not None else None
        self.n_lfr = max(self.n_lfr, stop)
        keep_from = max(a, self.n_lfr - self.left)
        self._hist = frames[keep_from - a :].clone()
        self._hist_db = dbs[keep_from - a :] if dbs is not None else np.zeros(0)
        self._hist_start = keep_from
        return feats, out_db


class VadStream:
    """One file's VAD, fed with audio pieces in order (from `FsmnVad.stream`).

    `accept(samples)` returns the segments completed so far by this piece; `finish()` the rest. Both give
    [start_ms, end_ms] lists; together they are exactly `FsmnVad.segments` of the whole audio.
    Samples: 1-D float in [−1, 1] at 16 kHz (numpy or torch). Memory is bounded by the piece size.
    """

    def __init__(
        self,
        vad: "FsmnVad",
        max_end_silence_time: float | None = None,
        speech_noise_thres: float | None = None,
        keep_posteriors: bool = False,
    ):
        self.vad = vad
        self._feats = _FeatureStream(vad.frontend_config, vad.cmvn, vad.device, vad.options.uses_energy)
        self._post = VadPostprocessor(vad.options, max_end_silence_time, speech_noise_thres, lfr_right=self._feats.right)
        self._cache = None
        self._pending = torch.zeros(0, vad.encoder.input_dim, device=vad.device)  # features not yet evaluated
        self._pending_db = np.zeros(0)
        self._posteriors: list[np.ndarray] | None = [] if keep_posteriors else None
        self.segments: list[list[int]] = []
        self.finished = False

    @property
    def num_samples(self) -> int:
        return self._feats.num_samples

    @property
    def postprocessor(self) -> VadPostprocessor:
        return self._post

    def accept(self, samples) -> list[list[int]]:
        if self.finished:
            raise RuntimeError("this VadStream is finished; call FsmnVad.stream() for the next file")
        return self._step(_as_samples(samples), final=False)

    def finish(self) -> list[list[int]]:
        """End of the audio: flushes the last frames (the final frame rules apply to the last one)."""
        if self.finished:
            return []
        out = self._step(torch.zeros(0), final=True)
        self.finished = True
        return out

    def posteriors(self) -> torch.Tensor:
        """Silence posteriors (T,) float64 of the frames seen so far (needs keep_posteriors=True)."""
        if self._posteriors is None:
            raise RuntimeError("create the stream with keep_posteriors=True to collect posteriors")
        return torch.from_numpy(np.concatenate(self._posteriors) if self._posteriors else np.zeros(0))

    def _step(self, samples: torch.Tensor, final: bool) -> list[list[int]]:
        feats, db = self._feats.accept(samples, final=final)
        feats = torch.cat([self._pending, feats]) if self._pending.numel() else feats
        if db is not None:
            db = np.concatenate([self._pending_db, db])
        n = feats.size(0) if final else feats.size(0) // BLOCK_FRAMES * BLOCK_FRAMES
        ps = [self.vad._silence_scores(feats[i : min(i + BLOCK_FRAMES, n)], self) for i in range(0, n, BLOCK_FRAMES)]
        p = np.concatenate(ps) if ps else np.zeros(0)
        self._pending = feats[n:].clone()
        if db is not None:
            self._pending_db, db = db[n:], db[:n]
        if self._posteriors is not None:
            self._posteriors.append(p)
        out = self._post.accept(p, final=final, num_samples=self._feats.num_samples if final else None, decibels=db)
        self.segments.extend(out)
        return out


def _as_samples(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 1:
        raise ValueError(f"audio samples must be 1-D (mono, 16 kHz), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"audio samples must be float in [-1, 1] (int16 PCM / 32768), got dtype {t.dtype}")
    return t


class FsmnVad:
    """FunASR's fsmn-vad: `FsmnVad.load()` then `.segments(wav)` → [[start_ms, end_ms], ...].

    Modes (spec fsmn_vad.md §0): by default FunASR's current dynamic end-silence schedule
    (`AutoModel.generate(input=wav)`); with `max_end_silence_time=ms` the classic fixed mode
    (`generate(input=wav, max_end_silence_time=ms)`; 800 is config.yaml's value, and funasr-onnx's).
    """

    def __init__(
        self,
        encoder: FsmnVadEncoder,
        options: VadOptions,
        frontend_config: FrontendConfig,
        cmvn: torch.Tensor,
        device: str | torch.device = "cpu",
        model_dir: Path | None = None,
    ):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.options = options
        self.frontend_config = frontend_config
        self.cmvn = cmvn.to(self.device, torch.float32)
        self.model_dir = model_dir
        self._sil_ids = list(options.sil_pdf_ids)
        if max(self._sil_ids) >= encoder.output_dim or min(self._sil_ids) < 0:
            raise ValueError(f"sil_pdf_ids {self._sil_ids} outside the network's {encoder.output_dim} outputs")
        if self.cmvn.shape != (2, encoder.input_dim):
            raise ValueError(f"am.mvn has shape {tuple(self.cmvn.shape)}, the network expects (2, {encoder.input_dim})")

    # --- construction -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        *,
        kernels: bool | None = None,
    ) -> "FsmnVad":
        """Load fsmn-vad from a FunASR model directory (model.pt, config.yaml, am.mvn), or, without one,
        FunASR's own weights shipped in the package (vad/weights.py). kernels: the compiled FSMN op or the
        plain-PyTorch reference, by the package's one rule (_ext.use_kernels)."""
        import yaml

        d = resolve_model_dir(model_dir)
        kernels = use_kernels(kernels, device)
        conf = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
        model_name = conf.get("model", "FsmnVADStreaming")
        if "FsmnVAD" not in str(model_name):
            raise ValueError(f"{d / 'config.yaml'}: model is {model_name!r}, expected FunASR's FsmnVADStreaming")
        options = VadOptions.from_config(conf.get("model_conf"))
        fe = dict(conf.get("frontend_conf") or {})
        fe.pop("cmvn_file", None)
        fcfg = FrontendConfig.from_dict(fe)
        # The VAD is deterministic: FunASR's fsmn-vad config has dither 0, and we never add noise.
        fcfg = replace(fcfg, dither=0.0)
        _check_frontend(fcfg, options, d)
        encoder = FsmnVadEncoder(kernels=kernels, **(conf.get("encoder_conf") or {}))
        if encoder.input_dim != fcfg.lfr_m * fcfg.n_mels:
            raise ValueError(
                f"{d / 'config.yaml'}: encoder input_dim {encoder.input_dim} != lfr_m·n_mels = {fcfg.lfr_m * fcfg.n_mels}"
            )
        try:
            state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read {d / 'model.pt'} as a PyTorch state_dict: {e}") from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{d / 'model.pt'} does not hold a state_dict (got {type(state).__name__})")
        encoder.load_funasr_state_dict(state)
        cmvn = load_cmvn(d / "am.mvn")
        return cls(encoder, options, fcfg, cmvn, device, model_dir=d)

    # --- API ----------------------------------------------------------------------------------------

    def stream(
        self,
        max_end_silence_time: float | None = None,
        *,
        speech_noise_thres: float | None = None,
        keep_posteriors: bool = False,
    ) -> VadStream:
        """A streaming VAD for one file: feed 16 kHz float pieces with `.accept`, end with `.finish()`."""
        return VadStream(self, max_end_silence_time, speech_noise_thres, keep_posteriors)

    def iter_segments(
        self,
        audio,
        max_end_silence_time: float | None = None,
        *,
        speech_noise_thres: float | None = None,
        sample_rate: int | None = None,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> Iterator[list[int]]:
        """Yield [start_ms, end_ms] as each segment is decided, reading `audio` chunk by chunk.

        audio: a file path (read from disk piece by piece; other rates than 16 kHz are resampled on the
        fly), the bytes of an audio file or a binary file object (read whole), samples as a numpy array
        or torch tensor ((N,) or channels × samples, float in [−1, 1] or integer PCM; 16 kHz unless
        `sample_rate` says otherwise; see `paraformer_ext.audio.load_audio`), or an iterable of 1-D
        16 kHz float pieces. Raises AudioError for unreadable audio.
        """
        st = self.stream(max_end_silence_time, speech_noise_thres=speech_noise_thres)
        for piece in self._pieces(audio, sample_rate, chunk_seconds):
            yield from st.accept(piece)
        yield from st.finish()

    def segments(
        self,
        audio,
        max_end_silence_time: float | None = None,
        *,
        speech_noise_thres: float | None = None,
        sample_rate: int | None = None,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> list[list[int]]:
        """The speech segments [[start_ms, end_ms], ...] of one file or waveform (see `iter_segments`).

        max_end_silence_time: None = FunASR's default dynamic mode; a value in ms = fixed mode.
        speech_noise_thres: fixed mode only (default config.yaml's 0.6). No speech gives [].
        """
        return list(
            self.iter_segments(
                audio,
                max_end_silence_time,
                speech_noise_thres=speech_noise_thres,
                sample_rate=sample_rate,
                chunk_seconds=chunk_seconds,
            )
        )

    def posteriors(
        self, audio, *, sample_rate: int | None = None, chunk_seconds: float = DEFAULT_CHUNK_SECONDS
    ) -> torch.Tensor:
        """Silence posterior per 10 ms frame, (T,) float64: the network's softmax summed over
        `sil_pdf_ids` (column 0 for fsmn-vad), exactly the values the segment decisions use."""
        st = self.stream(keep_posteriors=True)
        for piece in self._pieces(audio, sample_rate, chunk_seconds):
            st.accept(piece)
        st.finish()
        return st.posteriors()

    @torch.inference_mode()
    def features(self, samples) -> torch.Tensor:
        """One-shot network input (T, 400) of a whole 16 kHz waveform: fbank → LFR → CMVN (spec §2)."""
        fs = _FeatureStream(self.frontend_config, self.cmvn, self.device, False)
        return fs.accept(_as_samples(samples), final=True)[0]

    # --- internals ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def _silence_scores(self, feats: torch.Tensor, st: VadStream) -> np.ndarray:
        if feats.size(0) == 0:
            return np.zeros(0, dtype=np.float64)
        scores, st._cache = self.encoder(feats[None], st._cache)
        sil = scores[0, :, self._sil_ids].double().cpu().numpy()
        if sil.shape[1] == 1:
            return sil[:, 0]
        # FunASR adds the silence classes one by one as Python floats
        acc = sil[:, 0].copy()
        for j in range(1, sil.shape[1]):
            acc += sil[:, j]
        return acc

    def _pieces(self, audio, sample_rate: int | None, chunk_seconds: float) -> Iterator[torch.Tensor]:
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        n = max(1, int(round(chunk_seconds * _SAMPLE_RATE)))
        if _is_path(audio):
            yield from iter_audio_file(Path(audio), n, _SAMPLE_RATE)
            return
        if isinstance(audio, (list, tuple)) and audio and isinstance(audio[0], (int, float, np.number)):
            audio = np.asarray(audio, dtype=np.float32)  # a plain list of samples
        if isinstance(audio, (bytes, bytearray, memoryview)) or hasattr(audio, "read"):
            x = load_audio(audio, target_sr=_SAMPLE_RATE)  # an encoded file in memory: read whole
            for i in range(0, x.numel(), n):
                yield x[i : i + n]
            return
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            if audio.size == 0 if isinstance(audio, np.ndarray) else audio.numel() == 0:
                return  # no samples, no speech (load_audio calls an empty array an error)
            x = load_audio(audio, sample_rate=sample_rate, target_sr=_SAMPLE_RATE)
            x = _as_samples(x)
            for i in range(0, x.numel(), n):
                yield x[i : i + n]
            return
        if isinstance(audio, Iterable):
            if sample_rate not in (None, _SAMPLE_RATE):
                raise ValueError("an iterable of pieces must already be 16 kHz (sample_rate is not supported)")
            for piece in audio:
                yield _as_samples(piece)
            return
        raise TypeError(f"audio must be a path, a 1-D array/tensor or an iterable of pieces, got {type(audio).__name__}")


def _check_frontend(cfg: FrontendConfig, opts: VadOptions, d: Path) -> None:
    where = d / "config.yaml"
    if cfg.fs != _SAMPLE_RATE or opts.sample_rate != _SAMPLE_RATE:
        raise ValueError(f"{where}: only 16 kHz fsmn-vad models are supported (fs={cfg.fs}, sample_rate={opts.sample_rate})")
    if cfg.lfr_n != 1:
        raise ValueError(f"{where}: the VAD needs one network frame per 10 ms frame (lfr_n 1), got lfr_n={cfg.lfr_n}")
    if cfg.frame_shift != opts.frame_in_ms or cfg.frame_length != opts.frame_length_ms:
        raise ValueError(
            f"{where}: frontend frames ({cfg.frame_length} ms / {cfg.frame_shift} ms) differ from model_conf's "
            f"frame_length_ms / frame_in_ms ({opts.frame_length_ms} / {opts.frame_in_ms})"
        )
    if not cfg.snip_edges:
        raise ValueError(f"{where}: snip_edges must be true (FunASR's VAD frontend)")
