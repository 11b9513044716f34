"""Greedy decoding's output projection: F.linear + log_softmax(float) + max (what Paraformer.greedy runs,
the baseline) against the fused out_proj_argmax op, float and int8 weights, same run.

    .venv/bin/python -m pytest benchmarks/bench_out_proj.py --benchmark-only --benchmark-json=out.json
    .venv/bin/python benchmarks/summarize.py out.json

Shapes: M ∈ {64, 1024, 4096} decoder positions (tokens in a batch), D = 512, V = 8404 (paraformer-zh).
CPU: fp32 activations, 2 threads (BENCH_CPU_THREADS). CUDA: fp32 / fp16 / bf16 activations (TF32 off, as
in the parity tests). Variants per group:

* ``baseline``: ``log_softmax(F.linear(x, W, b).float()).max(-1)``, materialising the (M, V) logits;
* ``fused``: ``out_proj_argmax_fn`` with the float weight (chunk = 0: automatic tiles);
* ``fused_int8``: the same op with int8 weights (x quantized per row inside the op);
* ``int8_unfused``: the int8 arithmetic spelled out in torch (quantize, ``torch._int_mm`` over the whole
  vocabulary, dequantize, log_softmax, max), to tell the gain of int8 from the gain of fusing.

``extra_info["peak_extra_bytes"]``: the most memory held during one call above what was held before it.
CUDA: ``torch.cuda.max_memory_allocated`` delta. CPU: the peak of torch's CPU allocator over the call (all
threads) from the profiler's memory records; allocations MKL/oneDNN make with their own allocators are not
in it (the same for every variant).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from common import cuda_median_ms, peak_cpu_alloc_bytes, peak_cuda_bytes, run_timed
from paraformer_ext import has_cuda_kernels, has_kernels
from paraformer_ext.ops.int8 import quantize_rows_ref
from paraformer_ext.ops.out_proj import out_proj_argmax_fn

pytestmark = pytest.mark.skipif(not has_kernels(), reason="compiled extension not built")

D, V = 512, 8404
ROWS = [64, 1024, 4096]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VARIANTS = ["baseline", "fused", "fused_int8", "int8_unfused"]
CPU_THREADS = int(os.environ.get("BENCH_CPU_THREADS", "2"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and has_cuda_kernels() else [])


def _weights(device, dt):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(V, D, generator=g) * (2.0 / D**0.5)
    b = torch.randn(V, generator=g)
    ws = w.abs().amax(1).clamp_min(1e-8) / 127
    wq = torch.round(w / ws[:, None]).clamp(-127, 127).to(torch.int8)
    return w.to(device, dt), b.to(device, dt), wq.to(device), ws.to(device), b.to(device)


def _pad_rows8(wq):
    """torch._int_mm on CUDA needs N % 8 == 0 (V = 8404 is not): zero rows, sliced off after the product."""
    return torch.nn.functional.pad(wq, (0, 0, 0, -wq.shape[0] % 8))


def _int8_unfused(x, wq, ws, b):
    q, s = quantize_rows_ref(x)
    logits = torch._int_mm(q, wq.t())[:, :V].float() * s[:, None] * ws[None, :] + b
    return torch.log_softmax(logits, dim=-1).max(dim=-1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("M", ROWS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("device", DEVICES)
def test_out_proj(benchmark, device, dtype, M, variant):
    if device == "cpu" and dtype != "fp32":
        pytest.skip("CPU: fp32 activations only")
    if device == "cpu":
        torch.set_num_threads(CPU_THREADS)
    dt = DTYPES[dtype]
    x = torch.randn(M, D, generator=torch.Generator().manual_seed(M)).to(device, dt)
    w, b, wq, ws, b32 = _weights(device, dt)
    wq8 = _pad_rows8(wq)
    fn = {
        "baseline": lambda: torch.log_softmax(F.linear(x, w, b).float(), dim=-1).max(dim=-1),
        "fused": lambda: out_proj_argmax_fn(x, w, b),
        "fused_int8": lambda: out_proj_argmax_fn(x, wq, b32, ws),
        "int8_unfused": lambda: _int8_unfused(x, wq8, ws, b32),
    }[variant]
    benchmark.group = f"out_proj {device} {dtype} M={M}"
    benchmark.extra_info.update(baseline=variant == "baseline", variant=variant, shape=[M, D, V], dtype=dtype,
                                threads=CPU_THREADS if device == "cpu" else None)
    with torch.inference_mode():
        fn()  # warm-up: first-call initialisation stays out of the timings and the memory peak
        if device == "cuda":
            benchmark.extra_info["peak_extra_bytes"] = peak_cuda_bytes(fn)
            benchmark.extra_info["cuda_median_ms"] = cuda_median_ms(fn, warmup=3, iters=30)
            run_timed(benchmark, fn, device)
        else:
            benchmark.extra_info["peak_extra_bytes"] = peak_cpu_alloc_bytes(fn)
            run_timed(benchmark, fn, device, rounds=5 if M >= 1024 else 20)
