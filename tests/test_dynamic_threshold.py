"""The paper's dynamic CIF threshold (§2.2) as an inference option beside FunASR's tail method."""
from __future__ import annotations

import pytest
import torch

from paraformer_ext import load
from paraformer_ext.cli import main
from paraformer_ext.synthetic import make_random_model, synthetic_speech


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("dyn") / "small", "small")


@pytest.mark.parametrize("kernels", [False, None])
def test_dynamic_fires_ceil_of_the_alpha_sum_where_beta_fires(model_dir, kernels):
    asr = load(model_dir, kernels=kernels, cif_threshold="dynamic")
    pred = asr.model.predictor
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 40, pred.cfg.idim, generator=g)
    lengths = torch.tensor([40, 23, 7])
    with torch.no_grad():
        alphas = pred.alphas(hidden, lengths)
        out = pred(hidden, lengths)
    total = alphas.double().sum(-1)
    assert out.token_num.tolist() == torch.ceil(total).long().tolist()
    assert out.alphas.shape == (3, 41) and out.fires.shape == (3, 41)  # the timestamps' shape (zero last slot)
    for b in range(3):
        n = int(lengths[b])
        a = alphas[b, :n].double()
        beta = float(total[b] / torch.ceil(total[b]))
        # the k-th token fires at the first frame where Σα reaches k·β (the paper's rule)
        cum = a.cumsum(0)
        want = [int((cum >= k * beta - 1e-9).nonzero()[0]) for k in range(1, int(out.token_num[b]) + 1)]
        got = (out.fires[b, :n].double() >= 1 - 1e-6).nonzero().flatten().tolist()
        assert got == want
        # every bit of weight ends in a token: Σ embeddings = Σ_t (α_t / β) h_t, weights summing to 1 per token
        emb = out.acoustic_embeds[b, : int(out.token_num[b])].double().sum(0)
        torch.testing.assert_close(emb, (a[:, None] / beta * hidden[b, :n].double()).sum(0), rtol=1e-4, atol=1e-4)


def test_tail_stays_the_default_and_dynamic_transcribes(model_dir, tmp_path):
    x = synthetic_speech(4.0, 3)
    tail = load(model_dir, kernels=False).transcribe(x, timestamps=True)[0]
    again = load(model_dir, kernels=False, cif_threshold="tail").transcribe(x, timestamps=True)[0]
    assert tail == again
    dyn = load(model_dir, kernels=False, cif_threshold="dynamic").transcribe(x, timestamps=True)[0]
    assert "error" not in dyn and len(dyn["timestamp"]) == len(dyn["text"].split())
    with pytest.raises(ValueError, match="cif_threshold must be 'tail'.*or 'dynamic'"):
        load(model_dir, cif_threshold="fixed")
    import soundfile as sf

    f = tmp_path / "x.wav"
    sf.write(f, x, 16000)
    assert main(["transcribe", "--model", str(model_dir), str(f), "--cif-threshold", "dynamic", "--no-kernels"]) == 0
