"""The recognition worker: one thread that batches the speech of every connection on the engine.

Connections submit jobs (an utterance or one speech segment, as a 1-D waveform at the model's rate) from the
event loop; the thread takes what has arrived, waits at most `max_wait_s` for more while the padded-frame
budget is not full, cuts each job as `transcribe` cuts a file (Engine.cut: long audio into VAD segments),
packs all segments with Engine.plan, runs the batches, and resolves each job's asyncio future on its loop.
A job may carry a compiled hotword graph (its connection's list): a batch then decodes each segment with its
own job's graph (Pipeline.decode with one graph per item), and a batch where no job has one is decoded exactly
as before hotwords existed.

One thread, because the model already uses every core for one batch, and a batch of many connections' segments
is cheaper than the same segments one by one: that is the point of the server. Recognition never runs on the
event loop, which only moves bytes and JSON.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from ..engine import Engine, Source
from ..hotwords import HotwordGraph

log = logging.getLogger("paraformer_ext.server")


@dataclass
class Job:
    wave: torch.Tensor  # 1-D float32 at the model's rate
    cut: bool  # True: cut like a file (long audio → VAD segments); False: one segment as it is
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    key: str = "utt"
    hotwords: HotwordGraph | None = None  # the utterance's compiled list (Server.hotword_graph); None: greedy
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class StreamJob:
    """Samples for one connection's streaming-model Stream (online partials). The worker feeds them and steps
    every stream of a gather together (Recognizer.decode_streams); the future resolves to the texts of the
    chunks this job's samples completed (FunASR's per-chunk text, "" for a chunk without tokens)."""

    stream: object  # stream.Stream; touched only in the worker thread once created
    samples: torch.Tensor  # 1-D float32 at the model's rate (may be empty)
    finish: bool  # the end of the stream: decode the rest (FunASR's is_final chunk)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class JobResult:
    """The engine's assembled result, and the per-segment results and spans (ms) it was made of."""

    result: dict
    parts: list
    spans: list


class RecognitionWorker:
    def __init__(self, engine: Engine, max_wait_s: float = 0.02, online=None):
        self.engine = engine
        self.online = online  # a streaming Recognizer (--online-model): StreamJobs are stepped with it
        self.max_wait_s = max_wait_s
        self.budget = engine.opt.max_batch_frames
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="recognition-worker", daemon=True)
        self.batches = 0  # counters, for the benchmark and the tests
        self.segments = 0
        self.stream_steps = 0  # batched streaming-model steps, and the streams they stepped
        self.stream_items = 0
        # tests set this to a callable(list[Job]) that may raise, to check that a failure inside recognition
        # reaches the clients of that batch only
        self.fault_hook = None
        self._stopped = False

    def start(self) -> "RecognitionWorker":
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._q.put(None)
            self._thread.join()

    def pending(self) -> int:
        return self._q.qsize()

    def submit(self, wave: torch.Tensor, *, cut: bool, key: str = "utt",
               hotwords: HotwordGraph | None = None) -> asyncio.Future:
        """From the event loop: recognize `wave` (biased by `hotwords`, a compiled graph); the future resolves to
        a JobResult (or an exception)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._stopped:
            fut.set_exception(RuntimeError("the server is shutting down"))
            return fut
        self._q.put(Job(wave, cut, fut, loop, key, hotwords))
        return fut

    def submit_stream(self, stream, samples: torch.Tensor, *, finish: bool = False) -> asyncio.Future:
        """From the event loop: feed `samples` to `stream` (finish: then end it); the future resolves to the list
        of the texts of the chunks decoded (or an exception)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._stopped:
            fut.set_exception(RuntimeError("the server is shutting down"))
            return fut
        self._q.put(StreamJob(stream, samples, finish, fut, loop))
        return fut

    # --- the thread ------------------------------------------------------------------------------------

    def _frames(self, job) -> int:
        # a stream job costs its chunks' frames (a step is cheap beside an offline batch of the same audio)
        n = job.samples.numel() if isinstance(job, StreamJob) else job.wave.numel()
        return self.engine.pipeline.feature_frames(n) if n else 0

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        jobs, frames = [first], self._frames(first)
        deadline = time.perf_counter() + self.max_wait_s
        stop = False
        while frames < self.budget:
            try:
                job = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            frames += self._frames(job)
        return jobs, stop

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        # each round in its own call: nothing of a finished round (a connection's stream, audio) stays referenced
        # by this frame while the thread waits for the next job
        while not self._round(self._q.get()):
            pass
        # what is still queued at shutdown gets an answer rather than a hang
        while True:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _resolve(job, exc=RuntimeError("the server is shutting down"))

    def _round(self, first) -> bool:
        """One gather and its work; True when the worker is to stop."""
        if first is None:
            return True
        jobs, stop = self._gather(first)
        streams = [j for j in jobs if isinstance(j, StreamJob)]
        if streams:
            self._step_streams(streams)
        self._recognize([j for j in jobs if not isinstance(j, StreamJob)])
        return stop

    def _step_streams(self, jobs: list[StreamJob]) -> None:
        """Feed every job's samples to its stream (in arrival order), then decode all ready chunks of all these
        streams together: one batched model step per round and chunk configuration (decode_streams). Each
        stream's new chunk texts go to its last job of this gather (the earlier ones get []), so a connection's
        ordered output still carries them in order. A failure fails the jobs of that chunk configuration only."""
        live: dict[int, list[StreamJob]] = {}
        for job in jobs:
            if job.future.cancelled():
                continue  # the connection went away: its stream is dropped with it
            s = job.stream
            try:
                if job.samples.numel():
                    s.accept(job.samples, self.online.pipeline.sample_rate, decode=False)
                if job.finish:
                    s.finish(decode=False)
            except Exception as e:
                _resolve(job, exc=e)
                continue
            live.setdefault(id(s), []).append(job)
        groups: dict = {}
        for js in live.values():
            groups.setdefault(js[0].stream.chunk, []).append(js)
        for group in groups.values():
            streams = [js[0].stream for js in group]
            before = [len(s.chunk_results) for s in streams]
            try:
                if self.fault_hook is not None:
                    self.fault_hook([j for js in group for j in js])
                self.stream_steps += self.online.decode_streams(streams)
                self.stream_items += len(streams)
            except Exception as e:
                log.exception("streaming step failed for %d streams", len(streams))
                for js in group:
                    for j in js:
                        _resolve(j, exc=e)
                continue
            for s, b, js in zip(streams, before, group):
                texts = [r.text for r in s.chunk_results[b:]]
                del s.chunk_results[:]  # kept by Stream for inspection; a server stream may run for hours
                for j in js[:-1]:
                    _resolve(j, [])
                _resolve(js[-1], texts)

    def _recognize(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        eng, sr = self.engine, self.engine.sample_rate
        cuts, segments = {}, []
        for i, job in enumerate(jobs):
            if job.future.cancelled():
                continue
            src = Source(i, job.key, None, job.wave, job.wave.numel(), sr)
            try:
                segs, spans = eng.cut(src) if job.cut else ([eng_segment(src)], [])
            except Exception as e:  # a VAD failure on one job fails that job only
                _resolve(job, exc=e)
                continue
            cuts[i] = (segs, spans, {})
            segments.extend(segs)
        done: dict[int, list] = {}
        try:
            if self.fault_hook is not None:
                self.fault_hook([jobs[i] for i in cuts])
            for batch in eng.plan(segments):
                graphs = [jobs[seg.src.index].hotwords for seg in batch]
                # no graph in the batch: not even a list of Nones, so the path is the one without hotwords
                results = eng.run_batch(batch, graphs if any(g is not None for g in graphs) else None)
                self.batches += 1
                self.segments += len(batch)
                for seg, r in zip(batch, results):
                    done.setdefault(seg.src.index, {})[seg.part] = r
        except Exception as e:
            log.exception("recognition failed for a batch of %d jobs", len(cuts))
            for i in cuts:
                _resolve(jobs[i], exc=e)
            return
        for i, (segs, spans, _) in cuts.items():
            got = done.get(i, {})
            parts = [got[k] for k in sorted(got)]
            res = eng.assemble(jobs[i].key, parts, spans, hotwords=jobs[i].hotwords is not None)
            ms_spans = spans or [[0, jobs[i].wave.numel() * 1000 // sr]]
            abs_parts = [_offset(r, s) for r, (s, _) in zip(parts, ms_spans)] if spans else parts
            _resolve(jobs[i], JobResult(res, abs_parts, ms_spans))


def eng_segment(src: Source):
    from ..engine import Segment

    return Segment(src, 0, 0, src.num_samples)


def _offset(r: dict, off: int) -> dict:
    if "timestamp" not in r:
        return r
    return {**r, "timestamp": [[a + off, b + off] for a, b in r["timestamp"]]}


def _resolve(job: Job, value=None, exc: BaseException | None = None) -> None:
    def set_it():
        if job.future.done():
            return  # the connection went away and cancelled it
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(value)

    try:
        job.loop.call_soon_threadsafe(set_it)
    except RuntimeError:  # the loop is closed: nobody is waiting
        pass
