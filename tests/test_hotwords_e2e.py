"""Hotwords wherever a user decodes: load / transcribe / Pipeline / the engine's segments / the CLI, on a
random-weight model (its posteriors are flat, so a hotword's bonus always moves the output)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from paraformer_ext import HotwordList, load
from paraformer_ext.cli import main
from paraformer_ext.synthetic import make_random_model, synthetic_speech
from paraformer_ext.text import SPECIAL_IDS, filter_special
from paraformer_ext.training.data import tokenize


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("hot") / "tiny", "tiny")


@pytest.fixture(scope="module")
def asr(model_dir):
    return load(model_dir)


@pytest.fixture(scope="module")
def wave():
    return synthetic_speech(4.0, seed=5).astype(np.float32)


def posteriors(asr, wave):
    """(greedy ids (N,), log-posteriors (N, V)) of one utterance, as Pipeline.decode sees them."""
    p = asr.pipeline
    x = torch.from_numpy(wave)[None]
    feats, flens = p.features(x, torch.tensor([x.shape[1]]))
    out = p.model.greedy(feats, flens, log_posteriors=True)
    n = int(out.token_num[0])
    return out.token_ids[0, :n], out.log_posteriors[0, :n]


def check_spans(result, tokens):
    """Every reported hotword spells its word at token_ids[start:end]."""
    for h in result["hotwords"]:
        assert result["token_ids"][h["start"] : h["end"]] == tokenize(h["word"], tokens), h


def forced_hotword(asr, wave):
    """A 2-token hotword the model did not output: the greedy token at p, then the runner-up CJK token at p+1."""
    ids, logp = posteriors(asr, wave)
    tok = asr.tokens
    for p in range(len(ids) - 2):
        if int(ids[p]) in SPECIAL_IDS:
            continue
        order = logp[p + 1].argsort(descending=True).tolist()
        second = next(v for v in order[1:] if len(tok[v]) == 1 and "\u4e00" <= tok[v] <= "\u9fff")
        return tok[int(ids[p])] + tok[second], ids
    pytest.skip("utterance too short")


def test_no_hotwords_is_greedy_bit_for_bit(asr, wave):
    """Without hotwords the result is the greedy decoding, with no extra key; an empty list changes nothing."""
    ids, _ = posteriors(asr, wave)
    greedy = asr.pipeline.model.greedy(*asr.pipeline.features(torch.from_numpy(wave)[None],
                                                              torch.tensor([len(wave)])))
    n = int(greedy.token_num[0])
    plain = asr.transcribe(wave)[0]
    assert "hotwords" not in plain and plain["token_ids"] == filter_special(greedy.token_ids[0, :n].tolist())
    assert asr.hotwords_for_call(None) is None and asr.hotwords_for_call({}) is None
    assert asr.transcribe(wave, hotwords={})[0] == plain


def test_transcribe_hotword_fires_with_span_and_time(asr, wave):
    word, greedy_ids = forced_hotword(asr, wave)
    before = asr.transcribe(wave)[0]
    assert word not in before["text"]
    r = asr.transcribe(wave, hotwords={word: 100}, timestamps=True)[0]
    assert word in r["text"].replace(" ", "")
    found = [h for h in r["hotwords"] if h["word"] == word]
    assert found and all(len(h["timestamp"]) == 2 and h["timestamp"][0] <= h["timestamp"][1] for h in found)
    check_spans(r, asr.tokens)
    # the substitution is local: as many tokens as greedy (CIF fixed the count)
    assert len(r["token_ids"]) == len(before["token_ids"])


def test_load_list_merged_with_call_list_call_wins(model_dir, wave):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asr = load(model_dir, hotwords={"一丁": 20, "丂七": 30, "zzzz": 5})
    assert any("'zzzz' skipped" in str(w.message) for w in caught)
    assert asr.hotword_graph.words == ("一丁", "丂七")
    with pytest.warns(UserWarning, match="'zzzz' skipped"):  # the load-time list is in every call's list
        g = asr.hotwords_for_call({"丂七": 90, "丄丅": None})
    assert dict(zip(g.words, g.weights)) == {"一丁": 20.0, "丂七": 90.0, "丄丅": 20.0}
    assert asr.hotwords_for_call(None) is asr.hotword_graph  # compiled once at load
    with pytest.warns(UserWarning, match="'zzzz' skipped"):
        assert asr.hotwords_for_call(None, hotword_token_bonus=0.5).token_bonus == 0.5
    r = asr.transcribe(wave)[0]
    assert "hotwords" in r  # the load-time list applies to every call
    check_spans(r, asr.tokens)


def test_pipeline_api_per_request(asr, wave):
    """What a server calls: compile a merged list once, pass the graph per batch."""
    word, _ = forced_hotword(asr, wave)
    graph = asr.pipeline.compile_hotwords(HotwordList({"一丁": 20}).merged({word: 100}))
    x = torch.from_numpy(np.stack([wave, np.pad(wave[:24000], (0, len(wave) - 24000))]))
    lengths = torch.tensor([len(wave), 24000])
    batch = asr.pipeline.recognize(x, lengths, hotwords=graph)
    single = asr.pipeline.recognize(x[:1], lengths[:1], hotwords=graph)
    assert batch[0] == single[0] and any(h["word"] == word for h in batch[0]["hotwords"])
    plain = asr.pipeline.recognize(x, lengths)
    assert all("hotwords" not in r for r in plain)
    with pytest.raises(TypeError, match="compile_hotwords"):
        asr.pipeline.recognize(x, lengths, hotwords={word: 100})


def test_one_graph_per_item(asr, wave):
    """A batch mixing items with different graphs and none (the server's): each item gets exactly what it gets
    alone with its own graph, and the items without one their greedy result (the fused argmax run)."""
    word, _ = forced_hotword(asr, wave)
    other = synthetic_speech(3.0, seed=7).astype(np.float32)
    g1 = asr.pipeline.compile_hotwords({word: 100})
    g2 = asr.pipeline.compile_hotwords({word[::-1]: 100})
    x = torch.zeros(4, len(wave))
    x[0], x[2], x[3] = torch.from_numpy(wave), torch.from_numpy(wave), torch.from_numpy(wave)
    x[1, : len(other)] = torch.from_numpy(other)
    lengths = torch.tensor([len(wave), len(other), len(wave), len(wave)])
    graphs = [g1, None, g2, None]
    mixed = asr.pipeline.recognize(x, lengths, hotwords=graphs, timestamps=True)
    for b, g in enumerate(graphs):
        alone = asr.pipeline.recognize(x[b : b + 1, : lengths[b]], lengths[b : b + 1], hotwords=g, timestamps=True)
        assert mixed[b] == alone[0], b
    assert mixed[0]["text"] != mixed[2]["text"] != mixed[3]["text"] and "hotwords" not in mixed[3]
    assert [h["word"] for h in mixed[0]["hotwords"]][:1] == [word]
    with pytest.raises(ValueError, match="one graph"):
        asr.pipeline.recognize(x, lengths, hotwords=graphs[:3])


def test_reference_path_agrees(model_dir, wave):
    """kernels=False runs the Python search; the same tokens as the compiled op."""
    word, _ = forced_hotword(load(model_dir), wave)
    a = load(model_dir).transcribe(wave, hotwords={word: 100})[0]
    b = load(model_dir, kernels=False).transcribe(wave, hotwords={word: 100})[0]
    assert a["hotwords"] == b["hotwords"] and any(h["word"] == word for h in a["hotwords"])


def test_segments_shift_spans(asr):
    """A cut input: each segment's spans index the joined token_ids and its times the whole input."""
    long = np.concatenate([synthetic_speech(3.0, seed=1), synthetic_speech(3.0, seed=2)]).astype(np.float32)
    common = {}
    for r in (asr.transcribe(long[:48000])[0], asr.transcribe(long[48000:])[0]):
        for c in r["text"].replace(" ", ""):
            common[c] = 50
    r = asr.transcribe(long, hotwords=common, timestamps=True, long_audio_s=2.0, segmenter="window", window_s=3.0)[0]
    assert len(r["segments"]) == 2
    check_spans(r, asr.tokens)
    assert any(h["start"] >= len(r["token_ids"]) // 2 for h in r["hotwords"])
    assert any(h["timestamp"][0] >= 3000 for h in r["hotwords"])


def test_cli_hotword_file(model_dir, wave, tmp_path, capsys):
    asr = load(model_dir)
    word, _ = forced_hotword(asr, wave)
    wav = tmp_path / "a.wav"
    sf.write(wav, wave, 16000)
    hw = tmp_path / "hotwords.txt"
    hw.write_text(f"{word} 100\n", encoding="utf-8")
    assert main(["transcribe", "--model", str(model_dir), str(wav), "--json", "--hotword", str(hw)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert word in out["text"] and any(h["word"] == word for h in out["hotwords"])
    hw.write_text(f"{word} many\n", encoding="utf-8")
    assert main(["transcribe", "--model", str(model_dir), str(wav), "--hotword", str(hw)]) == 2
    assert "not a weight" in capsys.readouterr().err
