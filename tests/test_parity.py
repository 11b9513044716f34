"""Parity with FunASR 1.4.16 on the golden set (../shared/golden, README there): both presets, both wavs,
kernels on and off. Token ids, fire frames, text and timestamps exact; floats to the golden tolerances."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED, golden_checkpoint, needs_shared
from paraformer_ext import has_kernels, load, load_audio

sys.path.insert(0, str(REPO / "benchmarks"))
from precision import compare  # noqa: E402  (the half-precision report shares its comparison with the test)

pytestmark = needs_shared

WAVS = ["asr_example", "long"]
PRESETS = ["small", "large"]
KERNELS = [False] + ([True] if has_kernels() else [])


def golden(preset: str, wav: str):
    base = SHARED / "golden" / f"{preset}_{wav}"
    return np.load(f"{base}.npz"), json.loads(open(f"{base}.json", encoding="utf-8").read())


_cache: dict = {}


def recognizer(preset: str, kernels: bool, device="cpu"):
    key = (preset, kernels, str(device))
    if key not in _cache:
        _cache.clear()  # keep one model in memory at a time (large is 880 MB)
        _cache[key] = load(golden_checkpoint(preset), device=device, kernels=kernels)
    return _cache[key]


@pytest.fixture(scope="module", params=[(p, k) for p in PRESETS for k in KERNELS],
                ids=[f"{p}-{'kernels' if k else 'reference'}" for p in PRESETS for k in KERNELS])
def model(request):
    """Module-scoped and parametrized, so pytest runs every test of one model before loading the next."""
    preset, kernels = request.param
    return preset, recognizer(preset, kernels)


def fire_frames(fires: np.ndarray) -> list[int]:
    return [int(t) for t in np.nonzero(fires >= 1.0)[0]]


def test_model_from_golden_features(model):
    """Golden features in; encoder output, alphas, fires, token count, decoder top-2 and ids out."""
    preset, asr = model
    torch.set_num_threads(2)
    for wav in WAVS:
        g, j = golden(preset, wav)
        feats = torch.from_numpy(g["features"])[None]
        out = asr.model.greedy(feats, torch.tensor([feats.shape[1]]))
        enc = out.encoder_out[0].double()
        if "encoder_out" in g.files:
            assert (enc - torch.from_numpy(g["encoder_out"]).double()).abs().max() < 1e-4
        else:
            assert (enc.norm(dim=-1) - torch.from_numpy(g["encoder_out_frame_l2"]).double()).abs().max() < 1e-4
            assert (enc[:4] - torch.from_numpy(g["encoder_out_first4"]).double()).abs().max() < 1e-4
            assert (enc[-4:] - torch.from_numpy(g["encoder_out_last4"]).double()).abs().max() < 1e-4
        alphas, fires = out.alphas[0].numpy(), out.fires[0].numpy()
        assert alphas.shape == g["alphas"].shape and np.abs(alphas - g["alphas"]).max() < 1e-5
        assert np.abs(fires - g["fires"]).max() < 2e-5
        assert fire_frames(fires) == j["fire_frames"] == fire_frames(g["fires"])
        assert int(out.token_num[0]) == int(g["token_num"]) == j["decoder_positions"]
        emb = out.acoustic_embeds[0].double()
        if "acoustic_embeds" in g.files:
            assert (emb - torch.from_numpy(g["acoustic_embeds"]).double()).abs().max() < 2e-4
        else:
            assert (emb.norm(dim=-1) - torch.from_numpy(g["acoustic_embeds_row_l2"]).double()).abs().max() < 5e-4
        logits = asr.model.decode_logits(out.encoder_out, out.encoder_lengths, out.acoustic_embeds, out.token_num)
        top2 = torch.log_softmax(logits.float(), -1)[0].topk(2, dim=-1)
        assert top2.indices.numpy().tolist() == g["logp_top2_ids"].tolist()
        assert np.abs(top2.values.numpy() - g["logp_top2_values"]).max() < 1e-4
        assert out.token_ids[0].tolist() == j["argmax_ids"]


def test_end_to_end_from_audio(model):
    """wav file in; features, token ids, text, text with timestamps and timestamps (ms) out, exactly."""
    preset, asr = model
    _check_end_to_end(preset, asr, torch.device("cpu"))


@pytest.mark.parametrize("preset", PRESETS)
def test_end_to_end_cuda(preset, device):
    if device.type != "cuda":
        pytest.skip("the CPU cases run in test_end_to_end_from_audio")
    for kernels in (True, False):
        _check_end_to_end(preset, recognizer(preset, kernels, device), device)


def _check_end_to_end(preset, asr, device):
    paths = [str(SHARED / "audio" / f"{w}.wav") for w in WAVS]
    plain = asr.transcribe(paths, batch_size=1)
    with_ts = asr.transcribe(paths, batch_size=1, timestamps=True)
    for wav, r0, r1 in zip(WAVS, plain, with_ts):
        g, j = golden(preset, wav)
        assert r0["key"] == wav
        assert r0["token_ids"] == j["token_ids"]
        assert r0["text"] == j["text"]
        assert r1["text"] == j["text_with_timestamps"]
        assert r1["timestamp"] == j["timestamps"]
        waves = load_audio(paths[WAVS.index(wav)])
        feats, _ = asr.frontend(waves[None].to(device), torch.tensor([waves.numel()], device=device))
        assert np.abs(feats[0].cpu().numpy() - g["features"]).max() < 1e-3


def test_padded_batch_equals_batch1(model):
    """Both wavs in one padded batch: each gets its batch-1 (golden) result, where FunASR's batch does not."""
    preset, asr = model
    paths = [str(SHARED / "audio" / f"{w}.wav") for w in WAVS]
    batched = asr.transcribe(paths, batch_size=2, timestamps=True)
    single = asr.transcribe(paths, batch_size=1, timestamps=True)
    assert batched == single
    fun = json.loads(open(SHARED / "golden" / f"{preset}_batch.json", encoding="utf-8").read())["items"]
    for wav, r, f in zip(WAVS, batched, fun):
        _, j = golden(preset, wav)
        # FunASR's own padded batch leaks padding into the shorter item (small: its last token; large: one
        # timestamp); ours must not. The longest item agrees with FunASR's batch as well.
        if wav == "long":
            assert r["token_ids"] == f["token_ids"] and r["timestamp"] == f["timestamps"]
        assert r["token_ids"] == j["token_ids"]
        assert r["timestamp"] == j["timestamps"]


# fp16 keeps every token where FunASR's own top-1/top-2 gap exceeds 0.05, on both presets. bf16 (8
# significand bits) does on `small`; on `large` its 16-layer decoder moves one such position (gap 0.058,
# large/long; benchmarks/results/precision_cpu.json), so that case is reported, not asserted.
HALF = [("small", torch.float16), ("small", torch.bfloat16), ("large", torch.float16)]


@pytest.mark.parametrize("preset,dtype", HALF, ids=[f"{p}-{str(d)[6:]}" for p, d in HALF])
def test_half_precision_keeps_confident_tokens(preset, dtype, device):
    """fp16/bf16 encoder and decoder (predictor and CIF in fp32): encoder error small, fires unchanged,
    token ids equal to FunASR's float32 ones wherever its top-1/top-2 gap exceeds 0.05."""
    torch.set_num_threads(2)
    asr = load(golden_checkpoint(preset), device=device, dtype=dtype)
    bound = {torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    for wav in WAVS:
        r = compare(asr, SHARED, preset, wav)
        assert r.get("encoder_rel_err", r.get("encoder_frame_l2_rel_err")) < bound
        assert r["fire_frames_equal"]
        assert r["agree_margin_gt_0.05"] == r["positions_margin_gt_0.05"], r["mismatches"]
