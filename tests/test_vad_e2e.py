"""FSMN-VAD end to end from audio: FunASR's segments to the millisecond, streaming == one-shot, edge cases."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED, needs_shared
from paraformer_ext.audio import AudioError, load_audio, resample

pytestmark = needs_shared
MODES = {"default": None, "fixed800": 800}


@pytest.fixture(scope="module")
def vad(vad_model_dir):
    from paraformer_ext.vad import FsmnVad

    return FsmnVad.load(vad_model_dir)


@pytest.fixture(scope="module")
def golden():
    return json.loads((SHARED / "golden" / "vad" / "segments.json").read_text())["files"]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """The five golden files; vad_4min.wav is rebuilt (bit-exact, sha256 checked) by the golden script."""
    out = tmp_path_factory.mktemp("vad_audio")
    script = SHARED / "golden" / "vad" / "make_vad_audio.py"
    subprocess.run([sys.executable, str(script), "--only", "vad_4min", "--out-dir", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    audio = SHARED / "audio"
    return {
        "asr_example": audio / "asr_example.wav",
        "mid": audio / "mid.wav",
        "long": audio / "long.wav",
        "vad_62s": SHARED / "golden" / "vad" / "vad_62s.wav",
        "vad_4min": out / "vad_4min.wav",
    }


@pytest.mark.parametrize("stem", ["asr_example", "mid", "long", "vad_62s", "vad_4min"])
def test_golden_file(vad, golden, wavs, stem):
    """Segments identical to FunASR 1.4.16 in both modes; posteriors within 1e-5 of FunASR's."""
    info = golden[stem + ".wav"]
    st = vad.stream(keep_posteriors=True)
    segs = []
    for piece in vad._pieces(wavs[stem], None, 60.0):
        segs += st.accept(piece)
    segs += st.finish()
    assert st.num_samples == info["num_samples"]
    assert segs == info["segments"]["default"]
    assert st.postprocessor.chunk_end_sil_ms == [c["max_end_sil_ms"] for c in info["chunks"]["default"]]
    p = st.posteriors()
    ref = torch.from_numpy(np.load(SHARED / "golden" / "vad" / "p_sil_all.npz")[stem]).double()
    assert p.shape == ref.shape == (info["num_frames"],)
    assert (p - ref).abs().max().item() < 1e-5
    assert vad.segments(wavs[stem], 800) == info["segments"]["fixed800"]


def test_features_match_funasr(vad, wavs):
    d = np.load(SHARED / "golden" / "vad" / "vad_62s.npz")
    x = load_audio(wavs["vad_62s"])
    f = vad.features(x)
    assert f.shape == (6210, 400) and f.dtype == torch.float32
    torch.testing.assert_close(f[:300], torch.from_numpy(d["feats_head"]), atol=1e-4, rtol=0)


def test_streaming_is_bit_identical_to_one_shot(vad, wavs):
    x = load_audio(wavs["vad_62s"])
    one = vad.posteriors(x, chunk_seconds=1000.0)  # the whole file in one piece
    for cs in (60.0, 7.3):
        assert torch.equal(vad.posteriors(x, chunk_seconds=cs), one), cs
    rng = np.random.default_rng(0)
    st = vad.stream(keep_posteriors=True)
    segs, i = [], 0
    while i < x.numel():
        n = int(rng.choice([1, 159, 160, 161, 399, 400, 4001, 48000]))
        segs += st.accept(x[i : i + n].numpy())  # numpy pieces too
        i += n
    segs += st.finish()
    assert torch.equal(st.posteriors(), one)
    assert segs == vad.segments(x)


def test_iter_segments_from_pieces_and_disk(vad, golden, wavs):
    info = golden["vad_4min.wav"]
    got = list(vad.iter_segments(wavs["vad_4min"], 800, chunk_seconds=45.0))
    assert got == info["segments"]["fixed800"]
    x = load_audio(wavs["vad_4min"])
    pieces = (x[i : i + 12345] for i in range(0, x.numel(), 12345))
    assert list(vad.iter_segments(pieces)) == info["segments"]["default"]


def test_array_inputs(vad, golden, wavs):
    info = golden["vad_62s.wav"]
    pcm, sr = sf.read(wavs["vad_62s"], dtype="int16")
    assert vad.segments(pcm) == info["segments"]["default"]  # int16 is scaled by load_audio
    assert vad.segments(torch.from_numpy(pcm.astype(np.float32) / 32768)) == info["segments"]["default"]
    assert vad.segments(wavs["vad_62s"].read_bytes(), 800) == info["segments"]["fixed800"]  # encoded bytes
    with open(wavs["vad_62s"], "rb") as fobj:
        assert vad.segments(fobj) == info["segments"]["default"]
    stereo = np.stack([pcm, pcm])  # (C, N) arrays are averaged to mono by load_audio
    assert vad.segments(stereo) == info["segments"]["default"]
    # another sample rate: resampled to 16 kHz first (as load_audio does for files)
    x48 = resample(torch.from_numpy(pcm.astype(np.float32) / 32768), 16000, 48000)
    from_48k = vad.segments(x48, sample_rate=48000)
    assert from_48k == vad.segments(load_audio(x48, sample_rate=48000))
    ref = info["segments"]["default"]
    assert len(from_48k) == len(ref)
    assert max(abs(a - b) for s, r in zip(from_48k, ref) for a, b in zip(s, r)) <= 30


def test_file_formats(vad, golden, wavs, tmp_path):
    info = golden["vad_62s.wav"]
    x, _ = sf.read(wavs["vad_62s"], dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([x, x], axis=1), 16000, subtype="FLOAT")
    assert vad.segments(stereo) == info["segments"]["default"]
    flac = tmp_path / "a.flac"
    sf.write(flac, x, 16000)
    assert vad.segments(str(flac), 800) == info["segments"]["fixed800"]
    for sr in (8000, 44100):
        other = tmp_path / f"{sr}.wav"
        sf.write(other, resample(torch.from_numpy(x[: 16000 * 25]), 16000, sr).numpy(), sr, subtype="FLOAT")
        # resampled piece by piece while streaming: the same as resampling the whole file up to rounding
        whole = load_audio(other)
        assert (vad.posteriors(other) - vad.posteriors(whole)).abs().max().item() < 1e-5
        assert vad.segments(other) == vad.segments(whole)


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000])
def test_stream_resampler_equals_one_shot(sr):
    from paraformer_ext.audio import StreamResampler

    g = torch.Generator().manual_seed(sr)
    rng = np.random.default_rng(sr)
    for n in (0, 1, 7, 1000, 50000, 200000):
        x = torch.randn(n, generator=g) * 0.1
        rs, outs, i = StreamResampler(sr), [], 0
        while i < n:
            k = int(rng.integers(1, 9000))
            outs.append(rs.accept(x[i : i + k]))
            i += k
        outs.append(rs.finish())
        y = torch.cat(outs)
        ref = resample(x, sr, 16000) if n else torch.zeros(0)
        assert y.shape == ref.shape
        if n:
            assert (y - ref).abs().max().item() < 1e-6


def test_no_speech_and_tiny_inputs(vad, tmp_path):
    assert vad.segments(np.zeros(16000 * 5, dtype=np.float32)) == []
    rng = np.random.default_rng(0)
    assert vad.segments((rng.standard_normal(16000 * 70) * 1e-3).astype(np.float32)) == []  # -60 dBFS noise
    for n in (0, 1, 399):  # FunASR crashes under 400 samples (spec §9): no frame, no speech
        assert vad.segments(np.full(n, 0.1, dtype=np.float32)) == []
    assert vad.posteriors(np.zeros(399, dtype=np.float32)).shape == (0,)
    assert vad.posteriors(np.zeros(400, dtype=np.float32)).shape == (1,)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    assert vad.segments(empty) == []


def test_exactly_60_seconds(vad, golden, wavs):
    """N = 960000 samples: FunASR has a second, empty chunk (frames [5996, 2]); one sample less has one."""
    x = load_audio(wavs["vad_62s"])
    full = golden["vad_62s.wav"]["segments"]["default"]
    for n, chunks in ((960000, [1850, 50]), (959999, [1850])):
        st = vad.stream()
        segs = st.accept(x[:n]) + st.finish()
        assert st.postprocessor.chunk_end_sil_ms == chunks
        # the first segments are the full file's; the last one (speech across 60 s) ends at the last frame
        assert segs[:-1] == full[:-1]
        assert segs[-1] == [full[-1][0], 5998 * 10]


def test_errors(vad, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not audio")
    with pytest.raises(AudioError, match="bad.wav"):
        vad.segments(bad)
    with pytest.raises(AudioError, match="does not exist"):
        vad.segments(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="1-D"):
        vad.stream().accept(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        vad.stream().accept(np.zeros(100, dtype=np.int16))
    st = vad.stream()
    st.finish()
    with pytest.raises(RuntimeError, match="finished"):
        st.accept(np.zeros(10, dtype=np.float32))


def test_device(vad_model_dir, wavs, golden, device):
    from paraformer_ext.vad import FsmnVad

    v = FsmnVad.load(vad_model_dir, device=device)
    p = v.posteriors(wavs["vad_62s"])
    ref = torch.from_numpy(np.load(SHARED / "golden" / "vad" / "p_sil_all.npz")["vad_62s"]).double()
    assert (p - ref).abs().max().item() < 1e-5
    assert v.segments(wavs["vad_62s"]) == golden["vad_62s.wav"]["segments"]["default"]


def test_reference_path_without_kernels(vad_model_dir, wavs, golden):
    from paraformer_ext.vad import FsmnVad

    v = FsmnVad.load(vad_model_dir, kernels=False)
    assert v.segments(wavs["vad_62s"], 800) == golden["vad_62s.wav"]["segments"]["fixed800"]
