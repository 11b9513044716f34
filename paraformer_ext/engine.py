"""The batched inference engine: many files or arrays → results, fast and in bounded memory.

Plan, then run:
* every input becomes one or more segments (the whole input, or VAD speech segments / fixed windows when it
  is longer than `long_audio_s`); only lengths are known at planning time (file headers), audio is read
  lazily, batch by batch, so host memory does not grow with the number of files;
* segments are sorted by length and packed into batches under a padded-frame budget (`max_batch_frames`
  LFR frames including padding, at most `max_batch_size` segments), and on CPU under a padding share
  (`max_padding`): there every padded frame costs as much as a real one, and one utterance already fills the
  GEMMs, so a batch that is half padding runs at half speed;
* a batch is read into pinned memory, copied without blocking, and runs frontend → encoder → predictor/CIF
  → decoder on the device; weights stay resident in the model's dtype;
* a CUDA out-of-memory error splits the batch in two and retries;
* results stream out as inputs complete (`Engine.run` yields (index, result)); the model gives every item
  of a padded batch its batch-1 result, so batching never changes a transcript.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .audio import AudioError, load_audio, read_audio_range, audio_num_samples
from .hotwords import HotwordGraph
from .pipeline import Pipeline
from .results import Result


@dataclass
class EngineOptions:
    """max_batch_frames: padded LFR frames per batch (None: 12,000 on CUDA, 3,000 on CPU); max_batch_size: segments
    per batch; max_padding: the largest share of padded frames a batch may hold (None: 0.1 on CPU, no limit on
    CUDA; 1.0 turns it off); long_audio_s: inputs longer than this are cut (VAD segments, else fixed windows of
    window_s)."""

    max_batch_frames: int | None = None
    max_batch_size: int = 256
    max_padding: float | None = None
    long_audio_s: float = 20.0
    segmenter: str = "vad"  # "vad" | "window" | "none"
    window_s: float = 30.0
    timestamps: bool = False
    hotwords: HotwordGraph | None = None  # compiled by Pipeline.compile_hotwords; None: greedy decoding
    progress: bool = False
    profile: bool = False
    vad_model_dir: str | None = None


@dataclass
class Source:
    """One input: a file path (read lazily) or an in-memory waveform, at `sample_rate` (the model's)."""

    index: int
    key: str
    path: str | None
    wave: torch.Tensor | None
    num_samples: int  # at sample_rate
    sample_rate: int
    error: str | None = None

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.wave is not None:
            return self.wave[start:stop]
        return read_audio_range(self.path, start, stop, target_sr=self.sample_rate)


@dataclass
class Segment:
    src: Source
    part: int
    start: int
    stop: int

    @property
    def num_samples(self) -> int:
        return self.stop - self.start


@dataclass
class _Pending:
    parts: int
    segments: list = field(default_factory=list)
    results: dict = field(default_factory=dict)


def key_for(item, index: int) -> str:
    """FunASR's key: the file name without extension; arrays get array_<index>."""
    if isinstance(item, (str, os.PathLike)):
        name = Path(item).name
        return name.split(".")[0] if name else str(item)
    return f"array_{index}"


class StageTimer:
    """Wall time per stage, synchronising the device at each mark when profiling."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device, self.enabled = device, enabled
        self.totals: dict[str, float] = defaultdict(float)
        self._t = time.perf_counter()

    def mark(self, stage: str) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.totals[stage] += now - self._t
        self._t = now

    def restart(self) -> None:
        if self.enabled and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t = time.perf_counter()


class Engine:
    """Inputs → results over one Pipeline (pipeline.py), the only thing of the model it uses."""

    def __init__(self, pipeline: Pipeline, options: EngineOptions | None = None):
        self.pipeline = pipeline
        self.opt = options or EngineOptions()
        self.device = pipeline.device
        self.sample_rate = pipeline.sample_rate
        if self.opt.max_batch_frames is None:
            self.opt.max_batch_frames = 12000 if self.device.type == "cuda" else 3000
        if self.opt.max_batch_frames < 1 or self.opt.max_batch_size < 1:
            raise ValueError("max_batch_frames and max_batch_size must be >= 1")
        if self.opt.max_padding is None:
            # measured on 2 CPU threads, large preset, 150 s of 2-20 s utterances: 1.3x less CPU time and 1.5x
            # less wall time than no limit; CUDA keeps whole batches until it is measured there
            self.opt.max_padding = 0.1 if self.device.type == "cpu" else 1.0
        if not 0.0 <= self.opt.max_padding <= 1.0:
            raise ValueError(f"max_padding must be in [0, 1], got {self.opt.max_padding}")
        if self.opt.segmenter not in ("vad", "window", "none"):
            raise ValueError(f"segmenter must be 'vad', 'window' or 'none', got {self.opt.segmenter!r}")
        self.timer = StageTimer(self.device, self.opt.profile)
        self.oom_splits = 0
        self._vad = None
        self._vad_warned = False

    # --- planning --------------------------------------------------------------------------------------

    def _source(self, item, index: int, key: str, sample_rate: int | None) -> Source:
        sr, min_samples = self.sample_rate, self.pipeline.min_samples
        try:
            if isinstance(item, (str, os.PathLike)):
                n = audio_num_samples(item, target_sr=sr)
                src = Source(index, key, os.fspath(item), None, n, sr)
            else:
                w = load_audio(item, sample_rate=sample_rate, target_sr=sr)
                src = Source(index, key, None, w, w.numel(), sr)
            if src.num_samples < min_samples:
                what = src.path or "array input"
                raise AudioError(
                    f"{what}: audio is {src.num_samples} samples ({1000 * src.num_samples / sr:.1f} ms at {sr} Hz), "
                    f"shorter than one {1000 * min_samples / sr:g} ms analysis frame ({min_samples} samples); "
                    "nothing to transcribe"
                )
            return src
        except AudioError as e:
            return Source(index, key, None, None, 0, sr, error=str(e))

    def _vad_model(self):
        if self._vad is None:
            from .vad import FsmnVad

            self._vad = FsmnVad.load(self.opt.vad_model_dir, device=self.device, kernels=self.pipeline.kernels)
        return self._vad

    def _vad_spans(self, src: Source) -> list[tuple[int, int]] | None:
        """Speech segments in samples at the model's rate, or None (with a warning) when the VAD cannot run."""
        from .vad.weights import VadWeightsError

        sr, n = self.sample_rate, src.num_samples
        try:
            vad = self._vad_model()
        except (OSError, VadWeightsError, ValueError) as e:
            if not self._vad_warned:
                self._vad_warned = True
                warnings.warn(f"the FSMN-VAD could not be loaded ({e}); long inputs are cut into fixed "
                              f"{self.opt.window_s:g} s windows instead, which may cut words. Fix the VAD model "
                              "(vad_model_dir / --vad-model-dir), or choose segmenter='window' to silence this.",
                              RuntimeWarning, stacklevel=4)
            return None
        # the VAD works at 16 kHz: files are read at its rate, arrays resampled from the model's
        if src.path is not None:
            found = vad.segments(src.path)
        else:
            found = vad.segments(src.wave, sample_rate=sr)
        return [(s * sr // 1000, min(n, e * sr // 1000)) for s, e in found]

    def cut(self, src: Source) -> tuple[list[Segment], list[list[int]]]:
        """The segments one input is recognized in, and their spans [[start_ms, end_ms], ...] (empty when the
        input is recognized whole: not longer than long_audio_s, or segmenter "none"). The server cuts its
        connections' utterances with this, so that they are cut exactly as `transcribe` cuts files."""
        n, sr = src.num_samples, self.sample_rate
        if n <= self.opt.long_audio_s * sr or self.opt.segmenter == "none":
            return [Segment(src, 0, 0, n)], []
        spans = self._vad_spans(src) if self.opt.segmenter == "vad" else None
        if spans is None:
            w = int(self.opt.window_s * sr)
            spans = [(s, min(n, s + w)) for s in range(0, n, w)]
        spans = [(s, e) for s, e in spans if e - s >= self.pipeline.min_samples]
        return [Segment(src, i, s, e) for i, (s, e) in enumerate(spans)], [[s * 1000 // sr, e * 1000 // sr] for s, e in spans]

    def _segments(self, src: Source, pending: _Pending) -> list[Segment]:
        segs, pending.segments = self.cut(src)
        return segs

    def plan(self, segments: Sequence[Segment]) -> list[list[Segment]]:
        """Longest first, packed under the padded-frame budget and the padding share."""
        order = sorted(segments, key=lambda s: s.num_samples, reverse=True)
        batches: list[list[Segment]] = []
        cur: list[Segment] = []
        cur_max = cur_real = 0
        for seg in order:
            t = self.pipeline.feature_frames(seg.num_samples)
            if cur:
                padded = (len(cur) + 1) * max(cur_max, t)
                if (padded > self.opt.max_batch_frames or len(cur) >= self.opt.max_batch_size
                        or padded - cur_real - t > self.opt.max_padding * padded):
                    batches.append(cur)
                    cur, cur_max, cur_real = [], 0, 0
            cur.append(seg)
            cur_max = max(cur_max, t)
            cur_real += t
        if cur:
            batches.append(cur)
        return batches

    # --- running ---------------------------------------------------------------------------------------

    def _read_batch(self, batch: Sequence[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([s.num_samples for s in batch], dtype=torch.long)
        pin = self.device.type == "cuda"
        host = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32, pin_memory=pin)
        for i, s in enumerate(batch):
            host[i, : s.num_samples] = s.src.read(s.start, s.stop)
        return host.to(self.device, non_blocking=True), lengths.to(self.device, non_blocking=True)

    def _run_batch(self, batch: Sequence[Segment], hotwords=None) -> list[Result]:
        self.timer.restart()
        wave, lengths = self._read_batch(batch)
        self.timer.mark("read")
        return self.pipeline.recognize(wave, lengths, timestamps=self.opt.timestamps, timer=self.timer,
                                       hotwords=self.opt.hotwords if hotwords is None else hotwords)

    def run_batch(self, batch: Sequence[Segment], hotwords: Sequence[HotwordGraph | None] | None = None) -> list[Result]:
        """One batch of `plan` → one result per segment (a CUDA out-of-memory error splits it and retries).
        hotwords: one graph (or None) per segment, for callers whose inputs have different lists (the server);
        None: the engine's own (options.hotwords) for every segment."""
        return self._run_with_oom_split(batch, None if hotwords is None else list(hotwords))

    def _run_with_oom_split(self, batch: Sequence[Segment], hotwords: list | None = None) -> list[Result]:
        try:
            return self._run_batch(batch, hotwords)
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) == 1:
                raise
            self.oom_splits += 1
            half = len(batch) // 2
            lo, hi = (None, None) if hotwords is None else (hotwords[:half], hotwords[half:])
            return self._run_with_oom_split(batch[:half], lo) + self._run_with_oom_split(batch[half:], hi)

    def run(self, inputs: Sequence, keys: Sequence[str] | None = None,
            sample_rate: int | None = None) -> Iterator[tuple[int, Result]]:
        """Yield (input index, result) as inputs complete (results.Result: {"key", "text", "token_ids"}
        (+ "timestamp"), plus "segments" when the input was cut; {"key", "error"} when it could not be read).
        sample_rate: the rate of array inputs (None: the model's); files carry theirs."""
        keys = list(keys) if keys is not None else [key_for(x, i) for i, x in enumerate(inputs)]
        pending: dict[int, _Pending] = {}
        segments: list[Segment] = []
        total_s = 0.0
        for i, item in enumerate(inputs):
            src = self._source(item, i, keys[i], sample_rate)
            if src.error is not None:
                yield i, {"key": src.key, "error": src.error}
                continue
            p = _Pending(0)
            try:
                segs = self._segments(src, p)
            except AudioError as e:
                yield i, {"key": src.key, "error": str(e)}
                continue
            p.parts = len(segs)
            pending[i] = p
            total_s += src.num_samples / self.sample_rate
            if not segs:  # a long input with no speech: an empty result, not an error
                pending.pop(i)
                yield i, self._assemble(src, p)
                continue
            segments.extend(segs)
        bar = None
        if self.opt.progress:
            from tqdm import tqdm

            bar = tqdm(total=round(total_s, 1), unit="s", desc="audio", dynamic_ncols=True, leave=True)
        files_done = 0
        for batch in self.plan(segments):
            try:
                results = self._run_with_oom_split(batch)
            except AudioError as e:  # a file that fails mid-way (truncated, changed): report it, go on
                results = [e] * len(batch)
            for seg, r in zip(batch, results):
                i = seg.src.index
                if i not in pending:
                    continue
                p = pending[i]
                if isinstance(r, AudioError):
                    pending.pop(i)
                    yield i, {"key": seg.src.key, "error": str(r)}
                    continue
                p.results[seg.part] = r
                if bar is not None:
                    bar.update(round(seg.num_samples / self.sample_rate, 1))
                if len(p.results) == p.parts:
                    pending.pop(i)
                    files_done += 1
                    if bar is not None:
                        bar.set_postfix(files=files_done)
                    yield i, self._assemble(seg.src, p)
        if bar is not None:
            bar.close()

    def _assemble(self, src: Source, p: _Pending) -> Result:
        return self.assemble(src.key, [p.results[k] for k in sorted(p.results)], p.segments)

    def assemble(self, key: str, parts: Sequence[Result], spans: Sequence[Sequence[int]],
                 hotwords: bool | None = None) -> Result:
        """Join the segments of one input as FunASR's VAD pipeline does: texts joined by a space,
        timestamps offset by the segment start (ms). spans: `cut`'s (empty for an input recognized whole).
        hotwords: whether the input was decoded with a graph (its result then has "hotwords", maybe empty);
        None: whether the engine's own options.hotwords is set."""
        if len(parts) == 1 and not spans:
            return {"key": key, **parts[0]}
        starts = [s for s, _ in spans] if spans else [0] * len(parts)
        out = {"key": key, "text": " ".join(r["text"] for r in parts if r["text"]), "token_ids": []}
        if self.opt.timestamps:
            out["timestamp"] = []
        if hotwords is None:
            hotwords = self.opt.hotwords is not None
        if hotwords:
            out["hotwords"] = []
        for r, off in zip(parts, starts):
            shift = len(out["token_ids"])  # a segment's hotword spans index its own token ids
            out["token_ids"].extend(r["token_ids"])
            if self.opt.timestamps:
                out["timestamp"].extend([[a + off, b + off] for a, b in r["timestamp"]])
            for h in r.get("hotwords", ()):
                h = dict(h, start=h["start"] + shift, end=h["end"] + shift)
                if "timestamp" in h:
                    h["timestamp"] = [h["timestamp"][0] + off, h["timestamp"][1] + off]
                out["hotwords"].append(h)
        out["segments"] = [list(x) for x in spans]
        return out
