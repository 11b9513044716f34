"""Streaming recognition (stream.py, model/streaming.py) against FunASR 1.4.16's own chunk-by-chunk output
(../shared/golden/stream): token ids of every chunk exactly, encoder outputs to the offline goldens' tolerance
(tests/test_parity.py: 1e-4), both files, 600 and 480 ms chunks, kernels on and off. Then the API: any cut of
the input gives the golden result, errors, and many streams batched equal to each alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED, needs_shared, stream_checkpoint
from paraformer_ext import has_kernels, load, load_audio
from paraformer_ext.stream import StreamError, online_lfr

pytestmark = needs_shared

KERNELS = [False] + ([True] if has_kernels() else [])
ENCODER_TOL = 1e-4  # test_parity.py's encoder_out tolerance


def golden():
    return json.loads((SHARED / "golden" / "stream" / "stream.json").read_text(encoding="utf-8"))


CASES = sorted(golden()["cases"]) if SHARED is not None else []
_models: dict = {}


def model(kernels: bool, frontend: str | None = None):
    key = (kernels, frontend)
    if key not in _models:
        _models[key] = load(stream_checkpoint(frontend), kernels=kernels)
    return _models[key]


def wav(name: str) -> torch.Tensor:
    return load_audio(str(SHARED / "audio" / name))


def new_stream(asr, case: dict):
    return asr.stream(chunk_size=case["chunk_size"], encoder_look_back=case["encoder_chunk_look_back"],
                      decoder_look_back=case["decoder_chunk_look_back"])


@pytest.mark.parametrize("kernels", KERNELS, ids=lambda k: "kernels" if k else "reference")
@pytest.mark.parametrize("name", CASES)
def test_golden_chunks(name, kernels):
    torch.set_num_threads(1)
    case = golden()["cases"][name]
    g = np.load(SHARED / "golden" / "stream" / f"{name}.npz")
    asr = model(kernels)
    s = new_stream(asr, case)
    s.keep_encoder_out = True
    x = wav(case["wav"])
    worst = 0.0
    for i, ch in enumerate(case["chunks"]):
        a, b = ch["samples"]
        s.accept(x[a:b], 16000)
        if ch["is_final"]:
            s.finish()
        assert len(s.chunk_results) == i + 1, "one model chunk per golden chunk"
        r = s.chunk_results[i]
        assert r.token_ids == ch["token_ids"], f"chunk {i}"
        assert r.text == ch["text"], f"chunk {i}"
        assert len(r.raw_ids) == int(ch["token_length"]), f"chunk {i}: CIF token count"
        key = f"chunk{i}_encoder_out"
        if key in g.files:
            assert tuple(r.encoder_out.shape) == g[key].shape
            worst = max(worst, float(np.abs(r.encoder_out.float().numpy() - g[key]).max()))
    assert worst < ENCODER_TOL, worst
    assert s.finished
    want = [t for ch in case["chunks"] for t in ch["token_ids"]]
    assert s.result()["token_ids"] == want
    assert s.result()["text"] == "".join(ch["text"] for ch in case["chunks"])


@pytest.mark.parametrize("frontend", [None, "WavFrontendOnline"])
def test_any_cut_of_the_input_gives_the_same_result(frontend):
    """The stream buffers: accept() of any split equals the golden chunking (and the chunks' results)."""
    case = golden()["cases"]["stream_long_8"]
    asr = model(False, frontend)
    x = wav(case["wav"])
    ref = new_stream(asr, case)
    for ch in case["chunks"]:
        ref.accept(x[ch["samples"][0]: ch["samples"][1]], 16000)
    ref.finish()
    rng = np.random.default_rng(0)
    for trial in range(2):
        s = new_stream(asr, case)
        pos = 0
        while pos < x.numel():
            n = int(rng.integers(1, 12000)) if trial else int(rng.integers(1, 700))
            s.accept(x[pos: pos + n].numpy(), 16000)  # numpy float32 too
            pos += n
        out = s.finish()
        assert out == ref.result()
        assert [r.token_ids for r in s.chunk_results] == [r.token_ids for r in ref.chunk_results]
    if frontend is None:
        assert ref.result()["token_ids"] == [t for ch in case["chunks"] for t in ch["token_ids"]]


def test_online_frontend_features_are_the_whole_streams():
    """WavFrontendOnline carries samples and fbank frames: the chunks' features together are the offline
    frontend's features of the whole audio (when the final chunk is not a tail chunk)."""
    asr = model(False, "WavFrontendOnline")
    eng = asr._streaming_engine()
    x = wav("asr_example.wav")
    st = eng.features.new_state(x.device)
    feats, stride = [], 9600
    for a in range(0, x.numel(), stride):
        c = x[a: a + stride]
        feats.append(eng.features([c], [st], [a + stride >= x.numel()])[0])
    assert x.numel() % stride >= 960
    got = torch.cat(feats)
    want, n = asr.frontend(x[None], None)
    assert got.shape == want[0, : int(n[0])].shape
    assert torch.equal(got, want[0])


def test_online_lfr_windows():
    """Not final: only complete windows, the rest carried; final: FunASR's last-frame padding."""
    f = torch.arange(20.0)[:, None]
    out, rest = online_lfr(f, 7, 6, False)  # windows at 0, 6 (needs 12 < 20), 12 (needs 18 < 20)
    assert out.shape == (3, 7) and out[1].tolist() == list(range(6, 13))
    assert rest[:, 0].tolist() == [18.0, 19.0]
    out, rest = online_lfr(f[:9], 7, 6, True)  # ceil((9 - 3) / 6) = 1 window
    assert out.tolist() == [list(range(0, 7))]
    out, _ = online_lfr(f[:14], 7, 6, True)  # ceil(11 / 6) = 2: frames 6..12 then 13 repeated
    assert out[1].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]


def test_tail_chunk():
    """A stream whose length is a multiple of the chunk ends with FunASR's tail chunk: no frontend, the carried
    c0 + c2 embedded frames scaled by sqrt(d) again, every alpha counted, the tail weight added."""
    asr = model(False)
    s = asr.stream(chunk_size=10)
    s.keep_encoder_out = True
    x = wav("asr_example.wav")[: 9600 * 3 + 500]
    s.accept(x, 16000)
    overlap = s._state.overlap.clone()
    s.finish()
    assert len(s.chunk_results) == 4
    assert s.chunk_results[-1].encoder_out.shape[0] == 5  # only the carried frames
    # the same encoder input through the model's own path
    import math
    from paraformer_ext.model.streaming import StreamState
    st = StreamState(overlap=overlap)
    inp = asr._streaming_engine().model._embed(None, st, s.chunk, tail=True)
    assert torch.equal(inp, overlap * math.sqrt(256))


def test_partial_reports_new_tokens_once():
    case = golden()["cases"]["stream_asr_example_10"]
    asr = model(False)
    s = new_stream(asr, case)
    x = wav(case["wav"])
    seen = []
    for ch in case["chunks"]:
        s.accept(x[ch["samples"][0]: ch["samples"][1]], 16000)
        if ch["is_final"]:
            s.finish()
        p = s.partial()
        assert [t["id"] for t in p["new_tokens"]] == ch["token_ids"]
        seen += p["new_tokens"]
        for t in p["new_tokens"]:
            assert 0 <= t["start"] <= t["end"] <= round(ch["samples"][1] / 16)
    assert p["is_final"] and p["text"] == s.result()["text"]
    assert [t["start"] for t in seen] == sorted(t["start"] for t in seen)
    assert s.partial()["new_tokens"] == []


def test_errors():
    asr = model(False)
    s = asr.stream(chunk_size=10)
    with pytest.raises(TypeError, match="32768"):
        s.accept(np.zeros(100, dtype=np.int16), 16000)
    with pytest.raises(TypeError, match="float"):
        s.accept(torch.zeros(100, dtype=torch.int32), 16000)
    with pytest.raises(ValueError, match="1-D"):
        s.accept(torch.zeros(2, 100), 16000)
    with pytest.raises(ValueError, match=r"8000 Hz differs from the model's 16000 Hz; resample first"):
        s.accept(torch.zeros(100), 8000)
    with pytest.raises(ValueError, match="chunk_size"):
        asr.stream(chunk_size=[0, 10])
    s.accept(torch.zeros(100), 16000)
    s.finish()
    with pytest.raises(StreamError, match="after finish"):
        s.accept(torch.zeros(100), 16000)
    with pytest.raises(StreamError):
        s.finish()


@pytest.mark.parametrize("kernels", KERNELS, ids=lambda k: "kernels" if k else "reference")
@pytest.mark.parametrize("frontend", [None, "WavFrontendOnline"])
def test_batched_streams_equal_each_alone(kernels, frontend):
    """Streams of different lengths, start times, chunk positions and ends decoded by one batched step per
    round give each its result alone (token ids and timestamps exactly, encoder outputs to 1e-5)."""
    torch.set_num_threads(2)
    asr = model(kernels, frontend)
    a, b = wav("asr_example.wav"), wav("long.wav")
    sources = [a, b[:70000], b, a[:30000], b[5000:100000], a[:9600 * 4]]  # the last ends with a tail chunk
    starts = [0, 0, 2, 5, 1, 3]  # in rounds of 9600 samples
    alone = []
    for x in sources:
        s = asr.stream(chunk_size=10)
        s.keep_encoder_out = True
        s.accept(x, 16000)
        s.finish()
        alone.append(s)
    streams = [asr.stream(chunk_size=10) for _ in sources]
    for s in streams:
        s.keep_encoder_out = True
    pos = [0] * len(sources)
    rnd, steps = 0, 0
    while not all(s.finished for s in streams):
        for i, (s, x) in enumerate(zip(streams, sources)):
            if rnd < starts[i] or s.finished:
                continue
            n = 9600 if i % 2 else 7000  # feeders at different paces
            s.accept(x[pos[i]: pos[i] + n], 16000, decode=False)
            pos[i] += n
            if pos[i] >= x.numel():
                s.finish(decode=False)
        steps += asr.decode_streams(streams)
        rnd += 1
    assert steps < sum(len(s.chunk_results) for s in alone)  # chunks of different streams shared steps
    for s, ref in zip(streams, alone):
        assert s.result() == ref.result()
        assert len(s.chunk_results) == len(ref.chunk_results)
        for r, q in zip(s.chunk_results, ref.chunk_results):
            assert r.token_ids == q.token_ids
            assert (r.encoder_out - q.encoder_out).abs().max() < 1e-5
