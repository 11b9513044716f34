"""SAN-M benchmarks (issue 4): the FSMN op vs F.conv1d + mask + add; one encoder layer; the full 50-layer
encoder of the `large` preset; eager reference, torch.compile(reference) and our fused path, same run.

    .venv/bin/python -m pytest benchmarks/bench_sanm.py --benchmark-only --benchmark-json=out.json
    .venv/bin/python benchmarks/summarize.py out.json

Shapes B×T ∈ {1×100, 16×500, 64×167}, D = 512 (paraformer-large). On CPU only the shapes that finish in
reasonable time run (PARAFORMER_EXT_BENCH_FULL=1 runs all). torch.compile runs where it is the target's
comparison point (64×167 on CUDA; 1×100 on CPU), since compiling costs minutes per shape.
"""
from __future__ import annotations

import os

import pytest
import torch

from common import copy_bandwidth_gbs, cuda_median_ms, run_timed
from paraformer_ext import has_cuda_kernels, has_kernels
from paraformer_ext.model.config import EncoderConfig
from paraformer_ext.model.encoder import SANMEncoder
from paraformer_ext.ops.fsmn import fsmn_memory_fn, fsmn_memory_ref

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

FULL = os.environ.get("PARAFORMER_EXT_BENCH_FULL") == "1"
SHAPES = [(1, 100), (16, 500), (64, 167)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
D, K = 512, 11

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and has_cuda_kernels() else [])


def _skip_cpu(device, dtype, B, T, budget_frames=2000):
    if device == "cpu" and not FULL and (dtype != "fp32" or B * T > budget_frames):
        pytest.skip("CPU: fp32 and small shapes only (PARAFORMER_EXT_BENCH_FULL=1 for all)")


def _lengths(B, T, device):
    lens = torch.full((B,), T, dtype=torch.long)
    lens[1::2] = (T * 3) // 4  # a padded batch: every other utterance shorter
    return lens.to(device)


@pytest.mark.parametrize("impl", ["reference", "op"])
@pytest.mark.parametrize("B,T", SHAPES, ids=[f"{b}x{t}" for b, t in SHAPES])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("device", DEVICES)
def test_fsmn(benchmark, device, dtype, B, T, impl):
    _skip_cpu(device, dtype, B, T, budget_frames=16 * 500)
    dt = DTYPES[dtype]
    x = torch.randn(B, T, D, device=device, dtype=dt)
    w = torch.randn(D, K, device=device, dtype=dt) / K
    res = torch.randn_like(x)
    lens = _lengths(B, T, device)
    fn = fsmn_memory_ref if impl == "reference" else fsmn_memory_fn
    benchmark.group = f"fsmn {device} {dtype} {B}x{T}"
    benchmark.extra_info.update(baseline=impl == "reference", shape=[B, T, D], dtype=dtype)
    if device == "cuda":
        ms = cuda_median_ms(lambda: fn(x, w, lens, 5, res))
        nbytes = 3 * x.numel() * x.element_size()  # x and residual read once, out written once
        benchmark.extra_info.update(cuda_median_ms=ms, bytes=nbytes, gbs=nbytes / (ms * 1e-3) / 1e9,
                                    copy_gbs=copy_bandwidth_gbs("cuda"))
    with torch.no_grad():
        run_timed(benchmark, lambda: fn(x, w, lens, 5, res), device)


def _encoder(num_blocks, device, dt, kernels):
    cfg = EncoderConfig(output_size=D, attention_heads=4, linear_units=2048, num_blocks=num_blocks, input_layer="pe",
                        kernel_size=K, input_size=560)
    enc = SANMEncoder(cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    enc = enc.to(device, dt)
    for m in enc.modules():
        if hasattr(m, "kernels"):
            m.kernels = kernels
    return enc


_COMPILED: dict = {}


def _impl_fn(impl, num_blocks, device, dt):
    if impl == "fused":
        return _encoder(num_blocks, device, dt, True)
    enc = _encoder(num_blocks, device, dt, False)
    if impl == "compile":
        key = (num_blocks, device, dt)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(enc, dynamic=False)
        return _COMPILED[key]
    return enc


def _compile_wanted(device, dtype, B, T):
    if os.environ.get("PARAFORMER_EXT_BENCH_COMPILE") == "0":
        return False
    # the target's comparison point only (compiling the 50-layer encoder takes minutes per shape and dtype)
    return (device == "cuda" and (B, T) == (64, 167) and dtype == "fp16") or (
        device == "cpu" and (B, T) == (1, 100) and dtype == "fp32")


def _bench_encoder(benchmark, device, dtype, B, T, impl, num_blocks, label):
    if impl == "compile" and not _compile_wanted(device, dtype, B, T):
        pytest.skip("torch.compile only at the target shape (compiling takes minutes per shape)")
    dt = DTYPES[dtype]
    x = torch.randn(B, T, 560, device=device)
    lens = _lengths(B, T, device)
    enc = _impl_fn(impl, num_blocks, device, dt)
    benchmark.group = f"{label} {device} {dtype} {B}x{T}"
    benchmark.extra_info.update(baseline=impl == "eager", impl=impl, dtype=dtype, shape=[B, T])
    with torch.no_grad():
        enc(x, lens)  # warm-up (and compilation)
        if device == "cuda":
            benchmark.extra_info["cuda_median_ms"] = cuda_median_ms(lambda: enc(x, lens), warmup=2, iters=10)
        rounds = 7 if device == "cpu" else 10
        run_timed(benchmark, lambda: enc(x, lens), device, rounds=rounds)


@pytest.mark.parametrize("impl", ["eager", "compile", "fused"])
@pytest.mark.parametrize("B,T", SHAPES, ids=[f"{b}x{t}" for b, t in SHAPES])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("device", DEVICES)
def test_encoder_layer(benchmark, device, dtype, B, T, impl):
    _skip_cpu(device, dtype, B, T, budget_frames=16 * 500)
    # two blocks: encoders0 (560 → 512) + one 512 → 512 layer; the second is the one repeated 49 times
    _bench_encoder(benchmark, device, dtype, B, T, impl, 2, "encoder-2-layers")


@pytest.mark.parametrize("impl", ["eager", "compile", "fused"])
@pytest.mark.parametrize("B,T", SHAPES, ids=[f"{b}x{t}" for b, t in SHAPES])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("device", DEVICES)
def test_encoder_full(benchmark, device, dtype, B, T, impl):
    _skip_cpu(device, dtype, B, T, budget_frames=100)
    _bench_encoder(benchmark, device, dtype, B, T, impl, 50, "encoder-50")
