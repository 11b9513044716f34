"""The server: a websockets (asyncio) listener, the recognition worker, the streaming VAD, the web page.

    from paraformer_ext.server import Server, ServerOptions
    srv = Server(recognizer, ServerOptions(port=10095))
    srv = Server(recognizer, options, online=load("paraformer-zh-streaming-dir"))  # streaming partials
    await srv.start(); ...; await srv.shutdown()

`paraformer-ext serve` (cli.py) runs `serve_forever`, which also turns SIGTERM / SIGINT into `shutdown`:
stop accepting, answer every utterance whose end message has arrived, then close every connection with 1001.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import signal
import ssl
import weakref
from dataclasses import dataclass

from websockets.asyncio.server import serve
from websockets.http11 import Response

from ..hotwords import DEFAULT_TOKEN_BONUS, HotwordGraph, HotwordList
from .connection import Connection
from .page import page_response
from .worker import RecognitionWorker

log = logging.getLogger("paraformer_ext.server")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 10095
    certfile: str | None = None
    keyfile: str | None = None
    hotword_file: str | None = None  # FunASR's format (`word weight` per line), for every connection
    hotword_cache_size: int = 256  # compiled hotword graphs kept (one per distinct merged list)
    max_connections: int = 256
    max_frame_bytes: int = 4 << 20  # larger binary frames close the connection with 1009
    max_offline_bytes: int = 400 << 20  # over an hour of 16 kHz pcm: bounds one offline utterance's memory
    idle_timeout_s: float = 120.0  # a connection silent this long is closed (0: never)
    max_wait_s: float = 0.02  # how long the worker waits for other connections' speech to fill a batch
    partial_max_s: float = 10.0  # 2pass/online partials re-decode at most this much of the open segment
    max_batch_frames: int | None = None  # the engine's padded-frame budget (None: its default)
    max_batch_size: int | None = None  # segments per batch (None: the engine's; 1: one at a time, for comparison)
    long_audio_s: float = 20.0  # offline utterances longer than this are cut by the VAD, as `transcribe` does
    drain_timeout_s: float = 30.0  # SIGTERM: how long in-flight work may take before connections are closed


def _select_subprotocol(connection, subprotocols):
    # FunASR's clients ask for "binary" (its python server requires it), browsers and others ask for
    # nothing: accept both rather than refuse either
    return "binary" if "binary" in subprotocols else None


def check_models(recognizer, online=None) -> None:
    """The server's models: an offline one (segments, offline mode, the re-decoded partials) and optionally a
    streaming one for the online/2pass partials; a clear error when either is the other kind."""
    if getattr(recognizer, "streaming", False):
        raise ValueError(f"--model {recognizer.model_dir or ''} is a streaming Paraformer (model: ParaformerStreaming): "
                         "the server needs an offline model there (for the offline and 2pass-offline results); "
                         "pass the streaming directory as --online-model")
    if online is None:
        return
    if not getattr(online, "streaming", False):
        raise ValueError(f"--online-model {online.model_dir or ''} is an offline Paraformer, not a streaming one: it needs "
                         "a directory whose config.yaml has model: ParaformerStreaming, such as paraformer-zh-streaming "
                         "(an offline model goes in --model)")
    if online.pipeline.sample_rate != recognizer.pipeline.sample_rate:
        raise ValueError(f"--online-model runs at {online.pipeline.sample_rate} Hz, --model at "
                         f"{recognizer.pipeline.sample_rate} Hz: the server needs both at the VAD's 16 kHz")


class Server:
    def __init__(self, recognizer, options: ServerOptions | None = None, vad=None, online=None):
        """recognizer: the offline model; online: a streaming one (load(streaming dir)) whose streams give the
        online/2pass partials; without it the open segment is re-decoded with the offline model."""
        self.opt = options or ServerOptions()
        check_models(recognizer, online)
        self.recognizer = recognizer
        self.online = online
        if online is not None:
            online._streaming_engine()  # built here, not lazily inside the worker thread
            # FunASR's python server's streams: weakly held here so tests (and stats) can see them go away
            self.online_streams = weakref.WeakSet()
        pipeline = recognizer.pipeline
        self.sample_rate = pipeline.sample_rate
        self.min_samples = pipeline.min_samples
        if self.sample_rate != 16000:
            raise ValueError(f"the server needs a 16 kHz model (the VAD's rate); this one is {self.sample_rate} Hz")
        eng = {"timestamps": True, "long_audio_s": self.opt.long_audio_s}
        if self.opt.max_batch_frames is not None:
            eng["max_batch_frames"] = self.opt.max_batch_frames
        if self.opt.max_batch_size is not None:
            eng["max_batch_size"] = self.opt.max_batch_size
        self.engine = recognizer.engine(**eng)
        if vad is None:
            from ..vad import FsmnVad

            # the streaming VAD runs on the CPU beside the event loop; the model may be on a GPU
            vad = FsmnVad.load(kernels=pipeline.kernels)
        self.vad = vad
        self.engine._vad = vad  # offline utterances over long_audio_s are cut by the same VAD
        # every connection's list starts from the recognizer's own (load(..., hotwords=)) and the --hotword file
        base = HotwordList(getattr(recognizer, "hotwords", None))
        self.hotwords = base.merged(HotwordList.read(self.opt.hotword_file)) if self.opt.hotword_file else base
        self.hotword_token_bonus = getattr(recognizer, "hotword_token_bonus", DEFAULT_TOKEN_BONUS)
        self._graphs: collections.OrderedDict = collections.OrderedDict()
        self.worker = RecognitionWorker(self.engine, self.opt.max_wait_s, online=online)
        # one thread for the streaming VAD of every connection: its state is per connection, its work is
        # small and it must not hold the event loop (hotword lists are compiled there too, for the same reason)
        self._vad_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vad")
        self.connections: set[Connection] = set()
        self._server = None
        self.port = self.opt.port

    def hotword_graph(self, hotwords: HotwordList) -> HotwordGraph | None:
        """The compiled graph of an utterance's merged list (None for an empty one: greedy decoding). Graphs are
        cached by the list's content, so the connections that send the same list (or none, with a --hotword
        file) share one graph and skip compiling it; the cache is bounded because clients choose the lists.
        Called in the VAD thread only (Connection), so the cache needs no lock."""
        if not hotwords:
            return None
        key = hotwords.items
        g = self._graphs.get(key)
        if g is None:
            g = self.recognizer.pipeline.compile_hotwords(hotwords, token_bonus=self.hotword_token_bonus)
            if g.skipped:
                log.info("hotwords skipped: %s", "; ".join(f"{w!r}: {why}" for w, why in g.skipped))
            self._graphs[key] = g
            while len(self._graphs) > self.opt.hotword_cache_size:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return g

    def new_online_stream(self, u):
        """A Stream of the online model for an utterance's chunk_size / look-backs (a ProtocolError for values
        the model cannot run). None without --online-model or in offline mode."""
        if self.online is None or u.mode == "offline":
            return None
        from .protocol import ProtocolError

        c0, c1, c2 = u.chunk_size
        if c1 > 100 or c0 > 100 or c2 > 100:
            raise ProtocolError("bad_request", f"chunk_size {list(u.chunk_size)}: the streaming model takes chunks of at "
                                               "most 100 (6 s) and look-back/look-ahead of at most 100 frames")
        if c0 + c2 < 1:
            raise ProtocolError("bad_request", f"chunk_size {list(u.chunk_size)}: the streaming model needs chunk_size[0] "
                                               "+ chunk_size[2] >= 1 (FunASR's clients send [5, 10, 5])")
        try:
            s = self.online.stream(chunk_size=list(u.chunk_size), encoder_look_back=u.encoder_look_back,
                                   decoder_look_back=u.decoder_look_back)
        except ValueError as e:
            raise ProtocolError("bad_request", f"chunk_size {list(u.chunk_size)}: {e}") from None
        self.online_streams.add(s)
        return s

    async def in_vad_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._vad_pool, fn, *args)

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.opt.certfile:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.opt.certfile, self.opt.keyfile or None)
        return ctx

    def _process_request(self, connection, request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return page_response(connection, request)

    async def _handler(self, ws) -> None:
        if len(self.connections) >= self.opt.max_connections:
            import json

            from .protocol import error_message

            msg = f"the server is at its limit of {self.opt.max_connections} connections; try again later"
            await ws.send(json.dumps(error_message("busy", msg)))
            await ws.close(1013, "try again later")
            return
        conn = Connection(self, ws)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    async def start(self) -> "Server":
        self.worker.start()
        self._server = await serve(
            self._handler, self.opt.host, self.opt.port, ssl=self._ssl(), process_request=self._process_request,
            select_subprotocol=_select_subprotocol, max_size=self.opt.max_frame_bytes,
            # FunASR's clients turn pings off and some never answer them in time while sending: keep-alive
            # pings would cut them off; the idle timeout bounds dead connections instead
            ping_interval=None, max_queue=64,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def shutdown(self) -> None:
        """Stop accepting; answer what is in flight (up to drain_timeout_s); close every connection (1001)."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opt.drain_timeout_s
        while loop.time() < deadline and any(c.busy() for c in self.connections):
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            try:
                await c.ws.close(1001, "server shutting down")
            except Exception:
                pass
        await self._server.wait_closed()
        self._server = None
        await loop.run_in_executor(None, self.worker.stop)
        self._vad_pool.shutdown(wait=True)


async def serve_forever(server: Server) -> None:
    await server.start()
    scheme = "wss" if server.opt.certfile else "ws"
    http = "https" if server.opt.certfile else "http"
    log.warning("serving on %s://%s:%d (web page: %s://%s:%d/)", scheme, server.opt.host, server.port, http,
                server.opt.host, server.port)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    log.warning("shutting down: finishing in-flight work")
    await server.shutdown()
