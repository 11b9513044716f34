"""Streaming recognition with a ParaformerStreaming model directory (paraformer-zh-streaming's layout), in the
style of sherpa-onnx's online recognizer:

    asr = paraformer_ext.load("paraformer-zh-streaming-dir")
    s = asr.stream(chunk_size=10)            # 600 ms chunks, FunASR's look-backs 4 (encoder) and 1 (decoder)
    s.accept(samples, 16000)                 # any number of samples, any number of times
    s.partial()                              # {"text": so far, "new_tokens": [{"token", "id", "start", "end"}...]}
    s.finish()                               # the last chunk (FunASR's is_final) → {"text", "token_ids", "timestamp"}

    asr.decode_streams(streams)              # many streams: one batched model step per chunk of all of them

What FunASR computes, and so what this computes (ParaformerStreaming.inference with a shared cache dict):
the samples are cut into chunks of chunk_size[1] · 960 samples (FunASR's constant: 60 ms at 16 kHz); every
chunk that is complete is decoded, the remainder waits; `is_final` decodes whatever remains, and a final
remainder of fewer than 960 samples becomes FunASR's "tail chunk" (model/streaming.py). So the result depends
only on the samples and where the stream ends, never on how the caller cut them: accept(x) once equals
accept of any split of x. The features of a chunk come from the directory's frontend class: `WavFrontend`
(FunASR's offline frontend, given each chunk alone: its own first/last frame padding) or `WavFrontendOnline`
(samples and fbank frames carried between chunks, so the chunks' features are the whole stream's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .frontend import apply_cmvn, apply_lfr, kaldi_fbank
from .model.streaming import ChunkConfig, StreamingParaformer, StreamState
from .text import sentence_postprocess


class StreamError(RuntimeError):
    """A stream was used out of order (accept after finish)."""


def chunk_config(chunk_size=10, encoder_look_back: int = 4, decoder_look_back: int = 1) -> ChunkConfig:
    """chunk_size: C (an int: FunASR's [0, C, C // 2], C · 60 ms per chunk) or FunASR's [c0, c1, c2]."""
    if isinstance(chunk_size, (int, np.integer)) and not isinstance(chunk_size, bool):
        cs = (0, int(chunk_size), int(chunk_size) // 2)
    elif isinstance(chunk_size, (list, tuple)) and len(chunk_size) == 3:
        cs = tuple(int(c) for c in chunk_size)
    else:
        raise ValueError(f"chunk_size must be an int C (FunASR's [0, C, C // 2]) or a list [c0, c1, c2], got {chunk_size!r}")
    return ChunkConfig(cs, int(encoder_look_back), int(decoder_look_back))


# --- frontends -------------------------------------------------------------------------------------------------


def online_lfr(feats: torch.Tensor, m: int, n: int, is_final: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """WavFrontendOnline.apply_lfr: feats (T, F) = the carried fbank frames + the new ones → (LFR frames (k, m·F),
    the frames to carry (T − splice, F)). Not final: only windows whose m frames are all there; final: the last
    frame repeated as FunASR pads it."""
    T, F = feats.shape
    t_lfr = math.ceil((T - (m - 1) // 2) / n)
    last_idx = (T - m) // n + 1
    num_padding = m - (T - last_idx * n)
    rows, splice = t_lfr, t_lfr
    inputs = feats
    if is_final:
        if num_padding > 0:
            pad = (2 * m - 2 * T + (t_lfr - 1 + last_idx) * n) / 2 * (t_lfr - last_idx)
            inputs = torch.cat([feats] + [feats[-1:]] * int(pad))
    elif num_padding > 0:
        rows, splice = last_idx, last_idx
    splice = min(T - 1, splice * n)
    rows = max(rows, 0)
    if rows and (rows - 1) * n + m > inputs.size(0):
        raise RuntimeError(f"online LFR: {rows} windows of {m} frames need {(rows - 1) * n + m} frames, have {inputs.size(0)}")
    out = torch.stack([inputs[i * n : i * n + m].reshape(-1) for i in range(rows)]) if rows else feats.new_zeros(0, m * F)
    return out, feats[splice:]


@dataclass
class _OnlineFrontendState:
    samples: torch.Tensor  # FunASR's input_cache: samples after the last whole fbank frame
    splice: torch.Tensor | None = None  # fbank frames not yet consumed by LFR (None before the first frame)


class _Features:
    """Per-chunk features for the streams of a step, by the directory's frontend class."""

    def __init__(self, frontend, online: bool):
        self.frontend = frontend  # frontend.WavFrontend (config + CMVN)
        self.online = online
        cfg = frontend.cfg
        self.shift = cfg.window_shift
        self.window = cfg.window_size

    def new_state(self, device):
        return _OnlineFrontendState(torch.zeros(0, device=device)) if self.online else None

    def __call__(self, chunks: list[torch.Tensor], states: list, final: list[bool]) -> list[torch.Tensor]:
        if not self.online:  # FunASR's WavFrontend on each chunk alone
            lens = torch.tensor([c.numel() for c in chunks], dtype=torch.int64, device=chunks[0].device)
            wave = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)
            feats, flens = self.frontend(wave, lens)
            return [feats[b, : int(flens[b])] for b in range(len(chunks))]
        return [self._online(c, st, f) for c, st, f in zip(chunks, states, final)]

    def _online(self, chunk: torch.Tensor, st: _OnlineFrontendState, is_final: bool) -> torch.Tensor:
        """WavFrontendOnline.forward for one chunk of one stream."""
        cfg = self.frontend.cfg
        m, n = cfg.lfr_m, cfg.lfr_n
        wave = torch.cat([st.samples, chunk])
        L = wave.numel()
        frames = int((L - self.window) / self.shift + 1) if L >= self.window else 0
        frames = frames if frames >= 1 else 0
        st.samples = wave[frames * self.shift:]
        out = None
        if frames:
            fb, _ = kaldi_fbank(wave[None], None, cfg, shorten_short_window=False)
            fb = fb[0, :frames]
            if st.splice is None:
                st.splice = fb[:1].repeat((m - 1) // 2, 1)
            if fb.size(0) + st.splice.size(0) >= m:
                out, st.splice = online_lfr(torch.cat([st.splice, fb]), m, n, is_final)
            else:
                st.splice = torch.cat([st.splice, fb])
                out = fb.new_zeros(0, m * fb.size(1))
        elif is_final and st.splice is not None:
            out, st.splice = online_lfr(st.splice, m, n, True)
        if out is None:
            out = torch.zeros(0, m * cfg.n_mels, device=chunk.device)
        if self.frontend.cmvn is not None and out.size(0):
            out = apply_cmvn(out, self.frontend.cmvn)
        return out


# --- the stream ------------------------------------------------------------------------------------------------


class Stream:
    """One audio stream decoded chunk by chunk (create with Recognizer.stream). Not thread-safe."""

    def __init__(self, engine: "StreamingEngine", chunk: ChunkConfig):
        self._engine = engine
        self.chunk = chunk
        dev = engine.device
        self._buffer = torch.zeros(0, device=dev)
        self._state: StreamState = engine.model.new_state(chunk, dev)
        self._fstate = engine.features.new_state(dev)
        self._finishing = False
        self.finished = False
        self.samples_in = 0
        self.token_ids: list[int] = []
        self.timestamps: list[list[int]] = []
        self._reported = 0
        self.chunks_decoded = 0
        self._texts: list[str] = []
        self.chunk_results: list = []  # per decoded chunk: model.streaming.ChunkResult (kept for inspection)
        self.keep_encoder_out = False

    # --- input ---

    @property
    def stride(self) -> int:
        """Samples per model chunk: chunk_size[1] · 960 at 16 kHz (FunASR's constant)."""
        return self.chunk.chunk_size[1] * self._engine.frame_samples

    def accept(self, samples, sample_rate: int, *, decode: bool = True) -> "Stream":
        """Append samples (1-D float array or tensor in [-1, 1], at the model's rate). Every complete chunk is
        decoded now (decode=False: only buffered, for Recognizer.decode_streams to batch)."""
        if self.finished or self._finishing:
            raise StreamError("accept() after finish(): this stream is closed; start a new one with asr.stream()")
        want = self._engine.sample_rate
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise TypeError(f"sample_rate must be an int (Hz), got {sample_rate!r}")
        if int(sample_rate) != want:
            raise ValueError(f"sample_rate {sample_rate} Hz differs from the model's {want} Hz; resample first, e.g. "
                             f"paraformer_ext.audio.resample(torch.as_tensor(samples), {sample_rate}, {want}) "
                             f"(or audio.StreamResampler({sample_rate}, {want}) for a live source)")
        x = _as_samples(samples)
        self._buffer = torch.cat([self._buffer, x.to(self._buffer.device)])
        self.samples_in += x.numel()
        if decode:
            self._engine.decode_streams([self])
        return self

    def finish(self, *, decode: bool = True) -> dict:
        """End of input: decode the rest (FunASR's is_final chunk). Returns result() (decode=False: marks the
        stream, Recognizer.decode_streams decodes it)."""
        if self.finished:
            raise StreamError("finish() called twice")
        self._finishing = True
        if decode:
            self._engine.decode_streams([self])
        return self.result()

    def _next_chunk(self) -> tuple[torch.Tensor, bool] | None:
        """The next model chunk (samples, is_final), removed from the buffer; None when none is ready."""
        if self.finished:
            return None
        if self._buffer.numel() >= self.stride:
            c, self._buffer = self._buffer[: self.stride], self._buffer[self.stride:]
            return c, False
        if self._finishing:
            c, self._buffer = self._buffer, self._buffer[:0]
            return c, True
        return None

    @property
    def ready(self) -> bool:
        """A chunk is waiting to be decoded."""
        return not self.finished and (self._buffer.numel() >= self.stride or self._finishing)

    # --- output ---

    def _add(self, res, final: bool) -> None:
        ms = self._engine.frame_ms
        end_audio = int(round(self.samples_in * 1000 / self._engine.sample_rate))
        for tid, fr in zip(res.token_ids, res.fire_frames):
            start = self.timestamps[-1][1] if self.timestamps else 0
            end = min(max((fr + 1) * ms, start), max(end_audio, start))
            self.token_ids.append(tid)
            self.timestamps.append([start, end])
        # FunASR's text of the chunk (sentence_postprocess of its tokens alone: an "@@" piece without a latin
        # token after it in the same chunk is dropped); the stream's text is their concatenation, as FunASR's
        # clients show it
        res.text, _, _ = sentence_postprocess(self._engine.tokens.ids_to_tokens(res.token_ids))
        self._texts.append(res.text)
        self.chunks_decoded += 1
        self.chunk_results.append(res)
        if final:
            self.finished = True

    @property
    def text(self) -> str:
        """The text so far: the chunks' FunASR texts, concatenated."""
        return "".join(self._texts)

    def partial(self) -> dict:
        """{"text": the text so far, "new_tokens": [{"token", "id", "start", "end"} (ms)] since the last call,
        "is_final": whether the stream has ended}."""
        toks = self._engine.tokens.ids_to_tokens(self.token_ids[self._reported:])
        new = [{"token": t, "id": i, "start": s[0], "end": s[1]}
               for t, i, s in zip(toks, self.token_ids[self._reported:], self.timestamps[self._reported:])]
        self._reported = len(self.token_ids)
        return {"text": self.text, "new_tokens": new, "is_final": self.finished}

    def result(self) -> dict:
        """{"text", "token_ids", "timestamp": [[start_ms, end_ms] per token]} of everything decoded so far."""
        return {"text": self.text, "token_ids": list(self.token_ids), "timestamp": [list(t) for t in self.timestamps]}


def _as_samples(samples) -> torch.Tensor:
    if isinstance(samples, np.ndarray):
        if not np.issubdtype(samples.dtype, np.floating):
            raise TypeError(f"samples must be float in [-1, 1], got a {samples.dtype} array; for int16 PCM pass "
                            "samples.astype(np.float32) / 32768")
        samples = torch.from_numpy(np.ascontiguousarray(samples))
    elif isinstance(samples, (list, tuple)):
        samples = torch.tensor(samples, dtype=torch.float32)
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"samples must be a 1-D numpy array or torch tensor of floats, got {type(samples).__name__}")
    if not samples.is_floating_point():
        raise TypeError(f"samples must be float in [-1, 1], got {samples.dtype}; for int16 PCM pass "
                        "samples.float() / 32768")
    if samples.dim() != 1:
        raise ValueError(f"samples must be 1-D (mono), got shape {tuple(samples.shape)}; mix channels down first "
                         "(e.g. samples.mean(axis=0) for (channels, N))")
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("samples contain NaN or infinite values")
    return samples.detach().to(torch.float32)


class StreamingEngine:
    """Frontend + streaming model + tokens, shared by every stream of a Recognizer."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.model = StreamingParaformer(pipeline.model)
        self.tokens = pipeline.tokens
        self.device = pipeline.device
        fcfg = pipeline.frontend.cfg
        self.sample_rate = fcfg.fs
        self.frame_samples = fcfg.lfr_n * fcfg.window_shift  # 960 at 16 kHz: FunASR's chunk unit
        self.frame_ms = fcfg.lfr_n * fcfg.frame_shift
        self.features = _Features(pipeline.frontend, pipeline.model.cfg.frontend_class == "WavFrontendOnline")

    def stream(self, chunk: ChunkConfig) -> Stream:
        return Stream(self, chunk)

    @torch.no_grad()
    def decode_streams(self, streams: list[Stream]) -> int:
        """Decode every ready chunk of these streams, one batched model step per round (streams with the same
        chunk configuration share a step). Returns the number of steps run."""
        for s in streams:
            if not isinstance(s, Stream) or s._engine is not self:
                raise TypeError("decode_streams: every stream must come from this recognizer's stream()")
        steps = 0
        while True:
            ready = [s for s in streams if s.ready]
            if not ready:
                return steps
            groups: dict = {}
            for s in ready:
                groups.setdefault(s.chunk, []).append(s)
            for chunk, group in groups.items():
                self._step(group, chunk)
                steps += 1

    def _step(self, group: list[Stream], chunk: ChunkConfig) -> None:
        taken = [s._next_chunk() for s in group]
        final = [f for _, f in taken]
        tail = [f and c.numel() < self.frame_samples for c, f in taken]  # FunASR's tail chunk: no frontend
        feats: list = [None] * len(group)
        idx = [b for b in range(len(group)) if not tail[b]]
        if idx:
            got = self.features([taken[b][0] for b in idx], [group[b]._fstate for b in idx], [final[b] for b in idx])
            for b, f in zip(idx, got):
                feats[b] = f
        # a non-tail chunk without frames (WavFrontendOnline still waiting for a whole LFR window) is not decoded;
        # FunASR would fail on it (it cannot happen with chunks of >= 960 samples at 16 kHz)
        run = [b for b in range(len(group)) if tail[b] or feats[b].size(0) > 0]
        for b in range(len(group)):
            if b not in run and final[b]:
                group[b].finished = True
        if not run:
            return
        results = self.model.step([feats[b] for b in run], [group[b]._state for b in run], [final[b] for b in run],
                                  chunk, keep_encoder_out=any(group[b].keep_encoder_out for b in run))
        for b, r in zip(run, results):
            group[b]._add(r, final[b])
