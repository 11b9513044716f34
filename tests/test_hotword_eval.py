"""The hotword test set and metrics (paraformer_ext/data/hotword_eval.py, hotwords.md §3)."""
from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("pypinyin", reason="pypinyin missing: pip install 'paraformer_ext[corpus]'")
pytest.importorskip("jieba", reason="jieba missing: pip install 'paraformer_ext[corpus]'")
from paraformer_ext.data import corpus  # noqa: E402
from paraformer_ext.data import hotword_eval as he  # noqa: E402
from paraformer_ext.metrics import edit_distance  # noqa: E402

needs_tools = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                 reason="espeak-ng/sox missing: apt-get install -y espeak-ng sox "
                                        "(scripts/system_deps.sh does it in CI)")


def row(target, hotword=None):
    span = None
    if hotword is not None:
        s = target.index(hotword)
        span = [s, s + len(hotword)]
    return {"target": target, "hotword": hotword, "span": span}


def test_counts_follow_the_spec():
    rows = [row("今天张三来了", "张三"), row("李四和张三", "李四"), row("天气很好")]
    hyps = ["今天章三来了", "李四和张三", "天气张三好"]  # miss, hit (+ 张三 where the reference has it), false alarm
    s = he.hotword_score(rows, hyps, ["张三", "李四", "王五"])
    # 张三: ref 1,hyp 0 | ref 1,hyp 1 | ref 0,hyp 1 → tp 1 fn 1 fp 1; 李四: tp 1
    assert (s["tp"], s["fn"], s["fp"]) == (2, 1, 1)
    assert s["recall"] == pytest.approx(2 / 3, abs=1e-4) and s["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["false_alarms_per_100"] == pytest.approx(100.0)  # one in the one sentence without hotwords
    assert s["per_word"]["张三"] == {"tp": 1, "fn": 1, "fp": 1}
    # CER split: 章 for 张 is inside the span; 张三 for 很 (one sub + one ins... ) is outside
    total = sum(edit_distance(r["target"], h) for r, h in zip(rows, hyps))
    n = sum(len(r["target"]) for r in rows)
    assert s["cer"] == pytest.approx(total / n, abs=1e-4)
    assert s["cer_in_spans"] == pytest.approx(1 / 4, abs=1e-4)  # 1 error in 4 span characters


def test_induced_false_alarms_and_r1_subset():
    rows = [row("天气很好"), row("天气很好"), row("今天张三来了", "张三")]
    greedy = ["天气张三", "天气很好", "今天章三来了"]
    hyps = ["天气张三", "张三很好", "今天张三来了"]
    s = he.hotword_score(rows, hyps, ["张三"], greedy, r1_words=he.low_recall_words(rows, greedy))
    assert s["false_alarms_per_100"] == pytest.approx(100.0)  # 2 in 2 plain sentences
    assert s["induced_false_alarms_per_100"] == pytest.approx(50.0)  # only the second is new
    assert he.low_recall_words(rows, greedy) == ["张三"]
    assert s["r1"]["recall"] == 1.0 and s["r1"]["words"] == 1


def test_span_errors_place_insertions():
    assert he._span_errors("abcd", "abcd", [1, 3]) == (0, 0)
    assert he._span_errors("abcd", "aXcd", [1, 3]) == (1, 0)
    assert he._span_errors("abcd", "abcdX", [1, 3]) == (0, 1)  # after d: outside
    assert he._span_errors("abcd", "abXcd", [1, 3]) == (1, 0)  # after b: inside
    assert he._span_errors("abcd", "", None) == (0, 4)


def test_names_are_unseen_homophone_prone_and_seeded():
    lex, py = corpus.load_lexicon(), corpus.Pinyin()
    seen = "北京上海"
    a = he.hotword_names(lex, py, seen, corpus._rng(0, "hotwords"), 30)
    b = he.hotword_names(lex, py, seen, corpus._rng(0, "hotwords"), 30)
    assert a == b and len(a) == 30
    top = he.most_frequent_by_reading(lex.chars)
    for w, syls in a:
        assert w not in seen and len(syls) == len(w)
        assert any(top[s] != c for c, s in zip(w, syls))
    words = [w for w, _ in a]
    assert not any(x != y and x in y for x in words for y in words)


@needs_tools
def test_make_hotword_set(tmp_path):
    c = tmp_path / "corpus"
    c.mkdir()
    (c / "train.jsonl").write_text(json.dumps({"target": "今天天气很好"}, ensure_ascii=False) + "\n", encoding="utf-8")
    sizes = he.HotwordSetSizes(dev_targets=2, test_targets=3, distractors=4, utts_per_target=2, dev_plain=1, test_plain=2)
    n = he.make_hotword_set(tmp_path / "set", c, seed=1, sizes=sizes, workers=1, progress=False)
    assert n == {"hwdev": 5, "hwtest": 8}
    lists = json.loads((tmp_path / "set/hotwords.json").read_text(encoding="utf-8"))
    assert [len(lists[k]) for k in ("dev_targets", "test_targets", "distractors")] == [2, 3, 4]
    rows = [json.loads(x) for x in (tmp_path / "set/hwtest.jsonl").read_text(encoding="utf-8").splitlines()]
    with_hw = [r for r in rows if r["hotword"]]
    assert sorted({r["hotword"] for r in with_hw}) == sorted(lists["test_targets"])
    allw = lists["dev_targets"] + lists["test_targets"] + lists["distractors"]
    for r in rows:
        assert (tmp_path / "set" / r["source"]).is_file() and r["source_len"] > 0
        if r["hotword"]:
            s, e = r["span"]
            assert r["target"][s:e] == r["hotword"]
        else:
            assert not any(w in r["target"] for w in allw)
