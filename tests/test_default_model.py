"""The shipped default model: load() / transcribe / serve without a directory use it, after a sha256 check."""
from __future__ import annotations

import pytest

import paraformer_ext
from paraformer_ext import default_model
from paraformer_ext.bundled import write_sums
from paraformer_ext.cli import main
from paraformer_ext.synthetic import make_random_model, synthetic_speech


@pytest.fixture
def fake_default(tmp_path, monkeypatch):
    d = make_random_model(tmp_path / "zh", "tiny", seed=1)
    write_sums(d)
    monkeypatch.setattr(default_model, "DEFAULT_DIR", d)
    return d


def test_load_without_a_directory_uses_the_default(fake_default):
    wave = synthetic_speech(2.0, 5)
    a = paraformer_ext.load(kernels=False).transcribe(wave)[0]
    b = paraformer_ext.load(fake_default, kernels=False).transcribe(wave)[0]
    assert a["token_ids"] == b["token_ids"] and a["token_ids"]


def test_a_damaged_default_is_refused(fake_default):
    mvn = fake_default / "am.mvn"
    good = mvn.read_bytes()
    mvn.write_bytes(good + b" ")
    with pytest.raises(default_model.DefaultModelError, match="am.mvn has sha256 .* changed or damaged"):
        paraformer_ext.load()
    mvn.write_bytes(good)
    (fake_default / "model.pt").unlink()
    with pytest.raises(default_model.DefaultModelError, match="model.pt is missing"):
        paraformer_ext.load()


def test_without_a_shipped_model_the_cli_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(default_model, "DEFAULT_DIR", tmp_path / "nothing")
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, synthetic_speech(1.0, 1), 16000)
    assert main(["transcribe", str(wav)]) == 2
    assert "pass a FunASR model directory" in capsys.readouterr().err


shipped = pytest.mark.skipif(not (default_model.DEFAULT_DIR / "SHA256SUMS").is_file(),
                             reason="no model shipped in this checkout yet (scripts/ship_model.py makes it)")


@shipped
def test_the_shipped_model_transcribes_its_example_exactly(capsys):
    d = default_model.DEFAULT_DIR
    expected = (d / "example.txt").read_text(encoding="utf-8").strip()
    assert main(["transcribe", str(d / "example.wav")]) == 0  # no --model: the shipped one
    out = capsys.readouterr().out
    assert expected in out.replace(" ", "")
    r = paraformer_ext.load().transcribe(str(d / "example.wav"), timestamps=True)[0]
    assert r["text"].replace(" ", "") == expected
    assert len(r["timestamp"]) == len(expected)
    import soundfile as sf

    starts = [s for s, _ in r["timestamp"]]
    assert starts == sorted(starts) and starts[0] >= 0
    assert r["timestamp"][-1][1] <= 1000 * sf.info(str(d / "example.wav")).duration + 100


def test_the_demo_runs_the_shipped_model_on_its_examples(fake_default, capsys):
    import json

    import soundfile as sf

    (fake_default / "examples").mkdir()
    rows = []
    for i in range(2):
        rel = f"examples/t{i}.wav"
        sf.write(fake_default / rel, synthetic_speech(1.5, 10 + i), 16000)
        rows.append({"key": f"t{i}", "source": rel})
    got = paraformer_ext.load(fake_default, kernels=False).transcribe([str(fake_default / r["source"]) for r in rows])
    rows[0]["target"] = got[0]["text"].replace(" ", "")  # one example the (random) model gets right, one it does not
    rows[1]["target"] = "不是这个"
    (fake_default / "examples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
    write_sums(fake_default)
    assert main(["demo", "--no-kernels"]) == 0
    out = capsys.readouterr().out
    assert f"expected:   {rows[0]['target']}" in out and "(exact)" in out and "(differs)" in out
    assert "1/2 exactly right" in out and "reference:" in out and "timestamps:" in out
