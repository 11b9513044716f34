"""Hotword biasing (spec hotwords.md §3): the search against brute-force enumeration, the rules one by one on
synthetic posteriors, the C++ op against its reference, the word lists and their errors."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from paraformer_ext import has_kernels
from paraformer_ext.hotwords import DEFAULT_WEIGHT, HotwordError, HotwordList
from paraformer_ext.ops.hotwords import hotword_decode_fn, hotword_decode_ref
from paraformer_ext.text import EOS_ID, TokenList

# ids 0-2 specials; then one CJK character per id; <unk> last
CHARS = "阿里巴达摩院通义"
TOKENS = TokenList(["<blank>", "<s>", "</s>", *CHARS, "hello", "wor@@", "ld", "<unk>"])
V = len(TOKENS)
ID = {c: TOKENS.token_to_id(c) for c in CHARS}

IMPLS = [pytest.param(hotword_decode_ref, id="ref")]
if has_kernels():
    IMPLS.append(pytest.param(hotword_decode_fn, id="cpp"))


def run(impl, graph, logp, **over):
    args = dict(beam=graph.beam, topk=graph.topk, margin=graph.margin, eos_id=graph.eos_id) | over
    return impl(logp, graph.child_offsets, graph.edges, graph.nodes, graph.node_scores, args["beam"], args["topk"],
                args["margin"], args["eos_id"])


def exact(impl, graph, logp):
    """Settings under which the search is exact: every token a candidate, a beam as large as the graph."""
    return run(impl, graph, logp, topk=logp.shape[1], margin=math.inf, beam=graph.nodes.shape[0])


def occurrences(ids, graph):
    """Every (word, start, end) with ids[start:end] == the word's tokens: naive, no automaton."""
    out = []
    for k, seq in enumerate(graph.token_ids):
        for s in range(len(ids) - len(seq) + 1):
            if tuple(ids[s : s + len(seq)]) == seq:
                out.append((k, s, s + len(seq)))
    return sorted(out)


def objective(ids, logp, graph):
    """Σ (logp − row max) + Σ over occurrences (|h|·β + w/10), straight from the spec's formula."""
    rows = logp.tolist() if isinstance(logp, torch.Tensor) else logp
    score = sum(rows[t][v] - max(rows[t]) for t, v in enumerate(ids))
    for k, _, _ in occurrences(ids, graph):
        score += len(graph.token_ids[k]) * graph.token_bonus + graph.weights[k] / 10
    return score


def brute_force(logp, graph):
    """(best score, every sequence within 1e-9 of it), the last position fixed to </s> where it is the argmax."""
    N, Vv = logp.shape
    choices = [range(Vv)] * N
    if N and int(logp[-1].argmax()) == EOS_ID:
        choices[-1] = [EOS_ID]
    rows = logp.tolist()
    scored = [(objective(list(y), rows, graph), list(y)) for y in itertools.product(*choices)]
    best = max(s for s, _ in scored)
    return best, [y for s, y in scored if s > best - 1e-9]


def random_graph(rng: random.Random, vocab: int, beta: float | None = None):
    """A few hotwords over ids 3..vocab-1 (prefixes, overlaps and nesting happen often at this size)."""
    words = {}
    for _ in range(rng.randint(1, 4)):
        n = rng.randint(1, 3)
        words["".join(CHARS[rng.randrange(vocab - 3)] for _ in range(n))] = rng.choice([1, 5, 20, 60, 100])
    toks = TokenList(["<blank>", "<s>", "</s>", *CHARS[: vocab - 3], "<unk>"])
    return HotwordList(words).compile(toks, token_bonus=rng.choice([0.5, 1.0, 2.0]) if beta is None else beta), toks


def random_logp(rng: random.Random, N: int, vocab: int, scale: float = 3.0, ties: bool = False):
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x = torch.randn(N, vocab, generator=g) * scale
    if ties:
        x = x.round()
    return torch.log_softmax(x, dim=-1)


# --- the search is the exact maximum -----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_equals_brute_force(impl):
    rng = random.Random(7)
    for case in range(60):
        vocab = rng.randint(5, 6)  # the 3 specials and 2-3 characters (+ <unk>)
        graph, toks = random_graph(rng, vocab)
        N = rng.randint(0, 4) if case % 10 else 5
        logp = random_logp(rng, N, len(toks), scale=rng.choice([1.0, 3.0]), ties=case % 3 == 0)
        ids, fired = exact(impl, graph, logp)
        best, argmaxes = brute_force(logp, graph)
        got = objective(ids.tolist(), logp, graph)
        assert got == pytest.approx(best, abs=1e-9), (case, ids.tolist(), argmaxes)
        if len(argmaxes) == 1:
            assert ids.tolist() == argmaxes[0], case
        assert sorted(map(tuple, fired.tolist())) == occurrences(ids.tolist(), graph), case


@pytest.mark.parametrize("impl", IMPLS)
def test_pruned_search_never_below_greedy(impl):
    """With the default (pruned) settings the result may miss the maximum, never fall below greedy."""
    rng = random.Random(11)
    for _ in range(40):
        graph, toks = random_graph(rng, 7)
        logp = random_logp(rng, rng.randint(1, 10), len(toks))
        ids, _ = run(impl, graph, logp, beam=2, topk=1)
        greedy = logp.argmax(-1).tolist()
        assert objective(ids.tolist(), logp, graph) >= objective(greedy, logp, graph) - 1e-12


# --- the rules of spec §3, one at a time -------------------------------------------------------------------------


def rows(*pairs, base=-20.0):
    """One row per position: {token: logp}, every other token at `base` (not normalised: the search only
    uses differences within a row)."""
    out = torch.full((len(pairs), V), base)
    for t, row in enumerate(pairs):
        for tok, x in row.items():
            out[t, TOKENS.token_to_id(tok)] = x
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("beta,weight", [(2.0, 20), (0.5, 1), (1.0, 100), (0.0, 40)])
def test_flip_exactly_when_deficit_below_bonus(impl, beta, weight):
    graph = HotwordList({"阿里": weight}).compile(TOKENS, token_bonus=beta)
    bonus = 2 * beta + weight / 10
    for deficit, flips in ((bonus - 0.01, True), (bonus + 0.01, False)):
        logp = rows({"阿": 0.0}, {"通": 0.0, "里": -deficit})
        ids, fired = run(impl, graph, logp)
        want = ["阿", "里"] if flips else ["阿", "通"]
        assert TOKENS.ids_to_tokens(ids) == want, deficit
        assert fired.tolist() == ([[0, 0, 2]] if flips else [])


@pytest.mark.parametrize("impl", IMPLS)
def test_failed_partial_match_is_greedy(impl):
    """The first two tokens of 阿里巴 are cheap, the third is not: the provisional bonus is taken back."""
    graph = HotwordList({"阿里巴": 100}).compile(TOKENS, token_bonus=3.0)
    logp = rows({"通": 0.0, "阿": -0.5}, {"义": 0.0, "里": -0.5}, {"达": 0.0, "巴": -50.0}, base=-60.0)
    ids, fired = run(impl, graph, logp)
    greedy = logp.argmax(-1)
    assert torch.equal(ids, greedy) and fired.numel() == 0
    assert objective(ids.tolist(), logp, graph) == objective(greedy.tolist(), logp, graph) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_open_match_at_the_end_is_cancelled(impl):
    """A hotword longer than the utterance earns nothing, however large its provisional bonus."""
    graph = HotwordList({"阿里巴巴": 100}).compile(TOKENS, token_bonus=3.0)
    logp = rows({"通": 0.0, "阿": -1.0}, {"义": 0.0, "里": -1.0})
    ids, fired = run(impl, graph, logp)
    assert TOKENS.ids_to_tokens(ids) == ["通", "义"] and fired.numel() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_and_longer_hotword_both_fire(impl):
    """Strict matching: 阿里 and 阿里巴巴 both count, and 阿里巴巴 stays reachable through 阿里."""
    graph = HotwordList({"阿里": 10, "阿里巴巴": 20}).compile(TOKENS, token_bonus=1.0)
    logp = rows({"阿": 0.0}, {"里": 0.0}, {"达": 0.0, "巴": -2.5}, {"摩": 0.0, "巴": -2.5})
    ids, fired = run(impl, graph, logp)
    assert TOKENS.ids_to_tokens(ids) == list("阿里巴巴")
    assert sorted(fired.tolist()) == [[0, 0, 2], [1, 0, 4]]
    # the short one alone where the long one cannot pay
    ids, fired = run(impl, graph, rows({"阿": 0.0}, {"里": 0.0}, {"达": 0.0, "巴": -9.0}, {"摩": 0.0, "巴": -9.0}))
    assert TOKENS.ids_to_tokens(ids) == list("阿里达摩") and fired.tolist() == [[0, 0, 2]]


@pytest.mark.parametrize("impl", IMPLS)
def test_eos_protected(impl):
    graph = HotwordList({"阿里": 100}).compile(TOKENS)
    ids, _ = run(impl, graph, rows({"阿": 0.0}, {"</s>": 0.0, "里": -0.1}))
    assert ids.tolist() == [ID["阿"], EOS_ID]
    # not the last position: no protection
    ids, fired = run(impl, graph, rows({"阿": 0.0}, {"</s>": 0.0, "里": -0.1}, {"</s>": 0.0}))
    assert ids.tolist() == [ID["阿"], ID["里"], EOS_ID] and fired.tolist() == [[0, 0, 2]]


@pytest.mark.parametrize("impl", IMPLS)
def test_special_token_breaks_a_match(impl):
    graph = HotwordList({"阿里": 100}).compile(TOKENS, token_bonus=0.0)
    ids, fired = exact(impl, graph, rows({"阿": 0.0}, {"<blank>": 0.0}, {"里": 0.0}))
    assert ids.tolist() == [ID["阿"], 0, ID["里"]] and fired.numel() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_bonus_is_argmax_bit_for_bit(impl):
    """β = w = 0 (node bonuses zeroed: the list clamps w to >= 1) and an empty list both give argmax, ties
    included (the lowest index, torch.argmax's rule)."""
    rng = random.Random(3)
    for case in range(30):
        graph, toks = random_graph(rng, 8)
        logp = random_logp(rng, rng.randint(1, 12), len(toks), ties=case % 2 == 0)
        greedy = logp.argmax(-1)
        zero = torch.zeros_like(graph.node_scores)
        ids, _ = impl(logp, graph.child_offsets, graph.edges, graph.nodes, zero, graph.beam, graph.topk,
                      graph.margin, graph.eos_id)
        assert torch.equal(ids, greedy), case
        empty = HotwordList().compile(toks)
        ids, fired = run(impl, empty, logp)
        assert torch.equal(ids, greedy) and fired.shape == (0, 3), case


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_and_single_position(impl):
    graph = HotwordList({"阿": 50}).compile(TOKENS)
    ids, fired = run(impl, graph, torch.zeros(0, V))
    assert ids.shape == (0,) and ids.dtype == torch.int64 and fired.shape == (0, 3)
    ids, fired = run(impl, graph, rows({"通": 0.0, "阿": -3.0}))
    assert ids.tolist() == [ID["阿"]] and fired.tolist() == [[0, 0, 1]]


# --- C++ against the reference -------------------------------------------------------------------------------


@pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")
def test_cpp_equals_ref_random_sweep():
    rng = random.Random(2024)
    for case in range(300):
        vocab = rng.randint(4, 11)
        graph, toks = random_graph(rng, vocab)
        N = rng.randint(0, 14)
        logp = random_logp(rng, N, len(toks), scale=rng.choice([0.3, 1.0, 3.0, 8.0]), ties=case % 4 == 0)
        if case % 7 == 0 and N:
            logp[rng.randrange(N), rng.randrange(len(toks))] = -math.inf
        over = dict(beam=rng.choice([1, 2, 3, 8]), topk=rng.choice([1, 2, 4, 20]),
                    margin=rng.choice([0.0, 1.0, 5.0, math.inf, graph.margin]), eos_id=rng.choice([-1, EOS_ID]))
        a = run(hotword_decode_ref, graph, logp, **over)
        b = run(hotword_decode_fn, graph, logp, **over)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (case, over, a, b)


def test_cpp_equals_ref_with_many_overlapping_hotwords():
    # many hotwords over a small vocabulary: most tokens start one, and the better hypotheses' open matches
    # often take a start's token (the op adds each start once, from the best hypothesis that may take it)
    rng = random.Random(11)
    for case in range(120):
        vocab = rng.randint(6, 11)
        words = {"".join(CHARS[rng.randrange(vocab - 3)] for _ in range(rng.randint(1, 3))): rng.choice([5, 20, 100])
                 for _ in range(rng.randint(10, 40))}
        toks = TokenList(["<blank>", "<s>", "</s>", *CHARS[: vocab - 3], "<unk>"])
        graph = HotwordList(words).compile(toks, token_bonus=rng.choice([0.5, 1.0, 2.0]))
        logp = random_logp(rng, rng.randint(1, 16), len(toks), scale=rng.choice([0.3, 1.0, 3.0]), ties=case % 3 == 0)
        over = dict(beam=rng.choice([2, 4, 8]), topk=rng.choice([1, 2, 4]), margin=math.inf, eos_id=EOS_ID)
        a = run(hotword_decode_ref, graph, logp, **over)
        b = run(hotword_decode_fn, graph, logp, **over)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (case, over, a, b)


@pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")
def test_opcheck():
    graph = HotwordList({"阿里": 20, "阿里巴巴": 50}).compile(TOKENS)
    for logp in (rows({"阿": 0.0}, {"里": -1.0}, {"巴": 0.0}), torch.zeros(0, V)):
        torch.library.opcheck(torch.ops.paraformer_ext.hotword_decode.default,
                              (logp, graph.child_offsets, graph.edges, graph.nodes, graph.node_scores, 4, 2, 9.0, EOS_ID))


# --- bad input to the op -------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_op_rejects_bad_input(impl):
    graph = HotwordList({"阿里": 20}).compile(TOKENS)
    ok = rows({"阿": 0.0})
    errors = (ValueError, RuntimeError)
    cases = [
        (dict(logp=ok.double()), "float32"),
        (dict(logp=ok[0]), r"\(N, V\)"),
        (dict(logp=ok[:, :4]), "outside the vocabulary"),
        (dict(logp=torch.full((1, V), math.nan)), "NaN"),
        (dict(logp=torch.full((1, V), -math.inf)), "finite maximum"),
        (dict(beam=0), "beam"),
        (dict(topk=0), "topk"),
        (dict(margin=-1.0), "margin"),
        (dict(eos_id=V), "eos_id"),
        (dict(node_scores=graph.node_scores.float()), "float64"),
        (dict(nodes=graph.nodes[:, :3]), "nodes"),
        (dict(edges=graph.edges.flip(0)), "edge"),
    ]
    for over, msg in cases:
        args = dict(logp=ok, child_offsets=graph.child_offsets, edges=graph.edges, nodes=graph.nodes,
                    node_scores=graph.node_scores, beam=4, topk=2, margin=5.0, eos_id=EOS_ID) | over
        with pytest.raises(errors, match=msg):
            impl(**args)


# --- word lists ----------------------------------------------------------------------------------------------


def test_weights_default_clamp_and_bonus():
    hw = HotwordList({"阿里": None, "巴达": 0.5, "摩院": 250, "通义": 30})
    assert hw.as_dict() == {"阿里": DEFAULT_WEIGHT, "巴达": 1.0, "摩院": 100.0, "通义": 30.0}
    assert len(hw.notes) == 2 and "clamped to 1" in hw.notes[0] and "clamped to 100" in hw.notes[1]
    graph = hw.compile(TOKENS, token_bonus=1.5)
    term = {w: int(graph.nodes[:, 2].tolist().index(k)) for k, w in enumerate(graph.words)}
    assert graph.node_scores[term["通义"]].tolist() == [3.0, 2 * 1.5 + 30 / 10]
    assert graph.node_scores[term["阿里"]].tolist() == [3.0, 2 * 1.5 + DEFAULT_WEIGHT / 10]


@pytest.mark.parametrize("bad,msg", [({"阿里": "abc"}, "not a number"), ({"阿里": math.nan}, "finite"),
                                     ({"阿里": True}, "weight"), ({"阿里": [1]}, "weight"), ({"  ": 3}, "empty hotword"),
                                     ({3: 3}, "must be a string"), ("阿里巴巴", "got a string"), ([("a", 1, 2)], "pair")])
def test_bad_lists(bad, msg):
    with pytest.raises(HotwordError, match=msg):
        HotwordList(bad)


def test_file_and_json_formats(tmp_path):
    p = tmp_path / "hw.txt"
    p.write_text("阿里巴巴 20\n\n通义 30.5\nhello world 40\n达摩院\n", encoding="utf-8")
    assert HotwordList.read(p).as_dict() == {"阿里巴巴": 20.0, "通义": 30.5, "hello world": 40.0, "达摩院": DEFAULT_WEIGHT}
    p.write_text("阿里巴巴 20\n通义 high\n", encoding="utf-8")
    with pytest.raises(HotwordError, match=r"hw.txt:2: .*'high' is not a weight"):
        HotwordList.read(p)
    p.write_text("阿里 500\n", encoding="utf-8")
    assert "hw.txt:1" in HotwordList.read(p).notes[0]
    with pytest.raises(HotwordError, match="does not exist"):
        HotwordList.read(tmp_path / "missing.txt")
    assert HotwordList.parse_json('{"阿里巴巴": 20, "通义": "30"}').as_dict() == {"阿里巴巴": 20.0, "通义": 30.0}
    with pytest.raises(HotwordError, match="JSON object"):
        HotwordList.parse_json('["阿里巴巴"]')
    with pytest.raises(HotwordError, match="not valid JSON"):
        HotwordList.parse_json("{阿里")


def test_parse_every_client_form():
    """HotwordList.parse: what FunASR's websocket clients send as `hotwords`."""
    D = DEFAULT_WEIGHT
    assert not HotwordList.parse(None) and not HotwordList.parse("") and not HotwordList.parse("  ")
    assert HotwordList.parse('{"阿里巴巴": 20, "hello world": 40}').as_dict() == {"阿里巴巴": 20.0, "hello world": 40.0}
    assert HotwordList.parse({"通义": 30}).as_dict() == {"通义": 30.0}
    assert HotwordList.parse(["阿里巴巴", "通义"]).as_dict() == {"阿里巴巴": D, "通义": D}
    assert HotwordList.parse("阿里巴巴, 达摩院 魔搭，通义").as_dict() == {"阿里巴巴": D, "达摩院": D, "魔搭": D, "通义": D}
    for bad, msg in ((7, "got int"), ('{"阿里": ', "not valid JSON"), ({"阿里": "x"}, "not a number"),
                     (["阿里", 3], "expected a word")):
        with pytest.raises(HotwordError, match=msg):
            HotwordList.parse(bad)


def test_merge_client_wins():
    server = HotwordList({"阿里巴巴": 20, "通义": 30})
    merged = server.merged({"通义": 80, "达摩院": 10})
    assert merged.as_dict() == {"阿里巴巴": 20.0, "通义": 80.0, "达摩院": 10.0}
    assert server.as_dict() == {"阿里巴巴": 20.0, "通义": 30.0}  # unchanged


def test_tokenization_unknown_special_and_duplicates():
    hw = HotwordList([("阿里", 5), ("阿 里", 30), ("阿里", 7), ("阿猫", 9), ("</s>", 9), ("hello world", 9)])
    graph = hw.compile(TOKENS)
    assert graph.words == ("阿里", "hello world")
    assert graph.weights == (30.0, 9.0)  # 阿里 (last weight 7) and 阿 里 (30): the same tokens, merged, the higher kept
    assert graph.token_ids[1] == tuple(TOKENS.token_to_id(t) for t in ("hello", "wor@@", "ld"))
    skipped = dict(graph.skipped)
    assert set(skipped) == {"阿猫", "</s>"} and "'猫'" in skipped["阿猫"] and "special" in skipped["</s>"]


def test_graph_decode_checks_vocabulary():
    graph = HotwordList({"阿里": 20}).compile(TOKENS)
    with pytest.raises(ValueError, match=f"\\(N, {V}\\)"):
        graph.decode(torch.zeros(3, V + 1))
    ids, fired = graph.decode(rows({"阿": 0.0}, {"里": 0.0}).double())  # moved to float32 on the host
    assert TOKENS.ids_to_tokens(ids) == ["阿", "里"] and fired.tolist() == [[0, 0, 2]]


def test_auto_margin_covers_nested_bonuses():
    graph = HotwordList({"阿里": 10, "阿里巴巴": 20}).compile(TOKENS, token_bonus=1.0)
    # spelling 阿里巴巴 earns 阿里 (2 + 1) and 阿里巴巴 (4 + 2)
    assert graph.margin == pytest.approx(9.0)


@pytest.mark.parametrize("kw,msg", [(dict(token_bonus=-1), "token_bonus"), (dict(token_bonus=math.inf), "token_bonus"),
                                    (dict(beam=0), "beam"), (dict(topk=1.5), "topk"), (dict(margin=-1), "margin")])
def test_bad_search_settings(kw, msg):
    with pytest.raises(HotwordError, match=msg):
        HotwordList({"阿里": 20}).compile(TOKENS, **kw)
