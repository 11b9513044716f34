"""paraformer_ext.ray_data on a local Ray cluster of one machine: every result equals `paraformer-ext transcribe`'s,
a broken file is reported in the output, a re-run skips what is done."""
from __future__ import annotations

import json
import os

import pytest
import soundfile as sf

ray = pytest.importorskip("ray", reason="ray missing: pip install 'paraformer_ext[ray]' (scripts/setup.sh does)")

import paraformer_ext  # noqa: E402
from paraformer_ext.ray_data import transcribe_dataset  # noqa: E402
from paraformer_ext.synthetic import make_random_model, synthetic_speech  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    model = make_random_model(d / "model", "tiny", seed=2)
    paths = []
    for i in range(30):
        p = d / f"f{i:02d}.wav"
        sf.write(p, synthetic_speech(0.6 + 0.1 * (i % 7), 300 + i), 16000 if i % 3 else 8000, subtype="PCM_16")
        paths.append(str(p))
    bad = d / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")
    return model, paths, str(bad)


def test_results_equal_the_cli_and_errors_are_kept(cluster, files, tmp_path):
    model, paths, bad = files
    out = tmp_path / "out.jsonl"
    s = transcribe_dataset(paths + [bad], model, out, actors=2, batch_size=8, timestamps=True,
                           load_options={"kernels": False}, progress=False)
    assert s == {"written": 31, "skipped_done": 0, "errors": 1, "output": str(out)}
    rows = {r["source"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert set(rows) == set(paths) | {bad}
    assert "error" in rows[bad] and rows[bad]["key"] == "broken"
    want = paraformer_ext.load(model, kernels=False).transcribe(paths, timestamps=True)
    for p, w in zip(paths, want):
        got = {k: v for k, v in rows[p].items() if k != "source"}
        assert got == w, p


def test_a_rerun_skips_what_is_done(cluster, files, tmp_path):
    model, paths, _ = files
    out = tmp_path / "out.jsonl"
    first = transcribe_dataset(paths[:10], model, out, load_options={"kernels": False}, progress=False)
    assert first["written"] == 10
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"key": "cut by a cra')  # a crash mid-line: that source is not done
    again = transcribe_dataset(paths[:20], model, out, load_options={"kernels": False}, progress=False)
    assert again["written"] == 10 and again["skipped_done"] == 10
    lines = out.read_text(encoding="utf-8").splitlines()
    sources = [json.loads(x)["source"] for x in lines if x.startswith('{"key": "f')]
    assert sorted(sources) == sorted(paths[:20])


def test_a_ray_dataset_input(cluster, files, tmp_path):
    model, paths, _ = files
    out = tmp_path / "out.jsonl"
    ds = ray.data.from_items([{"source": p} for p in paths[:6]])
    s = transcribe_dataset(ds, model, out, load_options={"kernels": False}, progress=False)
    assert s["written"] == 6
    keys = sorted(json.loads(x)["key"] for x in out.read_text(encoding="utf-8").splitlines())
    assert keys == sorted(f"f{i:02d}" for i in range(6))
