"""The CLI and the Python API on files: JSON output with FunASR's keys, bad files reported while the
others are still transcribed, any sample rate and channel count accepted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED, golden_checkpoint, needs_shared
from paraformer_ext import load
from paraformer_ext.cli import main

pytestmark = needs_shared


@pytest.fixture(scope="module")
def small():
    return golden_checkpoint("small")


def golden_json(wav):
    return json.loads((SHARED / "golden" / f"small_{wav}.json").read_text(encoding="utf-8"))


def test_transcribe_json_with_timestamps(small, capsys):
    wavs = [str(SHARED / "audio" / f"{w}.wav") for w in ("asr_example", "long")]
    rc = main(["transcribe", "--model", str(small), *wavs, "--json", "--timestamps", "--batch-size", "2"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["key"] for x in lines] == ["asr_example", "long"]
    for x, w in zip(lines, ("asr_example", "long")):
        g = golden_json(w)
        assert list(x) == ["key", "text", "timestamp", "token_ids"]
        assert x["text"] == g["text_with_timestamps"] and x["timestamp"] == g["timestamps"] and x["token_ids"] == g["token_ids"]


def test_transcribe_plain_text(small, capsys):
    rc = main(["transcribe", "--model", str(small), str(SHARED / "audio" / "long.wav"), "--no-kernels"])
    assert rc == 0
    assert capsys.readouterr().out == f"long\t{golden_json('long')['text']}\n"


def test_bad_files_are_reported_and_the_rest_transcribed(small, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    short = tmp_path / "short.wav"
    sf.write(short, np.ones(100, dtype=np.int16), 16000, subtype="PCM_16")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio")
    good = str(SHARED / "audio" / "long.wav")
    rc = main(["transcribe", "--model", str(small), str(empty), good, str(tmp_path / "missing.wav"), str(short), str(junk), "--json"])
    assert rc == 1
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["key"] for x in lines] == ["empty", "long", "missing", "short", "junk"]
    assert lines[1]["text"] == golden_json("long")["text"]
    assert "empty" in lines[0]["error"]
    assert "missing.wav" in lines[2]["error"]
    assert "shorter than one 25 ms analysis frame" in lines[3]["error"]
    assert "junk.wav" in lines[4]["error"]
    assert err.count("error:") == 4


def test_resampled_stereo_input(small, tmp_path):
    """A 8 kHz stereo file (same content in both channels) goes through resampling and mono mixing."""
    x, sr = sf.read(SHARED / "audio" / "long.wav", dtype="int16")
    p = tmp_path / "stereo8k.wav"
    sf.write(p, np.stack([x[::2], x[::2]], axis=1), 8000, subtype="PCM_16")
    asr = load(small, kernels=False)
    r = asr.transcribe([str(p)])[0]
    assert "error" not in r and len(r["token_ids"]) > 0


def test_arrays_and_input_order(small):
    asr = load(small, kernels=False)
    a, _ = sf.read(SHARED / "audio" / "asr_example.wav", dtype="float32")
    b, _ = sf.read(SHARED / "audio" / "long.wav", dtype="float32")
    res = asr.transcribe([a, b, a], batch_size=2)
    assert [r["key"] for r in res] == ["array_0", "array_1", "array_2"]
    assert res[0]["token_ids"] == res[2]["token_ids"] == golden_json("asr_example")["token_ids"]
    assert res[1]["token_ids"] == golden_json("long")["token_ids"]


def test_info(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "cuda" in info and "torch_version" in info
