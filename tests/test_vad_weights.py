"""The fsmn-vad files: shipped in the package and hash-checked; user directories validated; never downloaded."""
from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from paraformer_ext.vad import weights as W
from paraformer_ext.vad.weights import MODEL_FILES, VadWeightsError, bundled_model_dir, resolve_model_dir, validate_model_dir


def test_shipped_files_match_the_pins_and_carry_the_notice(vad_model_dir):
    assert vad_model_dir == W.BUNDLED_DIR
    for name, sha in MODEL_FILES.items():
        assert hashlib.sha256((vad_model_dir / name).read_bytes()).hexdigest() == sha
    notice = (vad_model_dir / "NOTICE.txt").read_text()
    # the licence's conditions: source, authors and the model's name are kept
    assert "FunASR Model Open Source License" in notice and "Alibaba" in notice
    assert "speech_fsmn_vad_zh-cn-16k-common-pytorch" in notice


def test_loading_the_vad_runs_no_subprocess(monkeypatch):
    """Nothing is fetched at load or during a transcription (a download used to run here)."""
    from paraformer_ext.vad import FsmnVad

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no subprocess may run"))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("no subprocess may run"))
    vad = FsmnVad.load(kernels=False)
    assert vad.segments([0.0] * 16000) == []


def _copy_bundle(tmp_path, monkeypatch):
    d = tmp_path / "fsmn-vad"
    shutil.copytree(W.BUNDLED_DIR, d)
    monkeypatch.setattr(W, "BUNDLED_DIR", d)
    return d


def test_damaged_shipped_file_is_an_error(tmp_path, monkeypatch):
    d = _copy_bundle(tmp_path, monkeypatch)
    (d / "am.mvn").write_text("garbage")
    with pytest.raises(VadWeightsError, match="am.mvn has sha256 .* expected 6820fef9.*reinstall"):
        bundled_model_dir()


def test_missing_shipped_file_is_an_error(tmp_path, monkeypatch):
    d = _copy_bundle(tmp_path, monkeypatch)
    (d / "model.pt").unlink()
    with pytest.raises(VadWeightsError, match="model.pt is missing.*reinstall.*vad_model_dir"):
        resolve_model_dir(None)


def test_local_model_dir(vad_model_dir, tmp_path):
    assert resolve_model_dir(vad_model_dir) == vad_model_dir
    with pytest.raises(VadWeightsError, match="does not exist"):
        validate_model_dir(tmp_path / "nope")
    d = tmp_path / "partial"
    d.mkdir()
    shutil.copy(vad_model_dir / "config.yaml", d)
    with pytest.raises(VadWeightsError, match="missing model.pt, am.mvn"):
        resolve_model_dir(d)
    asr = tmp_path / "asr"
    asr.mkdir()
    for n in MODEL_FILES:
        (asr / n).write_text("encoder: SANMEncoder\nencoder_conf: {}\n" if n == "config.yaml" else "x")
    with pytest.raises(VadWeightsError, match="does not describe an FSMN VAD"):
        resolve_model_dir(asr)
