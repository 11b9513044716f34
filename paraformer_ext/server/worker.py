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
class JobResult:
    """The engine's assembled result, and the per-segment results and spans (ms) it was made of."""

    result: dict
    parts: list
    spans: list


class RecognitionWorker:
    def __init__(self, engine: Engine, max_wait_s: float = 0.02):
        self.engine = engine
        self.max_wait_s = max_wait_s
        self.budget = engine.opt.max_batch_frames
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="recognition-worker", daemon=True)
        self.batches = 0  # counters, for the benchmark and the tests
        self.segments = 0
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

    # --- the thread ------------------------------------------------------------------------------------

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        jobs, frames = [first], self.engine.pipeline.feature_frames(first.wave.numel())
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
            frames += self.engine.pipeline.feature_frames(job.wave.numel())
        return jobs, stop

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            first = self._q.get()
            if first is None:
                break
            jobs, stop = self._gather(first)
            self._recognize(jobs)
            if stop:
                break
        # what is still queued at shutdown gets an answer rather than a hang
        while True:
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _resolve(job, exc=RuntimeError("the server is shutting down"))

    def _recognize(self, jobs: list[Job]) -> None:
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
