"""Linear layers of the fused path: one GEMM with its epilogue (bias, ReLU, residual add) fused into it.

`linear_fn(lin, x, residual=None, relu=False)` computes `act(x @ W.T + b) + residual`, where act is ReLU or the
identity, and `linear_ref` computes the same with separate PyTorch ops (F.linear, relu, add).

* CPU, float32 / bfloat16: oneDNN's matmul with the bias, the ReLU or the residual add as its post-op
  (`torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU backend emits for Linear). On the 2-core
  AMD EPYC (AVX-512) CI machine torch's default CPU GEMM (MKL) reaches ~120-165 GFLOP/s in the encoder's
  shapes and oneDNN ~190-210 (benchmarks/bench_sanm.py measures the difference in the encoder).
  With PARAFORMER_EXT_ONEDNN_PACK=1 the weights are also reordered once into oneDNN's blocked layout and
  cached: another 7-12% on the encoder (measured: 1.61x vs 1.45x the eager reference at 1x100, 1.55x vs 1.38x
  at 16x500), but a second copy of every weight (880 MB more for paraformer-large), so it is off by default.
* CUDA and everything else: cuBLAS through F.linear; a residual is accumulated into by the GEMM itself
  (addmm with beta = 1) instead of being added in a separate pass.
* Any other Linear-like module (the int8 `Int8Linear` of quantize.py) implements
  `forward(x, residual=None, relu=False)` itself and is called as it is.
"""
from __future__ import annotations

import functools
import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
PACK_WEIGHTS = os.environ.get("PARAFORMER_EXT_ONEDNN_PACK") == "1"


@functools.lru_cache(maxsize=None)
def _onednn_ok(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear is usable for this dtype here (checked once per dtype)."""
    if dtype not in _ONEDNN_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise  # noqa: F841  (absent in builds without oneDNN)
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False  # no native bf16 on this CPU: oneDNN would emulate it slowly
        x = torch.randn(3, 8, dtype=dtype)
        w = torch.randn(5, 8, dtype=dtype)
        y = torch.ops.mkldnn._linear_pointwise(x, _packed(w), None, "none", [], "")
        return bool(torch.allclose(y.float(), (x.float() @ w.float().t()), rtol=2e-2, atol=2e-2))
    except (AttributeError, RuntimeError):
        return False


def _packed(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


# Kept beside the modules, not on them: an opaque oneDNN tensor cannot be deep-copied, pickled or saved.
_PACKED: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def _packed_weight(lin: nn.Linear) -> torch.Tensor:
    """The module's weight in oneDNN's layout, made once and remade when the weight changes (load, .to());
    the plain weight unless PACK_WEIGHTS (oneDNN then reorders it inside every call)."""
    w = lin.weight
    if not PACK_WEIGHTS:
        return w
    key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
    cached = _PACKED.get(lin)
    if cached is None or cached[0] != key:
        cached = (key, _packed(w))
        _PACKED[lin] = cached
    return cached[1]


def uses_onednn(lin: nn.Module, x: torch.Tensor) -> bool:
    # not under torch.compile: Dynamo cannot trace torch.backends.mkldnn.is_available(), and the oneDNN ops
    # (_reorder_linear_weight, _linear_pointwise.binary) have no fake kernels; Inductor picks its own GEMMs
    return (not torch.compiler.is_compiling() and type(lin) is nn.Linear and x.device.type == "cpu"
            and not torch.is_grad_enabled() and x.dtype == lin.weight.dtype and _onednn_ok(x.dtype))


def linear_ref(lin: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool = False,
               norm: nn.Module | None = None) -> torch.Tensor:
    """act(lin(norm(x))) + residual with plain PyTorch ops. x: (..., K) → (..., N); residual: (..., N) or None;
    norm: a LayerNorm applied to x first, or None."""
    y = lin(x if norm is None else norm(x))
    if relu:
        y = torch.relu(y)
    return y if residual is None else residual + y


# oneDNN builds (JIT-compiles) a primitive for every new GEMM shape and caches it; each new utterance length is
# a new M. For small layers the build costs about as much as the GEMM: a batch-1 call of the 3.8 M-parameter
# default model's geometry took 16.1 ms on lengths never seen and 10.4 ms on repeated ones (2 threads, Xeon;
# benchmarks/bench_new_lengths.py). There M is padded with zero rows to a multiple of ROW_BUCKET (up to
# PAD_ROWS_MAX rows), so lengths share primitives: 11.9 ms new, 11.3 ms repeated. Layers of K x N >= SMALL_GEMM
# (paraformer-large's) are left alone: their build is a small share of a call even when every length is new,
# while the padding would cost up to ROW_BUCKET / M of every call. Rows are independent in a GEMM: the padding
# changes no real row's result.
ROW_BUCKET = 16
PAD_ROWS_MAX = 1024
SMALL_GEMM = 1 << 18


def _bucket_rows(x2: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    m = x2.size(0)
    pad = -m % ROW_BUCKET
    if pad == 0 or m > PAD_ROWS_MAX or lin.in_features * lin.out_features >= SMALL_GEMM:
        return x2 if x2.is_contiguous() else x2.contiguous()
    return torch.cat([x2, x2.new_zeros(pad, x2.size(1))])


def linear_fn(lin: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool = False,
              norm: nn.Module | None = None) -> torch.Tensor:
    """Fused twin of `linear_ref` (same arguments, same result up to the GEMM's rounding). A Linear-like module
    with `fuses_norm = True` (the int8 one) gets the LayerNorm to fuse into its input quantization.

    relu and residual together are not needed by the model and are refused."""
    if relu and residual is not None:
        raise ValueError("linear_fn: relu and residual together are not supported (the model never needs both)")
    if type(lin) is not nn.Linear:
        if norm is not None and getattr(lin, "fuses_norm", False):
            return lin(x, residual=residual, relu=relu, norm=norm)
        return lin(x if norm is None else norm(x), residual=residual, relu=relu)
    if norm is not None:
        x = norm(x)
    if uses_onednn(lin, x):
        shape = x.shape[:-1]
        m = shape.numel()
        x2 = _bucket_rows(x.reshape(-1, x.size(-1)), lin)
        w = _packed_weight(lin)
        if residual is not None:
            r2 = _bucket_rows(residual.reshape(-1, residual.size(-1)), lin)
            y = torch.ops.mkldnn._linear_pointwise.binary(x2, r2, w, lin.bias, "add")
        else:
            y = torch.ops.mkldnn._linear_pointwise(x2, w, lin.bias, "relu" if relu else "none", [], "")
        return y[:m].view(*shape, y.size(-1))
    if residual is None:
        y = F.linear(x, lin.weight, lin.bias)
        return torch.relu_(y) if relu else y
    # residual + bias in one pass, then the GEMM accumulates into it (beta = 1): the product is never
    # written and re-read for a separate add
    base = residual + lin.bias if lin.bias is not None else residual.clone(memory_format=torch.contiguous_format)
    return gemm_into(base, lin, x)


def gemm_into(base: torch.Tensor, lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """base + x @ W.T for an nn.Linear whose bias (and whatever else is to be added) base already holds;
    base is a fresh contiguous tensor that may be overwritten."""
    if uses_onednn(lin, x):
        m = base.shape[:-1].numel()
        y = torch.ops.mkldnn._linear_pointwise.binary(_bucket_rows(x.reshape(-1, x.size(-1)), lin),
                                                       _bucket_rows(base.view(-1, base.size(-1)), lin),
                                                       _packed_weight(lin), None, "add")
        return y[:m].view(base.shape)
    if torch.is_autocast_enabled(x.device.type):  # autocast casts F.linear's inputs, not an in-place addmm_'s
        return base + F.linear(x, lin.weight)
    base.view(-1, base.size(-1)).addmm_(x.reshape(-1, x.size(-1)), lin.weight.t())
    return base
