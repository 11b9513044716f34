"""Int8 (W8A8) linear benchmarks: our int8_linear_fn (quantize_rows + torch._int_mm + epilogue) and each of
its parts, against float linears, per shape (M, K, N).

    .venv/bin/python -m pytest benchmarks/bench_int8.py --benchmark-only --benchmark-json=out.json
    .venv/bin/python benchmarks/summarize.py out.json

CPU (torch.set_num_threads(2)): float32 F.linear (the baseline), oneDNN's fp32 linear
(torch.ops.mkldnn._linear_pointwise), fbgemm's dynamic-quantization linear (torch.ops.quantized.linear_dynamic
on a linear_prepack'ed per-channel qint8 weight: per-tensor activation quantization, a different scheme,
shown for comparison; it warns that quantized tensors are deprecated), int8_linear_fn, and its parts:
quantize_rows alone, _int_mm alone, the epilogue alone (bias, float32 out).
CUDA: float16 F.linear (the baseline), float32 F.linear, int8_linear_fn on float16 activations (float16 out)
and its parts; times are CUDA-event medians (extra_info.cuda_median_ms, which summarize.py prefers).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from common import cuda_median_ms, run_timed
from paraformer_ext import has_cuda_kernels, has_kernels
from paraformer_ext.ops.int8 import (
    int8_linear_epilogue_fn,
    int8_linear_fn,
    int_mm,
    quantize_rows_fn,
    quantize_weight_ref,
)

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

SHAPES = [(100, 512, 1536), (100, 2048, 512), (1000, 512, 2048), (4000, 512, 2048), (10000, 512, 2048)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and has_cuda_kernels() else [])
CPU_IMPLS = ["fp32_linear", "onednn_fp32", "fbgemm_dynamic", "int8_linear", "quantize_rows", "int_mm", "epilogue"]
CUDA_IMPLS = ["fp16_linear", "fp32_linear", "int8_linear", "quantize_rows", "int_mm", "epilogue"]
CPU_THREADS = 2


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    yield
    torch.set_num_threads(before)


def _make(impl, device, M, K, N):
    """A zero-argument callable running `impl` on fresh random inputs of shape (M, K) x (N, K)."""
    g = torch.Generator().manual_seed(M + K + N)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = 0.1 * torch.randn(N, generator=g)
    wq, ws = quantize_weight_ref(w)
    act = torch.float16 if device == "cuda" else torch.float32
    x, w, b, wq, ws = x.to(device), w.to(device), b.to(device), wq.to(device), ws.to(device)
    if impl == "fp32_linear":
        return lambda: F.linear(x, w, b)
    if impl == "fp16_linear":
        xh, wh, bh = x.half(), w.half(), b.half()
        return lambda: F.linear(xh, wh, bh)
    if impl == "onednn_fp32":
        return lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    if impl == "fbgemm_dynamic":
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated
            wqt = torch.quantize_per_channel(w, ws.double(), torch.zeros(N, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(wqt, b)
        return lambda: torch.ops.quantized.linear_dynamic(x, packed)
    xa = x.to(act)
    if impl == "int8_linear":
        return lambda: int8_linear_fn(xa, wq, ws, b)
    q, s = quantize_rows_fn(xa)
    if impl == "quantize_rows":
        return lambda: quantize_rows_fn(xa)
    if impl == "int_mm":
        return lambda: int_mm(q, wq)
    if impl == "epilogue":
        acc = int_mm(q, wq)
        return lambda: int8_linear_epilogue_fn(acc, s, ws, b, None, False, act)
    raise ValueError(impl)


def _bench(benchmark, device, impl, M, K, N):
    fn = _make(impl, device, M, K, N)
    benchmark.group = f"int8 {device} {M}x{K}x{N}"
    baseline = impl == ("fp16_linear" if device == "cuda" else "fp32_linear")
    benchmark.extra_info.update(baseline=baseline, impl=impl, shape=[M, K, N], threads=CPU_THREADS)
    with torch.inference_mode():
        fn()  # warm-up (oneDNN / cuBLAS pick their kernels)
        if device == "cuda":
            benchmark.extra_info["cuda_median_ms"] = cuda_median_ms(fn, warmup=5, iters=50)
            run_timed(benchmark, fn, device, rounds=20)
        else:
            run_timed(benchmark, fn, device)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_int8_cpu(benchmark, M, K, N, impl):
    _bench(benchmark, "cpu", impl, M, K, N)


@pytest.mark.skipif("cuda" not in DEVICES, reason="CUDA device and the CUDA build needed")
@pytest.mark.parametrize("impl", CUDA_IMPLS)
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_int8_cuda(benchmark, M, K, N, impl):
    _bench(benchmark, "cuda", impl, M, K, N)
