"""Our client of the FunASR websocket protocol: `paraformer-ext client ws://HOST:PORT FILE... [--mode ...]`.

The transcript it prints is built as the server's modes define it: offline, the final message's text;
2pass, the 2pass-offline segment texts joined by a space (as `transcribe` joins the segments of a long file);
online, the increments appended. 16-bit files are sent as their own samples at their own rate (the server
resamples exactly as `transcribe` does); other files are sent as the file itself in offline mode, and as
16 kHz 16-bit PCM (`load_audio`, then rounded) in the streaming modes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path

import numpy as np


def _audio(path: str, mode: str) -> tuple[str, int, bytes]:
    """(wav_format, audio_fs, bytes) to send for one file."""
    import soundfile as sf

    from ..audio import load_audio

    info = sf.info(path)
    if info.subtype == "PCM_16" and info.channels == 1:
        data, sr = sf.read(path, dtype="int16")
        return "pcm", int(sr), data.astype("<i2").tobytes()
    if mode == "offline":
        return Path(path).suffix.lstrip(".").lower() or "wav", 16000, Path(path).read_bytes()
    x = load_audio(path, target_sr=16000).numpy()
    return "pcm", 16000, np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()


def transcript(messages: list[dict], mode: str) -> str:
    if mode == "offline":
        return "".join(m.get("text", "") for m in messages if m.get("mode") == "offline")
    if mode == "2pass":
        return " ".join(m["text"] for m in messages if m.get("mode") == "2pass-offline" and m.get("text"))
    return "".join(m.get("text", "") for m in messages if m.get("mode") == "online")


def is_last_message(m: dict, wants_ack: bool) -> bool:
    """Whether a server message ends an utterance's exchange: an error, or the one is_final result (with an
    is_end request, the is_end acknowledgement that follows it)."""
    return "error" in m or bool(m.get("is_final")) and (not wants_ack or bool(m.get("is_end")))


async def recognize(uri: str, path: str, *, mode: str = "offline", hotwords: str | None = None,
                    wav_name: str | None = None, realtime: float = 0.0, chunk_ms: int = 60,
                    ssl_context: ssl.SSLContext | None = None, is_end: bool = False, timeout: float = 600.0) -> dict:
    """Send one file, return {"wav_name", "text", "messages", "latency_s"} (latency: end message → final).
    realtime: 0 sends as fast as possible; 1.0 at the audio's own pace (2.0: twice as fast)."""
    from websockets.asyncio.client import connect

    fmt, fs, data = _audio(path, mode)
    name = wav_name or Path(path).name.split(".")[0]
    first = {"mode": mode, "wav_name": name, "wav_format": fmt, "audio_fs": fs, "is_speaking": True,
             "chunk_size": [5, 10, 5], "chunk_interval": 10, "itn": True}
    if hotwords:
        first["hotwords"] = hotwords
    step = max(2, fs * chunk_ms // 1000 * 2) if fmt == "pcm" else 65536
    messages = []
    async with connect(uri, ssl=ssl_context, max_size=None, ping_interval=None, open_timeout=30) as ws:
        await ws.send(json.dumps(first, ensure_ascii=False))

        sent_at = []

        async def sender():
            t0 = time.perf_counter()
            for i in range(0, len(data), step):
                await ws.send(data[i: i + step])
                if realtime > 0 and fmt == "pcm":
                    due = t0 + (i + step) / 2 / fs / realtime
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
            end = {"is_speaking": False}
            if is_end:
                end["is_end"] = True
            await ws.send(json.dumps(end))
            sent_at.append(time.perf_counter())

        send_task = asyncio.create_task(sender())
        try:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    m = json.loads(raw)
                    messages.append(m)
                    if is_last_message(m, is_end):
                        break
        finally:
            if not send_task.done():
                send_task.cancel()
        done_at = time.perf_counter()
    errors = [m["error"] for m in messages if "error" in m]
    out = {"wav_name": name, "text": transcript(messages, mode), "messages": messages,
           "latency_s": done_at - sent_at[0] if sent_at else None}
    if errors:
        out["error"] = errors[0]
    return out


def _ssl(uri: str, cafile: str | None, insecure: bool) -> ssl.SSLContext | None:
    if not uri.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=cafile)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="paraformer-ext client", description="send audio files to a FunASR-protocol "
                                 "websocket server (paraformer-ext serve, or FunASR's own) and print the transcripts")
    ap.add_argument("uri", help="ws://HOST:PORT or wss://HOST:PORT")
    ap.add_argument("files", nargs="+", help="audio files (wav/flac/ogg/mp3...)")
    ap.add_argument("--mode", default="offline", choices=["offline", "2pass", "online"])
    ap.add_argument("--hotwords", default=None, help='a JSON map {"word": weight} or words separated by commas')
    ap.add_argument("--realtime", type=float, default=0.0,
                    help="send at this multiple of the audio's pace (default 0: as fast as possible)")
    ap.add_argument("--concurrency", type=int, default=1, help="files sent at once, one connection each")
    ap.add_argument("--json", action="store_true", help="one JSON object per file with every message received")
    ap.add_argument("--cafile", default=None, help="wss: the certificate authority (or self-signed certificate) to trust")
    ap.add_argument("--insecure", action="store_true", help="wss: do not check the server's certificate")
    a = ap.parse_args(argv)
    ctx = _ssl(a.uri, a.cafile, a.insecure)

    async def run():
        sem = asyncio.Semaphore(max(1, a.concurrency))

        async def one(f):
            async with sem:
                try:
                    return await recognize(a.uri, f, mode=a.mode, hotwords=a.hotwords, realtime=a.realtime,
                                           ssl_context=ctx)
                except Exception as e:
                    return {"wav_name": Path(f).name.split(".")[0], "error": {"code": "client", "message": f"{type(e).__name__}: {e}"}}

        return await asyncio.gather(*(one(f) for f in a.files))

    failed = 0
    for r in asyncio.run(run()):
        if "error" in r:
            failed += 1
            print(f"error: {r['wav_name']}: {r['error'].get('message', r['error'])}", file=sys.stderr)
        if a.json:
            print(json.dumps(r, ensure_ascii=False))
        elif "error" not in r:
            print(f"{r['wav_name']}\t{r['text']}")
    return 1 if failed else 0
