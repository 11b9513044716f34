"""The server with a streaming model (--online-model): online and 2pass partials come from each connection's
Stream, stepped in batches with the other connections' streams, and equal what asr.stream() gives alone; 2pass
keeps the offline model's segment results; a wrong kind of model is refused clearly; a bad chunk_size or a
client that leaves mid-stream concerns that client only."""
from __future__ import annotations

import asyncio
import gc
import json
import time

import pytest
import soundfile as sf
import torch

from conftest import needs_shared, stream_checkpoint

pytest.importorskip("websockets")

from server_helpers import (ServerThread, asr, audio, cli_results, exchange, first, frames,  # noqa: E402,F401
                            model_dir, pcm16, vad)
from paraformer_ext import load  # noqa: E402
from paraformer_ext.audio import _int_scale  # noqa: E402
from paraformer_ext.server import Server  # noqa: E402

pytestmark = needs_shared

CHUNK = [5, 10, 5]


@pytest.fixture(scope="module")
def online():
    return load(stream_checkpoint())


@pytest.fixture(scope="module")
def srv(asr, online, vad):
    s = ServerThread(asr, vad, online=online, idle_timeout_s=30.0)
    # record how many streams each batched step took
    sizes = []
    real = online.decode_streams

    def spy(streams):
        streams = list(streams)
        sizes.append(len(streams))
        return real(streams)

    online.decode_streams = spy
    s.step_sizes = sizes
    yield s
    del online.decode_streams
    s.close()


def samples(path) -> torch.Tensor:
    """The float samples the server makes of the file's 16-bit PCM."""
    return torch.from_numpy(_int_scale(sf.read(path, dtype="int16")[0]))


def chunk_texts(online, x: torch.Tensor, finish: bool = True) -> list[str]:
    """asr.stream() alone: the non-empty texts of its chunks (what the server sends, one message each)."""
    s = online.stream(chunk_size=CHUNK)
    s.accept(x, 16000)
    if finish:
        s.finish()
    return [r.text for r in s.chunk_results if r.text]


def one_final(replies):
    finals = [m for m in replies if m.get("is_final")]
    assert len(finals) == 1 and replies[-1] is finals[0], replies
    assert not any("error" in m for m in replies), replies


def test_online_partials_equal_the_stream_alone(srv, online, audio):
    """Two connections at once, fed in different piece sizes (one odd, so a byte waits for the next frame):
    each gets exactly the chunk texts of its audio run through asr.stream() alone."""
    names = ("mid", "long")
    sizes = (1920, 7001)
    datas = [pcm16(audio[n])[0] for n in names]

    async def both():
        return await asyncio.gather(*(
            exchange(srv.uri, [first("online", wav_name=n), *frames(d, size), {"is_speaking": False}], timeout=600)
            for n, d, size in zip(names, datas, sizes)))

    steps0 = len(srv.step_sizes)
    results = asyncio.run(both())
    for n, (replies, _) in zip(names, results):
        one_final(replies)
        assert {m["mode"] for m in replies} == {"online"}
        assert all(m["wav_name"] == n for m in replies)
        want = chunk_texts(online, samples(audio[n]))
        got = [m["text"] for m in replies if m["text"]]
        assert got == want, n
        assert "".join(got) == online.stream(chunk_size=CHUNK).accept(samples(audio[n]), 16000).finish()["text"]
    # the two connections' streams were stepped together (one batched decode_streams call for both)
    assert max(srv.step_sizes[steps0:]) >= 2, srv.step_sizes[steps0:]


def test_2pass_online_partials_from_the_stream_and_offline_results(srv, online, vad, model_dir, audio):
    """2pass: 2pass-offline results are the offline path's (transcribe --long-audio-s 0); the 2pass-online
    messages before each of them come from a stream started at the previous segment's end (FunASR clears its
    online cache there): a prefix of that audio's chunk texts through asr.stream() alone."""
    path = audio["two"]
    exp = cli_results(model_dir, [path], "--long-audio-s", "0")["two"]
    data, _ = pcm16(path)
    segs0 = srv.server.worker.segments
    replies, _ = asyncio.run(exchange(srv.uri, [first("2pass", wav_name="two"), *frames(data, 3200),
                                                {"is_speaking": False}], timeout=600))
    one_final(replies)
    offl = [m for m in replies if m["mode"] == "2pass-offline"]
    assert " ".join(m["text"] for m in offl if m["text"]) == exp["text"]
    assert [t for m in offl for t in json.loads(m.get("timestamp", "[]"))] == exp["timestamp"]
    # no re-decoded partials: the offline model saw the segments only
    assert srv.server.worker.segments - segs0 == len(offl)
    # the stream of segment k starts where the VAD closed segment k - 1
    vs = vad.stream()
    x = samples(path)
    spans = vs.accept(x) + vs.finish()
    assert len(spans) == len(offl) == 2
    starts = [0] + [min(x.numel(), e * 16000 // 1000) for _, e in spans[:-1]]
    groups, cur = [], []
    for m in replies:
        if m["mode"] == "2pass-online":
            cur.append(m["text"])
        else:
            groups.append(cur)
            cur = []
    assert not cur
    for k, (got, s) in enumerate(zip(groups, starts)):
        want = chunk_texts(online, x[s:], finish=False)
        assert got == want[: len(got)], k
    assert groups[0], "the first segment had streaming partials"


def test_bad_chunk_size_is_this_clients_error(srv, online, audio):
    data, _ = pcm16(audio["asr_example"])

    async def go():
        bad = exchange(srv.uri, [first("online", chunk_size=[0, 10, 0])])
        bad2 = exchange(srv.uri, [first("2pass", chunk_size=[5, 500, 5])])
        good = exchange(srv.uri, [first("online", wav_name="ok"), *frames(data, 3840), {"is_speaking": False}],
                        timeout=600)
        return await asyncio.gather(bad, bad2, good)

    (r1, c1), (r2, c2), (r3, _) = asyncio.run(go())
    for r, c in ((r1, c1), (r2, c2)):
        assert r[-1]["error"]["code"] == "bad_request" and "chunk_size" in r[-1]["error"]["message"], r
        assert c == 1008
    one_final(r3)
    assert [m["text"] for m in r3 if m["text"]] == chunk_texts(online, samples(audio["asr_example"]))


def test_client_leaving_mid_stream_releases_its_stream(srv, audio):
    from websockets.asyncio.client import connect

    data, _ = pcm16(audio["long"])

    async def leave():
        async with connect(srv.uri, max_size=None) as ws:
            await ws.send(json.dumps(first("online", wav_name="gone")))
            for f in frames(data[: len(data) // 2], 3840):
                await ws.send(f)
            await asyncio.sleep(0.2)
        # gone without an end message

    asyncio.run(leave())
    deadline = time.time() + 300
    while time.time() < deadline:
        gc.collect()
        if len(srv.server.online_streams) == 0 and srv.server.worker.pending() == 0:
            break
        time.sleep(0.2)
    assert len(srv.server.online_streams) == 0


def test_wrong_kinds_of_model_refused(asr, online, model_dir, capsys):
    from paraformer_ext.cli import main

    with pytest.raises(ValueError, match="not a streaming one"):
        Server(asr, online=asr)
    with pytest.raises(ValueError, match="--online-model"):
        Server(online)
    assert main(["serve", "--model", str(model_dir), "--online-model", str(model_dir), "--port", "0"]) == 1
    assert "not a streaming one" in capsys.readouterr().err
    assert main(["serve", "--model", str(stream_checkpoint()), "--port", "0"]) == 1
    assert "--online-model" in capsys.readouterr().err
