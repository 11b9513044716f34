"""Token lists, special-id filtering, FunASR's sentence_postprocess and the per-utterance result.

The hand-made sentence_postprocess cases were derived by reading FunASR's
funasr/utils/postprocess_utils.py (sentence_postprocess, abbr_dispose, isChinese, isAllChinese, isAllAlpha);
each says which rule it checks. Spans are written [10*i, 10*i + 10] for token i so a merged span shows which
tokens it came from.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED, golden_checkpoint, needs_shared
from paraformer_ext.text import SPECIAL_IDS, TokenList, filter_special, postprocess, sentence_postprocess

GOLDEN_WAVS = ["small_asr_example", "small_long", "large_asr_example", "large_long"]


def ts(n):
    return [[10 * i, 10 * i + 10] for i in range(n)]


def sp(words, with_ts=False):
    """(text, spans) of sentence_postprocess; spans for token i are [10i, 10i+10]."""
    text, spans, real = sentence_postprocess(words, ts(len(words)) if with_ts else None)
    if with_ts:
        assert real == text.split(" ") if text else real == []
    else:
        assert spans is None
    return text, spans


# ---------------------------------------------------------------------------------------------------------------
# TokenList


@pytest.fixture(scope="module")
def golden_tokens():
    return TokenList.load(golden_checkpoint("small") / "tokens.json")


@needs_shared
def test_golden_token_list(golden_tokens):
    t = golden_tokens
    assert len(t) == 8404
    assert [t[0], t[1], t[2], t[3], t[8403]] == ["<blank>", "<s>", "</s>", "一", "<unk>"]
    assert t.unk_id == 8403
    assert t[8003] == "aa" and t[8004] == "ba@@"
    for name in GOLDEN_WAVS:
        j = json.loads((SHARED / "golden" / f"{name}.json").read_text(encoding="utf-8"))
        assert t.ids_to_tokens(j["token_ids"]) == j["tokens"]
    # the directory form finds tokens.json
    assert list(TokenList.load(golden_checkpoint("small"))) == list(t)


def test_token_list_json_and_txt(tmp_path):
    toks = ["<blank>", "<s>", "</s>", "你", "he@@", "llo", "<unk>"]
    (tmp_path / "tokens.json").write_text(json.dumps(toks, ensure_ascii=False), encoding="utf-8")
    # .txt: line number = id, trailing whitespace removed (FunASR rstrips each line)
    lines = [t + (" \t" if i == 3 else "") for i, t in enumerate(toks)]
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    a = TokenList.load(tmp_path / "tokens.json")
    b = TokenList.load(str(tmp_path / "tokens.txt"))
    assert list(a) == list(b) == toks and len(a) == 7
    assert a.ids_to_tokens([3, 4, 5]) == ["你", "he@@", "llo"]
    assert a.ids_to_tokens(np.array([6], dtype=np.int32)) == ["<unk>"]
    assert a.ids_to_tokens(torch.tensor([0, 3])) == ["<blank>", "你"]
    assert a.ids_to_tokens([]) == []
    assert a.token_to_id("llo") == 5 and a.token_to_id("nope") == 6
    assert TokenList.load(tmp_path).source.endswith("tokens.json")  # json wins in a directory


@pytest.mark.parametrize(
    "content,suffix,match",
    [
        ('["<blank>", "a", "a", "<unk>"]', ".json", r"tokens\.json.*'a' is duplicated \(ids 1 and 2\)"),
        ('["<blank>", "a"]', ".json", r"tokens\.json.*no '<unk>'"),
        ("<blank>\na\n<unk>\na\n", ".txt", r"tokens\.txt.*'a' is duplicated"),
        ("<blank>\na\n", ".txt", r"tokens\.txt.*no '<unk>'"),
        ('["<blank>", "<unk>"', ".json", r"tokens\.json: not a valid UTF-8 JSON"),
        ('{"a": 1}', ".json", r"expected a JSON array"),
        ('["<unk>", 3]', ".json", r"token 1 is int"),
        ("<unk>\n", ".yaml", r"unknown token list format"),
    ],
)
def test_token_list_errors(tmp_path, content, suffix, match):
    p = tmp_path / f"tokens{suffix}"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        TokenList.load(p)


def test_token_list_missing_and_bad_ids(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenList.load(tmp_path / "tokens.json")
    with pytest.raises(FileNotFoundError, match="no tokens.json or tokens.txt"):
        TokenList.load(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe<unk>\n")
    with pytest.raises(ValueError, match="not a UTF-8"):
        TokenList.load(tmp_path / "bad.txt")
    t = TokenList(["<blank>", "<unk>"])
    with pytest.raises(IndexError, match="token id 2 out of range for a 2-token list"):
        t.ids_to_tokens([0, 2])
    with pytest.raises(IndexError, match="token id -1"):
        t.ids_to_tokens([-1])  # FunASR would wrap around to the last token
    with pytest.raises(TypeError, match="integers"):
        t.ids_to_tokens([1.0])
    with pytest.raises(TypeError, match="integers"):
        t.ids_to_tokens(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        t.ids_to_tokens(np.zeros((2, 2), dtype=np.int64))


def test_filter_special_anywhere():
    assert SPECIAL_IDS == (0, 1, 2)
    assert filter_special([5, 2, 7, 0, 1, 9, 2]) == [5, 7, 9]  # a filter, not a cut at the first eos
    assert filter_special(torch.tensor([2, 2])) == []
    assert filter_special(np.array([3, 4], dtype=np.int32)) == [3, 4]
    assert filter_special([]) == []


# ---------------------------------------------------------------------------------------------------------------
# sentence_postprocess: hand-made cases


def test_all_cjk():
    # rule: every token Chinese -> tokens kept, joined without spaces; with timestamps spaced, spans as given
    assert sp(["欢", "迎", "大", "家"]) == ("欢迎大家", None)
    assert sp(["欢", "迎", "大", "家"], True) == ("欢 迎 大 家", ts(4))


def test_all_english_words():
    # rule: every token alphabetic -> each is a word followed by " "; the final space is stripped
    assert sp(["hello", "world"]) == ("hello world", None)
    assert sp(["hello", "world"], True) == ("hello world", ts(2))
    assert sp(["don", "'", "t"]) == ("don ' t", None)  # "'" counts as alphabetic


def test_english_with_continuation_pieces():
    # rule: "@@" pieces are not alphabetic ('@'), so the mixed mode runs; pieces glue to the next plain one,
    # the word's span runs from its first piece's start to its last piece's end
    assert sp(["he@@", "llo", "wor@@", "ld"]) == ("hello world", None)
    assert sp(["he@@", "llo", "wor@@", "ld"], True) == ("hello world", [[0, 20], [20, 40]])
    assert sp(["he@@", "l@@", "lo"], True) == ("hello", [[0, 30]])


def test_mixed_cjk_and_english():
    # rule: a CJK token after a latin word removes the word's trailing " "
    assert sp(["你", "好", "hello", "world", "你", "好"]) == ("你好hello world你好", None)
    assert sp(["你", "好", "hello", "world", "你", "好"], True) == ("你 好 hello world 你 好", ts(6))


def test_continuation_held_across_cjk_and_span_shift():
    # rule (golden quirk 4): the "@@" piece waits for the next plain latin piece however far away; the CJK
    # token right after it takes the piece's span, the word only gets its last piece's span
    assert sp(["ra@@", "你", "kj"]) == ("你rakj", None)
    assert sp(["ra@@", "你", "kj"], True) == ("你 rakj", [[0, 10], [20, 30]])


def test_dangling_continuation_dropped():
    # rule: an "@@" piece no plain latin piece follows is dropped; the next CJK token still takes its span
    assert sp(["你", "ab@@"]) == ("你", None)
    assert sp(["ab@@"]) == ("", None)
    assert sp(["你", "ab@@", "好"], True) == ("你 好", [[0, 10], [10, 20]])


def test_abbreviations():
    # rule (abbr_dispose): single ASCII letters separated by " " merge into one upper-case word
    assert sp(["a", "b", "c"]) == ("ABC", None)
    assert sp(["a", "b", "c"], True) == ("ABC", [[0, 30]])
    assert sp(["a", "b"]) == ("AB", None)
    assert sp(["a"]) == ("a", None)  # a single letter is left alone
    assert sp(["a", "bc", "d"]) == ("a bc d", None)  # a longer word breaks the run
    assert sp(["你", "a", "b", "c", "好"]) == ("你ABC好", None)
    assert sp(["你", "a", "b", "c", "好"], True) == ("你 ABC 好", [[0, 10], [10, 40], [40, 50]])
    assert sp(["x", "y", "你", "z", "w"]) == ("XY你ZW", None)  # the CJK token ends the first run
    assert sp(["é", "b"]) == ("é b", None)  # ASCII letters only (FunASR tests the UTF-8 bytes)


def test_digits_and_at_count_as_chinese():
    # rule (isChinese): "0"-"9" and "@" are "Chinese": no spaces between digits, and a digit or "@" after a
    # latin word removes the space like a CJK character would
    assert sp(["1", "2", "3"]) == ("123", None)
    assert sp(["1", "@", "你"], True) == ("1 @ 你", ts(3))
    assert sp(["hello", "1", "2"]) == ("hello12", None)
    assert sp(["hello", "@", "world"]) == ("hello@world", None)


def test_chinese_test_is_lexicographic_on_whole_tokens():
    # rule: on the whole list the test compares strings: "0" <= "1a" <= "9" holds, "9a" > "9" does not.
    # "1a" makes the list all-Chinese (every token keeps its span); "9a" forces the mixed mode, where it is
    # neither CJK, "@@" nor alphabetic: kept without a span, so the span list drifts (FunASR's behaviour)
    assert sp(["1a", "你"], True) == ("1a 你", ts(2))
    assert sp(["9a", "你"], True) == ("9a 你", [[10, 20]])


def test_special_tokens_dropped():
    # rule: "<s>", "</s>", "<unk>", "<OOV>" are removed before anything else
    assert sp(["<s>", "你", "<unk>", "好", "</s>", "<OOV>"]) == ("你好", None)
    assert sp(["<unk>", "hello", "<unk>"]) == ("hello", None)
    assert sp(["<unk>"]) == ("", None)
    # the timestamps are not filtered with them: all-Chinese mode keeps the given list, so "好" gets
    # "<unk>"'s span
    assert sp(["你", "<unk>", "好"], True) == ("你 好", [[0, 10], [10, 20]])


def test_cjk_pops_whatever_was_appended_last():
    # rule: after a latin word the next CJK token pops the last entry, which FunASR assumes is the " "; an
    # unclassifiable token in between ("x1": not CJK, no "@@", not alphabetic) is popped instead
    assert sp(["hello", "x1", "你"]) == ("hello 你", None)


def test_empty_and_bytes():
    assert sentence_postprocess([]) == ("", None, [])
    assert sentence_postprocess([], []) == ("", [], [])
    assert sentence_postprocess(["你".encode(), b"a"]) == ("你a", None, ["你", "a"])


def test_short_timestamp_list():
    # all-Chinese mode tolerates fewer timestamps than tokens (FunASR returns what it has) ...
    assert sentence_postprocess(["你", "好"], [[0, 10]]) == ("你 好", [[0, 10]], ["你", "好"])
    # ... the mixed mode indexes them per token: FunASR raises IndexError there, we a ValueError
    with pytest.raises(ValueError, match="only 1 were given"):
        sentence_postprocess(["你", "hello"], [[0, 10]])


def test_does_not_modify_inputs():
    words, spans = ["a", "b", "你"], ts(3)
    sentence_postprocess(words, spans)
    assert words == ["a", "b", "你"] and spans == ts(3)


# ---------------------------------------------------------------------------------------------------------------
# postprocess: goldens and edge cases


def _golden(name):
    g = SHARED / "golden"
    return np.load(g / f"{name}.npz"), json.loads((g / f"{name}.json").read_text(encoding="utf-8"))


@needs_shared
@pytest.mark.parametrize("name", GOLDEN_WAVS)
def test_golden_postprocess(name, golden_tokens):
    z, j = _golden(name)
    r = postprocess(z["token_ids"], golden_tokens)
    assert r == {"text": j["text"], "token_ids": j["token_ids"]}
    r = postprocess(z["argmax_ids"], golden_tokens, z["fires"], z["alphas"], timestamps=True)
    assert r["text"] == j["text_with_timestamps"]
    assert r["timestamp"] == j["timestamps"] == z["timestamps"].tolist()
    assert r["token_ids"] == z["token_ids"].tolist()
    assert len(r["timestamp"]) == len(r["text"].split(" "))
    # special ids anywhere do not change anything
    ids = [1] + z["token_ids"].tolist()[:5] + [2, 0] + z["token_ids"].tolist()[5:] + [2]
    fires, alphas = torch.from_numpy(z["fires"]), torch.from_numpy(z["alphas"])
    assert postprocess(torch.tensor(ids), golden_tokens, fires, alphas, timestamps=True) == r


@needs_shared
@pytest.mark.parametrize("preset", ["small", "large"])
def test_golden_batch_items(preset, golden_tokens):
    """Each batch item from its own rows (cut to length + 1, as FunASR 1.4.16 does) gives FunASR's result for
    that item; the unpadded item also equals its batch-1 golden."""
    g = SHARED / "golden"
    z = np.load(g / f"{preset}_batch.npz")
    j = json.loads((g / f"{preset}_batch.json").read_text(encoding="utf-8"))
    for i, item in enumerate(j["items"]):
        n = int(z["encoder_out_lens"][i]) + 1
        ids = z[f"item{i}_argmax_ids"]
        assert postprocess(ids, golden_tokens)["text"] == item["text"]
        r = postprocess(ids, golden_tokens, z["fires"][i, :n], z["alphas"][i, :n], timestamps=True)
        assert r["text"] == item["text_with_timestamps"]
        assert r["timestamp"] == item["timestamps"] == z[f"item{i}_timestamps"].tolist()
        if not item["padded"]:
            _, jb = _golden(f"{preset}_{item['wav'].removesuffix('.wav')}")
            assert (r["text"], r["timestamp"]) == (jb["text_with_timestamps"], jb["timestamps"])
            assert postprocess(ids, golden_tokens)["text"] == jb["text"]


def _tiny_tokens():
    return TokenList(["<blank>", "<s>", "</s>", "你", "好", "he@@", "llo", "a", "b", "<unk>"])


def test_postprocess_no_tokens():
    t = _tiny_tokens()
    assert postprocess([], t) == {"text": "", "token_ids": []}
    assert postprocess([2, 0], t) == {"text": "", "token_ids": []}
    f = torch.tensor([0.3, 0.7, 0.45])
    assert postprocess([2], t, f, f, timestamps=True) == {"text": "", "token_ids": [], "timestamp": []}


def test_postprocess_constructed_timestamps_and_vad_offset():
    """3 tokens, fires vector whose rescaled integral fires at frames 1, 4, 7, 10 (boundaries -0.5, 2.5,
    5.5, 8.5 frames): "hello" = pieces 0-1 -> -30..5.5*0.06 s, "你" -> 5.5*0.06 s..11 frames*0.06 s. In float64
    5.5*0.06*1000 = 329.99999999999994 and 11*0.06*1000 = 659.9999999999999, truncated to 329 and 659; with a
    1000 ms offset (5.5*0.06 + 1.0)*1000 = 1330.0 and (11*0.06 + 1.0)*1000 = 1660.0000000000002."""
    t = _tiny_tokens()
    fires = torch.tensor([0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1], dtype=torch.float32)
    alphas = torch.full((11,), 0.4)
    r = postprocess([5, 6, 3], t, fires, alphas, timestamps=True)
    assert r == {"text": "hello 你", "token_ids": [5, 6, 3], "timestamp": [[-30, 329], [329, 659]]}
    r = postprocess([5, 6, 3], t, fires, alphas, timestamps=True, vad_offset_ms=1000)
    assert r["timestamp"] == [[970, 1330], [1330, 1660]]
    assert postprocess([5, 6, 3], t)["text"] == "hello你"
    assert postprocess([7, 8, 4], t)["text"] == "AB好"


def test_postprocess_errors():
    t = _tiny_tokens()
    with pytest.raises(ValueError, match="needs the utterance's fires and alphas"):
        postprocess([3], t, timestamps=True)
    with pytest.raises(IndexError, match="token id 10 out of range"):
        postprocess([3, 10], t)
