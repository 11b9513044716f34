"""One websocket connection: the client's messages → utterances → jobs for the worker → result messages.

A connection holds at most one open utterance (from a first message to its end message). Its results leave
in order through one sender task, whatever order the worker finishes them in. Faults stay with the
connection: a bad message gets a JSON error (and, when the stream can no longer be understood, a close with
1008); an audio or recognition failure ends only that utterance, and the connection can start another.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging

import numpy as np
import torch
from websockets.exceptions import ConnectionClosed

from ..audio import AudioError, StreamResampler, _int_scale, load_audio
from .protocol import (ProtocolError, Utterance, end_ack, error_message, is_end_message, parse_first_message,
                       parse_message, result_message, stamp_sents)

log = logging.getLogger("paraformer_ext.server")

_ids = itertools.count(1)

# how much 16 kHz audio is gathered before the streaming VAD is called (it evaluates its network on 10 s
# blocks anyway, so smaller pieces only cost executor round trips)
VAD_PIECE = 8000


class _Item:
    """One entry of the ordered output: a pending recognition, or the end of an utterance."""

    def __init__(self, kind: str, utt: "_Stream | _Offline", fut=None, **meta):
        self.kind, self.utt, self.fut, self.meta = kind, utt, fut, meta


class _PcmReader:
    """Binary frames of 16-bit little-endian PCM, of any size: a byte left over waits for the next frame."""

    def __init__(self):
        self.carry = b""
        self.total = 0

    def accept(self, data: bytes) -> np.ndarray:
        if self.carry:
            data = self.carry + data
        n = len(data) // 2 * 2
        self.carry = data[n:]
        self.total += n // 2
        return np.frombuffer(data[:n], dtype="<i2")

    def end_warning(self) -> str | None:
        """What the end result says when the audio ended in the middle of a sample."""
        return "the audio ended with an odd byte (half a 16-bit sample); it was dropped" if self.carry else None


class _Offline:
    """An offline utterance: every byte is kept until the end message, then recognized as a whole file."""

    def __init__(self, conn: "Connection", u: Utterance, graph=None):
        self.conn, self.u, self.id, self.graph = conn, u, next(_ids), graph
        self.pcm = _PcmReader() if u.pcm else None
        self.chunks: list = []
        self.nbytes = 0
        self.errored = False

    async def audio(self, data: bytes) -> None:
        self.nbytes += len(data)
        if self.nbytes > self.conn.server.opt.max_offline_bytes:
            raise ProtocolError("too_long", f"offline audio over {self.conn.server.opt.max_offline_bytes} bytes; "
                                            "send shorter utterances or use mode 2pass")
        self.chunks.append(self.pcm.accept(data) if self.pcm is not None else data)

    async def end(self, is_end: bool) -> None:
        u, srv = self.u, self.conn.server
        warning = None
        try:
            if self.pcm is not None:
                warning = self.pcm.end_warning()
                samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
                # the whole utterance at once, as `transcribe` reads a file: same samples, same resampling
                wave = load_audio(samples, sample_rate=u.audio_fs, target_sr=srv.sample_rate) if samples.size else None
            else:
                wave = load_audio(b"".join(self.chunks), target_sr=srv.sample_rate)
            if wave is None or wave.numel() < srv.min_samples:
                n = 0 if wave is None else wave.numel()
                raise AudioError(f"the audio is {n} samples at {srv.sample_rate} Hz, shorter than one analysis frame "
                                 f"({srv.min_samples} samples); nothing to transcribe")
        except AudioError as e:
            self.chunks = []
            self.conn.enqueue(_Item("error", self, code="bad_audio", message=str(e)))
            self.conn.enqueue(_Item("end", self, is_end=is_end))
            return
        self.chunks = []
        fut = srv.worker.submit(wave, cut=True, key=u.wav_name, hotwords=self.graph)
        self.conn.enqueue(_Item("offline", self, fut, warning=warning))
        self.conn.enqueue(_Item("end", self, is_end=is_end))


class _Stream:
    """A 2pass or online utterance: the streaming VAD cuts the audio as it arrives; each speech segment is
    recognized when it ends, and the open one is re-decoded for partial results.

    With an online model (--online-model; `ostream`, a stream.Stream with the client's chunk_size) the partials
    come from that stream instead, as FunASR's python server makes them: the audio goes into it as it arrives
    (submitted to the worker a whole chunk at a time, where every connection's stream is stepped in one batch)
    and each decoded chunk's text is sent. online: one stream for the whole utterance, no VAD, finished at the
    end message; 2pass: the stream starts afresh where the VAD closes a segment (FunASR clears the online cache
    there) and is dropped unfinished at the end (FunASR does not send the final chunk's text in 2pass)."""

    def __init__(self, conn: "Connection", u: Utterance, graph=None, ostream=None):
        self.conn, self.u, self.id, self.graph = conn, u, next(_ids), graph
        self.ostream = ostream
        self.o_pending: list[torch.Tensor] = []  # samples not yet given to the worker for ostream
        self.o_pending_n = 0
        self.ending = False
        # online mode with a streaming model: the stream is everything (no VAD segments, no offline model)
        self.stream_only = ostream is not None and u.mode == "online"
        srv = conn.server
        self.sr = srv.sample_rate
        self.pcm = _PcmReader()
        self.rs = StreamResampler(u.audio_fs, self.sr) if u.audio_fs != self.sr else None
        self.vad = srv.vad.stream()
        self._chunks: list[torch.Tensor] = []  # samples [base, total) at self.sr, joined only when read
        self.base = 0
        self.total = 0
        self.pending: list[torch.Tensor] = []  # not yet given to the VAD
        self.pending_n = 0
        self.seg_no = 0  # segments decided so far (the open one's number)
        self.partial_busy = False
        self.last_partial = 0
        self.errored = False
        # the sender's side: partial text sent for segment `sent_seg`, and how many segments it has emitted
        self.sent = ""
        self.sent_seg = 0
        self.emitted = 0

    @property
    def buf(self) -> torch.Tensor:
        """The audio kept: from the end of the last decided segment to now. Frames are appended to a list and
        joined here, when a segment or a partial needs them (joining on every frame would copy the open
        segment again for each 60 ms frame)."""
        if len(self._chunks) != 1:
            self._chunks = [torch.cat(self._chunks) if self._chunks else torch.zeros(0)]
        return self._chunks[0]

    async def audio(self, data: bytes) -> None:
        x = torch.from_numpy(_int_scale(self.pcm.accept(data)))
        if self.rs is not None:
            x = self.rs.accept(x)
        await self._add(x)

    async def _add(self, x: torch.Tensor, final: bool = False) -> None:
        if self.ostream is not None and not final:
            self._feed_online(x)
        if self.stream_only:
            return
        if x.numel():
            self._chunks.append(x)
            self.total += x.numel()
            self.pending.append(x)
            self.pending_n += x.numel()
        if self.pending_n >= VAD_PIECE or final:
            piece = torch.cat(self.pending) if self.pending else torch.zeros(0)
            self.pending, self.pending_n = [], 0
            segs = await self.conn.server.in_vad_thread(self._vad_step, piece, final)
            for s, e in segs:
                self._segment(s, e)
        if not final:
            self._maybe_partial()

    def _feed_online(self, x: torch.Tensor, final: bool = False) -> None:
        if x.numel():
            self.o_pending.append(x)
            self.o_pending_n += x.numel()
        if self.o_pending_n >= self.ostream.stride or final:
            piece = torch.cat(self.o_pending) if self.o_pending else torch.zeros(0)
            self.o_pending, self.o_pending_n = [], 0
            fut = self.conn.server.worker.submit_stream(self.ostream, piece, finish=final)
            self.conn.enqueue(_Item("stream", self, fut, seg_no=self.seg_no, final=final))

    def _vad_step(self, piece: torch.Tensor, final: bool):
        out = self.vad.accept(piece) if piece.numel() else []
        return out + (self.vad.finish() if final else [])

    def _segment(self, s_ms: int, e_ms: int) -> None:
        # the engine's rule for VAD spans (Engine.cut), so a segment is the audio `transcribe` would cut
        s, e = s_ms * self.sr // 1000, min(self.total, e_ms * self.sr // 1000)
        if e - s >= self.conn.server.min_samples:
            wave = self.buf[max(0, s - self.base): e - self.base].clone()
            fut = self.conn.server.worker.submit(wave, cut=False, key=self.u.wav_name, hotwords=self.graph)
            self.conn.enqueue(_Item("segment", self, fut, span=[s_ms, e_ms], seg_no=self.seg_no))
        # audio before the end of a decided segment is never needed again: memory stays bounded by the
        # open segment (the VAD closes a segment after at most max_single_segment_time)
        cut = max(0, min(e, self.total) - self.base)
        self._chunks = [self.buf[cut:].clone()]
        self.base += cut
        self.seg_no += 1
        if self.ostream is not None and not self.ending:
            # FunASR's python server clears the online cache at a segment end: a fresh stream, fed from the end of
            # the segment (the VAD decides late, so the audio since then is already here); what the old stream
            # had not decoded is dropped with it
            self.ostream = self.conn.server.new_online_stream(self.u)
            self.o_pending, self.o_pending_n = [], 0
            self._feed_online(self._chunks[0])

    def _maybe_partial(self) -> None:
        if self.ostream is not None:
            return  # the online model's stream gives the partials
        srv = self.conn.server
        step = self.u.chunk_ms * self.sr // 1000
        if self.partial_busy or self.total - self.last_partial < step or self.total - self.base < srv.min_samples:
            return
        # the open segment re-decoded with the offline model (there is no streaming checkpoint); capped to
        # the last partial_max_s so a long segment costs a bounded decode per chunk
        cap = int(srv.opt.partial_max_s * self.sr)
        wave = self.buf[-cap:].clone()
        self.last_partial = self.total
        self.partial_busy = True
        # partials are biased too, or a hotword would appear only when its segment's final result replaces them
        fut = srv.worker.submit(wave, cut=False, key=self.u.wav_name, hotwords=self.graph)
        self.conn.enqueue(_Item("partial", self, fut, seg_no=self.seg_no))

    async def end(self, is_end: bool) -> None:
        tail = self.rs.finish() if self.rs is not None else torch.zeros(0)
        self.ending = True
        if self.stream_only:
            # FunASR's is_final chunk: the rest of the audio, decoded; its text ends the utterance
            self._feed_online(tail, final=True)
        else:
            self.ostream = None  # 2pass: the open segment's stream is not finished (its last text is not sent)
            try:
                await self._add(tail, final=True)
            except Exception as e:  # the VAD failing is this utterance's problem only
                log.exception("VAD failed")
                self.conn.enqueue(_Item("error", self, code="internal", message=f"voice activity detection failed: {e}"))
        self.ostream = None
        self.conn.enqueue(_Item("end", self, is_end=is_end, warning=self.pcm.end_warning()))


class Connection:
    def __init__(self, server, ws):
        self.server = server
        self.ws = ws
        self.utt: _Offline | _Stream | None = None
        self.had_utterance = False
        self._out: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._held: dict | None = None  # a 2pass-offline message waiting to learn whether it is the last

    def enqueue(self, item: _Item) -> None:
        self._out.put_nowait(item)

    def busy(self) -> bool:
        """Whether results asked for are not sent yet (shutdown waits for them)."""
        return self._out._unfinished_tasks > 0  # asyncio.Queue counts them for join(); no public getter

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg, ensure_ascii=False))

    async def run(self) -> None:
        sender = asyncio.create_task(self._sender())
        try:
            await self._receive()
        finally:
            # _receive returns when the connection is closed (by the client, or by us after a fatal error):
            # nobody is left to read what is still pending
            sender.cancel()
            if isinstance(self.utt, _Stream):
                self.utt.ostream = None  # the online stream goes with the connection (the worker skips its jobs)
            while not self._out.empty():
                item = self._out.get_nowait()
                if item is not None and item.fut is not None:
                    item.fut.cancel()

    async def _fail(self, code: str, message: str) -> None:
        """An error for this client only, then a close with 1008: after a malformed or unexpected message the
        rest of the stream cannot be understood. Results already asked for are sent first, in order."""
        await self._out.join()
        if self.utt is not None:
            self.utt.errored = True
        await self.send(error_message(code, message, self.utt.u if self.utt else None))
        self.utt = None
        await self.ws.close(1008, message[:120])

    async def _receive(self) -> None:
        idle = self.server.opt.idle_timeout_s or None
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.recv(), timeout=idle)
            except asyncio.TimeoutError:
                if self.busy():
                    continue  # the client is waiting for us, not idle
                await self._fail("idle", f"no message for {idle:g} s; closing")
                return
            except ConnectionClosed:
                return
            try:
                if isinstance(msg, str):
                    await self._text(msg)
                else:
                    await self._binary(msg)
            except ConnectionClosed:
                return
            except ProtocolError as e:
                await self._fail(e.code, str(e))
                return
            except Exception as e:  # a bug of ours must not take the other connections down
                log.exception("connection handler failed")
                await self._fail("internal", f"internal error: {type(e).__name__}: {e}")
                return

    async def _text(self, text: str) -> None:
        msg = parse_message(text)
        if is_end_message(msg):
            if self.utt is None:
                if self.had_utterance:
                    return  # a repeated end (funasr-client sends two): already answered
                raise ProtocolError("no_first_message", "an end message before any first message")
            utt, self.utt = self.utt, None
            await utt.end(bool(msg.get("is_end")))
            return
        u = parse_first_message(msg, self.server.hotwords)
        # compiling a new list costs ~50 ms per 1,000 words: not on the event loop, which serves every
        # connection; the VAD's single thread also keeps the graph cache single-threaded
        graph = await self.server.in_vad_thread(self.server.hotword_graph, u.hotwords) if u.hotwords else None
        ostream = self.server.new_online_stream(u)  # None in offline mode or without --online-model
        if self.utt is not None:
            # a new first message while one is open: FunASR clients reuse a connection this way; the open
            # utterance ends here as if its end message had come
            utt, self.utt = self.utt, None
            await utt.end(False)
        self.utt = _Offline(self, u, graph) if u.mode == "offline" else _Stream(self, u, graph, ostream)
        self.had_utterance = True

    async def _binary(self, data: bytes) -> None:
        if self.utt is None:
            if self.had_utterance:
                raise ProtocolError("no_first_message", "audio after the end message; send a first message to "
                                                        "start a new utterance")
            raise ProtocolError("no_first_message", "audio before the first message (a JSON object with mode, "
                                                    "wav_name, wav_format, audio_fs, ...)")
        await self.utt.audio(data)

    # --- output ------------------------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            item = await self._out.get()
            try:
                if item is None:
                    return
                await self._emit(item)
            except ConnectionClosed:
                pass  # the receive loop sees the close too and ends the connection
            finally:
                self._out.task_done()

    async def _flush_held(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            await self.send(held)

    async def _emit(self, item: _Item) -> None:
        utt, u = item.utt, item.utt.u
        # with a list, every result says which hotwords fired (maybe none), as transcribe's results do
        hot = utt.graph is not None
        if item.kind == "end":
            if utt.errored:
                return  # its error message was its final
            final = self._held
            self._held = None
            if final is None:
                mode = {"offline": "offline", "2pass": "2pass-offline", "online": "online"}[u.mode]
                final = result_message(u, mode, "", is_final=False, hotwords=[] if hot else None)
            if item.meta.get("warning"):
                final["warning"] = item.meta["warning"]
            final["is_final"] = not item.meta.get("is_end")
            await self.send(final)
            if item.meta.get("is_end"):
                await self.send(end_ack(u))
            return
        if utt.errored:
            if item.fut is not None:
                item.fut.cancel()
            return
        if item.kind == "error":
            await self._flush_held()
            utt.errored = True
            await self.send(error_message(item.meta["code"], item.meta["message"], u))
            return
        try:
            res = await item.fut
        except Exception as e:
            if item.kind == "partial":
                utt.partial_busy = False
                return  # a lost partial is not worth ending the utterance; its segment result will tell
            if item.kind == "stream" and u.mode == "2pass":
                return  # the same for a streaming step in 2pass: the segment's offline result follows
            await self._flush_held()
            utt.errored = True
            await self.send(error_message("internal", f"recognition failed: {e}", u))
            return
        if item.kind == "stream":
            # FunASR's online messages: each decoded chunk's text, when it has any; the last one of an online
            # utterance is held so that the end marks it is_final
            mode = "2pass-online" if u.mode == "2pass" else "online"
            msgs = [result_message(u, mode, t, is_final=False) for t in res if t]
            if not msgs:
                return
            await self._flush_held()
            if item.meta.get("final"):
                msgs, self._held = msgs[:-1], msgs[-1]
            for m in msgs:
                await self.send(m)
            return
        if item.kind == "partial":
            utt.partial_busy = False
            if item.meta["seg_no"] < utt.emitted:
                return  # its segment has ended meanwhile: the segment's own result supersedes it
            if utt.sent_seg != item.meta["seg_no"]:
                utt.sent, utt.sent_seg = "", item.meta["seg_no"]
            text = res.result["text"]
            if not text.startswith(utt.sent) or len(text) == len(utt.sent):
                return  # partials are increments (clients append them): send only what extends the last ones
            delta, utt.sent = text[len(utt.sent):], text
            await self._flush_held()
            await self.send(result_message(u, "2pass-online" if u.mode == "2pass" else "online", delta, is_final=False))
            return
        await self._flush_held()
        if item.kind == "offline":
            r = res.result
            msg = result_message(u, "offline", r["text"], is_final=False, timestamp=r.get("timestamp", []),
                                 sents=stamp_sents(res.parts, res.spans), hotwords=r.get("hotwords") if hot else None)
            if item.meta.get("warning"):
                msg["warning"] = item.meta["warning"]
            self._held = msg
            return
        # a segment
        s_ms, e_ms = item.meta["span"]
        part = res.parts[0]
        ts = [[a + s_ms, b + s_ms] for a, b in part.get("timestamp", [])]
        # start/end index this segment's tokens; times are absolute like the message's timestamp
        found = [_shift(h, s_ms) for h in part.get("hotwords", ())] if hot else None
        if u.mode == "2pass":
            self._held = result_message(u, "2pass-offline", part["text"], is_final=False, timestamp=ts,
                                        sents=stamp_sents([{**part, "timestamp": ts}], [[s_ms, e_ms]]),
                                        hotwords=found)
        else:
            # online: the increment over the partials already sent, when the full decode extends them
            text = part["text"]
            sent = utt.sent if utt.sent_seg == item.meta["seg_no"] else ""
            delta = text[len(sent):] if text.startswith(sent) else ""
            self._held = result_message(u, "online", delta, is_final=False, hotwords=found)
        utt.emitted = item.meta["seg_no"] + 1
        utt.sent, utt.sent_seg = "", utt.emitted


def _shift(h: dict, off_ms: int) -> dict:
    return {**h, "timestamp": [h["timestamp"][0] + off_ms, h["timestamp"][1] + off_ms]} if "timestamp" in h else h
