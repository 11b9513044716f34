"""The batched engine: any batching gives every input its batch-1 result, in input order; lazy reading;
long inputs cut into segments with offset timestamps; OOM splits; progress."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED, golden_checkpoint, needs_shared
from paraformer_ext import load, load_audio
from paraformer_ext.audio import audio_num_samples, read_audio_range
from paraformer_ext.engine import Engine, EngineOptions

pytestmark = needs_shared


@pytest.fixture(scope="module")
def asr():
    return load(golden_checkpoint("small"), kernels=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """12 clips of 0.5-8 s cut from the shared audio, as files (some 8 kHz / stereo) and arrays."""
    d = tmp_path_factory.mktemp("clips")
    speech = torch.cat([load_audio(SHARED / "audio" / f) for f in ("asr_example.wav", "mid.wav", "long.wav")])
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        n = int(rng.uniform(0.5, 8.0) * 16000)
        s = int(rng.integers(0, speech.numel() - n))
        x = speech[s : s + n]
        if i % 4 == 0:
            items.append(x.numpy())  # array input
            continue
        p = d / f"clip{i:02d}.wav"
        data = (x.numpy() * 32768).round().clip(-32768, 32767).astype(np.int16)
        if i % 4 == 1:
            sf.write(p, np.stack([data, data], 1), 16000, subtype="PCM_16")  # stereo
        else:
            sf.write(p, data, 16000, subtype="PCM_16")
        items.append(str(p))
    return items


def test_any_batching_gives_batch1_results_in_order(asr, clips):
    single = [asr.transcribe([c], timestamps=True)[0] for c in clips]
    keys = [f"array_{i}" if not isinstance(c, str) else c.rsplit("/", 1)[1][:-4] for i, c in enumerate(clips)]
    strip = lambda r: {k: v for k, v in r.items() if k != "key"}  # noqa: E731
    for opts in [dict(max_batch_frames=300), dict(max_batch_frames=10**6), dict(max_batch_frames=10**6, max_padding=1.0),
                 dict(batch_size=3)]:
        got = asr.transcribe(clips, timestamps=True, **opts)
        assert [r["key"] for r in got] == keys
        assert [strip(r) for r in got] == [strip(r) for r in single]


def test_frame_budget_is_respected(asr, clips):
    eng = asr.engine(max_batch_frames=400)
    segs = []
    for i, c in enumerate(clips):
        src = eng._source(c, i, str(i), None)
        segs += eng._segments(src, __import__("paraformer_ext.engine", fromlist=["_Pending"])._Pending(0))
    batches = eng.plan(segs)
    assert sum(len(b) for b in batches) == len(clips)
    for b in batches:
        longest = max(asr.pipeline.feature_frames(s.num_samples) for s in b)
        assert len(b) == 1 or len(b) * longest <= 400
    lens = [max(s.num_samples for s in b) for b in batches]
    assert lens == sorted(lens, reverse=True)  # longest first


def _plan(eng, clips):
    segs = []
    for i, c in enumerate(clips):
        segs += eng._segments(eng._source(c, i, str(i), None), __import__("paraformer_ext.engine", fromlist=["_Pending"])._Pending(0))
    return eng.plan(segs)


def test_padding_share_is_respected(asr, clips):
    assert asr.engine().opt.max_padding == 0.1  # the CPU default
    for share in (0.0, 0.2, 0.5):
        batches = _plan(asr.engine(max_batch_frames=10**6, max_padding=share), clips)
        assert sum(len(b) for b in batches) == len(clips)
        for b in batches:
            t = [asr.pipeline.feature_frames(s.num_samples) for s in b]
            assert len(b) == 1 or len(b) * max(t) - sum(t) <= share * len(b) * max(t)
    assert len(_plan(asr.engine(max_batch_frames=10**6, max_padding=1.0), clips)) == 1
    with pytest.raises(ValueError):
        asr.engine(max_padding=1.5)


def test_streaming_reads_lazily(asr, clips, monkeypatch):
    reads = []
    import paraformer_ext.engine as engine_mod

    real = engine_mod.read_audio_range
    monkeypatch.setattr(engine_mod, "read_audio_range", lambda p, a, b, **k: reads.append(p) or real(p, a, b, **k))
    files = [c for c in clips if isinstance(c, str)]
    it = asr.transcribe_iter(files, batch_size=2)
    first = next(it)
    assert len(reads) <= 2  # one batch read, not all files
    rest = list(it)
    assert len(rest) + 1 == len(files) and len(reads) == len(files)
    assert {i for i, _ in rest} | {first[0]} == set(range(len(files)))


def test_oom_splits_batches(asr, clips, monkeypatch):
    eng = asr.engine(timestamps=False)
    real = eng._run_batch

    def flaky(batch, hotwords=None):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(batch, hotwords)

    monkeypatch.setattr(eng, "_run_batch", flaky)
    got = dict(eng.run(clips))
    assert eng.oom_splits > 0
    assert [got[i] for i in range(len(clips))] == asr.transcribe(clips, batch_size=1)
    # per-segment hotword graphs (the server's) are split with their segments
    from paraformer_ext.engine import Segment, Source

    waves = [load_audio(SHARED / "audio" / f) for f in ("asr_example.wav", "mid.wav", "long.wav", "mid.wav")]
    batch = [Segment(Source(i, f"w{i}", None, w, w.numel(), 16000), 0, 0, w.numel()) for i, w in enumerate(waves)]
    first = asr.transcribe(waves[0].numpy(), sample_rate=16000)[0]["token_ids"]
    graph = asr.pipeline.compile_hotwords({asr.tokens[first[0]] + asr.tokens[first[1]]: 100})
    assert len(graph) == 1  # the word is in the vocabulary, so the odd segments really search
    graphs = [graph if i % 2 else None for i in range(len(batch))]
    split = eng.run_batch(batch, hotwords=graphs)
    whole = asr.engine(timestamps=False).run_batch(batch, hotwords=graphs)
    assert split == whole and all(("hotwords" in r) == (g is not None) for r, g in zip(split, graphs))


def test_long_input_windows_and_offsets(asr, tmp_path):
    """A 25 s input (over the 20 s threshold) is cut into 10 s windows; each window's timestamps are offset."""
    x = torch.cat([load_audio(SHARED / "audio" / "long.wav")] * 3 + [load_audio(SHARED / "audio" / "asr_example.wav")])
    r = asr.transcribe([x.numpy()], timestamps=True, segmenter="window", window_s=10.0)[0]
    n = x.numel()
    assert r["segments"] == [[0, 10000], [10000, 20000], [20000, n * 1000 // 16000]]
    assert "note" not in r  # FunASR's keys only: a window split the user asked for needs no remark
    parts = [asr.transcribe([x[i * 160000 : (i + 1) * 160000].numpy()], timestamps=True)[0] for i in range(3)]
    assert r["token_ids"] == sum((p["token_ids"] for p in parts), [])
    assert r["text"] == " ".join(p["text"] for p in parts)
    assert r["timestamp"] == sum(([[a + 10000 * k, b + 10000 * k] for a, b in p["timestamp"]] for k, p in enumerate(parts)), [])


def test_progress_bar_runs(asr, clips, capsys):
    asr.transcribe(clips[:3], progress=True)
    assert "audio" in capsys.readouterr().err


@pytest.mark.parametrize("sr", [16000, 8000, 44100, 22050])
def test_read_audio_range_equals_slices(tmp_path, sr):
    rng = np.random.default_rng(sr)
    data = (rng.standard_normal((sr * 3, 2)) * 3000).astype(np.int16)
    p = tmp_path / f"x{sr}.wav"
    sf.write(p, data, sr, subtype="PCM_16")
    whole = load_audio(p)
    assert audio_num_samples(p) == whole.numel()
    for a, b in [(0, 100), (1234, 17777), (16000, 32000), (whole.numel() - 500, whole.numel()), (5, 5)]:
        part = read_audio_range(p, a, b)
        assert part.shape == (b - a,)
        assert torch.allclose(part, whole[a:b], atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        read_audio_range(p, 0, whole.numel() + 1)


def test_long_input_vad_segments(asr, vad_model_dir):
    """vad_62s.wav (62 s, over the 20 s threshold): FunASR's VAD segments (default mode), each transcribed as
    FunASR's VAD pipeline does (the segment's samples alone), texts joined by a space, timestamps offset."""
    import json

    path = SHARED / "golden" / "vad" / "vad_62s.wav"
    want = json.loads((SHARED / "golden" / "vad" / "segments.json").read_text())["files"]["vad_62s.wav"]["segments"]["default"]
    r = asr.transcribe([str(path)], timestamps=True, vad_model_dir=str(vad_model_dir))[0]
    assert r["segments"] == want and "note" not in r
    x = load_audio(path)
    parts = [asr.transcribe([x[s * 16 : e * 16].numpy()], timestamps=True)[0] for s, e in want]
    assert r["text"] == " ".join(p["text"] for p in parts if p["text"])
    assert r["token_ids"] == sum((p["token_ids"] for p in parts), [])
    assert r["timestamp"] == sum(([[a + s, b + s] for a, b in p["timestamp"]] for (s, _), p in zip(want, parts)), [])


def test_no_speech_gives_empty_result(asr, vad_model_dir):
    quiet = np.random.default_rng(1).normal(0, 1e-4, 16000 * 25).astype(np.float32)  # 25 s of faint noise
    r = asr.transcribe([quiet], vad_model_dir=str(vad_model_dir))[0]
    assert r["text"] == "" and r["token_ids"] == [] and r["segments"] == []
