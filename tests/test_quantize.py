"""The int8 model (quantize.py): which layers, memory, kernels == reference, split activations, saving and
loading (reuse, staleness, bad files), dtype casts, and accuracy against FunASR's float32 goldens."""
from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from torch import nn

from conftest import REPO, SHARED, golden_checkpoint, needs_shared
from paraformer_ext import ModelLoadError, has_kernels, load
from paraformer_ext.ops.int8 import int8_linear_ref, int8_linear_split, quantize_weight_ref
from paraformer_ext.quantize import Int8Linear, quantize

sys.path.insert(0, str(REPO / "benchmarks"))
from precision import compare  # noqa: E402


def _tiny_linear(K=64, N=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K**0.5)
        lin.bias.copy_(torch.randn(N, generator=g))
    return lin


def test_int8_linear_module_matches_its_reference_and_float():
    lin = _tiny_linear()
    q = Int8Linear.from_linear(lin)
    x = torch.randn(3, 7, 64)
    wq, s = quantize_weight_ref(lin.weight)
    assert torch.equal(q.weight, wq) and torch.equal(q.weight_scale, s)
    with torch.no_grad():
        want = int8_linear_ref(x, wq, s, lin.bias)
        for kernels in [False] + ([True] if has_kernels() else []):
            q.kernels = kernels
            assert torch.equal(q(x), want)  # the epilogue is bit-exact in float32
        ref = lin(x)
        assert ((q(x) - ref).norm() / ref.norm()) < 0.03
        res = torch.randn(3, 7, 48)
        assert torch.allclose(q(x, residual=res), want + res, atol=1e-6)
        assert torch.equal(q(x, relu=True), int8_linear_ref(x, wq, s, lin.bias, relu=True))


def test_split_activations_are_closer_to_float():
    lin = _tiny_linear(256, 64, seed=1)
    x = torch.randn(50, 256)
    wq, s = quantize_weight_ref(lin.weight)
    with torch.no_grad():
        exact_w = x @ (wq.float() * s[:, None]).t() + lin.bias  # float activations, int8 weights
        err8 = (int8_linear_ref(x, wq, s, lin.bias) - exact_w).norm() / exact_w.norm()
        for kernels in [False] + ([True] if has_kernels() else []):
            y = int8_linear_split(x, wq, s, lin.bias, kernels=kernels)
            err16 = (y - exact_w).norm() / exact_w.norm()
            assert err16 < err8 / 50, (err16, err8)  # the second part carries ~7 more bits
        assert int8_linear_split(x[:0], wq, s, lin.bias).shape == (0, 64)


def test_scales_stay_float32_through_dtype_casts():
    q = Int8Linear.from_linear(_tiny_linear())
    scale = q.weight_scale.clone()
    q.half()
    assert q.weight.dtype == torch.int8 and q.weight_scale.dtype == torch.float32 and q.bias.dtype == torch.float16
    assert torch.equal(q.weight_scale, scale)
    q.to(torch.bfloat16)
    assert torch.equal(q.weight_scale, scale)


# --- whole models --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """A private copy of the golden `small` checkpoint (saving int8 files must not touch the shared cache)."""
    if SHARED is None:
        pytest.skip("golden data not found")
    d = tmp_path_factory.mktemp("small")
    for f in golden_checkpoint("small").iterdir():
        if f.is_file() and f.name != "model_int8.pt":
            shutil.copy2(f, d / f.name)
    return d


@needs_shared
def test_quantize_replaces_encoder_and_decoder_linears(small_dir):
    asr = load(small_dir, kernels=False)
    linears = {n for n, m in asr.model.named_modules() if type(m) is nn.Linear}
    assert asr.quantize() is asr
    q = {n for n, m in asr.model.named_modules() if isinstance(m, Int8Linear)}
    left = {n for n, m in asr.model.named_modules() if type(m) is nn.Linear}
    assert q == {n for n in linears if n.startswith(("encoder.", "decoder.")) and n != "decoder.output_layer"}
    assert left == {"decoder.output_layer", "predictor.cif_output"}
    assert asr.quantization == "int8"
    assert not any(m.split_activations for m in asr.model.modules() if isinstance(m, Int8Linear))
    with pytest.raises(ValueError, match="already quantized"):
        asr.quantize()
    qkv = lambda name: name.endswith("linear_q_k_v")  # noqa: E731
    asr3 = load(small_dir, kernels=False).quantize(split=qkv)
    split = {n for n, m in asr3.model.named_modules() if isinstance(m, Int8Linear) and m.split_activations}
    assert split == {n for n in q if qkv(n)} and sorted(asr3.model.quantization["split_activations"]) == sorted(split)
    asr2 = quantize(load(small_dir, kernels=False).model, output_layer=True)
    assert isinstance(asr2.decoder.output_layer, Int8Linear)


@needs_shared
def test_saved_int8_model_is_reused_and_refreshed(small_dir):
    int8_file = small_dir / "model_int8.pt"
    int8_file.unlink(missing_ok=True)
    wav = str(SHARED / "audio" / "asr_example.wav")
    first = load(small_dir, quantize="int8", kernels=False)
    assert int8_file.is_file()
    stamp = int8_file.stat().st_mtime_ns
    second = load(small_dir, quantize="int8", kernels=False)
    assert int8_file.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert second.transcribe(wav) == first.transcribe(wav)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    # a changed model.pt makes the saved file stale: requantized, with a warning
    st = os.stat(small_dir / "model.pt")
    os.utime(small_dir / "model.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="requantizing"):
        load(small_dir, quantize="int8", kernels=False)
    assert int8_file.stat().st_mtime_ns != stamp
    # an explicit path, and a bad file there
    out = first.save_quantized(small_dir / "elsewhere.pt")
    assert load(small_dir, quantize="int8", quantized_path=out, kernels=False).transcribe(wav) == first.transcribe(wav)
    # split activations survive saving and loading
    split = load(small_dir, kernels=False).quantize(split=lambda n: n.endswith("linear_q_k_v"))
    back = load(small_dir, quantize="int8", quantized_path=split.save_quantized(small_dir / "split.pt"),
                kernels=False)
    assert sum(m.split_activations for m in back.model.modules() if isinstance(m, Int8Linear)) == 6
    assert back.transcribe(wav) == split.transcribe(wav)
    (small_dir / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="bad.pt"):
        load(small_dir, quantize="int8", quantized_path=small_dir / "bad.pt")
    with pytest.raises(ValueError, match="int4"):
        load(small_dir, quantize="int4")
    with pytest.raises(ValueError, match="not quantized"):
        load(small_dir, kernels=False).save_quantized(small_dir / "x.pt")


@needs_shared
@pytest.mark.parametrize("kernels", [False] + ([True] if has_kernels() else []), ids=["reference", "kernels"][: 1 + has_kernels()])
def test_int8_agrees_with_funasr_float32_where_it_is_confident(small_dir, device, kernels):
    """int8 vs FunASR's float32 token ids on the golden audio: every position whose top-1/top-2 gap exceeds
    0.05 agrees, and at most 15% of all positions differ (FunASR's own int8 ONNX export differs at 6-7 of
    24-37 positions on these files; the compiled path gives 62/69 on the CI's AMD EPYC and 63+/69 elsewhere:
    oneDNN picks ISA-specific float kernels around the int8 GEMMs, which flips low-gap positions). The compiled and the plain int8 paths are not bit-identical end to end
    (the float ops around the int8 GEMMs round differently and a quantization step can flip), so each is
    held to the same bound; per layer they are identical (test_int8_linear_module_matches_...)."""
    if device.type == "cuda" and not kernels:
        pytest.skip("the reference runs on CPU")
    asr = load(small_dir, device=device, quantize="int8", kernels=kernels)
    agree = total = 0
    for wav in ("asr_example", "long"):
        r = compare(asr, SHARED, "small", wav)
        assert r["agree"] is not None, "token count changed"
        assert r["agree_margin_gt_0.05"] == r["positions_margin_gt_0.05"], r["mismatches"]
        agree, total = agree + r["agree"], total + r["positions"]
    assert agree >= 0.85 * total


@needs_shared
def test_int8_memory_large_preset():
    """Weights and buffers of the int8 `large` model: at most 30% of float32 (issue 5)."""
    asr = load(golden_checkpoint("large"), kernels=False)
    size = lambda m: sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))  # noqa: E731
    fp32 = size(asr.model)
    asr.quantize()
    assert size(asr.model) <= 0.30 * fp32


@pytest.mark.parametrize("kernels", [False] + ([True] if has_kernels() else []), ids=["reference", "kernels"][: 1 + has_kernels()])
def test_fused_int8_ffn_and_norm_equal_the_unfused_layers(kernels):
    """chain() (hidden layer handed over as int8) and forward(norm=...) (LayerNorm fused into the
    quantization) compute what the separate int8 layers compute."""
    from paraformer_ext.model.layers import layer_norm

    w1, w2 = Int8Linear.from_linear(_tiny_linear(64, 256, 3)), Int8Linear.from_linear(_tiny_linear(256, 64, 4))
    w1.kernels = w2.kernels = kernels
    norm, mid = layer_norm(64), layer_norm(256)
    with torch.no_grad():
        for p in (norm.weight, mid.weight):
            p.uniform_(0.5, 1.5)
        for p in (norm.bias, mid.bias):
            p.uniform_(-0.2, 0.2)
    x = torch.randn(3, 21, 64)
    res = torch.randn(3, 21, 64)
    with torch.no_grad():
        # no LayerNorm anywhere: bit-exact
        assert torch.equal(w1.chain(w2, x, residual=res), w2(w1(x, relu=True), residual=res))
        # LayerNorms: the fused statistics are summed in another order, so compare the outputs' values
        fused = w1.chain(w2, x, norm=norm, mid_norm=mid)
        plain = w2(mid(w1(norm(x), relu=True)))
        assert (fused - plain).norm() / plain.norm() < (1e-3 if kernels else 1e-6)
        assert (w1(x, norm=norm) - w1(norm(x))).norm() / w1(norm(x)).norm() < (1e-3 if kernels else 1e-6)
