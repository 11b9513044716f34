"""The shape the next capabilities build on: one rule for kernels=, the engine's narrow Pipeline interface,
the model's own sample rate, the VAD without downloads or notes, FunASR's result keys."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import yaml

import paraformer_ext
from paraformer_ext import _ext, load
from paraformer_ext.audio import resample
from paraformer_ext.engine import Engine
from paraformer_ext.pipeline import Pipeline
from paraformer_ext.results import Result
from paraformer_ext.synthetic import make_random_model, synthetic_speech


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("arch") / "small", "small")


@pytest.fixture(scope="module")
def model_dir_8k(tmp_path_factory, model_dir):
    """The same weights declared as an 8 kHz model (frontend_conf.fs = 8000)."""
    d = tmp_path_factory.mktemp("arch8k") / "small8k"
    d.mkdir()
    for f in os.listdir(model_dir):
        if os.path.isfile(model_dir / f):
            (d / f).write_bytes((model_dir / f).read_bytes())
    conf = yaml.safe_load((d / "config.yaml").read_text())
    conf["frontend_conf"]["fs"] = 8000
    (d / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True))
    return d


# every op of csrc/registration.cpp
OUR_OPS = ("fsmn_memory", "fsmn_memory_weight_grad", "cif", "cif_backward", "quantize_rows", "int8_linear_epilogue",
           "int8_linear_epilogue_quantize", "layer_norm_quantize_rows", "quantize_rows_split", "out_proj_argmax")


def _speech(seconds: float, seed: int) -> np.ndarray:
    return synthetic_speech(seconds, seed).astype(np.float32)


# --- kernels= ---------------------------------------------------------------------------------------------


def test_use_kernels_rule(monkeypatch):
    assert _ext.use_kernels(False, "cpu") is False
    if _ext.has_kernels():
        assert _ext.use_kernels(True, "cpu") is True and _ext.use_kernels(None, "cpu") is True
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_IMPORT_ERROR", ImportError("undefined symbol: _ZN3c10"))
    monkeypatch.setattr(_ext, "_warned", set())
    with pytest.raises(_ext.KernelsUnavailableError, match="failed to import.*undefined symbol.*pip install"):
        _ext.use_kernels(True, "cpu")
    with pytest.warns(RuntimeWarning, match="reference.*undefined symbol.*kernels=False") as rec:
        assert _ext.use_kernels(None, "cpu") is False
        assert _ext.use_kernels(None, "cpu") is False
    assert len(rec) == 1  # once, not per call
    assert "error" in _ext.build_info() and "undefined symbol" in _ext.build_info()["error"]


def test_kernels_true_without_cuda_kernels_raises():
    if _ext.has_cuda_kernels():
        pytest.skip("this build has CUDA kernels")
    with pytest.raises(_ext.KernelsUnavailableError, match="without CUDA kernels"):
        _ext.use_kernels(True, "cuda")


def test_load_without_extension_raises_or_warns(model_dir, monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_IMPORT_ERROR", ImportError("no _C"))
    monkeypatch.setattr(_ext, "_warned", set())
    with pytest.raises(_ext.KernelsUnavailableError):
        load(model_dir, kernels=True)
    with pytest.warns(RuntimeWarning, match="no _C"):
        asr = load(model_dir)
    assert asr.kernels is False and not any(getattr(m, "kernels", False) for m in asr.model.modules())


def test_kernels_false_runs_the_references_everywhere(model_dir, monkeypatch):
    """kernels=False: the predictor runs the oracle cif_ref, the VAD the FSMN reference, no compiled op at all."""
    from paraformer_ext.ops import cif as cif_mod

    calls = []
    real_ref = cif_mod.cif_ref
    monkeypatch.setattr(cif_mod, "cif_ref", lambda *a, **k: calls.append(1) or real_ref(*a, **k))

    def no_op(*a, **k):
        raise AssertionError("a compiled op (or the fused oneDNN path) ran under kernels=False")

    if _ext.has_kernels():
        for name in OUR_OPS:
            monkeypatch.setattr(torch.ops.paraformer_ext, name, no_op)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", no_op, raising=False)
    asr = load(model_dir, kernels=False)
    x = _speech(3.0, 1)
    r = asr.transcribe(x)[0]
    assert calls and "error" not in r
    # a long input goes through the VAD, which must follow kernels=False too
    long = np.concatenate([_speech(8.0, s) for s in range(3)])
    eng = asr.engine(long_audio_s=5.0)
    list(eng.run([long]))
    assert eng._vad is not None and eng._vad.encoder.kernels is False


def test_vad_follows_the_recognizers_kernels(model_dir):
    if not _ext.has_kernels():
        pytest.skip("compiled extension not built")
    asr = load(model_dir, kernels=True)
    eng = asr.engine()
    assert eng._vad_model().encoder.kernels is True


# --- the narrow engine ------------------------------------------------------------------------------------


def test_engine_needs_only_a_pipeline(model_dir):
    asr = load(model_dir, kernels=False)
    p = Pipeline(asr.frontend, asr.model, asr.tokens, torch.device("cpu"))
    x = _speech(4.0, 2)
    got = [r for _, r in Engine(p).run([x])]
    assert got == asr.transcribe(x)
    # the same pipeline, fed padded batches directly (what the server's queue and the trainer's validation do)
    wave = torch.zeros(2, 16000 * 4)
    wave[0] = torch.from_numpy(x)
    wave[1, :16000 * 2] = torch.from_numpy(x[: 16000 * 2])
    lens = torch.tensor([16000 * 4, 16000 * 2])
    batch = p.recognize(wave, lens)
    assert batch[0]["token_ids"] == got[0]["token_ids"]
    feats, flens = p.features(wave, lens)
    assert [int(n) for n in flens] == [p.feature_frames(int(n)) for n in lens]
    assert p.decode(feats, flens) == batch


# --- sample rates -----------------------------------------------------------------------------------------


def test_arrays_say_their_rate(model_dir):
    asr = load(model_dir, kernels=False)
    x16 = torch.from_numpy(_speech(3.0, 3))
    x48 = resample(x16, 16000, 48000)
    at16 = resample(x48, 48000, 16000)
    assert asr.transcribe(x48.numpy(), sample_rate=48000) == asr.transcribe(at16.numpy())
    # without sample_rate an array is 16 kHz, as in FunASR (generate(fs=16000))
    assert asr.transcribe(x16.numpy()) == asr.transcribe(x16.numpy(), sample_rate=16000)


def test_model_at_8khz_is_fed_8khz(model_dir_8k, tmp_path):
    import soundfile as sf

    asr = load(model_dir_8k, kernels=False)
    assert asr.sample_rate == 8000 and asr.pipeline.min_samples == 200
    x16 = torch.from_numpy(_speech(3.0, 4))
    x8 = resample(x16, 16000, 8000)
    want = asr.pipeline.recognize(x8[None], torch.tensor([x8.numel()]))[0]
    assert {k: v for k, v in asr.transcribe(x16.numpy())[0].items() if k != "key"} == want  # 16 kHz array
    assert {k: v for k, v in asr.transcribe(x8.numpy(), sample_rate=8000)[0].items() if k != "key"} == want
    f = tmp_path / "a16.wav"
    sf.write(f, x16.numpy(), 16000, subtype="FLOAT")
    r = asr.transcribe(str(f))[0]
    assert r["token_ids"] == want["token_ids"]  # the file's 16 kHz resampled to the model's 8 kHz


# --- VAD failures and result keys -------------------------------------------------------------------------


def test_vad_failure_warns_with_the_fix_and_uses_windows(model_dir, tmp_path):
    asr = load(model_dir, kernels=False)
    long = np.concatenate([_speech(8.0, s) for s in range(3)])
    with pytest.warns(RuntimeWarning, match="could not be loaded.*vad_model_dir.*segmenter='window'"):
        r = asr.transcribe(long, long_audio_s=10.0, window_s=10.0, vad_model_dir=str(tmp_path / "missing"))[0]
    assert r["segments"] == [[0, 10000], [10000, 20000], [20000, 24000]]
    assert "note" not in r
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asr.transcribe(long, long_audio_s=10.0, window_s=10.0, segmenter="window")


def test_results_use_only_funasr_keys_and_ours_documented(model_dir, tmp_path):
    asr = load(model_dir, kernels=False)
    allowed = set(Result.__annotations__)
    long = np.concatenate([_speech(8.0, s) for s in range(3)])
    res = asr.transcribe([_speech(2.0, 5), long, str(tmp_path / "missing.wav")], timestamps=True, long_audio_s=10.0)
    for r in res:
        assert set(r) <= allowed, set(r) - allowed
    assert set(res[0]) == {"key", "text", "token_ids", "timestamp"}
    assert set(res[1]) == {"key", "text", "token_ids", "timestamp", "segments"}
    assert set(res[2]) == {"key", "error"}


def test_ci_has_the_compiled_extension():
    """On CI the extension must build: tests that need it skip where it is absent, so a broken build would
    otherwise pass as a run of skips."""
    if not os.environ.get("CI"):
        pytest.skip("only asserted on CI (CI=true)")
    assert paraformer_ext.has_kernels(), paraformer_ext.build_info()
