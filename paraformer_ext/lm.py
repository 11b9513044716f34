"""Token n-gram language models for decoding (lm_decode.py): estimated from text, stored as ARPA.

    lm = NgramLM.estimate(sentences, order=4)        # sentences: token lists (the model's tokens)
    lm.write_arpa("lm.arpa.gz")                      # the standard backoff format (KenLM, SRILM read it)
    lm = NgramLM.read_arpa("lm.arpa.gz")
    lm.logp(("<s>", "今"), "天")                      # natural log p(天 | <s> 今)

Why an n-gram over the model's own tokens: Paraformer's decoder posteriors are independent per CIF position
given one pass, so most of its errors on Mandarin are homophones that word context would settle; a small
n-gram trained on the training text supplies that context at almost no cost (FunASR's runtime does the same
with an n-gram WFST). The units are token strings, so a model's tokens.json is the vocabulary and no
tokenizer is involved.

**Estimation**: interpolated absolute discounting (discount D per order), counts below `min_count` pruned,
written in backoff form: a kept n-gram stores its interpolated probability, a history stores the weight that
renormalizes what falls back to the shorter history. Every vocabulary unit gets a unigram (interpolated with
the uniform distribution), so no token has probability zero. `<s>` is a history only; `</s>` ends a sentence.
"""
from __future__ import annotations

import gzip
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10 = math.log(10.0)


class LMError(ValueError):
    """A language model file or argument that cannot be used; the message says what and how to fix it."""


class NgramLM:
    """A backoff n-gram model: `order`, `vocab` (the units it predicts), and per n-gram (a tuple of units)
    its natural-log probability and, for histories, its natural-log backoff weight."""

    def __init__(self, order: int, logprob: dict[tuple, float], backoff: dict[tuple, float]):
        if order < 1:
            raise LMError(f"an n-gram model needs order >= 1, got {order}")
        self.order = order
        self._p = logprob
        self._b = backoff
        self.vocab = frozenset(g[0] for g in logprob if len(g) == 1 and g[0] != BOS)
        if UNK not in self.vocab or EOS not in self.vocab:
            raise LMError(f"the model has no unigram for {UNK} or {EOS}; estimate it with NgramLM.estimate or write "
                          f"an ARPA file that has both")

    def __len__(self) -> int:
        return len(self._p)

    def __repr__(self) -> str:
        return f"NgramLM(order={self.order}, {len(self.vocab)} units, {len(self._p)} n-grams)"

    def logp(self, history: Sequence[str], unit: str) -> float:
        """Natural log p(unit | history); history: the units before it (only the last order-1 count), starting
        with <s> at a sentence start. A unit outside `vocab` is scored as <unk>."""
        if unit not in self.vocab:
            unit = UNK
        h = self.state(history)
        acc = 0.0
        for k in range(len(h), -1, -1):
            hk = h[len(h) - k:]
            p = self._p.get(hk + (unit,))
            if p is not None:
                return acc + p
            acc += self._b.get(hk, 0.0)
        raise AssertionError("unreachable: every vocabulary unit has a unigram")

    def state(self, history: Sequence[str]) -> tuple:
        """The part of a history that can change a future probability: its last order-1 units."""
        return tuple(history[len(history) - (self.order - 1):]) if self.order > 1 else ()

    # ---------------------------------------------------------------- estimation

    @classmethod
    def estimate(cls, sentences: Iterable[Sequence[str]], order: int = 4, vocab: Iterable[str] | None = None,
                 discount: float = 0.75, min_count: Sequence[int] | None = None, progress=None) -> "NgramLM":
        """sentences: token sequences (no <s> / </s>); vocab: every unit the model may predict (a model's
        tokens; default: the units seen), always with </s> and <unk>; discount in (0, 1); min_count: per order,
        n-grams seen fewer times are dropped (default 1 for unigrams and bigrams, 2 above: on the synthetic
        corpus a 4-gram's file went from 21.6 to 3.9 MB at the same validation CER). progress: optional
        callable(str)."""
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise LMError(f"order must be an integer >= 1, got {order!r}")
        if not 0.0 < discount < 1.0:
            raise LMError(f"discount must be in (0, 1), got {discount!r}")
        mc = list(min_count) if min_count is not None else [1, 1] + [2] * (order - 2)
        if len(mc) < order or any(int(m) < 1 for m in mc) or any(a > b for a, b in zip(mc, mc[1:])):
            raise LMError(f"min_count must give {order} counts >= 1 that never decrease with the order, got {mc}")
        counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(order)]  # [history length]
        n_sent = 0
        for s in sentences:
            seq = [BOS] + list(s) + [EOS]
            for i in range(1, len(seq)):
                for k in range(min(order - 1, i) + 1):
                    counts[k][tuple(seq[i - k:i])][seq[i]] += 1
            n_sent += 1
        if n_sent == 0:
            raise LMError("no sentences to estimate a language model from")
        units = set(counts[0][()]) | {EOS, UNK} | (set(vocab) if vocab is not None else set())
        units.discard(BOS)
        logprob: dict[tuple, float] = {}
        backoff: dict[tuple, float] = {}
        D = discount
        uni = counts[0][()]
        n, u = sum(uni.values()), len(uni)
        for w in units:  # interpolated with the uniform distribution over the vocabulary
            logprob[(w,)] = math.log(max(uni.get(w, 0) - D, 0) / n + D * u / n / len(units))
        logprob[(BOS,)] = -99.0 * LOG10  # a history only (ARPA's convention)
        lm = cls(order, logprob, backoff)  # grows order by order; lower orders are final when used
        for k in range(1, order):
            if progress is not None:
                progress(f"order {k + 1}: {len(counts[k])} histories")
            for h, c in counts[k].items():
                kept = [(w, x) for w, x in c.items() if x >= mc[k]]
                if not kept:
                    continue
                n, u = sum(c.values()), len(c)
                lam = D * u / n
                mass = lower = 0.0
                for w, x in kept:
                    pl = math.exp(lm.logp(h[1:], w))
                    p = (x - D) / n + lam * pl
                    logprob[h + (w,)] = math.log(p)
                    mass += p
                    lower += pl
                # What the kept n-grams leave, spread over the rest in the shorter history's proportions.
                backoff[h] = math.log(max(1.0 - mass, 1e-12) / max(1.0 - lower, 1e-12))
                cls._ensure_prefix(h, logprob, lm)
        return lm

    @staticmethod
    def _ensure_prefix(h: tuple, logprob: dict, lm: "NgramLM") -> None:
        """ARPA keeps a history's backoff on the n-gram that spells it: give a pruned one its backoff-form
        probability (the value a query would compute anyway), so the file stays well formed."""
        for j in range(1, len(h) + 1):
            g = h[:j]
            if g not in logprob:
                logprob[g] = lm.logp(g[:-1], g[-1])

    # ---------------------------------------------------------------- text

    @staticmethod
    def token_sentences(texts: Iterable[str], tokens) -> Iterable[list[str]]:
        """Texts → token-string sequences for `estimate`, tokenized as the model's training data is
        (training/data.tokenize: one token per CJK character, Latin words as the vocabulary's pieces)."""
        from .training.data import tokenize  # lazily: training imports the recognizer's modules

        for text in texts:
            yield [tokens[i] for i in tokenize(text, tokens)]

    # ---------------------------------------------------------------- ARPA

    def write_arpa(self, path) -> Path:
        """The model as an ARPA file (log10; gzip-compressed when the name ends in .gz)."""
        path = Path(path)
        by_order: list[list[tuple]] = [[] for _ in range(self.order)]
        for g in self._p:
            by_order[len(g) - 1].append(g)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "wt", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for k, grams in enumerate(by_order):
                f.write(f"ngram {k + 1}={len(grams)}\n")
            for k, grams in enumerate(by_order):
                f.write(f"\n\\{k + 1}-grams:\n")
                for g in sorted(grams):
                    line = f"{self._p[g] / LOG10:.6f}\t{' '.join(g)}"
                    if g in self._b:
                        line += f"\t{self._b[g] / LOG10:.6f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")
        return path

    @classmethod
    def read_arpa(cls, path) -> "NgramLM":
        """An ARPA file (plain or .gz) → NgramLM. Errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise LMError(f"no language model file at {path}; pass an ARPA file (.arpa or .arpa.gz), e.g. one "
                          f"written by `paraformer-ext train-lm`")
        opener = gzip.open if path.suffix == ".gz" else open
        logprob: dict[tuple, float] = {}
        backoff: dict[tuple, float] = {}
        declared: dict[int, int] = {}
        section = None
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, raw in enumerate(f, 1):
                    line = raw.strip()
                    if not line:
                        continue
                    if line == "\\data\\":
                        section = 0
                    elif line == "\\end\\":
                        break
                    elif line.startswith("\\") and line.endswith("-grams:"):
                        section = int(line[1:-7])
                    elif section == 0 and line.startswith("ngram "):
                        k, _, cnt = line[6:].partition("=")
                        declared[int(k)] = int(cnt)
                    elif section:
                        parts = line.split("\t") if "\t" in line else line.split()
                        if "\t" in line:
                            words = parts[1].split()
                            bo = parts[2] if len(parts) > 2 else None
                        else:
                            words = parts[1:1 + section]
                            bo = parts[1 + section] if len(parts) > 1 + section else None
                        if len(words) != section:
                            raise LMError(f"{path}:{lineno}: a {section}-gram line with {len(words)} units: {line!r}")
                        g = tuple(words)
                        logprob[g] = float(parts[0]) * LOG10
                        if bo is not None:
                            backoff[g] = float(bo) * LOG10
                    else:
                        raise LMError(f"{path}:{lineno}: not ARPA: {line[:60]!r}")
        except (OSError, UnicodeDecodeError, ValueError, IndexError) as e:
            if isinstance(e, LMError):
                raise
            raise LMError(f"{path} is not a readable ARPA language model ({type(e).__name__}: {e})") from e
        if not declared:
            raise LMError(f"{path} has no \\data\\ section: not an ARPA language model")
        for k, cnt in declared.items():
            got = sum(1 for g in logprob if len(g) == k)
            if got != cnt:
                raise LMError(f"{path}: the header declares {cnt} {k}-grams, the file has {got} (truncated?)")
        return cls(max(declared), logprob, backoff)
