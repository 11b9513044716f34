"""Hotwords: a user's word list → the Aho-Corasick graph that ops/hotwords.py searches (spec hotwords.md).

    hw = HotwordList({"阿里巴巴": 20, "通义": None})          # None: DEFAULT_WEIGHT
    hw = HotwordList.read("hotwords.txt")                      # FunASR's file: `word weight` per line
    hw = server_list.merged(HotwordList.parse_json(client))    # the client's weights win on duplicates
    hw = HotwordList.parse("阿里巴巴, 通义")                     # any form a websocket client sends
    graph = hw.compile(tokens, token_bonus=2.0)                # tokenized with the model's tokens.json
    ids, fired = graph.decode(logp)                            # logp: (N, V) float32 of one utterance

**Weights, as FunASR means them.** A hotword h of |h| tokens with weight w earns |h|·β + w/10 (in natural-log
posterior units) each time the decoded tokens spell it: β = `token_bonus` (FunASR's `--fst-inc-wts` 20 over
its `--am-scale` 10, hence the default 2.0) per matched token, plus w/10 on completion (FunASR's weight over
the same scale). w is clamped to [1, 100] (FunASR's documented range; each clamp is noted in `notes`); a word
without a weight gets DEFAULT_WEIGHT = 20, the weight of FunASR's examples (FunASR's server skips such lines;
we would rather use the word). A weight that is not a number is an error.

**Tokens.** A hotword is tokenized by training/data.py's `tokenize` (one id per CJK character, Latin words
as the vocabulary's `@@` pieces), the one tokenizer of the package. A hotword with a character or word the
vocabulary lacks, or one that spells a special token, is skipped and reported in `HotwordGraph.skipped`
(FunASR drops such characters silently). Words that tokenize to the same ids are merged (the higher weight).
"""
from __future__ import annotations

import functools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .ops.hotwords import GraphWalker, hotword_decode
from .text import EOS_ID, SPECIAL_IDS, TokenList

DEFAULT_WEIGHT = 20.0
MIN_WEIGHT, MAX_WEIGHT = 1.0, 100.0
DEFAULT_TOKEN_BONUS = 2.0  # β: FunASR's per-token increment (20) over its acoustic scale (10)
DEFAULT_BEAM = 8
DEFAULT_TOPK = 4


class HotwordError(ValueError):
    """A hotword list that cannot be used: the message says which entry and how to fix it."""


def _weight(word: str, w, where: str) -> tuple[float, str | None]:
    """(the clamped weight, a note when it was clamped) of one entry; raises HotwordError on a bad weight."""
    if w is None:
        return DEFAULT_WEIGHT, None
    if isinstance(w, bool) or not isinstance(w, (int, float, str)):
        raise HotwordError(f"{where}: the weight of {word!r} is {w!r} ({type(w).__name__}); a weight is a number "
                           f"from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, or None for the default {DEFAULT_WEIGHT:g}")
    try:
        x = float(w)
    except ValueError:
        raise HotwordError(f"{where}: the weight of {word!r} is {w!r}, not a number; write a number from "
                           f"{MIN_WEIGHT:g} to {MAX_WEIGHT:g}") from None
    if not math.isfinite(x):
        raise HotwordError(f"{where}: the weight of {word!r} is {w!r}; a weight is a finite number from "
                           f"{MIN_WEIGHT:g} to {MAX_WEIGHT:g}")
    c = min(max(x, MIN_WEIGHT), MAX_WEIGHT)
    return c, (None if c == x else f"{where}: the weight {x:g} of {word!r} was clamped to {c:g} "
               f"(weights range from {MIN_WEIGHT:g} to {MAX_WEIGHT:g})")


def _word(word, where: str) -> str:
    if not isinstance(word, str):
        raise HotwordError(f"{where}: a hotword must be a string, got {type(word).__name__} {word!r}")
    w = " ".join(word.split())
    if not w:
        raise HotwordError(f"{where}: an empty hotword; remove the entry or write the word")
    return w


@dataclass(frozen=True)
class HotwordList:
    """Words and weights, cleaned (whitespace collapsed, weights clamped), in first-seen order; a word given
    twice keeps its last weight. Immutable: `merged` returns a new list.

    HotwordList(hotwords) accepts a mapping {word: weight or None}, an iterable of words or (word, weight)
    pairs, another HotwordList, or None (empty)."""

    items: tuple[tuple[str, float], ...] = ()
    notes: tuple[str, ...] = ()  # weights that were clamped

    def __init__(self, hotwords=None, *, source: str = "hotwords"):
        if isinstance(hotwords, HotwordList):
            object.__setattr__(self, "items", hotwords.items)
            object.__setattr__(self, "notes", hotwords.notes)
            return
        if hotwords is None:
            pairs: Iterable = ()
        elif isinstance(hotwords, Mapping):
            pairs = hotwords.items()
        elif isinstance(hotwords, (str, bytes)):
            raise HotwordError(f"{source}: got a string; pass a dict {{word: weight}}, a list of words, "
                               "HotwordList.read(path) for a file, or HotwordList.parse_json(text) for JSON")
        else:
            pairs = ((h, None) if isinstance(h, str) else h for h in hotwords)
        entries = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise HotwordError(f"{source}[{i}]: expected a word or a (word, weight) pair, got {pair!r}")
            entries.append((f"{source}[{i}]", *pair))
        self._fill(entries)

    def _fill(self, entries) -> None:
        """entries: (where, word, weight or None) → items and notes."""
        out: dict[str, float] = {}
        notes = []
        for where, word, weight in entries:
            word = _word(word, where)
            w, note = _weight(word, weight, where)
            out[word] = w  # a repeated word keeps its first position and its last weight
            if note:
                notes.append(note)
        object.__setattr__(self, "items", tuple(out.items()))
        object.__setattr__(self, "notes", tuple(notes))

    @classmethod
    def parse_lines(cls, text: str, source: str = "hotwords") -> "HotwordList":
        """FunASR's hotword file: one `word weight` per line (the last field is the weight; a Latin phrase may
        have spaces). A line with one field is a word with DEFAULT_WEIGHT; blank lines are skipped."""
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{source}:{n}"
            if len(fields) == 1:
                entries.append((where, fields[0], None))
                continue
            try:
                float(fields[-1])
            except ValueError:
                raise HotwordError(f"{where}: {line.strip()!r}: the last field {fields[-1]!r} is not a weight; write "
                                   f"`word weight` with a number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}, or the "
                                   f"word alone for the default {DEFAULT_WEIGHT:g}") from None
            entries.append((where, " ".join(fields[:-1]), fields[-1]))
        out = cls()
        out._fill(entries)
        return out

    @classmethod
    def read(cls, path) -> "HotwordList":
        """A FunASR hotword file (UTF-8), see parse_lines."""
        p = Path(path)
        if not p.is_file():
            raise HotwordError(f"hotword file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise HotwordError(f"{p}: not a UTF-8 text file ({e})") from e
        return cls.parse_lines(text, source=str(p))

    @classmethod
    def parse_json(cls, text: str, source: str = "hotwords JSON") -> "HotwordList":
        """A client's JSON object {"阿里巴巴": 20, ...} (FunASR's websocket `hotwords` field)."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise HotwordError(f"{source}: not valid JSON ({e}); expected an object like {{\"阿里巴巴\": 20}}") from e
        if not isinstance(obj, dict):
            raise HotwordError(f"{source}: expected a JSON object {{word: weight}}, got a JSON {type(obj).__name__}")
        return cls(obj, source=source)

    @classmethod
    def parse(cls, value, source: str = "hotwords") -> "HotwordList":
        """Every form FunASR's clients send as `hotwords`: None or "" (none), a JSON object string, a mapping,
        a list of words, or words separated by commas or spaces (each then gets DEFAULT_WEIGHT; a Latin phrase
        with spaces needs the JSON form)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("{"):
                return cls.parse_json(s, source)
            return cls(s.replace("，", ",").replace(",", " ").split(), source=source)
        if isinstance(value, (Mapping, list, tuple)):
            return cls(value, source=source)
        raise HotwordError(f"{source}: got {type(value).__name__} {value!r}; send a JSON object {{word: weight}}, "
                           "a list of words, or words separated by commas or spaces")

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def as_dict(self) -> dict[str, float]:
        return dict(self.items)

    def merged(self, other) -> "HotwordList":
        """This list plus `other` (anything HotwordList accepts); other's weight wins where both have a word
        (FunASR's server list + a client's list)."""
        other = HotwordList(other)
        out = HotwordList()
        words = dict(self.items)
        words.update(other.items)
        object.__setattr__(out, "items", tuple(words.items()))
        object.__setattr__(out, "notes", self.notes + other.notes)
        return out

    def compile(self, tokens: TokenList, token_bonus: float = DEFAULT_TOKEN_BONUS, beam: int = DEFAULT_BEAM,
                topk: int = DEFAULT_TOPK, margin: float | None = None) -> "HotwordGraph":
        """The search graph for a model's tokens. token_bonus: β ≥ 0 per matched token; beam, topk, margin:
        the search (ops/hotwords.py); margin None = the largest bonus one hotword's spelling can earn (a token
        further below its row's best cannot pay for itself unless overlapping hotwords chain their bonuses;
        math.inf makes the candidate set complete)."""
        if not (isinstance(token_bonus, (int, float)) and math.isfinite(token_bonus) and token_bonus >= 0):
            raise HotwordError(f"hotword_token_bonus must be a finite number >= 0 (FunASR's is 2.0), got {token_bonus!r}")
        for name, v in (("beam", beam), ("topk", topk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HotwordError(f"hotword {name} must be an integer >= 1, got {v!r}")
        if margin is not None and not (isinstance(margin, (int, float)) and margin >= 0):
            raise HotwordError(f"hotword margin must be a number >= 0 (math.inf: no limit) or None, got {margin!r}")
        from .training.data import tokenize  # lazily: the training package imports the recognizer's modules

        by_ids: dict[tuple[int, ...], int] = {}
        words, weights, seqs, skipped = [], [], [], []
        for word, w in self.items:
            unknown: Counter = Counter()
            ids = tuple(tokenize(word, tokens, unknown))
            if unknown:
                skipped.append((word, "not in the model's vocabulary: " + ", ".join(repr(u) for u in unknown)))
            elif not ids or any(i in SPECIAL_IDS for i in ids):
                skipped.append((word, "spells a special token (<blank>, <s>, </s>)"))
            elif ids in by_ids:
                k = by_ids[ids]
                weights[k] = max(weights[k], w)
            else:
                by_ids[ids] = len(words)
                words.append(word)
                weights.append(w)
                seqs.append(ids)
        return HotwordGraph._build(tuple(words), tuple(weights), tuple(seqs), tuple(skipped), float(token_bonus),
                                   beam, topk, margin, len(tokens))


class HotwordGraph:
    """A compiled HotwordList: the words kept (`words`, `weights`, `token_ids`), those skipped with the reason
    (`skipped`: (word, why)), the graph tensors of ops/hotwords.py, and the search settings. Immutable; one
    graph serves any number of utterances and threads."""

    def __init__(self):
        raise TypeError("build a HotwordGraph with HotwordList(...).compile(tokens)")

    @classmethod
    def _build(cls, words, weights, seqs, skipped, beta, beam, topk, margin, vocab_size) -> "HotwordGraph":
        g = object.__new__(cls)
        g.words, g.weights, g.token_ids, g.skipped = words, weights, seqs, skipped
        g.token_bonus, g.beam, g.topk, g.vocab_size = beta, beam, topk, vocab_size
        g.eos_id = EOS_ID
        children: list[dict[int, int]] = [{}]
        depth, word = [0], [-1]
        for k, seq in enumerate(seqs):
            s = 0
            for v in seq:
                if v not in children[s]:
                    children[s][v] = len(children)
                    children.append({})
                    depth.append(depth[s] + 1)
                    word.append(-1)
                s = children[s][v]
            word[s] = k
        S = len(children)
        fail, dict_next = [0] * S, [-1] * S
        bonus = [0.0] * S  # out: the bonuses of every hotword ending at the node
        queue = list(children[0].values())
        for s in queue:  # breadth first, so fail[s] (shallower) is final before s's children need it
            own = len(seqs[word[s]]) * beta + weights[word[s]] / 10 if word[s] >= 0 else 0.0
            f = fail[s]
            bonus[s] = own + bonus[f]
            dict_next[s] = f if word[f] >= 0 else dict_next[f]
            for v, c in children[s].items():
                u = f if s else -1
                while u >= 0 and v not in children[u]:
                    u = fail[u] if u else -1
                fail[c] = children[u][v] if u >= 0 else 0
                queue.append(c)
        # Every node appended to `queue` is reached once; the root's children keep fail = 0.
        off, edges = [0], []
        for s in range(S):
            edges += [[v, c] for v, c in sorted(children[s].items())]
            off.append(len(edges))
        g.child_offsets = torch.tensor(off, dtype=torch.int64)
        g.edges = torch.tensor(edges, dtype=torch.int64).reshape(-1, 2)
        g.nodes = torch.tensor([[fail[s], depth[s], word[s], dict_next[s]] for s in range(S)], dtype=torch.int64)
        g.node_scores = torch.tensor([[beta * depth[s], bonus[s]] for s in range(S)], dtype=torch.float64)
        if margin is None:  # the bonus spelling one hotword earns, nested hotwords included
            margin = 0.0
            for seq in seqs:
                s, total = 0, 0.0
                for v in seq:
                    while s and v not in children[s]:
                        s = fail[s]
                    s = children[s].get(v, 0)
                    total += bonus[s]
                margin = max(margin, total)
        g.margin = float(margin)
        return g

    def __len__(self) -> int:
        return len(self.words)

    @functools.cached_property
    def walker(self) -> GraphWalker:
        """The graph's transitions as Python lists (lm_decode's search), made once per graph."""
        return GraphWalker(self.child_offsets.tolist(), self.edges.tolist(), self.nodes.tolist(),
                           self.node_scores.tolist())

    def __repr__(self) -> str:
        return (f"HotwordGraph({len(self.words)} words, {len(self.skipped)} skipped, {self.nodes.shape[0]} states, "
                f"token_bonus={self.token_bonus:g}, beam={self.beam}, margin={self.margin:g})")

    def decode(self, logp: torch.Tensor, kernels: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One utterance: logp (N, V) log-posteriors (moved to the CPU as float32) → (ids (N,) int64, fired
        (F, 3) int64 [word index into `words`, start, end) over the N positions)."""
        if logp.dim() != 2 or logp.size(1) != self.vocab_size:
            raise ValueError(f"HotwordGraph.decode: logp must be (N, {self.vocab_size}) for the {self.vocab_size}-token "
                             f"list the graph was compiled for, got {tuple(logp.shape)}")
        return hotword_decode(logp.detach().to("cpu", torch.float32), self.child_offsets, self.edges, self.nodes,
                              self.node_scores, self.beam, self.topk, self.margin, self.eos_id, kernels=kernels)


def as_hotword_list(hotwords) -> HotwordList:
    """A HotwordList from anything HotwordList accepts, or from a file path (pathlib.Path)."""
    if isinstance(hotwords, Path):
        return HotwordList.read(hotwords)
    return HotwordList(hotwords)
