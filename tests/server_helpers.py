"""Shared by the server tests: a server in a background thread of the test process (so a test can reach its
worker), the CLI's transcripts to compare with, test audio made from the shared wavs, a raw protocol client."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED, golden_checkpoint
from paraformer_ext.cli import main
from paraformer_ext.server import Server, ServerOptions
from paraformer_ext.server.client import is_last_message


# --- fixtures the server test files share (imported by name: pytest finds them in the importing module) ---


@pytest.fixture(scope="module")
def model_dir():
    return golden_checkpoint("small")


@pytest.fixture(scope="module")
def asr(model_dir):
    from paraformer_ext import load

    return load(model_dir)


@pytest.fixture(scope="module")
def vad():
    from paraformer_ext.vad import FsmnVad

    return FsmnVad.load()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return make_audio(tmp_path_factory.mktemp("server_audio"))


class ServerThread:
    """A Server on its own event loop in a daemon thread, on a free port."""

    def __init__(self, recognizer, vad, online=None, **options):
        self.loop = asyncio.new_event_loop()
        self.server = Server(recognizer, ServerOptions(port=0, **options), vad=vad, online=online)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(120)
        scheme = "wss" if options.get("certfile") else "ws"
        self.uri = f"{scheme}://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def cli_results(model_dir, files, *extra) -> dict:
    """`paraformer-ext transcribe --json --timestamps FILES` → {key: result}."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["transcribe", "--model", str(model_dir), *map(str, files), "--json", "--timestamps", "--quiet", *extra])
    assert rc == 0
    return {r["key"]: r for r in map(json.loads, buf.getvalue().splitlines())}


def make_audio(d: Path) -> dict[str, Path]:
    """The shared wavs, and from them: two utterances with a pause (two VAD segments), an 8 kHz file (the server
    resamples), and a 27 s file (offline cuts it with the VAD, as transcribe does)."""
    from paraformer_ext.audio import resample

    a = {w: SHARED / "audio" / f"{w}.wav" for w in ("asr_example", "mid", "long")}
    x = {w: sf.read(p, dtype="int16")[0] for w, p in a.items()}
    pause = np.zeros(16000 * 3 // 2, np.int16)
    out = dict(a)
    out["two"] = d / "two.wav"
    sf.write(out["two"], np.concatenate([x["asr_example"], pause, x["mid"]]), 16000, subtype="PCM_16")
    out["mid8k"] = d / "mid8k.wav"
    y = resample(torch.from_numpy(x["mid"].astype(np.float32) / 32768), 16000, 8000).numpy()
    sf.write(out["mid8k"], np.clip(np.round(y * 32768), -32768, 32767).astype(np.int16), 8000, subtype="PCM_16")
    out["long27"] = d / "long27.wav"
    sf.write(out["long27"], np.concatenate([x["long"], pause, x["asr_example"], pause, x["long"], pause, x["mid"]]),
             16000, subtype="PCM_16")
    return out


def distinct_files(d: Path, n: int) -> list[Path]:
    """n different files from the shared speech (each another crop and gain of one clip), so that a result
    delivered to the wrong connection cannot go unnoticed."""
    clips = [sf.read(SHARED / "audio" / f"{w}.wav", dtype="int16")[0] for w in ("asr_example", "mid", "long")]
    out = []
    for i in range(n):
        x = clips[i % 3].astype(np.float64)
        start = (i // 3) * 800
        y = np.clip(np.round(x[start:] * (0.6 + 0.4 * ((i * 7) % 11) / 10)), -32768, 32767).astype(np.int16)
        out.append(d / f"d{i:03d}.wav")
        sf.write(out[-1], y, 16000, subtype="PCM_16")
    return out


def pcm16(path) -> tuple[bytes, int]:
    data, sr = sf.read(path, dtype="int16")
    return data.astype("<i2").tobytes(), sr


async def exchange(uri, messages, *, ssl=None, finals=1, timeout=120.0):
    """Send each of `messages` (str: a text frame, bytes: a binary frame, dict: JSON) and collect the replies
    until `finals` utterances have ended (is_final, or an error), or the close. Returns (replies, close code)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    replies, code = [], None
    wants_ack = any(isinstance(m, dict) and m.get("is_end") for m in messages)
    async with connect(uri, ssl=ssl, max_size=None, ping_interval=None) as ws:
        try:
            for m in messages:
                await ws.send(json.dumps(m) if isinstance(m, dict) else m)
        except ConnectionClosed:
            pass  # the server closed; what it said before is still read below
        try:
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    r = json.loads(raw)
                    replies.append(r)
                    if is_last_message(r, wants_ack):
                        finals -= 1
                        if finals == 0:
                            break
        except ConnectionClosed:
            pass
        await ws.close()
        code = ws.close_code
    return replies, code


def first(mode="offline", **kw) -> dict:
    return {"mode": mode, "wav_name": kw.pop("wav_name", "t"), "wav_format": "pcm", "audio_fs": 16000,
            "is_speaking": True, "chunk_size": [5, 10, 5], "chunk_interval": 10, **kw}


def frames(data: bytes, size: int = 1920) -> list[bytes]:
    return [data[i: i + size] for i in range(0, len(data), size)]


def self_signed(tmp_path):
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA): (certfile, keyfile)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def rival_hotwords(asr, path, n: int = 2) -> list[str]:
    """n two-token hotwords the model did not output, all starting with the greedy token of the first speech
    position, then a different CJK token each (in the order of their posteriors there). On the random-weight
    test model the posteriors are nearly flat, so each of them fires when it is alone, and when several
    compete the weights decide which: that is what makes a list's effect, and which list won, visible."""
    from paraformer_ext.text import SPECIAL_IDS

    wave = torch.from_numpy(sf.read(path, dtype="float32")[0])[None]
    p = asr.pipeline
    out = p.model.greedy(*p.features(wave, torch.tensor([wave.shape[1]])), log_posteriors=True)
    ids, logp, tok = out.token_ids[0, : int(out.token_num[0])], out.log_posteriors[0], asr.tokens
    for q in range(len(ids) - 1):
        if int(ids[q]) in SPECIAL_IDS:
            continue
        cjk = [v for v in logp[q + 1].argsort(descending=True).tolist()
               if v != int(ids[q + 1]) and len(tok[v]) == 1 and "\u4e00" <= tok[v] <= "\u9fff"]
        return [tok[int(ids[q])] + tok[v] for v in cjk[:n]]
    pytest.skip("no speech position to build a hotword on")
