"""Hotword biasing (spec hotwords.md §2): the beam search that turns one utterance's decoder posteriors into
tokens with a bonus for every hotword they spell. `hotword_decode_fn` (C++, csrc/hotwords_cpu.cpp) beside
`hotword_decode_ref` (plain Python, the same algorithm, the oracle of the tests); `hotword_decode` chooses by
`_ext.use_kernels`. The graph comes from `paraformer_ext.hotwords.HotwordList.compile`.

**Objective.** Over the N CIF positions of one decoder pass (independent given the pass, so without
hotwords greedy is the exact maximum):

    argmax_y  Σ_t (logp[t, y_t] − max_v logp[t, v])  +  Σ_{occurrences of hotword h in y} out_h

where out_h = |h|·β + w_h/10 (FunASR's token bonus and completion weight, see hotwords.py) and every
occurrence counts, overlapping and nested ones included (strict matching). Subtracting the row max changes no
decision; it makes greedy's score exactly 0 and every other sequence's strictly negative when no bonus
applies, so zero bonuses reproduce argmax bit for bit.

**Graph** (Aho-Corasick over token ids; node 0 is the root, S nodes, E edges):

* child_offsets (S+1,) int64: node s's edges are edges[child_offsets[s] : child_offsets[s+1]];
* edges (E, 2) int64: [token, child], tokens increasing within a node (binary search);
* nodes (S, 4) int64: [fail, depth, word, dict_next]: fail = the longest proper suffix that is a hotword
  prefix; depth = tokens from the root; word = index of the hotword that ends exactly here, or −1;
  dict_next = the nearest node on the fail chain (itself excluded) that ends a hotword, or −1;
* node_scores (S, 2) float64: [phi, out]: phi = β·depth, the provisional bonus of an open match; out = the sum
  of out_h over every hotword that ends at this node (its own and those along dict_next).

**Search.** A hypothesis is (score, state); score is the objective so far without provisional bonuses. At
position t, every survivor extends by: the top-`topk` tokens of the row; the tokens that start a hotword with
logp ≥ max − margin; the tokens that continue its open match (edges of its state and of its fail chain,
root excluded) within the same margin. Step: state' = δ(state, v), score' = score + (logp − max) + out[state'].
At the last position, when the row's argmax is `eos_id` (`</s>`), only eos_id is tried. Candidates reaching
the same state are merged (the best kept: the future depends only on the state). The survivors are the
best candidate by score (so the result never scores below greedy) and the `beam` − 1 best of the others by
score + phi[state] (so an open match survives until it completes or fails). The result is the best final
survivor by score: a match still open at the end earns nothing. With topk ≥ V, margin = inf and beam ≥ S
the search is the exact maximum (tests/test_hotwords.py checks it against brute-force enumeration).

**Ties** are broken towards the lexicographically smaller token sequence (compared by the parent's rank among
the previous survivors, then the token), the rule under which zero bonuses give argmax's lowest index.
Scores are float64 and computed by both implementations as the same expressions in the same order, so they
agree exactly.

Returns ids (N,) int64 and fired (F, 3) int64: [word, start, end) of every hotword occurrence in ids, by end
position, longest first. Inference only, host only (the CPU), no autograd.
"""
from __future__ import annotations

import math

import torch

from .._ext import has_kernels, use_kernels

_FIX = "; build the graph with paraformer_ext.hotwords.HotwordList.compile(tokens)"


def _check_args_ref(logp, child_offsets, edges, nodes, node_scores, beam, topk, margin, eos_id):
    """The checks of the C++ op, for the reference; returns (N, V)."""
    if not isinstance(logp, torch.Tensor) or logp.dim() != 2:
        raise ValueError(f"hotword_decode: logp must be (N, V) log-posteriors of one utterance, got "
                         f"{tuple(logp.shape) if isinstance(logp, torch.Tensor) else type(logp).__name__}")
    if logp.dtype != torch.float32:
        raise ValueError(f"hotword_decode: logp must be float32, got {logp.dtype}; pass log_softmax(logits.float())")
    if logp.device.type != "cpu":
        raise ValueError(f"hotword_decode: logp must be on the CPU (the search runs on the host), got {logp.device}")
    if beam < 1 or topk < 1:
        raise ValueError(f"hotword_decode: beam and topk must be >= 1, got beam={beam}, topk={topk}")
    if not margin >= 0:
        raise ValueError(f"hotword_decode: margin must be >= 0 (inf: no limit), got {margin}")
    N, V = logp.shape
    if N and not V:
        raise ValueError(f"hotword_decode: logp has {N} positions but an empty vocabulary")
    if not -1 <= eos_id < max(V, 1):
        raise ValueError(f"hotword_decode: eos_id must be -1 (none) or a token id < V = {V}, got {eos_id}")
    for name, t in (("child_offsets", child_offsets), ("edges", edges), ("nodes", nodes)):
        if t.dtype != torch.int64:
            raise ValueError(f"hotword_decode: graph index tensors must be int64, got {name} {t.dtype}{_FIX}")
    if node_scores.dtype != torch.float64:
        raise ValueError(f"hotword_decode: node_scores must be float64, got {node_scores.dtype}{_FIX}")
    S = nodes.shape[0] if nodes.dim() == 2 else 0
    if nodes.dim() != 2 or nodes.shape[1] != 4 or S < 1:
        raise ValueError(f"hotword_decode: nodes must be (S >= 1, 4), got {tuple(nodes.shape)}{_FIX}")
    if child_offsets.shape != (S + 1,):
        raise ValueError(f"hotword_decode: child_offsets must be (S + 1,) = ({S + 1},), got {tuple(child_offsets.shape)}{_FIX}")
    if edges.dim() != 2 or edges.shape[1] != 2:
        raise ValueError(f"hotword_decode: edges must be (E, 2), got {tuple(edges.shape)}{_FIX}")
    if node_scores.shape != (S, 2):
        raise ValueError(f"hotword_decode: node_scores must be (S, 2) = ({S}, 2), got {tuple(node_scores.shape)}{_FIX}")
    off, E = child_offsets.tolist(), edges.shape[0]
    ed, nd, sc = edges.tolist(), nodes.tolist(), node_scores.tolist()
    if off[0] != 0 or off[S] != E:
        raise ValueError(f"hotword_decode: child_offsets must start at 0 and end at E = {E}{_FIX}")
    if nd[0][0] != 0 or nd[0][1] != 0 or nd[0][2] != -1:
        raise ValueError(f"hotword_decode: node 0 must be the root (fail 0, depth 0, no word){_FIX}")
    for s in range(S):
        if off[s] > off[s + 1]:
            raise ValueError(f"hotword_decode: child_offsets must be non-decreasing (node {s}){_FIX}")
        for e in range(off[s], off[s + 1]):
            tok, c = ed[e]
            if not 0 <= tok < V:
                raise ValueError(f"hotword_decode: edge token {tok} is outside the vocabulary [0, {V}); the graph "
                                 f"was built for another token list{_FIX}")
            if e > off[s] and ed[e - 1][0] >= tok:
                raise ValueError(f"hotword_decode: edge tokens of node {s} must increase{_FIX}")
            if not (1 <= c < S and nd[c][1] == nd[s][1] + 1):
                raise ValueError(f"hotword_decode: edge {e} leads to a bad node {c}{_FIX}")
        if s > 0:
            f, depth, word, n = nd[s]
            if not (0 <= f < S and nd[f][1] < depth):
                raise ValueError(f"hotword_decode: fail[{s}] must be a shallower node{_FIX}")
            if word < -1:
                raise ValueError(f"hotword_decode: word[{s}] must be -1 or a hotword index{_FIX}")
            if not (n == -1 or (0 < n < S and nd[n][1] < depth and nd[n][2] >= 0)):
                raise ValueError(f"hotword_decode: dict_next[{s}] must be -1 or a shallower node that ends a hotword{_FIX}")
        if not (math.isfinite(sc[s][0]) and math.isfinite(sc[s][1])):
            raise ValueError(f"hotword_decode: node_scores must be finite{_FIX}")
    return N, V, off, ed, nd, sc



class GraphWalker:
    """The graph's transitions in plain Python, for the reference search here and lm_decode's search:
    off, ed, nd, sc are child_offsets, edges, nodes and node_scores as lists (validated by the caller)."""

    def __init__(self, off, ed, nd, sc):
        self.off, self.ed, self.nd, self.sc = off, ed, nd, sc
        self.first = [ed[e][0] for e in range(off[0], off[1])]  # the tokens that start a hotword
        self.children = [{ed[e][0]: ed[e][1] for e in range(off[s], off[s + 1])} for s in range(len(nd))]

    def child(self, s: int, v: int) -> int:
        return self.children[s].get(v, -1)

    def step(self, s: int, v: int) -> int:
        """δ(s, v): the deepest node whose spelling ends the text so far followed by v."""
        while True:
            c = self.child(s, v)
            if c >= 0:
                return c
            if s == 0:
                return 0
            s = self.nd[s][0]

    def continuations(self, s: int, row, mx: float, margin: float) -> list[int]:
        """The tokens that continue state s's open match (its edges and its fail chain's, root excluded)
        within `margin` of the row's maximum mx (compared as the C++ op does)."""
        out = []
        while s != 0:
            out += [self.ed[e][0] for e in range(self.off[s], self.off[s + 1]) if row[self.ed[e][0]] - mx >= -margin]
            s = self.nd[s][0]
        return out

    def fired(self, ids) -> list[list[int]]:
        """[word, start, end) of every hotword occurrence in ids, by end position, longest first."""
        out, s = [], 0
        for t, v in enumerate(ids):
            s = self.step(s, v)
            u = s if self.nd[s][2] >= 0 else self.nd[s][3]
            while u >= 0:
                out.append([self.nd[u][2], t + 1 - self.nd[u][1], t + 1])
                u = self.nd[u][3]
        return out


def hotword_decode_ref(
    logp: torch.Tensor,
    child_offsets: torch.Tensor,
    edges: torch.Tensor,
    nodes: torch.Tensor,
    node_scores: torch.Tensor,
    beam: int,
    topk: int,
    margin: float,
    eos_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The search of the module docstring in plain Python (float64 scores, as the C++ op computes them).

    logp: (N, V) float32 on the CPU; the graph tensors as documented above. Returns (ids (N,) int64,
    fired (F, 3) int64 [word, start, end))."""
    N, V, off, ed, nd, sc = _check_args_ref(logp, child_offsets, edges, nodes, node_scores, beam, topk, margin, eos_id)
    if N == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, 3, dtype=torch.int64)
    rows = logp.tolist()
    walk = GraphWalker(off, ed, nd, sc)
    K = min(topk, V)
    prev = [(0.0, 0)]  # (score, state), in lexicographic order of their token sequences
    back = []  # per position: the survivors' (parent, token)
    for t in range(N):
        row = rows[t]
        for v, x in enumerate(row):
            if math.isnan(x) or x == math.inf:
                raise ValueError(f"hotword_decode: logp[{t}, {v}] = {x}; log-posteriors must not be NaN or +inf")
        top = sorted(range(V), key=lambda v: (-row[v], v))[:K]
        mx = row[top[0]]
        if not math.isfinite(mx):
            raise ValueError(f"hotword_decode: row {t} of logp is all -inf; log-posteriors need a finite maximum")
        forced = t == N - 1 and eos_id >= 0 and top[0] == eos_id
        shared = [eos_id] if forced else top + [v for v in walk.first if row[v] - mx >= -margin]
        best: dict[int, tuple] = {}  # state -> (score, parent, token)
        for i, (score, s) in enumerate(prev):
            toks = shared if forced else shared + walk.continuations(s, row, mx, margin)
            for v in toks:
                n = walk.step(s, v)
                c = (score + (row[v] - mx) + sc[n][1], i, v)
                if n not in best or (-c[0], c[1], c[2]) < (-best[n][0], best[n][1], best[n][2]):
                    best[n] = c
        merged = [(n, *c) for n, c in best.items()]  # (state, score, parent, token)
        top_by_score = min(merged, key=lambda m: (-m[1], m[2], m[3]))
        others = sorted((m for m in merged if m is not top_by_score),
                        key=lambda m: (-(m[1] + sc[m[0]][0]), m[2], m[3]))
        survivors = sorted(others[: beam - 1] + [top_by_score], key=lambda m: (m[2], m[3]))
        prev = [(m[1], m[0]) for m in survivors]
        back.append([(m[2], m[3]) for m in survivors])
    j = min(range(len(prev)), key=lambda k: (-prev[k][0], k))
    ids = [0] * N
    for t in range(N - 1, -1, -1):
        j, ids[t] = back[t][j]
    fired = walk.fired(ids)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(fired, dtype=torch.int64).reshape(-1, 3)


if has_kernels():

    @torch.library.register_fake("paraformer_ext::hotword_decode")
    def _hotword_decode_fake(logp, child_offsets, edges, nodes, node_scores, beam, topk, margin, eos_id):
        torch._check(logp.dim() == 2, lambda: "logp must be (N, V)")
        fired = torch.library.get_ctx().new_dynamic_size()
        return logp.new_empty((logp.shape[0],), dtype=torch.int64), logp.new_empty((fired, 3), dtype=torch.int64)


def hotword_decode_fn(
    logp: torch.Tensor,
    child_offsets: torch.Tensor,
    edges: torch.Tensor,
    nodes: torch.Tensor,
    node_scores: torch.Tensor,
    beam: int,
    topk: int,
    margin: float,
    eos_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled op: same signature and, bit for bit, the same result as `hotword_decode_ref`."""
    return torch.ops.paraformer_ext.hotword_decode(logp, child_offsets, edges, nodes, node_scores, int(beam),
                                                   int(topk), float(margin), int(eos_id))


def hotword_decode(logp, child_offsets, edges, nodes, node_scores, beam, topk, margin, eos_id, *,
                   kernels: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled op or the reference, by `_ext.use_kernels(kernels, "cpu")` (the search runs on the host)."""
    fn = hotword_decode_fn if use_kernels(kernels, "cpu") else hotword_decode_ref
    return fn(logp, child_offsets, edges, nodes, node_scores, beam, topk, margin, eos_id)
