"""The websocket server (paraformer_ext.server): our client gets the CLI's transcripts in offline and 2pass,
the protocol's variants are accepted, hotwords bias each connection as transcribe's do (the server's list
merged with the client's), each fault gets an error for its own client and the next request is still served
right, TLS, many connections at once, SIGTERM."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest

from conftest import REPO, needs_shared

pytest.importorskip("websockets")

from server_helpers import (ServerThread, asr, audio, cli_results, distinct_files, exchange, first, frames,  # noqa: E402,F401
                            model_dir, pcm16, rival_hotwords, self_signed, vad)
from paraformer_ext import load  # noqa: E402
from paraformer_ext.server.client import recognize  # noqa: E402

pytestmark = needs_shared

FILES = ("asr_example", "mid", "long", "two", "mid8k", "long27")


@pytest.fixture(scope="module")
def expected(model_dir, audio):
    """The CLI's results: as it is (offline), and with every file cut by the VAD (2pass recognizes VAD segments)."""
    files = [audio[k] for k in FILES]
    return {"offline": cli_results(model_dir, files), "2pass": cli_results(model_dir, files, "--long-audio-s", "0")}


@pytest.fixture(scope="module")
def srv(asr, vad):
    s = ServerThread(asr, vad, idle_timeout_s=4.0, max_frame_bytes=1 << 20, max_connections=200)
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


def check_one_final(messages):
    finals = [m for m in messages if m.get("is_final")]
    assert len(finals) == 1 and messages[-1] is finals[0], messages
    for m in messages:
        assert "mode" in m and "text" in m
        if "timestamp" in m:
            assert isinstance(m["timestamp"], str) and isinstance(json.loads(m["timestamp"]), list)


@pytest.mark.parametrize("mode", ["offline", "2pass"])
def test_client_gets_the_cli_transcript(srv, audio, expected, mode):
    async def all_files():
        return await asyncio.gather(*(recognize(srv.uri, str(audio[k]), mode=mode) for k in FILES))

    for k, r in zip(FILES, run(all_files())):
        exp = expected[mode][k]
        assert "error" not in r, r
        assert r["text"] == exp["text"], k
        check_one_final(r["messages"])
        if mode == "offline":
            (m,) = r["messages"]
            assert json.loads(m["timestamp"]) == exp["timestamp"]
            sents = m["stamp_sents"]
            assert len(sents) == len(exp.get("segments") or [0])
            assert " ".join(s["text_seg"] for s in sents if s["text_seg"]) == exp["text"]
            assert [t for s in sents for t in s["ts_list"]] == exp["timestamp"]
        else:
            offl = [m for m in r["messages"] if m["mode"] == "2pass-offline"]
            got_ts = [t for m in offl for t in json.loads(m.get("timestamp", "[]"))]
            assert got_ts == exp["timestamp"]
            assert all(m["mode"] in ("2pass-online", "2pass-offline") for m in r["messages"])
    # the two-utterance file really is two segments, so 2pass sends two sentence results
    if mode == "2pass":
        assert len(expected["2pass"]["two"]["segments"]) == 2


def test_cli_client_prints_what_transcribe_prints(srv, audio, model_dir, capsys):
    from paraformer_ext.cli import main

    files = [str(audio["asr_example"]), str(audio["long27"])]
    assert main(["transcribe", "--model", str(model_dir), *files, "--quiet"] + ["--timestamps"]) == 0
    want = [line.rsplit("\t", 1)[0] for line in capsys.readouterr().out.splitlines()]  # name, text (no timestamps)
    assert main(["client", srv.uri, *files, "--concurrency", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == want
    assert main(["client", srv.uri, str(audio["asr_example"]) + ".missing"]) == 1


def test_online_mode_sends_increments_and_one_final(srv, audio):
    r = run(recognize(srv.uri, str(audio["two"]), mode="online", realtime=8.0))
    check_one_final(r["messages"])
    assert {m["mode"] for m in r["messages"]} == {"online"}


def test_protocol_variants(srv, asr, audio, expected):
    data, _ = pcm16(audio["mid"])
    exp = expected["offline"]["mid"]["text"]

    async def go():
        out = {}
        # funasr-client's first message: nulls for what it was not told, chunk_size as a string, unknown keys,
        # odd frame sizes (a sample split across frames), the end message twice
        msg = {"mode": None, "wav_name": "mid", "wav_format": None, "audio_fs": None, "itn": None, "hotwords": None,
               "is_speaking": True, "chunk_size": "5,10,5", "svs_lang": "auto", "svs_itn": True,
               "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 0}
        out["nulls"] = await exchange(srv.uri, [msg, *frames(data, 333), {"is_speaking": False}, {"is_speaking": False}])
        out["hot_map"] = await exchange(srv.uri, [first(hotwords=json.dumps({"阿里巴巴": 20})), *frames(data),
                                                  {"is_speaking": False}])
        out["hot_list"] = await exchange(srv.uri, [first(hotwords="阿里巴巴, 达摩院 魔搭"), *frames(data),
                                                   {"is_speaking": False}])
        out["is_end"] = await exchange(srv.uri, [first(), *frames(data), {"is_speaking": False, "is_end": True}])
        wav = audio["mid"].read_bytes()
        out["container"] = await exchange(srv.uri, [first(wav_format="wav"), *frames(wav, 4000), {"is_speaking": False}])
        out["others"] = await exchange(srv.uri, [first(wav_format="others"), wav, {"is_speaking": False}])
        # a second first message on the same connection: the open utterance ends, a new one starts
        out["two_utts"] = await exchange(srv.uri, [first(wav_name="a"), *frames(data), first(wav_name="b"),
                                                   *frames(data), {"is_speaking": False}], finals=2, timeout=60)
        return out

    out = run(go())
    replies, _ = out["nulls"]
    check_one_final(replies)  # the repeated end got no second answer
    assert replies[-1]["mode"] == "2pass-offline"  # FunASR's default mode
    assert " ".join(m["text"] for m in replies if m["mode"] == "2pass-offline" and m["text"]) == expected["2pass"]["mid"]["text"]
    for k, hw in (("hot_map", {"阿里巴巴": 20}), ("hot_list", ["阿里巴巴", "达摩院", "魔搭"])):
        (m,) = out[k][0]
        with pytest.warns(UserWarning, match="not in the model's vocabulary"):  # the test model's tokens lack them
            want = asr.transcribe(str(audio["mid"]), hotwords=hw, timestamps=True)[0]
        assert m["text"] == want["text"] and m["hotwords"] == want["hotwords"]
        assert "hotwords_applied" not in m and "hotwords_note" not in m
    r, _ = out["is_end"]
    assert [m.get("is_final") for m in r] == [False, True] and r[0]["text"] == exp
    assert r[1] == {"mode": "offline", "wav_name": "t", "text": "", "is_final": True, "is_end": True}
    for k in ("container", "others"):
        (m,) = out[k][0]
        assert m["text"] == exp and m["is_final"]
    r, _ = out["two_utts"]
    assert [(m["wav_name"], m["text"], m["is_final"]) for m in r] == [("a", exp, True), ("b", exp, True)]


def hot_ts(r) -> list:
    """The words of the fired hotwords and their times (start/end index a message's own tokens, which a 2pass
    message does not carry, so they are not compared across segments)."""
    return [(h["word"], h["timestamp"]) for h in r["hotwords"]]


@pytest.mark.parametrize("mode", ["offline", "2pass"])
def test_client_hotwords_get_what_transcribe_gives(srv, model_dir, audio, expected, mode):
    """A client's hotwords decode as load(model, hotwords=...).transcribe does: the same text, timestamps and
    fired hotwords; in 2pass each segment result as transcribe's VAD segments (long_audio_s=0)."""
    f = audio["mid" if mode == "offline" else "two"]
    (word,) = rival_hotwords(load(model_dir), f, 1)
    hot = {word: 100}
    want = load(model_dir, hotwords=hot).transcribe(str(f), timestamps=True,
                                                    **({} if mode == "offline" else {"long_audio_s": 0}))[0]
    plain = expected[mode][f.stem]
    assert any(h["word"] == word for h in want["hotwords"]) and want["text"] != plain["text"]  # it has an effect
    r = run(recognize(srv.uri, str(f), mode=mode, hotwords=json.dumps(hot)))
    assert "error" not in r, r
    check_one_final(r["messages"])
    assert r["text"] == want["text"]
    if mode == "offline":
        (m,) = r["messages"]
        assert json.loads(m["timestamp"]) == want["timestamp"] and m["hotwords"] == want["hotwords"]
        assert "hotwords_applied" not in m
    else:
        offl = [m for m in r["messages"] if m["mode"] == "2pass-offline" and m["text"]]
        assert len(offl) == len(want["segments"]) == 2
        assert [t for m in offl for t in json.loads(m["timestamp"])] == want["timestamp"]
        assert [h for m in offl for h in hot_ts(m)] == hot_ts(want)


def test_server_hotword_file_merged_with_the_client_list(asr, vad, model_dir, audio, tmp_path):
    """--hotword applies to every connection; a client's list is merged in, its weights winning. a and b compete
    at the same tokens, so the heavier one fires: a with the file's weights, b when the client raises it."""
    f = audio["mid"]
    a, b = rival_hotwords(asr, f, 2)
    hw_file = tmp_path / "hot.txt"
    hw_file.write_text(f"{a} 60\n{b} 10\n", encoding="utf-8")
    s = ServerThread(asr, vad, hotword_file=str(hw_file))
    try:
        async def go():
            return await asyncio.gather(recognize(s.uri, str(f)), recognize(s.uri, str(f), hotwords=json.dumps({b: 100})))

        none, raised = run(go())
    finally:
        s.close()
    file_only = load(model_dir, hotwords=hw_file).transcribe(str(f), timestamps=True)[0]
    merged = load(model_dir, hotwords=hw_file).transcribe(str(f), timestamps=True, hotwords={b: 100})[0]
    assert {h["word"] for h in file_only["hotwords"]} == {a} and {h["word"] for h in merged["hotwords"]} == {b}
    for r, want in ((none, file_only), (raised, merged)):
        (m,) = r["messages"]
        assert m["text"] == want["text"] and m["hotwords"] == want["hotwords"]


def test_connections_with_different_lists_in_one_batch(asr, vad, model_dir, audio, expected):
    """Three connections in one batch: two with different lists, one with none. Each gets its own list's result;
    the one without gets the plain (greedy) result bit for bit."""
    f = audio["mid"]
    a, b = rival_hotwords(asr, f, 2)
    s = ServerThread(asr, vad, max_wait_s=3.0)  # long enough for all three to meet in the worker
    batches = []
    s.server.worker.fault_hook = lambda jobs: batches.append([j.hotwords for j in jobs])
    try:
        async def go():
            return await asyncio.gather(recognize(s.uri, str(f), hotwords=json.dumps({a: 100})),
                                        recognize(s.uri, str(f), hotwords=json.dumps({b: 100})),
                                        recognize(s.uri, str(f)))

        ra, rb, rn = run(go())
    finally:
        s.close()
    assert any(len(g) == 3 and len({id(x) for x in g}) == 3 for g in batches), batches
    for r, w in ((ra, a), (rb, b)):
        want = load(model_dir, hotwords={w: 100}).transcribe(str(f), timestamps=True)[0]
        (m,) = r["messages"]
        assert m["text"] == want["text"] and m["hotwords"] == want["hotwords"]
        assert {h["word"] for h in m["hotwords"]} == {w}
    (m,) = rn["messages"]
    assert m["text"] == expected["offline"]["mid"]["text"] and "hotwords" not in m
    assert json.loads(m["timestamp"]) == expected["offline"]["mid"]["timestamp"]


def test_bad_hotwords_answered_and_the_next_request_served(srv, asr, audio):
    f = audio["mid"]
    data, _ = pcm16(f)
    (word,) = rival_hotwords(asr, f, 1)

    async def go():
        bad = {}
        for name, value in (("weight", json.dumps({word: "heavy"})), ("json", '{"%s": ' % word),
                            ("type", 7), ("entry", [word, 3])):
            replies, close = await exchange(srv.uri, [first(hotwords=value), *frames(data), {"is_speaking": False}])
            bad[name] = (expect_error((replies, close), "bad_request"), replies[-1]["error"]["message"])
        good = await recognize(srv.uri, str(f), hotwords=json.dumps({word: 100}))
        return bad, good

    bad, good = run(go())
    assert all(close == 1008 and "hotwords" in msg for close, msg in bad.values()), bad
    assert "heavy" in bad["weight"][1]
    want = asr.transcribe(str(f), hotwords={word: 100}, timestamps=True)[0]
    (m,) = good["messages"]
    assert m["text"] == want["text"] and m["hotwords"] == want["hotwords"] and m["hotwords"]


def test_serve_refuses_a_bad_hotword_file(model_dir, tmp_path, capsys):
    from paraformer_ext.cli import main

    bad = tmp_path / "hot.txt"
    bad.write_text("阿里巴巴 heavy\n", encoding="utf-8")
    assert main(["serve", "--model", str(model_dir), "--port", "0", "--hotword", str(bad)]) == 1
    assert "hot.txt:1" in capsys.readouterr().err


def expect_error(result, code):
    replies, close = result
    assert replies and "error" in replies[-1], replies
    assert replies[-1]["error"]["code"] == code, replies[-1]
    assert replies[-1]["is_final"] is True
    return close


def test_faults_each_answered_and_the_next_request_served(srv, audio, expected):
    data, _ = pcm16(audio["asr_example"])
    exp = expected["offline"]["asr_example"]["text"]

    async def normal():
        r = await recognize(srv.uri, str(audio["asr_example"]))
        assert r["text"] == exp, r
        return r

    async def go():
        codes = {}
        codes["bad_json"] = expect_error(await exchange(srv.uri, ['{"mode": "offline", ']), "bad_json")
        await normal()
        codes["not_object"] = expect_error(await exchange(srv.uri, ["[1, 2]"]), "bad_json")
        codes["binary_first"] = expect_error(await exchange(srv.uri, [data[:3200]]), "no_first_message")
        await normal()
        codes["bad_mode"] = expect_error(await exchange(srv.uri, [first(mode="3pass")]), "bad_mode")
        await normal()
        codes["bad_chunk"] = expect_error(await exchange(srv.uri, [first(chunk_size="5,x,5")]), "bad_request")
        codes["end_first"] = expect_error(await exchange(srv.uri, [{"is_speaking": False}]), "no_first_message")
        # an odd byte count: the half sample at the end is dropped with a warning, the rest recognized
        odd, _ = await exchange(srv.uri, [first(), data + b"\x01", {"is_speaking": False}])
        assert odd[-1]["text"] == exp and "odd byte" in odd[-1]["warning"]
        await normal()
        # a corrupt or empty container: an error for the utterance, the connection stays usable
        corrupt, close = await exchange(srv.uri, [first(wav_format="wav"), b"RIFF\x00\x00junk" * 50, {"is_speaking": False},
                                                  first(), data, {"is_speaking": False}], finals=2, timeout=60)
        assert corrupt[0]["error"]["code"] == "bad_audio" and corrupt[0]["is_final"]
        assert corrupt[1]["text"] == exp
        empty, _ = await exchange(srv.uri, [first(wav_format="mp3"), {"is_speaking": False}])
        assert empty[-1]["error"]["code"] == "bad_audio"
        silent, _ = await exchange(srv.uri, [first(), {"is_speaking": False}])
        assert silent[-1]["error"]["code"] == "bad_audio"
        await normal()
        # a container in a streaming mode cannot be streamed
        codes["container_2pass"] = expect_error(await exchange(srv.uri, [first("2pass", wav_format="mp3")]), "bad_format")
        # a frame over the size limit: the websocket layer closes with 1009
        _, codes["too_big"] = await exchange(srv.uri, [first(), b"\x00" * (2 << 20)])
        await normal()
        # a client that goes away mid-stream, in each mode
        from websockets.asyncio.client import connect

        for mode in ("offline", "2pass"):
            async with connect(srv.uri) as ws:
                await ws.send(json.dumps(first(mode)))
                for f in frames(data)[:40]:
                    await ws.send(f)
        await normal()
        # a client that never sends the end: closed after the idle timeout with an error
        codes["idle"] = expect_error(await exchange(srv.uri, [first("2pass"), *frames(data)[:10]]), "idle")
        await normal()
        return codes

    codes = run(go())
    for k, c in codes.items():
        assert c == (1009 if k == "too_big" else 1008), (k, c)


def test_recognition_exception_reaches_only_its_clients(srv, audio, expected):
    data, _ = pcm16(audio["mid"])
    exp = expected["offline"]["mid"]["text"]
    hits = []

    def fault(jobs):
        if any(j.key == "boom" for j in jobs):
            hits.append(len(jobs))
            raise RuntimeError("injected failure")

    srv.server.worker.fault_hook = fault
    try:
        async def go():
            bad = exchange(srv.uri, [first(wav_name="boom"), *frames(data), {"is_speaking": False}])
            return await asyncio.gather(bad, recognize(srv.uri, str(audio["mid"])))

        (replies, close), good = run(go())
    finally:
        srv.server.worker.fault_hook = None
    assert hits
    assert replies[-1]["error"]["code"] == "internal" and "injected failure" in replies[-1]["error"]["message"]
    assert close != 1011
    if hits[0] == 1:  # the good request was not in the failed batch: it must have been answered right
        assert good["text"] == exp
    again = run(recognize(srv.uri, str(audio["mid"])))
    assert again["text"] == exp


def test_connection_limit(asr, vad, audio, expected):
    s = ServerThread(asr, vad, max_connections=2)
    try:
        async def go():
            from websockets.asyncio.client import connect

            async with connect(s.uri) as a, connect(s.uri) as b:
                await a.send(json.dumps(first()))
                await b.send(json.dumps(first()))
                third = await exchange(s.uri, [first()])
            return third, await recognize(s.uri, str(audio["mid"]))

        third, ok = run(go())
    finally:
        s.close()
    assert expect_error(third, "busy") == 1013
    assert ok["text"] == expected["offline"]["mid"]["text"]


@pytest.fixture(scope="module")
def tls(asr, vad, tmp_path_factory):
    certfile, keyfile = self_signed(tmp_path_factory.mktemp("tls"))
    s = ServerThread(asr, vad, certfile=str(certfile), keyfile=str(keyfile))
    yield s, certfile
    s.close()


def test_tls(tls, audio, expected):
    s, certfile = tls
    ctx = ssl.create_default_context(cafile=str(certfile))
    r = run(recognize(s.uri, str(audio["asr_example"]), mode="2pass", ssl_context=ctx))
    assert r["text"] == expected["2pass"]["asr_example"]["text"]
    with pytest.raises(ssl.SSLCertVerificationError):  # and it is really checked
        run(recognize(s.uri, str(audio["asr_example"]), ssl_context=ssl.create_default_context()))


def test_page_is_served_on_the_same_port(srv):
    import urllib.error
    import urllib.request

    port = srv.server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        body = r.read().decode()
    assert "<title>paraformer_ext server</title>" in body and "new WebSocket" in body
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=30)
    assert e.value.code == 404


@pytest.mark.slow
def test_many_connections_nothing_lost_or_mixed(srv, model_dir, tmp_path):
    """64 connections at once, each its own file, half at 4x real time, half as fast as possible, offline and
    2pass: every one gets its own file's transcript (the CLI's), and the worker batched them together."""
    files = distinct_files(tmp_path, 64)
    exp = {"offline": cli_results(model_dir, files), "2pass": cli_results(model_dir, files, "--long-audio-s", "0")}
    assert len({r["text"] for r in exp["offline"].values()}) == len(files)  # distinct texts: a mix-up would show
    modes = ["2pass" if i % 3 == 0 else "offline" for i in range(len(files))]

    async def go():
        return await asyncio.gather(*(recognize(srv.uri, str(f), mode=m, realtime=4.0 if i % 2 else 0.0)
                                      for i, (f, m) in enumerate(zip(files, modes))))

    batches_before = srv.server.worker.batches
    segments_before = srv.server.worker.segments
    for f, m, r in zip(files, modes, run(go())):
        assert "error" not in r, r
        assert r["text"] == exp[m][f.stem]["text"], f.stem
        assert {x["wav_name"] for x in r["messages"]} == {f.stem}
        check_one_final(r["messages"])
    assert srv.server.worker.segments - segments_before > srv.server.worker.batches - batches_before


def test_memory_is_bounded_by_the_open_segment(srv, audio):
    """2pass keeps only the audio after the last decided segment, so a long stream does not grow the buffer."""
    data, _ = pcm16(audio["two"])
    peak = []

    async def go():
        from websockets.asyncio.client import connect

        async with connect(srv.uri, max_size=None) as ws:
            await ws.send(json.dumps(first("2pass")))
            for _ in range(12):  # about 150 s of speech and pauses
                for f in frames(data, 32000):
                    await ws.send(f)
                await asyncio.sleep(0.2)
                conns = [c for c in srv.server.connections if c.utt is not None and hasattr(c.utt, "base")]
                peak.append(max(c.utt.total - c.utt.base for c in conns))  # samples held (read, not touched)
            await ws.send(json.dumps({"is_speaking": False}))
            async for raw in ws:
                if json.loads(raw).get("is_final"):
                    break

    run(go())
    # the VAD decides on 10 s blocks: what is held stays within a few blocks and an utterance, while the stream
    # grows to 150 s
    assert max(peak) < 16000 * 45, peak


def test_sigterm_finishes_in_flight_work(model_dir, audio, expected, tmp_path):
    port_file = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-m", "paraformer_ext.cli", "serve", "--model", str(model_dir),
                             "--port", "0"], cwd=REPO, stderr=open(port_file, "w"), env={**os.environ})
    try:
        deadline = time.time() + 120
        while "serving on" not in port_file.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        line = [x for x in port_file.read_text().splitlines() if "serving on" in x][0]
        uri = line.split()[line.split().index("on") + 1]

        async def go():
            from websockets.asyncio.client import connect
            from websockets.exceptions import ConnectionClosed

            data, _ = pcm16(audio["long27"])
            got, code = [], None
            async with connect(uri, max_size=None) as ws:
                await ws.send(json.dumps(first(wav_name="long27")))
                for f in frames(data, 64000):
                    await ws.send(f)
                await ws.send(json.dumps({"is_speaking": False}))
                await asyncio.sleep(0.3)  # let the end message be read before the signal
                proc.send_signal(signal.SIGTERM)
                try:
                    async for raw in ws:
                        got.append(json.loads(raw))
                except ConnectionClosed:
                    pass
                code = ws.close_code
            return got, code

        got, code = run(go())
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert got and got[-1]["is_final"] and got[-1]["text"] == expected["offline"]["long27"]["text"]
    assert code == 1001
