"""Decoding with a language model: the beam search that turns one utterance's decoder posteriors into tokens
under an n-gram LM (lm.py), with hotwords (ops/hotwords.py's graph) when a list is given.

**Objective.** Over the N CIF positions of one decoder pass:

    argmax_y  Σ_t (logp[t, y_t] − max_v logp[t, v])  +  λ·(Σ_t lm_t + log p_lm(</s> | y))
              +  Σ_{occurrences of hotword h in y} out_h

lm_t = log p_lm(y_t | y_<t), or the unigram log p_lm(y_t) where t lies inside a hotword occurrence: the hotwords
a user lists are typically names the LM's text never held, whose backed-off context terms would cancel their
bonus (recall of unseen names fell from 0.92 to 0.65 with them), while forgiving the LM altogether inside them
made a long list cover ordinary speech with hotwords. λ = `weight` (FunASR's `lm_weight`); the hotword term is
ops/hotwords.py's. `</s>` as a decoded token (the
decoder's end mark at the last position) costs nothing under the LM: the sentence end is scored once, after
the last position. The special tokens (<blank>, <s>, </s>) are candidates only where they are their row's
argmax, as greedy would write them: otherwise the search would trade a character the LM finds unlikely for a
token postprocessing drops (a deletion). Tokens the LM does not know are scored as <unk>. With λ = 0 and no
hotwords the result is greedy's argmax.

**Search** (as ops/hotwords.py's, with the LM history in the state): every survivor extends by the row's
top-`topk` tokens, plus the tokens that start or continue a hotword within the graph's margin; candidates that
reach the same (hotword state, last order−1 units, withheld LM terms of the open match) are merged, the best
kept (a match's LM terms wait until it completes, charged as unigrams, or fails, charged in context); the
survivors are the best by score with the waiting terms charged in context, and the `beam` − 1 best of the
others by score with them charged as unigrams plus the open match's provisional bonus (ranking without them
let open matches crowd ordinary text out of the beam). Plain Python: a
few hundred LM lookups per utterance, small beside the model's forward pass (benchmarks in the README).
"""
from __future__ import annotations

import math

import torch

from .lm import EOS, UNK, LMError, NgramLM
from .text import EOS_ID, SPECIAL_IDS, TokenList

DEFAULT_LM_WEIGHT = 1.0  # chosen on the synthetic corpus's validation split for the shipped model (README)
DEFAULT_LM_BEAM = 8
DEFAULT_LM_TOPK = 4


class LMDecoder:
    """An NgramLM bound to a model's tokens, with the search settings. One decoder serves any number of
    utterances; it caches LM lookups."""

    def __init__(self, lm: NgramLM, tokens: TokenList, weight: float = DEFAULT_LM_WEIGHT,
                 beam: int = DEFAULT_LM_BEAM, topk: int = DEFAULT_LM_TOPK, source: str = "language model"):
        if not isinstance(lm, NgramLM):
            raise LMError(f"an LMDecoder needs an NgramLM (NgramLM.read_arpa(path)), got {type(lm).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight >= 0):
            raise LMError(f"lm_weight must be a finite number >= 0 (0: the LM changes nothing), got {weight!r}")
        for name, v in (("beam", beam), ("topk", topk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LMError(f"lm {name} must be an integer >= 1, got {v!r}")
        plain = [t for i, t in enumerate(tokens) if i not in SPECIAL_IDS and t != UNK]
        known = sum(t in lm.vocab for t in plain)
        if known < 0.5 * len(plain):
            raise LMError(f"{source} knows only {known} of the model's {len(plain)} tokens: it was made for another "
                          f"vocabulary; train one on this model's tokens.json (`paraformer-ext train-lm`)")
        self.lm, self.weight, self.beam, self.topk, self.source = lm, float(weight), beam, topk, source
        self.units = tuple(t if t in lm.vocab else UNK for t in tokens)
        self.vocab_size = len(tokens)
        self._cache: dict[tuple, float] = {}

    def __repr__(self) -> str:
        return f"LMDecoder({self.lm!r}, weight={self.weight:g}, beam={self.beam}, topk={self.topk})"

    def _logp(self, hist: tuple, unit: str) -> float:
        key = (hist, unit)
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) > 2_000_000:  # bounded: a server decodes forever
                self._cache.clear()
            p = self._cache[key] = self.lm.logp(hist, unit)
        return p

    def decode(self, logp: torch.Tensor, graph=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One utterance: logp (N, V) log-posteriors; graph: a HotwordGraph or None → (ids (N,) int64, fired
        (F, 3) int64 [word index, start, end), empty without a graph)."""
        if not isinstance(logp, torch.Tensor) or logp.dim() != 2 or logp.size(1) != self.vocab_size:
            raise ValueError(f"LMDecoder.decode: logp must be (N, {self.vocab_size}) log-posteriors for the model's "
                             f"{self.vocab_size} tokens, got "
                             f"{tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__}")
        logp = logp.detach().to("cpu", torch.float32)
        N, V = logp.shape
        if N == 0:
            return torch.empty(0, dtype=torch.int64), torch.empty(0, 3, dtype=torch.int64)
        if not bool(torch.isfinite(logp.max(-1).values).all()) or bool(torch.isnan(logp).any()):
            raise ValueError("LMDecoder.decode: logp has NaN or a row without a finite maximum; log-posteriors "
                             "must be log_softmax outputs")
        walk = margin = None
        if graph is not None and len(graph) > 0:
            if graph.vocab_size != V:
                raise ValueError(f"the hotword graph was compiled for {graph.vocab_size} tokens, the model has {V}")
            walk, margin = graph.walker, graph.margin
        K = min(self.topk, V)
        top_v, top_i = logp.topk(K, -1)
        top_i = top_i.tolist()
        rows = logp.tolist()
        lam, units = self.weight, self.units
        prev = [(0.0, 0, self.lm.state(("<s>",)), ())]  # (score, hotword state, LM state, withheld LM terms of the open match)
        back = []
        for t in range(N):
            mx = float(top_v[t, 0])
            row = rows[t]
            forced = t == N - 1 and top_i[t][0] == EOS_ID
            shared = [EOS_ID] if forced else [v for v in top_i[t] if v not in SPECIAL_IDS or v == top_i[t][0]]
            seen = set(shared)
            starts = []
            if walk is not None and not forced:
                starts = [v for v in walk.first if row[v] - mx >= -margin and v not in seen]
                # At most `beam` of them survive: keep the best by row value + completion bonus (exact when the
                # parent has no open match: each start then reaches its own depth-1 state, same provisional bonus).
                if len(starts) > self.beam:
                    root = walk.children[0]
                    starts = sorted(starts, key=lambda v: -(row[v] + walk.sc[root[v]][1]))[: self.beam]
                seen.update(starts)
            best: dict[tuple, tuple] = {}
            for i, (score, node, hist, pend) in enumerate(prev):
                # Hotword starts outside the top-k only from the best survivor (prev[0]): from the others they
                # reach the same hotword state with a lower score, differing only in LM history (hundreds of
                # start tokens per position would otherwise multiply the work by the beam).
                toks = shared + starts if i == 0 else shared
                if walk is not None and not forced and node:
                    toks = toks + [v for v in walk.continuations(node, row, mx, margin) if v not in seen]
                for v in toks:
                    am = row[v] - mx
                    if v == EOS_ID:
                        lmc, h2, u = 0.0, hist, None
                    else:
                        u = units[v]
                        lmc = lam * self._logp(hist, u) if lam else 0.0
                        h2 = self.lm.state(hist + (u,))
                    if walk is None:
                        c, n2, p2 = score + am + lmc, 0, ()
                    else:
                        uni = lam * self._logp((), u) if lam and u is not None else 0.0
                        n2, p2, charged = self._withhold(walk, v, node, pend, (lmc, uni))
                        c = score + am + charged + walk.sc[n2][1]
                    key = (n2, h2, p2)
                    if key not in best or c > best[key][0]:
                        best[key] = (c, i, v)
            merged = [(k, *c) for k, c in best.items()]  # ((node, hist, pend), score, parent, token)
            if walk is None:
                top = max(merged, key=lambda m: m[1])
                others = sorted((m for m in merged if m is not top), key=lambda m: -m[1])
            else:  # ranked with the withheld terms: as charged if the match failed now / if it completes
                top = max(merged, key=lambda m: m[1] + sum(x for x, _ in m[0][2]))
                others = sorted((m for m in merged if m is not top),
                                key=lambda m: -(m[1] + sum(u for _, u in m[0][2]) + walk.sc[m[0][0]][0]))
            survivors = [top] + others[: self.beam - 1]
            prev = [(m[1], *m[0]) for m in survivors]
            back.append([(m[2], m[3]) for m in survivors])
        final = [s + sum(x for x, _ in p) + (lam * self._logp(h, EOS) if lam else 0.0) for s, _, h, p in prev]
        j = max(range(len(prev)), key=lambda k: final[k])
        ids = [0] * N
        for t in range(N - 1, -1, -1):
            j, ids[t] = back[t][j]
        fired = walk.fired(ids) if walk is not None else []
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(fired, dtype=torch.int64).reshape(-1, 3)


    @staticmethod
    def _withhold(walk, v: int, node: int, pend: tuple, terms: tuple) -> tuple[int, tuple, float]:
        """Step the hotword graph by v, whose LM terms are (in context, unigram): (new state, the terms still
        withheld, the LM terms charged now). An open match's terms wait: the tokens that fall out of every
        possible match (the new state is shallower) are charged; those a completed hotword covers are charged
        their unigram term instead (a hotword is a word the user knows exists, whatever the contexts of the LM's
        text; its characters still pay what they cost out of context, so hotwords are no escape from the LM)."""
        n2 = walk.step(node, v)
        p = pend + (terms,)
        d2 = walk.nd[n2][1]
        charged = sum(x for x, _ in p[: len(p) - d2])
        p = p[len(p) - d2:] if d2 else ()
        ends = n2 if walk.nd[n2][2] >= 0 else walk.nd[n2][3]  # the longest hotword ending here
        if ends >= 0:
            L = walk.nd[ends][1]
            p = p[: d2 - L] + tuple((u, u) for _, u in p[d2 - L:])
        return n2, p, charged


def load_lm_decoder(path, tokens: TokenList, weight: float = DEFAULT_LM_WEIGHT, **search) -> LMDecoder:
    """An ARPA file (lm.py) bound to a model's tokens."""
    return LMDecoder(NgramLM.read_arpa(path), tokens, weight, source=str(path), **search)
