"""The streaming Paraformer's chunk-masked training forward (paraformer_ext.training.streaming, compute_loss on a
ParaformerStreaming model) against FunASR 1.4.16's own `ParaformerStreaming.forward` (tests/data/streaming_train.*,
written by tests/data/make_streaming_train.py with FunASR's venv), its chunk masks on edge cases, and
`paraformer-ext train` on a streaming model.

Not bit-exact, and why: the cases avoid two CIF situations where FunASR and we differ on purpose, for offline and
streaming models alike (see make_streaming_train.py): FunASR's float32 Σα an ulp short of the target (its CIF drops
the last embedding) and two tokens on one frame (α > 1). Everything else agrees to float rounding: our chunk layout
drops FunASR's zero shift rows, which changes summation orders, not values."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import paraformer_ext
from paraformer_ext import has_kernels
from paraformer_ext.training import compute_loss
from paraformer_ext.training.streaming import (chunk_configs, chunk_layout, choose_chunk_config, decoder_memory_mask,
                                               encoder_attention_mask, token_chunks)

from conftest import assert_batch_is_sum_of_parts

DATA = Path(__file__).parent / "data"
KERNELS = [False, pytest.param(True, marks=pytest.mark.skipif(not has_kernels(), reason="kernels not built"))]
JS = json.loads((DATA / "streaming_train.json").read_text())
Z = np.load(DATA / "streaming_train.npz")


def _recipe():
    spec = importlib.util.spec_from_file_location("make_streaming_train", DATA / "make_streaming_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    recipe = _recipe()
    d = recipe.build_model(tmp_path_factory.mktemp("stream_train"))
    got = recipe.state_hash(torch.load(d / "model.pt", weights_only=True))
    assert got == JS["state_sha256"], "the fixture model rebuilt differently (torch version?): rerun make_streaming_train.py"
    return d


@pytest.fixture(scope="module", params=KERNELS, ids=["ref", "kernels"])
def model(request, model_dir):
    return paraformer_ext.load(model_dir, kernels=request.param).model.requires_grad_(True).train()


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def run(model, name, batch=None):
    c = JS["cases"][name]
    speech, text = torch.from_numpy(Z[f"{name}/speech"]), torch.from_numpy(Z[f"{name}/text"])
    lens, tl = torch.tensor(c["lengths"]), torch.tensor(c["text_lengths"])
    perms = [torch.from_numpy(Z[f"{name}/randperm_{i}"]) for i in range(len(c["randperm_lengths"]))]
    if batch is not None:  # one utterance of the case
        speech, text, lens, tl = speech[batch:batch + 1, :lens[batch]], text[batch:batch + 1, :tl[batch]], lens[batch:batch + 1], tl[batch:batch + 1]
        perms = perms[batch:batch + 1]  # FunASR drew one permutation per utterance, in batch order
    model.zero_grad(set_to_none=True)
    out = compute_loss(model, speech, lens, text, tl, sampling_ratio=c["sampling_ratio"], glm_positions=perms or None,
                       chunk_config=c["chunk_config"])
    out["loss"].backward()
    grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("name", list(JS["cases"]))
def test_matches_funasr_streaming_forward(model, name):
    c = JS["cases"][name]
    out, grads = run(model, name)
    assert out["chunk_config"] == c["chunk_config"]
    for k in ("loss", "loss_att", "loss_pre"):
        assert rel(float(out[k].detach()), c[k]) <= 1e-5, (k, float(out[k].detach()), c[k])
    assert np.float32(out["acc"]) == np.float32(c["acc"])
    assert out["weight"] == c["weight"]
    assert set(c["grad_norms"]) == set(grads)
    for k, ref in c["grad_norms"].items():
        got = grads[k].double().norm().item()
        if ref == 0.0:
            assert got == 0.0, k
        else:
            assert rel(got, ref) <= 1e-3, (k, got, ref)


def test_padded_batch_is_the_sum_of_its_utterances(model):
    out, grads = run(model, "b2_c2_glm")
    parts = [run(model, "b2_c2_glm", batch=b) for b in range(2)]
    assert_batch_is_sum_of_parts(out, grads, parts)


# --- the chunk masks against FunASR's gen_chunk_mask / build_scama_mask_for_cross_attention_decoder ------------------


def _funasr_rows(layout, shift):
    """Our row (j, i) → FunASR's layout row j·(C + F) + F + i."""
    g = layout.geometry
    j = torch.arange(layout.n).repeat_interleave(g.chunk)
    i = torch.arange(g.chunk).repeat(layout.n)
    return j * (g.chunk + shift) + shift + i


@pytest.mark.parametrize("mi", range(len(JS["masks"])))
def test_chunk_masks_are_funasrs(model_dir, mi):
    case = JS["masks"][mi]
    m = paraformer_ext.load(model_dir, kernels=False).model
    g = chunk_configs(m.cfg.encoder)[case["chunk_config"]]
    F = (m.cfg.encoder.kernel_size - 1) // 2
    p = f"masks/{mi}/"
    lens = torch.tensor(case["lengths"])
    layout = chunk_layout(lens, g)
    x_len_chunk = torch.from_numpy(Z[p + "x_len_chunk"])
    Tc = int(x_len_chunk.max())
    rows = _funasr_rows(layout, F)
    valid = layout.valid()
    # valid rows are exactly FunASR's rows below x_len_chunk that are not shift rows (F per chunk)
    assert torch.equal(valid, rows[None, :] < x_len_chunk[:, None])
    assert valid.sum(1).tolist() == [int(x_len_chunk[b]) - F * (int(layout.last[b]) + 1) for b in range(len(lens))]
    # encoder attention: FunASR's pattern × key padding, on every valid query row, in FunASR's coordinates
    att = torch.from_numpy(Z[p + "att"])  # (Tc, Tc)
    ours = encoder_attention_mask(layout)
    inside = rows < Tc
    r = rows.clamp(max=Tc - 1)
    for b in range(len(lens)):
        q = valid[b]
        ref = att[r[q]][:, r] & (inside & (rows < x_len_chunk[b]))[None, :]
        assert torch.equal(ours[b, q], ref), b
    # predictor: alphas only on the stride rows
    pred = torch.from_numpy(Z[p + "predictor"])
    stride_row = torch.zeros(layout.n, g.chunk, dtype=torch.bool)
    stride_row[:, g.pad_left:g.pad_left + g.stride] = True
    in_range = rows < len(pred)
    assert torch.equal(pred[rows[in_range]], stride_row.flatten()[in_range])
    # decoder cross-attention: each utterance alone (a batch of one, FunASR's result for it)
    alphas = torch.from_numpy(Z[p + "alphas"])
    targets = torch.tensor(case["targets"])
    scama = torch.from_numpy(Z[p + "scama"])  # (B, L, Tc)
    L = scama.size(1)
    chunks = token_chunks(alphas, lens, targets, L, layout)
    dec = decoder_memory_mask(layout, chunks)
    longest = int(lens.argmax())
    for b in range(len(lens)):
        k = int(targets[b])
        got = torch.zeros(k, Tc + 1, dtype=torch.bool)
        got[:, rows.clamp(max=Tc)] = dec[b, :k]
        if b == longest or len(lens) == 1:
            assert torch.equal(got[:, :Tc], scama[b, :k]), b
        # FunASR's rows of a shorter utterance are its batch-1 rows unless its last token did not fire: check the
        # fired ones
        fired = scama[b, :k].any(-1)
        assert torch.equal(got[fired, :Tc], scama[b, :k][fired]), b


def test_layout_edge_cases():
    from paraformer_ext.training.streaming import ChunkGeometry

    g = ChunkGeometry(chunk=10, stride=8, pad_left=2, encoder_look_back=1, decoder_look_back=2)
    lay = chunk_layout(torch.tensor([1, 7, 8, 9, 17]), g)
    assert lay.n == 3 and lay.last.tolist() == [0, 0, 0, 1, 2]
    # last chunk: P + len − (n_b − 1)·S rows; chunks before it full; after it none
    assert lay.lengths.tolist() == [[3, 0, 0], [9, 0, 0], [10, 0, 0], [10, 3, 0], [10, 10, 3]]
    assert lay.frames[0].tolist() == list(range(-2, 8)) and lay.frames[1, 0] == 6
    x = torch.arange(1, 18, dtype=torch.float32)[None, :, None].expand(5, 17, 1)
    rows = lay.gather(x, torch.tensor([1, 7, 8, 9, 17]))[..., 0]
    assert rows[0, :4].tolist() == [0, 0, 1, 0]  # pad_left rows and frames past the end are zero
    assert rows[4, 10:14].tolist() == [7, 8, 9, 10]  # chunk 1 repeats frames 6, 7 (pad_left)
    # every frame comes back once, in order, from the stride rows
    assert torch.equal(lay.stride_rows(rows[4:5, :, None], 17)[0, :, 0], torch.arange(1, 18, dtype=torch.float32))


def test_chunk_config_choice():
    g = torch.Generator().manual_seed(3)
    drawn = [choose_chunk_config(3, True, g, None) for _ in range(30)]
    assert set(drawn) == {0, 1, 2}
    g2 = torch.Generator().manual_seed(3)
    assert drawn == [int(torch.randint(0, 3, (), generator=g2)) for _ in range(30)]  # FunASR's randint
    assert choose_chunk_config(3, False, None, None) == 0 and choose_chunk_config(1, True, None, None) == 0
    assert choose_chunk_config(3, True, None, 2) == 2
    with pytest.raises(ValueError, match="chunk_config"):
        choose_chunk_config(3, True, None, 3)


def test_chunk_config_is_drawn_from_the_generator_in_train_mode(model_dir):
    m = paraformer_ext.load(model_dir, kernels=False).model.requires_grad_(True).train()
    name = "b1_c0"
    speech, text = torch.from_numpy(Z[f"{name}/speech"]), torch.from_numpy(Z[f"{name}/text"])
    lens, tl = torch.tensor(JS["cases"][name]["lengths"]), torch.tensor(JS["cases"][name]["text_lengths"])
    seen = {compute_loss(m, speech, lens, text, tl, sampling_ratio=0.0, generator=torch.Generator().manual_seed(s))["chunk_config"]
            for s in range(12)}
    assert seen == {0, 1, 2}
    assert compute_loss(m.eval(), speech, lens, text, tl, sampling_ratio=0.0)["chunk_config"] == 0
    offline = paraformer_ext.load(model_dir.parent / "offline", kernels=False).model.requires_grad_(True)
    with pytest.raises(ValueError, match="streaming"):
        compute_loss(offline, speech, lens, text, tl, chunk_config=0)


# --- the CLI trains a streaming model, and the result streams -----------------------------------------------------


def test_cli_trains_a_streaming_model_and_the_result_streams(model_dir, tmp_path):
    from paraformer_ext.cli import main
    from paraformer_ext.synthetic import synthetic_speech

    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        wav = tmp_path / f"utt{i}.wav"
        sf.write(wav, synthetic_speech(1.0 + 0.3 * i, 70 + i), 16000, subtype="PCM_16")
        lines.append({"key": f"utt{i}", "source": str(wav),
                      "target": "".join(chr(0x4E00 + int(x)) for x in rng.integers(0, 20, 3 + i))})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["train", "--train-data", str(tmp_path / "train.jsonl"), "--valid-data", str(tmp_path / "train.jsonl"),
               "--output-dir", str(out), "--init", str(model_dir), "--epochs", "2", "--max-batch-frames", "80",
               "--lr", "2e-3", "--warmup", "2", "--quiet"])
    assert rc == 0
    import yaml

    hist = yaml.safe_load((out / "training.yaml").read_text())["history"]
    assert len(hist) == 2 and all(math.isfinite(h["valid_loss"]) and math.isfinite(h["valid_cer"]) for h in hist)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == "ParaformerStreaming"
    asr = paraformer_ext.load(out)
    assert asr.streaming
    trained = torch.load(out / "model.pt", weights_only=True)
    init = torch.load(model_dir / "model.pt", weights_only=True)
    assert any(not torch.equal(trained[k], init[k]) for k in init)
    audio, sr = sf.read(tmp_path / "utt2.wav", dtype="float32")
    s = asr.stream(chunk_size=10)
    s.accept(audio, sr)
    res = s.finish()
    assert isinstance(res["text"], str)
