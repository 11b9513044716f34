"""Token n-gram LMs (lm.py) and the LM search (lm_decode.py): normalization, ARPA round trips, the search
against brute force and against the hotword reference, errors."""
from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from paraformer_ext.hotwords import HotwordList
from paraformer_ext.lm import EOS, UNK, LMError, NgramLM
from paraformer_ext.lm_decode import LMDecoder
from paraformer_ext.ops.hotwords import hotword_decode_ref
from paraformer_ext.text import EOS_ID, SPECIAL_IDS, TokenList

UNITS = list("甲乙丙丁")  # CJK: hotwords tokenize to one id per character
TOKENS = TokenList(["<blank>", "<s>", "</s>"] + UNITS + ["<unk>"])


def corpus(n=200, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):  # 甲乙 and 丙丁 are words: context the LM can learn
        s = []
        for _ in range(rng.randint(1, 4)):
            s += rng.choice([["甲", "乙"], ["丙", "丁"], ["甲"], ["丁"]])
        out.append(s)
    return out


@pytest.mark.parametrize("order,min_count", [(1, None), (2, None), (3, None), (3, [1, 1, 1]), (4, [1, 2, 2, 3])])
def test_distributions_sum_to_one(order, min_count):
    lm = NgramLM.estimate(corpus(), order=order, vocab=list(TOKENS), min_count=min_count)
    vocab = sorted(lm.vocab)
    for h in [(), ("<s>",), ("甲",), ("<s>", "甲"), ("甲", "乙"), ("乙", "乙", "乙"), ("丁", "丙"), ("zz",)]:
        total = sum(math.exp(lm.logp(h, w)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), (h, total)


def test_learns_context_and_unknowns():
    lm = NgramLM.estimate(corpus(), order=3, vocab=list(TOKENS))
    assert lm.logp(("甲",), "乙") > lm.logp(("甲",), "丙")
    assert lm.logp(("丙",), "丁") > lm.logp(("丙",), "乙")
    assert lm.logp(("甲",), "never-seen") == lm.logp(("甲",), UNK)
    assert math.isfinite(lm.logp(("甲",), "<blank>"))


@pytest.mark.parametrize("name", ["lm.arpa", "lm.arpa.gz"])
def test_arpa_round_trip(tmp_path, name):
    lm = NgramLM.estimate(corpus(), order=3, vocab=list(TOKENS))
    back = NgramLM.read_arpa(lm.write_arpa(tmp_path / name))
    assert back.order == 3 and back.vocab == lm.vocab and len(back) == len(lm)
    rng = random.Random(1)
    for _ in range(200):
        h = tuple(rng.choice(UNITS + ["<s>"]) for _ in range(rng.randint(0, 3)))
        w = rng.choice(UNITS + [EOS, UNK])
        assert back.logp(h, w) == pytest.approx(lm.logp(h, w), abs=1e-5)


def test_arpa_errors(tmp_path):
    with pytest.raises(LMError, match="no language model file"):
        NgramLM.read_arpa(tmp_path / "missing.arpa")
    bad = tmp_path / "bad.arpa"
    bad.write_text("hello\n")
    with pytest.raises(LMError, match="not ARPA"):
        NgramLM.read_arpa(bad)
    good = NgramLM.estimate(corpus(), order=2, vocab=list(TOKENS)).write_arpa(tmp_path / "good.arpa")
    lines = good.read_text().splitlines()
    cut = tmp_path / "cut.arpa"
    cut.write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(LMError, match="truncated"):
        NgramLM.read_arpa(cut)


@pytest.mark.parametrize("kwargs,match", [({"order": 0}, "order"), ({"discount": 1.0}, "discount"),
                                          ({"order": 3, "min_count": [1, 2, 1]}, "min_count")])
def test_estimate_errors(kwargs, match):
    with pytest.raises(LMError, match=match):
        NgramLM.estimate(corpus(), **kwargs)
    with pytest.raises(LMError, match="no sentences"):
        NgramLM.estimate([])


def objective(logp, ids, lm, lam):
    """The module docstring's objective of lm_decode, by its definition."""
    mx = logp.max(-1).values
    score, hist = 0.0, ("<s>",)
    for t, v in enumerate(ids):
        score += float(logp[t, v] - mx[t])
        if v != EOS_ID:
            u = TOKENS[v] if TOKENS[v] in lm.vocab else UNK
            score += lam * lm.logp(hist, u)
            hist = hist + (u,)
    return score + lam * lm.logp(hist, EOS)


def random_logp(N, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(N, len(TOKENS), generator=g) * 2, -1)
    logp[:, list(SPECIAL_IDS)] = -30.0  # never the argmax: brute force need not know the special-token rule
    return logp


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_search_is_exact_with_a_complete_beam(order, seed):
    lm = NgramLM.estimate(corpus(), order=order, vocab=list(TOKENS))
    logp = random_logp(4, seed)
    dec = LMDecoder(lm, TOKENS, weight=1.5, beam=10_000, topk=len(TOKENS))
    ids = dec.decode(logp)[0].tolist()
    best = max(itertools.product(range(len(TOKENS)), repeat=4), key=lambda y: objective(logp, y, lm, 1.5))
    assert objective(logp, ids, lm, 1.5) == pytest.approx(objective(logp, best, lm, 1.5), abs=1e-9)


@pytest.mark.parametrize("N", [0, 1, 2, 7])
def test_weight_zero_is_greedy(N):
    lm = NgramLM.estimate(corpus(), order=3, vocab=list(TOKENS))
    logp = random_logp(N, N)
    ids, fired = LMDecoder(lm, TOKENS, weight=0.0).decode(logp)
    assert ids.tolist() == logp.argmax(-1).tolist() and fired.shape == (0, 3)


def test_context_changes_the_choice():
    lm = NgramLM.estimate(corpus(), order=3, vocab=list(TOKENS))
    logp = torch.full((2, len(TOKENS)), -20.0)
    a, b, c = (TOKENS.token_to_id(x) for x in "甲乙丙")
    logp[0, a] = 0.0
    logp[1, c], logp[1, b] = math.log(0.55), math.log(0.45)  # acoustically 甲丙, but 甲乙 is a word
    assert LMDecoder(lm, TOKENS, weight=0.0).decode(logp)[0].tolist() == [a, c]
    assert LMDecoder(lm, TOKENS, weight=1.0).decode(logp)[0].tolist() == [a, b]


@pytest.mark.parametrize("seed", range(5))
def test_with_hotwords_at_weight_zero_is_the_hotword_search(seed):
    lm = NgramLM.estimate(corpus(), order=2, vocab=list(TOKENS))
    graph = HotwordList({"丙甲乙": 30, "乙丁": 10, "甲": 5}).compile(TOKENS, token_bonus=1.5, beam=10_000,
                                                                topk=len(TOKENS), margin=math.inf)
    assert len(graph) == 3 and not graph.skipped
    logp = random_logp(6, 100 + seed)
    ids, fired = LMDecoder(lm, TOKENS, weight=0.0, beam=10_000, topk=len(TOKENS)).decode(logp, graph)
    ref_ids, ref_fired = hotword_decode_ref(logp, graph.child_offsets, graph.edges, graph.nodes, graph.node_scores,
                                            graph.beam, graph.topk, graph.margin, graph.eos_id)
    assert ids.tolist() == ref_ids.tolist() and fired.tolist() == ref_fired.tolist()


def test_decoder_errors():
    lm = NgramLM.estimate(corpus(), order=2, vocab=list(TOKENS))
    with pytest.raises(LMError, match="lm_weight"):
        LMDecoder(lm, TOKENS, weight=-1)
    with pytest.raises(LMError, match="beam"):
        LMDecoder(lm, TOKENS, beam=0)
    other = TokenList(["<blank>", "<s>", "</s>"] + [f"x{i}" for i in range(10)] + ["<unk>"])
    with pytest.raises(LMError, match="another vocabulary"):
        LMDecoder(lm, other)
    dec = LMDecoder(lm, TOKENS)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        dec.decode(torch.zeros(3, 5))
    bad = random_logp(3, 0)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dec.decode(bad)


def test_cli_train_lm(tmp_path):
    from paraformer_ext.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"key": str(i), "target": "".join(s)}) + "\n" for i, s in enumerate(corpus())))
    tok = tmp_path / "tokens.json"
    tok.write_text(json.dumps(list(TOKENS)))
    out = tmp_path / "lm.arpa.gz"
    assert main(["train-lm", str(out), str(data), "--tokens", str(tok), "--order", "2", "--quiet"]) == 0
    lm = NgramLM.read_arpa(out)
    assert lm.order == 2 and lm.vocab == frozenset(t for t in TOKENS if t != "<s>")
    assert main(["train-lm", str(out), str(tmp_path / "missing.jsonl"), "--tokens", str(tok), "--quiet"]) == 2


def objective_with_hotwords(logp, ids, lm, lam, graph):
    """The objective with hotwords, by its definition: tokens inside hotword occurrences take unigram LM terms."""
    walk = graph.walker
    inside = {t for _, s, e in walk.fired(list(ids)) for t in range(s, e)}
    mx = logp.max(-1).values
    score, hist, node = 0.0, ("<s>",), 0
    for t, v in enumerate(ids):
        score += float(logp[t, v] - mx[t])
        node = walk.step(node, v)
        score += walk.sc[node][1]
        if v != EOS_ID:
            u = TOKENS[v] if TOKENS[v] in lm.vocab else UNK
            score += lam * (lm.logp((), u) if t in inside else lm.logp(hist, u))
            hist = hist + (u,)
    return score + lam * lm.logp(hist, EOS)


@pytest.mark.parametrize("seed", range(6))
def test_search_with_hotwords_is_exact_with_a_complete_beam(seed):
    lm = NgramLM.estimate(corpus(), order=2, vocab=list(TOKENS))
    graph = HotwordList({"丙甲乙": 30, "甲乙": 5, "乙丁": 10, "丁丁": 20}).compile(TOKENS, token_bonus=1.0, beam=10_000,
                                                                          topk=len(TOKENS), margin=math.inf)
    assert len(graph) == 4 and not graph.skipped
    logp = random_logp(5, 200 + seed)
    dec = LMDecoder(lm, TOKENS, weight=2.0, beam=10_000, topk=len(TOKENS))
    ids, fired = dec.decode(logp, graph)
    best = max(itertools.product(range(len(TOKENS)), repeat=5),
               key=lambda y: objective_with_hotwords(logp, y, lm, 2.0, graph))
    got = objective_with_hotwords(logp, ids.tolist(), lm, 2.0, graph)
    assert got == pytest.approx(objective_with_hotwords(logp, best, lm, 2.0, graph), abs=1e-9)
    assert fired.tolist() == graph.walker.fired(ids.tolist())


def test_a_hotword_pays_unigram_lm_terms():
    """The LM has never seen 丁丁: in context it costs 12 nats, as a hotword its unigram terms, 3.6."""
    lm = NgramLM.estimate([["甲", "乙"], ["丙", "丁"]] * 50, order=2, vocab=list(TOKENS))
    c, d = TOKENS.token_to_id("丙"), TOKENS.token_to_id("丁")
    logp = torch.full((2, len(TOKENS)), -20.0)
    logp[0, d], logp[0, c] = math.log(0.55), math.log(0.45)
    logp[1, d] = 0.0
    dec = LMDecoder(lm, TOKENS, weight=1.0)
    assert dec.decode(logp)[0].tolist() == [c, d]
    assert lm.logp(("<s>",), "丁") + lm.logp(("丁",), "丁") < -10
    graph = HotwordList({"丁丁": 1}).compile(TOKENS, token_bonus=2.0)  # earns 4.1: unigrams cost 3.6, context 12
    assert len(graph) == 1
    ids, fired = dec.decode(logp, graph)
    assert ids.tolist() == [d, d] and fired.tolist() == [[0, 0, 2]]
    small = HotwordList({"丁丁": 1}).compile(TOKENS, token_bonus=0.05)  # earns 0.2: not enough
    assert dec.decode(logp, small)[0].tolist() == [c, d]


def test_special_tokens_only_where_greedy_writes_them():
    """</s> costs nothing under the LM: as a second choice it must not replace an unlikely character."""
    lm = NgramLM.estimate(corpus(), order=2, vocab=list(TOKENS))
    a, d = TOKENS.token_to_id("甲"), TOKENS.token_to_id("丁")
    logp = torch.full((3, len(TOKENS)), -20.0)
    logp[0, a] = 0.0
    logp[1, d], logp[1, EOS_ID] = math.log(0.6), math.log(0.4)  # 甲丁 is rare in the LM's text
    logp[2, EOS_ID] = 0.0  # the end mark, the last row's argmax: kept
    ids = LMDecoder(lm, TOKENS, weight=3.0).decode(logp)[0].tolist()
    assert ids[0] == a and ids[1] != EOS_ID and ids[2] == EOS_ID
    logp[1, EOS_ID], logp[1, d] = math.log(0.6), math.log(0.4)  # now </s> is the argmax: greedy's choice stays
    assert LMDecoder(lm, TOKENS, weight=3.0).decode(logp)[0].tolist()[1] == EOS_ID
