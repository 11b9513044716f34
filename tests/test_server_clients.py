"""Clients nobody here wrote: the PyPI packages funasr-client 0.1.6 and funasr-python 0.1.5, each in its own
virtual environment under the build cache (both install the import name `funasr_client`), against our server,
offline and 2pass, plain and TLS. Each must get the text `paraformer-ext transcribe` gives for the samples it
sends.

Their quirks, read in their code:
* funasr-client sends a .wav file's own frames (exact samples) and merges the `2pass-offline` messages by
  appending their texts without a separator; its sync API deadlocks on close, so its async API is used.
* funasr-python (console script broken: `python -m funasr_client.cli`) converts the audio itself (librosa,
  then float × 32767 truncated to int16), so the CLI is run on exactly the samples it sends; it keeps only the
  text of the message with is_final true, which in 2pass is the last sentence (as with FunASR's own servers);
  it verifies TLS certificates (SSL_CERT_FILE points it at the test's self-signed one).
"""
from __future__ import annotations

import json
import re
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import cache_dir, golden_checkpoint, needs_shared

pytest.importorskip("websockets")

from server_helpers import ServerThread, cli_results, make_audio, self_signed  # noqa: E402

pytestmark = [needs_shared, pytest.mark.slow]

PACKAGES = {"funasr-client": "funasr-client==0.1.6", "funasr-python": "funasr-python==0.1.5"}


def client_venv(name: str) -> Path:
    """A virtual environment with one PyPI client, made once under the build cache; skip if pip cannot."""
    d = cache_dir() / "server_clients" / PACKAGES[name].replace("==", "-")
    py = d / "bin" / "python"
    if (d / ".ok").exists():
        return py
    if not py.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(d)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", PACKAGES[name]], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot install {PACKAGES[name]} from PyPI: {r.stderr.strip()[-500:]}")
    (d / ".ok").write_text("ok\n")
    return py


@pytest.fixture(scope="module")
def model_dir():
    return golden_checkpoint("small")


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    from paraformer_ext import load
    from paraformer_ext.vad import FsmnVad

    asr, vad = load(model_dir), FsmnVad.load()
    certfile, keyfile = self_signed(tmp_path_factory.mktemp("tls"))
    plain = ServerThread(asr, vad)
    tls = ServerThread(asr, vad, certfile=str(certfile), keyfile=str(keyfile))
    yield {"ws": plain, "wss": tls, "cert": certfile}
    plain.close()
    tls.close()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return make_audio(tmp_path_factory.mktemp("client_audio"))


FUNASR_CLIENT_DRIVER = r"""
import asyncio, json, sys
from funasr_client import async_file_asr_stream
from funasr_client.utils import merge_messages

async def main(uri, mode, files):
    for f in files:
        msgs = [m async for m in async_file_asr_stream(f, uri, mode=mode)]
        print(json.dumps({"file": f, "messages": msgs, "merged": merge_messages(msgs)}, ensure_ascii=False))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
"""


def squash(s: str) -> str:
    return "".join(s.split())


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_funasr_client(servers, audio, model_dir, scheme):
    py = client_venv("funasr-client")
    keys = ["asr_example", "mid", "two", "mid8k"] if scheme == "ws" else ["mid"]
    files = [str(audio[k]) for k in keys]
    exp = {"offline": cli_results(model_dir, files), "2pass": cli_results(model_dir, files, "--long-audio-s", "0")}
    for mode in ("offline", "2pass"):
        r = subprocess.run([str(py), "-c", FUNASR_CLIENT_DRIVER, servers[scheme].uri, mode, *files],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        out = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(out) == len(keys)
        for k, o in zip(keys, out):
            e = exp[mode][k]
            msgs = o["messages"]
            assert msgs and msgs[-1]["is_final"] and sum(bool(m["is_final"]) for m in msgs) == 1
            if mode == "offline":
                assert msgs[-1]["mode"] == "offline" and msgs[-1]["text"] == e["text"], k
                assert msgs[-1]["timestamp"] == e["timestamp"]  # the client parsed our JSON string
            else:
                text = o["merged"]["text"]
                if len(e.get("segments", [])) == 1:
                    assert text == e["text"], k
                else:  # it appends the sentences without a separator; `transcribe` joins them with a space
                    assert squash(text) == squash(e["text"]) and len(e["segments"]) > 1, k


def funasr_python_samples(py, wavs: list[Path], out_dir: Path) -> list[Path]:
    """The samples funasr-python sends for each wav, computed by its own code (one process: importing librosa
    is slow), written as 16 kHz wavs."""
    code = ("import sys\nfrom funasr_client.audio import AudioFileStreamer\n"
            "for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):\n"
            "    open(dst, 'wb').write(b''.join(AudioFileStreamer(src).stream_audio_sync()))\n")
    raws = [out_dir / f"{w.stem}.pcm" for w in wavs]
    subprocess.run([str(py), "-c", code, *[str(x) for pair in zip(wavs, raws) for x in pair]], check=True,
                   capture_output=True, timeout=600)
    outs = []
    for raw in raws:
        outs.append(raw.with_suffix(".wav"))
        sf.write(outs[-1], np.frombuffer(raw.read_bytes(), "<i2"), 16000, subtype="PCM_16")
    return outs


def clean(text: str) -> str:  # funasr-python's _clean_text
    return re.sub(r"<[^>]*>", "", re.sub(r"<\|[^|]+\|>", "", text)).strip()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_funasr_python(servers, audio, model_dir, scheme, tmp_path):
    py = client_venv("funasr-python")
    keys = ["asr_example", "mid", "long", "mid8k"] if scheme == "ws" else ["mid"]
    sent = funasr_python_samples(py, [audio[k] for k in keys], tmp_path)
    exp = {"offline": cli_results(model_dir, sent), "2pass": cli_results(model_dir, sent, "--long-audio-s", "0")}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if scheme == "wss":
        env["SSL_CERT_FILE"] = str(servers["cert"])
    for mode in ("offline", "2pass"):
        res = tmp_path / f"{mode}.json"
        r = subprocess.run([str(py), "-m", "funasr_client.cli", "--server", servers[scheme].uri, "--mode", mode,
                            "--output", str(res), "-q", "recognize", *map(str, audio_paths(audio, keys))],
                           capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        results = json.loads(res.read_text())["results"]
        for k, o in zip(keys, results):
            assert "error" not in o, o
            e = exp[mode][k]
            if mode == "2pass":
                assert len(e.get("segments", [])) == 1  # one sentence: its final text is the whole transcript
            assert o["text"] == clean(e["text"]), (mode, k)
    if scheme == "wss":  # without the certificate it refuses the server: the check is real
        r = subprocess.run([str(py), "-m", "funasr_client.cli", "--server", servers[scheme].uri, "--mode", "offline",
                            "--output", str(tmp_path / "x.json"), "-q", "recognize", str(audio["mid"])],
                           capture_output=True, text=True, timeout=600, env={**env, "SSL_CERT_FILE": "/nonexistent"},
                           cwd=tmp_path)
        out = json.loads((tmp_path / "x.json").read_text())["results"] if (tmp_path / "x.json").exists() else []
        assert r.returncode != 0 or all("error" in o for o in out)


def audio_paths(audio, keys):
    return [audio[k] for k in keys]
