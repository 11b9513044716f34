"""Audio reading (soundfile, as FunASR reads it) and resampling (torchaudio Resample's math, our own code)."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import paraformer_ext.audio as audio
from paraformer_ext.audio import AudioError, load_audio, resample

from conftest import SHARED, needs_shared


def sine(freq, sr, seconds, amp=0.5, phase=0.3):
    t = np.arange(int(round(sr * seconds))) / sr
    return amp * np.sin(2 * np.pi * freq * t + phase)


def ref_resample(x, orig_sr, new_sr, width=6, rolloff=0.99):
    """Direct float64 evaluation of y[j] = Σ_n x[n] h(n/orig − j/new), the formula, not the polyphase code."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * rolloff
    n = np.arange(len(x))
    out = np.zeros(-(-len(x) * new // orig))
    for j in range(len(out)):
        # torchaudio's kernel rounds the within-block phase (j mod new)/new to float32; so does the reference
        phase = float(np.float32((j % new) / new))
        t = np.clip(((n - (j // new) * orig) / orig - phase) * base, -width, width)
        h = np.where(t == 0, 1.0, np.sin(np.pi * t) / np.where(t == 0, 1.0, np.pi * t))
        out[j] = np.sum(x * h * np.cos(np.pi * t / width / 2) ** 2) * base / orig
    return out


def dominant_freq(y, sr):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    k = int(np.argmax(spec))
    # parabolic interpolation of the peak
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / len(y)


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------


def test_int16_wav_exact_values(tmp_path):
    ints = np.array([0, 1, -1, 2, 32767, -32768, 12345, -23456] * 100, dtype=np.int16)
    p = tmp_path / "a.wav"
    sf.write(p, ints, 16000, subtype="PCM_16")
    x = load_audio(p)
    assert x.dtype == torch.float32 and x.shape == (len(ints),) and x.is_contiguous()
    assert torch.equal(x, torch.from_numpy(ints.astype(np.float32) / 32768))
    assert torch.equal(load_audio(str(p)), x)
    assert torch.equal(x * 32768, torch.from_numpy(ints.astype(np.float32)))  # the frontend's ×32768 is exact


@needs_shared
def test_shared_wav_matches_int16_over_32768():
    p = SHARED / "audio" / "asr_example.wav"
    ints, sr = sf.read(str(p), dtype="int16")
    assert torch.equal(load_audio(p), torch.from_numpy(ints.astype(np.float32) / 32768))


def test_stereo_and_multichannel_are_averaged(tmp_path):
    left = np.array([1000, -2000, 3, 32767] * 50, dtype=np.int16)
    right = np.array([-1000, 2000, 4, 32767] * 50, dtype=np.int16)
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([left, right], 1), 16000, subtype="PCM_16")
    x = load_audio(p)
    ref = (torch.from_numpy(left.astype(np.float32)) / 32768 + torch.from_numpy(right.astype(np.float32)) / 32768) / 2
    assert x.shape == (200,) and torch.equal(x, ref)
    assert x[0] == 0 and x[2] == 3.5 / 32768
    chans = np.random.default_rng(0).uniform(-0.5, 0.5, (300, 3)).astype(np.float32)
    p3 = tmp_path / "three.wav"
    sf.write(p3, chans, 16000, subtype="FLOAT")
    assert torch.allclose(load_audio(p3), torch.from_numpy(chans).mean(1), atol=1e-7)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(tmp_path, sr):
    y = sine(440.0, sr, 1.0)
    p = tmp_path / f"s{sr}.wav"
    sf.write(p, y, sr, subtype="PCM_16")
    x = load_audio(p)
    assert x.shape == (-(-len(y) * 16000 // sr),)
    mid = x[2000:-2000].double().numpy()
    assert abs(dominant_freq(mid, 16000) - 440.0) < 0.5
    assert abs(np.abs(mid).max() - 0.5) < 5e-3
    # and against the same sine sampled at 16 kHz directly (the 0.3 rad phase lines up at t = 0)
    assert np.abs(mid - sine(440.0, 16000, 1.0)[2000:-2000]).max() < 2e-3
    # target_sr other than 16 kHz
    assert load_audio(p, target_sr=sr).shape == (len(y),)


def test_empty_and_unreadable_files_raise_audio_error(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty") as e:
        load_audio(empty)
    assert str(empty) in str(e.value)

    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(AudioError, match="cannot read") as e:
        load_audio(junk)
    assert str(junk) in str(e.value)

    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError) as e:
        load_audio(zero_bytes)
    assert str(zero_bytes) in str(e.value)

    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="does not exist") as e:
        load_audio(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    assert issubclass(AudioError, ValueError)


def test_bytes_and_file_objects(tmp_path):
    ints = (np.arange(800) % 200 - 100).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, ints, 16000, format="WAV", subtype="PCM_16")
    ref = torch.from_numpy(ints.astype(np.float32) / 32768)
    assert torch.equal(load_audio(buf.getvalue()), ref)
    buf.seek(0)
    assert torch.equal(load_audio(buf), ref)
    with pytest.raises(AudioError, match="bytes"):
        load_audio(b"garbage")


def test_file_rate_conflict(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, np.zeros(100, dtype=np.int16), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match="8000 Hz but sample_rate=16000"):
        load_audio(p, sample_rate=16000)
    assert load_audio(p, sample_rate=8000).shape == (200,)


# ---------------------------------------------------------------------------------------------------------
# arrays and tensors
# ---------------------------------------------------------------------------------------------------------


def test_arrays_are_scaled_by_their_dtype():
    i16 = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    assert torch.equal(load_audio(i16), torch.tensor(i16.astype(np.float32) / 32768))
    i32 = np.array([-(2**31), 0, 2**30], dtype=np.int32)
    assert load_audio(i32).tolist() == [-1.0, 0.0, 0.5]
    u8 = np.array([0, 128, 192], dtype=np.uint8)
    assert load_audio(u8).tolist() == [-1.0, 0.0, 0.5]
    f64 = np.array([0.1, -0.25, 0.5])
    out = load_audio(f64)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([0.1, -0.25, 0.5], dtype=torch.float32))
    t16 = torch.tensor([-32768, 16384], dtype=torch.int16)
    assert load_audio(t16).tolist() == [-1.0, 0.5]
    assert load_audio(torch.tensor([0.5, -0.5], dtype=torch.float64)).dtype == torch.float32
    be = np.array([0.5, -0.5], dtype=">f4")  # big-endian input
    assert load_audio(be).tolist() == [0.5, -0.5]


def test_array_channels_and_rates():
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 1000)).astype(np.float32)
    mono = torch.from_numpy(x).mean(0)
    assert torch.equal(load_audio(x), mono)  # (C, N)
    assert torch.equal(load_audio(x.T.copy()), mono)  # (N, C)
    assert torch.equal(load_audio(x[:1]), torch.from_numpy(x[0]))
    y = sine(300.0, 8000, 0.5).astype(np.float32)
    up = load_audio(y, sample_rate=8000)
    assert up.shape == (8000,) and torch.allclose(up, resample(torch.from_numpy(y), 8000, 16000))
    assert torch.equal(load_audio(y), torch.from_numpy(y))  # None: already at target_sr


def test_bad_arrays_raise_audio_error():
    with pytest.raises(AudioError, match="empty"):
        load_audio(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.array([0.0, np.nan]))
    with pytest.raises(AudioError, match="shape"):
        load_audio(np.zeros((2, 2, 2)))
    with pytest.raises(AudioError, match="dtype"):
        load_audio(np.array([1 + 2j]))
    with pytest.raises(AudioError, match="one audio at a time"):
        load_audio([0.1, 0.2])
    with pytest.warns(UserWarning, match="32768"):
        load_audio(np.array([3000.0, -200.0]))
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(np.zeros(10), sample_rate=0)


# ---------------------------------------------------------------------------------------------------------
# resample
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig,new", [(8000, 16000), (44100, 16000), (48000, 16000), (16000, 8000), (11025, 16000),
                                      (16000, 16001)])
def test_resample_matches_the_direct_formula(orig, new, device):
    x = np.random.default_rng(orig + new).uniform(-1, 1, 331)
    y = resample(torch.tensor(x, dtype=torch.float32, device=device), orig, new)
    ref = ref_resample(x, orig, new)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert np.abs(y.cpu().double().numpy() - ref).max() < 2e-5
    y64 = resample(torch.tensor(x, device=device), orig, new)
    assert y64.dtype == torch.float64 and np.abs(y64.cpu().numpy() - ref).max() < 1e-6  # float32 kernel


@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000, 96000])
def test_resample_keeps_a_sines_frequency_and_amplitude(orig, device):
    for freq in (100.0, 440.0, 1500.0):  # well inside the pass band (the 0.99 roll-off is gentle)
        y = resample(torch.tensor(sine(freq, orig, 1.0), dtype=torch.float32, device=device), orig, 16000)
        mid = y[1000:-1000].cpu().double().numpy()
        assert abs(dominant_freq(mid, 16000) - freq) < 0.5
        assert abs(np.abs(mid).max() - 0.5) < 5e-3


def test_resample_removes_content_above_the_new_nyquist():
    y = resample(torch.tensor(sine(7000.0, 48000, 1.0), dtype=torch.float32), 48000, 8000)  # 7 kHz > 4 kHz
    assert y[1000:-1000].abs().max() < 5e-3


def test_resample_lengths_identity_and_batches(device):
    for n in (0, 1, 2, 159, 160, 441, 1000, 4801):
        for orig, new in ((44100, 16000), (8000, 16000), (48000, 16000), (16000, 44100)):
            y = resample(torch.zeros(n, device=device), orig, new)
            assert y.shape == (math.ceil(n * new / orig),)
    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0)).to(device)
    assert resample(x, 16000, 16000) is x
    yb = resample(x, 44100, 16000)
    assert yb.shape == (3, math.ceil(5000 * 16000 / 44100))
    for i in range(3):
        assert torch.allclose(yb[i], resample(x[i], 44100, 16000), atol=1e-6)


def test_resample_chunking_is_invisible(monkeypatch):
    x = torch.randn(2, 30000, generator=torch.Generator().manual_seed(3))
    ref = resample(x, 48000, 16000)
    monkeypatch.setattr(audio, "_RESAMPLE_CHUNK", 1000)
    assert torch.allclose(resample(x, 48000, 16000), ref, atol=1e-6)


def test_resample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="orig_sr"):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(ValueError, match="new_sr"):
        resample(torch.zeros(10), 8000, 16000.5)
    with pytest.raises(TypeError, match="float"):
        resample(torch.zeros(10, dtype=torch.int16), 8000, 16000)
    with pytest.raises(ValueError, match="shape"):
        resample(torch.zeros(1, 1, 10), 8000, 16000)
