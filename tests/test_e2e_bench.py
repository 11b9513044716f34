"""benchmarks/e2e.py's workload builder and FLOP counter (fast: no model is loaded; the FLOP cross-check runs
one tiny encoder and decoder under torch's FLOP counter)."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import e2e  # noqa: E402

from paraformer_ext.model.config import DecoderConfig, EncoderConfig, ModelConfig, ParaformerConfig, PredictorConfig  # noqa: E402

SR = e2e.SR


# --- workload ------------------------------------------------------------------------------------------------


def test_plan_lengths_in_range_and_seeded():
    s1, l1 = e2e.plan_workload(100_000, n=200, seed=3)
    s2, l2 = e2e.plan_workload(100_000, n=200, seed=3)
    _, l3 = e2e.plan_workload(100_000, n=200, seed=4)
    assert np.array_equal(s1, s2) and np.array_equal(l1, l2)
    assert not np.array_equal(l1, l3)
    assert l1.min() >= 2 * SR and l1.max() <= 20 * SR
    # uniform over the range: both ends are visited, the mean sits in the middle
    assert l1.min() < 4 * SR and l1.max() > 18 * SR
    assert abs(l1.mean() / SR - 11.0) < 1.5


def test_plan_cuts_end_to_end_modulo_the_stream():
    L = 123_457
    starts, lengths = e2e.plan_workload(L, n=50, seed=0)
    assert starts[0] == 0
    assert np.array_equal(starts[1:], np.cumsum(lengths)[:-1] % L)


def test_plan_total_seconds():
    _, lengths = e2e.plan_workload(50_000, total_s=300.0, seed=1)
    total = lengths.sum() / SR
    assert 300.0 <= total < 320.0  # stops at the first utterance that reaches the total
    assert lengths[:-1].sum() / SR < 300.0


def test_plan_needs_exactly_one_size():
    with pytest.raises(ValueError):
        e2e.plan_workload(1000)
    with pytest.raises(ValueError):
        e2e.plan_workload(1000, n=3, total_s=10.0)


def test_cut_wraps_around():
    stream = np.arange(10, dtype=np.int16)
    assert e2e.cut(stream, 2, 3).tolist() == [2, 3, 4]
    assert e2e.cut(stream, 8, 5).tolist() == [8, 9, 0, 1, 2]
    assert e2e.cut(stream, 5, 23).tolist() == [(5 + i) % 10 for i in range(23)]


def test_build_workload_from_shared_audio(tmp_path, monkeypatch):
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    a = (np.arange(3 * SR) % 2000 - 1000).astype(np.int16)
    b = (np.arange(2 * SR) % 777).astype(np.int16)
    sf.write(str(tmp_path / "audio" / "b.wav"), b, SR, subtype="PCM_16")
    sf.write(str(tmp_path / "audio" / "a.wav"), a, SR, subtype="PCM_16")
    monkeypatch.setenv("PARAFORMER_EXT_SHARED", str(tmp_path))
    args = SimpleNamespace(seed=7, n=6, total_s=None, min_s=2.0, max_s=4.0, inputs="arrays")
    waves, desc, lengths = e2e.build_workload(args)
    stream = np.concatenate([a, b])  # sorted by name, end to end
    starts, want = e2e.plan_workload(stream.size, n=6, seed=7, min_s=2.0, max_s=4.0)
    assert lengths == want.tolist() and len(waves) == 6
    for w, s, n in zip(waves, starts, want):
        assert w.dtype == np.float32
        exp = stream[(s + np.arange(n)) % stream.size].astype(np.float32) / 32768.0
        np.testing.assert_array_equal(w, exp)
    assert desc["source"].startswith("shared audio: a.wav, b.wav")
    assert desc["audio_s"] == pytest.approx(sum(want) / SR)
    again = e2e.build_workload(args)[1]
    assert again["sha256"] == desc["sha256"]
    assert e2e.build_workload(SimpleNamespace(**{**vars(args), "seed": 8}))[1]["sha256"] != desc["sha256"]


def test_written_wavs_read_back_as_the_arrays(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(0)
    waves = [rng.integers(-32768, 32767, size=n).astype(np.float32) / 32768.0 for n in (4000, 7001)]
    paths = e2e.write_wavs(waves, tmp_path)
    for p, w in zip(paths, waves):
        x, sr = sf.read(p, dtype="float32")
        assert sr == SR
        np.testing.assert_array_equal(x, w)


# --- FLOP counter --------------------------------------------------------------------------------------------


def test_encoder_layer_flops_hand_count():
    # T = 10 frames, 8 → 4 wide, 6 FFN units, FSMN kernel 3; 2 FLOPs per multiply-add
    T, i, d, u, k = 10, 8, 4, 6, 3
    qkv = 2 * T * i * (3 * d)  # 1920
    scores = 2 * T * T * d  # 800, all heads together
    av = 2 * T * T * d  # 800
    out = 2 * T * d * d  # 320
    fsmn = 2 * T * d * k  # 240
    ffn = 2 * T * d * u + 2 * T * u * d  # 960
    assert qkv + scores + av + out + fsmn + ffn == 5040
    assert e2e.encoder_layer_flops(T, i, d, u, k) == 5040


def test_decoder_layer_flops_hand_count():
    N, T, d, u, k = 5, 9, 4, 6, 3
    ffn = 2 * N * d * u * 2  # 480
    fsmn = 2 * N * d * k  # 120
    cross = 2 * N * d * d * 2 + 2 * T * d * 2 * d + 2 * N * T * d * 2  # q + out 320, k/v 576, scores + av 720
    assert e2e.decoder_layer_flops(N, T, d, u, k, fsmn=False, cross=False) == ffn
    assert e2e.decoder_layer_flops(N, T, d, u, k, fsmn=True, cross=False) == ffn + fsmn
    assert e2e.decoder_layer_flops(N, T, d, u, k, fsmn=True, cross=True) == ffn + fsmn + cross == 2216


def _tiny_config() -> ParaformerConfig:
    enc = EncoderConfig(output_size=16, attention_heads=2, linear_units=24, num_blocks=3, input_layer="pe", kernel_size=5, input_size=40)
    dec = DecoderConfig(attention_heads=2, linear_units=24, num_blocks=4, att_layer_num=2, kernel_size=5)
    dec.validate()
    return ParaformerConfig(enc, dec, PredictorConfig(idim=16), ModelConfig(), {}, vocab_size=50)


def test_flops_match_torch_flop_counter():
    """The analytic count equals what torch counts on the reference modules (matmuls, bmm, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    from paraformer_ext.model.decoder import ParaformerSANMDecoder
    from paraformer_ext.model.encoder import SANMEncoder

    cfg = _tiny_config()
    T, N = 13, 7
    enc = SANMEncoder(cfg.encoder).eval()
    dec = ParaformerSANMDecoder(cfg.decoder, cfg.vocab_size, cfg.d_model).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        enc(torch.randn(1, T, 40), torch.tensor([T]))
    f_enc = fc.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        dec(torch.randn(1, T, 16), torch.tensor([T]), torch.randn(1, N, 16), torch.tensor([N]))
    f_dec = fc.get_total_flops()
    got = e2e.model_flops(cfg, T, N)
    assert got["encoder"] == f_enc
    assert got["decoder"] == f_dec
    # predictor: conv over 3 taps, the 1-wide output Linear, CIF's T + N weighted row updates
    assert got["predictor"] == 2 * T * 16 * 16 * 3 + 2 * T * 16 + 2 * (T + N) * 16
    assert got["total"] == got["encoder"] + got["predictor"] + got["decoder"]


def test_large_preset_flops_per_second_plausible():
    """paraformer-large geometry, 10 s (167 LFR frames), 50 tokens: ~6.6 GFLOP per audio second, most in the
    50-layer encoder."""
    enc = EncoderConfig(output_size=512, attention_heads=4, linear_units=2048, num_blocks=50, input_layer="pe", input_size=560)
    dec = DecoderConfig(attention_heads=4, linear_units=2048, num_blocks=16, att_layer_num=16, kernel_size=11)
    dec.validate()
    cfg = ParaformerConfig(enc, dec, PredictorConfig(idim=512), ModelConfig(), {}, vocab_size=8404)
    f = e2e.model_flops(cfg, 167, 50)
    per_s = f["total"] / 10
    assert 5e9 < per_s < 8e9
    assert f["encoder"] > 0.7 * f["total"]
