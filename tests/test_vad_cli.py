"""`paraformer-ext vad FILE... [--json] [--model-dir DIR] [--max-end-silence-time MS]` (called as vad_main)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED, needs_shared
from paraformer_ext.vad.cli import vad_main

pytestmark = needs_shared


@pytest.fixture(scope="module")
def golden():
    return json.loads((SHARED / "golden" / "vad" / "segments.json").read_text())["files"]


def test_one_file_both_modes(vad_model_dir, golden, capsys):
    wav = str(SHARED / "golden" / "vad" / "vad_62s.wav")
    assert vad_main([wav, "--model-dir", str(vad_model_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == golden["vad_62s.wav"]["segments"]["default"]
    assert vad_main([wav, "--model-dir", str(vad_model_dir), "--max-end-silence-time", "800"]) == 0
    assert json.loads(capsys.readouterr().out) == golden["vad_62s.wav"]["segments"]["fixed800"]


def test_json_many_files_with_failures(vad_model_dir, golden, tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 3, dtype=np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    files = [str(SHARED / "audio" / "mid.wav"), str(bad), str(silent), str(tmp_path / "missing.wav"),
             str(SHARED / "audio" / "long.wav")]
    rc = vad_main(files + ["--json", "--model-dir", str(vad_model_dir)])
    out, err = capsys.readouterr()
    assert rc == 1  # some files failed, the others still ran
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["key"] for r in rows] == files
    assert rows[0]["value"] == golden["mid.wav"]["segments"]["default"]
    assert "error" in rows[1] and "bad.wav" in rows[1]["error"]
    assert rows[2]["value"] == []  # no speech is a result, not an error
    assert "does not exist" in rows[3]["error"]
    assert rows[4]["value"] == golden["long.wav"]["segments"]["default"]
    assert "bad.wav" in err and "missing.wav" in err


def test_plain_output_names_each_file(vad_model_dir, golden, capsys):
    files = [str(SHARED / "audio" / "mid.wav"), str(SHARED / "audio" / "asr_example.wav")]
    assert vad_main(files + ["--model-dir", str(vad_model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for f, line in zip(files, lines):
        name, segs = line.split(": ", 1)
        assert name == f and json.loads(segs) == golden[f.rsplit("/", 1)[1]]["segments"]["default"]


def test_bad_model_dir_and_options(tmp_path, capsys):
    wav = str(SHARED / "audio" / "mid.wav")
    assert vad_main([wav, "--model-dir", str(tmp_path / "nope")]) == 2
    assert "cannot load the VAD model" in capsys.readouterr().err
    assert vad_main([wav, "--speech-noise-thres", "0.5"]) == 2
    assert "--max-end-silence-time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vad_main([])
