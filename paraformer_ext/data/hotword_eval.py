"""Measuring hotwords (hotwords.md §3): a test set made with the corpus tool, and the spec's metrics.

The set: proper names from jieba's dictionary (person, place, organisation and other names) that never occur
in the training texts and that have at least one character a more frequent character sounds exactly like
(a model without context writes that one instead), each spoken inside ordinary corpus sentences; plus
sentences without any of them, for false alarms. Every hotword, sentence and speech condition is a function of
the seed, like the corpus.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics import align
from . import corpus

PROPER_TAGS = ("nr", "ns", "nt", "nz")  # jieba: person, place, organisation, other proper names
SPLITS = ("hwdev", "hwtest")


@dataclass
class HotwordSetSizes:
    dev_targets: int = 50
    test_targets: int = 100
    distractors: int = 900  # with the test targets: the 1,000-word list
    utts_per_target: int = 3
    dev_plain: int = 100  # sentences without hotwords
    test_plain: int = 200


def most_frequent_by_reading(chars: list[str]) -> dict[str, str]:
    """Tone-numbered syllable → the most frequent of `chars` (ordered most frequent first) read that way."""
    from pypinyin import Style, lazy_pinyin

    out: dict[str, str] = {}
    for c in chars:
        out.setdefault(lazy_pinyin(c, style=Style.TONE3, neutral_tone_with_five=True)[0], c)
    return out


def hotword_names(lex: corpus.Lexicon, pinyin: corpus.Pinyin, exclude_text: str, rng: np.random.Generator,
                  count: int, min_len: int = 2, max_len: int = 5) -> list[tuple[str, list[str]]]:
    """`count` proper names (jieba's tags) of min_len..max_len vocabulary characters, in a random order drawn
    with rng: readable by espeak-ng, absent from exclude_text, none inside another, each with a homophone-prone
    character (a more frequent vocabulary character has the same syllable and tone): (word, syllables)."""
    vocab, top = set(lex.chars), most_frequent_by_reading(lex.chars)
    names = [w for w, _, tag in corpus.jieba_entries()
             if tag in PROPER_TAGS and min_len <= len(w) <= max_len and set(w) <= vocab]
    out: list[tuple[str, list[str]]] = []
    for i in rng.permutation(len(names)):
        w = names[int(i)]
        if w in exclude_text or any(w in p or p in w for p, _ in out):
            continue
        syls = pinyin(w)
        if syls is not None and any(top.get(s, c) != c for c, s in zip(w, syls)):
            out.append((w, syls))
            if len(out) == count:
                return out
    raise RuntimeError(f"only {len(out)} usable names for a set of {count}")


def _context(lex: corpus.Lexicon, rng: np.random.Generator, n: int, avoid: list[str]) -> str:
    """Frequency-sampled words up to about n characters containing none of `avoid`."""
    while True:
        text = ""
        while len(text) < n:
            w = lex.words[int(rng.choice(len(lex.words), p=lex.weights))]
            if len(text) + len(w) <= n + 1:
                text += w
        if not any(h in text for h in avoid):
            return text


def make_hotword_set(out, corpus_dir, seed: int = 0, sizes: HotwordSetSizes = HotwordSetSizes(),
                     workers: int | None = None, progress: bool = True) -> dict:
    """Write OUT/{hwdev,hwtest}.jsonl (corpus rows plus "hotword" and its character "span", or null),
    OUT/audio/ and OUT/hotwords.json (dev_targets, test_targets, distractors). corpus_dir: the corpus the
    model was trained on (its training texts are excluded from the names)."""
    corpus.check_tools()
    out, corpus_dir = Path(out), Path(corpus_dir)
    out.mkdir(parents=True, exist_ok=True)
    lex, pinyin = corpus.load_lexicon(), corpus.Pinyin()
    with open(corpus_dir / "train.jsonl", encoding="utf-8") as f:
        seen = "\n".join(json.loads(line)["target"] for line in f if line.strip())
    need = sizes.dev_targets + sizes.test_targets + sizes.distractors
    pool = hotword_names(lex, pinyin, seen, corpus._rng(seed, "hotwords"), need)
    words = [w for w, _ in pool]
    syl = dict(pool)
    lists = {"dev_targets": words[: sizes.dev_targets],
             "test_targets": words[sizes.dev_targets: sizes.dev_targets + sizes.test_targets],
             "distractors": words[sizes.dev_targets + sizes.test_targets:]}
    variants = corpus.installed_variants()
    jobs, extra = [], []
    for split, targets, n_plain in (("hwdev", lists["dev_targets"], sizes.dev_plain),
                                    ("hwtest", lists["test_targets"], sizes.test_plain)):
        trng = corpus._rng(seed, split, "text")
        items = []
        for h in targets:
            for _ in range(sizes.utts_per_target):
                a = int(trng.integers(0, 9))
                b = max(0, int(trng.integers(corpus.MIN_CHARS, corpus.MAX_CHARS + 3)) - len(h) - a)
                pre = _context(lex, trng, a, words) if a else ""
                post = _context(lex, trng, b, words) if b else ""
                items.append((pre + h + post, h, (len(pre), len(pre) + len(h))))
        while len(items) < len(targets) * sizes.utts_per_target + n_plain:
            items.append((_context(lex, trng, int(trng.integers(corpus.MIN_CHARS, corpus.MAX_CHARS + 1)), words),
                          None, None))
        for i, (text, h, span) in enumerate(items):
            syls = pinyin(text)
            if syls is None:  # the context words are corpus words, so readable; the names were checked
                raise RuntimeError(f"espeak-ng cannot read {text!r}")
            if h is not None:  # the name as checked alone (pypinyin may read a character differently in context)
                syls[span[0]: span[1]] = syl[h]
            jobs.append((str(out), split, i, text, syls, corpus.draw_condition(seed, split, i, variants)))
            extra.append({"hotword": h, "span": list(span) if span else None})
    rows: dict[str, list] = defaultdict(list)
    for row, x in zip(corpus.synthesize_jobs(jobs, workers, progress), extra):
        rows[row["key"].rstrip("0123456789")].append({**row, **x})
    for split in SPLITS:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in rows[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(out / "hotwords.json", "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "corpus": str(corpus_dir), **lists}, f, ensure_ascii=False, indent=1)
    return {s: len(rows[s]) for s in SPLITS}


def _span_errors(ref: str, hyp: str, span) -> tuple[int, int]:
    """Character errors (edit operations) attributed inside / outside span = [start, end) of ref. An
    insertion belongs to the reference character before it (the first one at the start)."""
    inside = outside = 0
    last = 0
    for op, i, _ in align(ref, hyp):
        if i is not None:
            last = i
        if op == "=":
            continue
        pos = i if i is not None else last
        if span is not None and span[0] <= pos < span[1]:
            inside += 1
        else:
            outside += 1
    return inside, outside


def _prf(tp: int, fn: int, fp: int) -> dict:
    r = tp / (tp + fn) if tp + fn else float("nan")
    p = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * p * r / (p + r) if tp else 0.0
    return {"recall": round(r, 4), "precision": round(p, 4), "f1": round(f1, 4), "tp": tp, "fn": fn, "fp": fp}


def hotword_score(rows: list[dict], hyps: list[str], hotwords, greedy: list[str] | None = None,
                  r1_words=None) -> dict:
    """The spec's counts for one hotword list: per utterance and listed word h, r = occurrences in the
    reference, y = in the hypothesis; TP += min(r, y), FN += max(r − y, 0), FP += max(y − r, 0).
    rows: hotword-set rows (target, hotword, span); hotwords: the listed words; greedy: the plain model's texts
    (for induced false alarms: occurrences in hyps not in greedy, on sentences without hotwords); r1_words: the
    subset scored separately (words the plain model recalls < 40 %)."""
    words = list(hotwords)
    r1 = set(r1_words or ())
    tot = [0, 0, 0]
    sub = [0, 0, 0]
    per_word: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    fa = induced = plain_utts = 0
    err_in = err_out = chars_in = chars_out = 0
    for k, (row, hyp) in enumerate(zip(rows, hyps, strict=True)):
        ref, hyp = row["target"], "".join(hyp.split())
        g = None if greedy is None else "".join(greedy[k].split())
        for h in words:
            r, y = ref.count(h), hyp.count(h)
            if not (r or y):
                continue
            c = (min(r, y), max(r - y, 0), max(y - r, 0))
            for acc in (tot, per_word[h]) + ((sub,) if h in r1 else ()):
                for i in range(3):
                    acc[i] += c[i]
            if row["hotword"] is None:
                fa += y
                if g is not None:
                    induced += max(y - g.count(h), 0)
        plain_utts += row["hotword"] is None
        ei, eo = _span_errors(ref, hyp, row["span"])
        err_in, err_out = err_in + ei, err_out + eo
        n_in = (row["span"][1] - row["span"][0]) if row["span"] else 0
        chars_in, chars_out = chars_in + n_in, chars_out + len(ref) - n_in
    per100 = 100.0 / max(plain_utts, 1)
    return {"words": len(words), "utterances": len(rows), **_prf(*tot), "r1": {"words": len(r1), **_prf(*sub)},
            "false_alarms_per_100": round(fa * per100, 2),
            "induced_false_alarms_per_100": None if greedy is None else round(induced * per100, 2),
            "cer": round((err_in + err_out) / max(chars_in + chars_out, 1), 4),
            "cer_in_spans": round(err_in / max(chars_in, 1), 4), "cer_outside_spans": round(err_out / max(chars_out, 1), 4),
            "per_word": {h: dict(zip(("tp", "fn", "fp"), v)) for h, v in per_word.items()}}


def low_recall_words(rows: list[dict], greedy: list[str], threshold: float = 0.4) -> list[str]:
    """The hotwords (of the rows') the plain model recalls below `threshold`: SeACo's "R1" subset."""
    tp, n = defaultdict(int), defaultdict(int)
    for row, hyp in zip(rows, greedy, strict=True):
        h = row["hotword"]
        if h is not None:
            r, y = row["target"].count(h), "".join(hyp.split()).count(h)
            tp[h] += min(r, y)
            n[h] += r
    return sorted(h for h in n if tp[h] / n[h] < threshold)
