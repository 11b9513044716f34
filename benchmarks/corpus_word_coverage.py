"""How much word context a synthetic corpus of a given size can teach: the share of held-out characters that lie
in multi-character words the training text contains at least k times, for several training sizes.

    .venv/bin/python benchmarks/corpus_word_coverage.py [--sizes 10800 29000 100000] [--test 225]

Sentences are drawn the way `paraformer-ext make-corpus` draws them (corpus.make_sentence's rule: jieba words
∝ freq^0.5, 8-16 characters), from an independent random stream, so the figures are the expected coverage of a
corpus of that many training utterances (12 h ≈ 10,800, 36 h ≈ 29,000, 125 h ≈ 100,000), not of one seed's
corpus. A homophone can be told apart only through its word (training.md §5), so this bounds how much of the
homophone error a model can unlearn from that much text. Writes benchmarks/results/corpus_word_coverage.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paraformer_ext.data.corpus import MAX_CHARS, MIN_CHARS, load_lexicon  # noqa: E402


class Sampler:
    """make_sentence's rule with words drawn in bulk (one rng.choice per 64k words, not one per word)."""

    def __init__(self, lex, seed: int):
        self.lex, self.rng = lex, np.random.default_rng(seed)
        self.buf, self.pos = np.empty(0, dtype=np.int64), 0

    def _word(self) -> str:
        if self.pos == self.buf.size:
            self.buf, self.pos = self.rng.choice(len(self.lex.words), size=1 << 16, p=self.lex.weights), 0
        self.pos += 1
        return self.lex.words[int(self.buf[self.pos - 1])]

    def sentence(self) -> list[str]:
        target, n, words = int(self.rng.integers(MIN_CHARS, MAX_CHARS + 1)), 0, []
        while n < target:
            w = self._word()
            if n + len(w) <= MAX_CHARS:
                words.append(w)
                n += len(w)
        return words


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10800, 29000, 100000], help="training utterances")
    ap.add_argument("--test", type=int, default=225, help="held-out utterances")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "corpus_word_coverage.json")
    a = ap.parse_args(argv)
    lex = load_lexicon()
    s = Sampler(lex, a.seed)
    test = [w for _ in range(a.test) for w in s.sentence()]
    chars = sum(len(w) for w in test)
    counts: Counter = Counter()
    drawn, rows = 0, []
    for size in sorted(a.sizes):  # one growing training text: each size extends the one before
        for _ in range(size - drawn):
            counts.update(s.sentence())
        drawn = size
        row = {"train_utterances": size,
               **{f"chars_in_words_seen_{k}x": round(sum(len(w) for w in test if len(w) > 1 and counts[w] >= k) / chars, 4)
                  for k in a.k}}
        rows.append(row)
        print(row, flush=True)
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "lexicon_words": len(lex.words),
              "test_utterances": a.test, "test_chars": chars,
              "single_char_word_share": round(sum(len(w) for w in test if len(w) == 1) / chars, 4), "rows": rows}
    a.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
