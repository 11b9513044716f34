"""The synthetic corpus tool (paraformer_ext/data/corpus.py): text, pinyin guard, reproducibility, lists."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

corpus = pytest.importorskip("paraformer_ext.data.corpus")
pytest.importorskip("pypinyin", reason="pypinyin missing: pip install 'paraformer_ext[corpus]'")
pytest.importorskip("jieba", reason="jieba missing: pip install 'paraformer_ext[corpus]'")
needs_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                 reason="espeak-ng/sox missing: apt-get install -y espeak-ng sox "
                                        "(scripts/system_deps.sh does it in CI)")


@pytest.fixture(scope="module")
def lex():
    return corpus.load_lexicon()


def test_lexicon_vocabulary(lex):
    assert len(lex.chars) == corpus.VOCAB_SIZE == len(set(lex.chars))
    vocab = set(lex.chars)
    assert all(set(w) <= vocab for w in lex.words)
    assert abs(lex.weights.sum() - 1) < 1e-9 and (lex.weights > 0).all()
    toks = corpus.tokens_for(lex)
    assert len(toks) == 3004 and toks[:3] == ["<blank>", "<s>", "</s>"] and toks[-1] == "<unk>"
    # the most frequent characters of Chinese text are in any sensible top 3000
    assert {"的", "是", "在", "了", "中"} <= vocab


def test_sentences_lengths_and_seeded(lex):
    a = [corpus.make_sentence(lex, corpus._rng(3, "x", i)) for i in range(200)]
    b = [corpus.make_sentence(lex, corpus._rng(3, "x", i)) for i in range(200)]
    c = [corpus.make_sentence(lex, corpus._rng(4, "x", i)) for i in range(200)]
    assert a == b and a != c
    assert all(corpus.MIN_CHARS <= len(s) <= corpus.MAX_CHARS for s in a)


@needs_tools
def test_pinyin_guard():
    py = corpus.Pinyin()
    syls = py("今天天气很好")
    assert syls == ["jin1", "tian1", "tian1", "qi4", "hen3", "hao3"]
    assert py("今天abc") is None  # not Han: pypinyin passes it through without a tone
    assert py("今天，好") is None
    # a syllable espeak-ng would read with English rules is refused
    assert py._check("jin1") and not py._check("hello1")


def test_conditions_seeded_and_varied():
    variants = ["m1", "f1", "klatt"]
    a = [corpus.draw_condition(0, "train", i, variants) for i in range(300)]
    assert a == [corpus.draw_condition(0, "train", i, variants) for i in range(300)]
    assert a != [corpus.draw_condition(0, "test", i, variants) for i in range(300)]
    assert {c["voice"] for c in a} == set(variants)
    lo, hi = corpus.SPEED_RANGE
    assert all(lo <= c["speed"] <= hi and 20 <= c["pitch"] <= 80 for c in a)
    assert {c["range"] for c in a} == set(corpus.PITCH_RANGES)
    assert all(c["effects"][:2] == ["gain", "-3"] for c in a)
    snr = [c["snr_db"] for c in a if c["noise"]]
    assert snr and all(10 <= s <= 40 for s in snr) and any(c["noise"] is None for c in a)


def test_colored_noise_spectrum():
    rng = np.random.default_rng(0)
    for kind in ("white", "pink", "brown"):
        x = corpus._colored_noise(1 << 15, kind, rng)
        assert abs(np.sqrt(np.mean(x ** 2)) - 1) < 1e-9
    p = np.abs(np.fft.rfft(corpus._colored_noise(1 << 15, "brown", rng))) ** 2
    # brown noise: far more power at low than high frequencies
    assert p[1:200].mean() > 100 * p[-2000:].mean()


def test_missing_tools_say_how_to_install(monkeypatch):
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(corpus.CorpusToolError, match="apt-get install -y espeak-ng sox"):
        corpus.check_tools()


@needs_tools
def test_make_corpus_reproducible_and_disjoint(tmp_path):
    import soundfile as sf

    a = corpus.make_corpus(tmp_path / "a", 0.012, seed=5, workers=1, progress=False)
    corpus.make_corpus(tmp_path / "b", 0.012, seed=5, workers=2, progress=False)
    texts = {}
    for split in corpus.SPLITS:
        la = (tmp_path / "a" / f"{split}.jsonl").read_text(encoding="utf-8")
        assert la == (tmp_path / "b" / f"{split}.jsonl").read_text(encoding="utf-8")
        rows = [json.loads(line) for line in la.splitlines()]
        assert len(rows) == a["splits"][split]["utterances"] >= 1
        texts[split] = {r["target"] for r in rows}
        for r in rows:
            xa, sr = sf.read(tmp_path / "a" / r["source"], dtype="float32")
            xb, _ = sf.read(tmp_path / "b" / r["source"], dtype="float32")
            assert sr == corpus.SAMPLE_RATE and np.array_equal(xa, xb)
            assert abs(len(xa) / sr * 1000 - r["source_len"]) <= 1
            assert len(r["pinyin"].split()) == len(r["target"]) == r["target_len"]
            assert np.abs(xa).max() <= 0.99 and np.abs(xa).max() > 0.01  # speech, not silence, not clipped
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["valid"])
    assert not (texts["valid"] & texts["test"])
    toks = json.loads((tmp_path / "a" / "tokens.json").read_text(encoding="utf-8"))
    assert all(c in toks for t in texts["train"] for c in t)


def test_align_counts_edits_and_reconstructs():
    from paraformer_ext.metrics import align, edit_distance

    rng = np.random.default_rng(0)
    for _ in range(300):
        a = list(rng.integers(0, 4, rng.integers(0, 8)))
        b = list(rng.integers(0, 4, rng.integers(0, 8)))
        ops = align(a, b)
        assert sum(op != "=" for op, _, _ in ops) == edit_distance(a, b)
        assert [a[i] for op, i, _ in ops if i is not None] == a  # every ref item once, in order
        assert [b[j] for op, _, j in ops if j is not None] == b
        assert all((a[i] == b[j]) == (op == "=") for op, i, j in ops if i is not None and j is not None)


def test_score_counts_homophones_and_groups():
    from paraformer_ext.data.evaluate import score

    rows = [{"key": "a", "target": "今天天气", "pinyin": "jin1 tian1 tian1 qi4", "voice": "m1", "speed": 130,
             "noise": None},
            {"key": "b", "target": "很好", "pinyin": "hen3 hao3", "voice": "f1", "speed": 200, "noise": "pink"}]
    # 金 is jin1 (a homophone of 今); 汽 is qi4 (homophone of 气); 坏 is not a homophone of 好
    s = score(rows, ["金天天汽", "很坏"])
    assert (s["sub"], s["del"], s["ins"]) == (3, 0, 0) and s["cer"] == round(3 / 6, 4)
    assert s["homophone_error_rate"] == round(2 / 6, 4) and s["sentence_accuracy"] == 0
    assert s["by_voice"]["m1"]["cer"] == 0.5 and s["by_speed"]["180-210"]["cer"] == 0.5
    assert s["by_noise"]["none"]["utterances"] == 1
    assert score(rows, ["今天天气", "很好"])["cer"] == 0


@needs_tools
def test_syllable_by_syllable_bounds_hold_the_speech():
    from paraformer_ext.data.evaluate import syllable_by_syllable

    cond = {"voice": "m1", "speed": 170, "pitch": 50, "effects": ["gain", "-3"], "noise": None}
    audio, bounds = syllable_by_syllable(["ni3", "hao3", "shi4", "jie4"], cond, seed=0)
    assert len(bounds) == 4
    flat = [t for b in bounds for t in b]
    assert flat == sorted(flat) and flat[-1] <= len(audio) / 16
    inside = np.zeros(len(audio), bool)
    for s, e in bounds:
        inside[s * 16: e * 16] = True
    # the pauses between the syllables are digital silence (noise off); the syllables are not
    assert np.abs(audio[~inside]).max() < 1e-3 < np.abs(audio[inside]).max()


def test_timestamp_error_is_signed_and_absolute_over_the_right_characters(monkeypatch):
    from paraformer_ext.data import evaluate as ev

    truth = [[100, 300], [400, 600], [700, 900]]
    monkeypatch.setattr(ev, "syllable_by_syllable", lambda syls, cond, seed: (np.zeros(16000, np.float32), truth))

    class Late:  # every timestamp 50 ms late; the middle character wrong
        def transcribe(self, audio, timestamps=False):
            return [{"text": "今X气", "timestamp": [[s + 50, e + 50] for s, e in truth]}]

    rows = [{"target": "今天气", "pinyin": "jin1 tian1 qi4"}]
    r = ev.timestamp_error(Late(), rows, ["m1"], seed=0)
    assert (r["chars"], r["matched_chars"]) == (3, 2)
    assert r["mean_start_ms"] == r["mean_abs_start_ms"] == 50.0 and r["mean_end_ms"] == 50.0

    class Mixed:  # one early by 40 ms, one late by 20 ms: the signed mean and the absolute mean differ
        def transcribe(self, audio, timestamps=False):
            return [{"text": "今天气", "timestamp": [[60, 260], [400, 600], [720, 920]]}]

    r = ev.timestamp_error(Mixed(), rows, ["m1"], seed=0)
    assert r["matched_chars"] == 3 and r["mean_start_ms"] == round(-20 / 3, 1) and r["mean_abs_start_ms"] == 20.0


def test_kept_variants_are_not_the_toneless_ones():
    assert not set(corpus.VARIANTS) & set(corpus.TONELESS_VARIANTS)


@needs_tools
def test_tones_come_through_widened_and_not_for_a_flat_voice():
    from paraformer_ext.data import tones

    rise, fall = tones.tone_excursions("m3", "medium")
    wide_rise, wide_fall = tones.tone_excursions("m3", "x-high")
    assert rise > 1.5 and fall < -1.5
    assert wide_rise > 1.5 * rise and wide_fall < 1.3 * fall  # the SSML range reaches espeak-ng
    flat_rise, flat_fall = tones.tone_excursions("Alex", "x-high")  # pitch span 105-115 Hz
    assert flat_rise < 1.5 and flat_fall > -1.5


def test_contour_change_reads_a_rise_a_fall_and_octave_errors():
    from paraformer_ext.data import tones

    sr = 16000
    t = np.arange(int(0.3 * sr)) / sr
    for f_start, f_end in ((150.0, 190.0), (190.0, 150.0)):
        f = np.linspace(f_start, f_end, t.size)
        x = 0.5 * np.sin(2 * np.pi * np.cumsum(f) / sr)
        track = tones.f0_track(x, sr)
        assert len(track) > 20
        assert abs(tones.contour_change(track) - 0.75 * 12 * np.log2(f_end / f_start)) < 0.5
    steady = np.full(40, 100.0)
    steady[5] = 400.0  # an octave error is dropped, not read as a rise
    assert abs(tones.contour_change(steady)) < 0.1
    assert np.isnan(tones.contour_change(np.array([100.0, 101.0])))
