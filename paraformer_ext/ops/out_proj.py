"""The decoder's output projection fused with greedy decoding: per row, the argmax token of
log_softmax(x @ Wᵀ + b) and its log-probability, without materialising the (M, V) float32 logits.

`Paraformer.greedy` computes ``logp = log_softmax(F.linear(h, W, b).float()); best, ids = logp.max(-1)``,
which writes and re-reads M x V floats (4096 x 8404: 138 MB, three passes). The op instead loops over
vocabulary chunks of `chunk` columns: a library GEMM (at::addmm_out / at::_int_mm_out: MKL/oneDNN on CPU,
cuBLAS/cuBLASLt on CUDA) writes one (row block, chunk) tile into a small reusable buffer sized to stay in L2,
and our reduction folds it, still in cache, into a running (max, argmax, Σ exp(l − max)) per row — the
online log-sum-exp: when a larger max m' arrives the sum is rescaled by exp(m − m'). Finally
logp = max − logsumexp = −log Σ_v exp(l_v − max).

Semantics (tested in tests/test_out_proj.py):

* **dtypes.** x: float32/float16/bfloat16. weight: (V, D) of x's dtype; the logits are computed as F.linear
  does (addmm, rounded once to x's dtype, bias included), then the statistics are accumulated in float32:
  this is `log_softmax(logits.float())` on a half logits tensor. bias: (V,) of any float dtype, cast to x's
  dtype first (F.linear needs them equal). Returns ids int64 and logp float32.
* **int8 weights.** weight int8 (V, D) with weight_scale (V,) float32 (symmetric per output channel). x is
  quantized per row by ops/int8.py's rule (`quantize_rows`: scale = absmax / 127, q = round-half-even(x /
  scale) clamped to ±127, an all-zero row gets scale 0 and q = 0, a NaN quotient gives +127), and the
  logits are those of `int8_linear_ref`: the int8 GEMM accumulates exactly in int32, and
  logit = ((float(acc) · x_scale[m]) · weight_scale[v]) + bias[v] in float32, each step rounded, bias cast
  to float32. `_ref` computes the GEMM exactly in float64 on the integer values, so both have the same
  logits by construction (exact products, the same rounded float32 steps; no FMA contraction). A row of x
  holding NaN gets scale NaN, hence NaN logits and logp NaN; one holding ±inf (no NaN) gets scale inf, hence
  logits of ±inf or NaN (0 · inf), which the non-finite rules below then follow. On CUDA, D must be a
  multiple of 8 and `chunk` is rounded up to a multiple of 8 (cuBLASLt's int8 GEMM); blocks of ≤ 16 rows are
  padded with zero rows (it needs more than 16).
* **Ties.** The lowest index wins among equal maxima (torch.argmax's rule on CPU), also across chunks.
* **Non-finite logits.** Columns equal to the row's max count exactly exp(0) = 1 in the sum, so: one +inf
  gives logp 0 (k of them: −log k) and its (first) index; −inf columns contribute 0; an all −inf row gives
  id 0 and logp −log V. (`_ref` gives NaN for the +inf and all −inf rows: log_softmax computes inf − inf.)
  A NaN logit makes the row's logp NaN and its id the first NaN's column (torch.argmax's rule on the
  logits; `_ref` returns 0 there because log_softmax spreads the NaN over the whole row).
* **Chunking.** chunk = 0 picks the tile automatically: on CPU 1024 columns and rows so that the float32
  tile fits one core's L2 (≤ 4 MB); each thread owns a tile and runs whole row blocks (or, when rows are
  few, a share of the vocabulary) with single-threaded GEMMs, so the tile is read back by the core that
  wrote it. On CUDA 2048 columns and rows so that the tile is ≤ half of L2. The results do not depend on
  chunk or the thread count beyond float rounding of the sums (a GEMM blocked differently may also move
  a logit by an ulp). The scratch memory is a tile per thread (CPU) or one tile (CUDA) plus O(rows +
  chunk) vectors and O(M) row states, never O(V) nor O(M · V); an explicit chunk > V means one chunk of
  V columns.
* Shapes: x (..., D) → ids, logp (...); M = 0 gives empty outputs.
* **Inference only**: no autograd; autograd falls through the op, so its outputs never require grad.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._ext import autocast_inputs, has_kernels, use_kernels
from .int8 import int8_linear_ref


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(..., D) → (M, D), a view when the leading dims allow it (also for D = 0, where -1 is ambiguous)."""
    return x.reshape(x.shape[:-1].numel(), x.size(-1))


def out_proj_logits_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, weight_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """The logits the op reduces, as a plain (M, V) tensor: F.linear in x's dtype, or for int8 weights
    `int8_linear_ref` in float32 (the same quantization, exact GEMM and epilogue). x: (M, D); weight: (V, D)."""
    if weight.dtype == torch.int8:
        if weight_scale is None:
            raise ValueError("int8 weights need weight_scale (V,) float32")
        return int8_linear_ref(x, weight, weight_scale, bias, out_dtype=torch.float32)
    return F.linear(x, weight, bias.to(x.dtype) if bias is not None else None)


def out_proj_argmax_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What Paraformer.greedy computes: log_softmax(logits.float()).max(-1) on the full logits.

    x: (..., D); weight: (V, D) of x's dtype, or int8 with weight_scale (V,); bias: (V,) or None; chunk is
    ignored. Returns (ids (...) int64, logp (...) float32)."""
    logits = out_proj_logits_ref(_flat(x), weight, bias, weight_scale)
    best, ids = torch.log_softmax(logits.float(), dim=-1).max(dim=-1)
    return ids.reshape(x.shape[:-1]), best.reshape(x.shape[:-1])


# --- the compiled op: fake impl (no autograd: inference only) --------------------------------------------------

if has_kernels():

    @torch.library.register_fake("paraformer_ext::out_proj_argmax")
    def _out_proj_argmax_fake(x, weight, bias, weight_scale, chunk):
        torch._check(x.dim() == 2, lambda: "x must be (M, D)")
        torch._check(weight.dim() == 2 and weight.shape[1] == x.shape[1], lambda: "weight must be (V, D)")
        torch._check(weight.device == x.device, lambda: "weight and x must be on the same device")
        M = x.shape[0]
        return x.new_empty((M,), dtype=torch.int64), x.new_empty((M,), dtype=torch.float32)


def out_proj_argmax_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    chunk: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled op; same signature and result as `out_proj_argmax_ref` (up to float rounding, and the
    non-finite cases in the module docstring). Returns (ids (...) int64, logp (...) float32)."""
    if weight_scale is None:  # int8 weights are not autocast
        x, weight, bias = autocast_inputs(x.device, x, weight, bias)
    ids, logp = torch.ops.paraformer_ext.out_proj_argmax(_flat(x), weight, bias, weight_scale, int(chunk))
    return ids.reshape(x.shape[:-1]), logp.reshape(x.shape[:-1])


def _weights_of(proj) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias, weight_scale) of an nn.Linear or of an int8 module holding `weight` (int8) and
    `weight_scale` tensors."""
    if isinstance(proj, nn.Linear):
        return proj.weight, proj.bias, None
    w, ws = getattr(proj, "weight", None), getattr(proj, "weight_scale", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"out_proj_argmax: expected a weight tensor, an nn.Linear or an int8 linear, got {type(proj)}")
    return w, getattr(proj, "bias", None), ws


def out_proj_argmax(
    x: torch.Tensor,
    weight: torch.Tensor | nn.Module,
    bias: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    chunk: int = 0,
    *,
    kernels: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy token ids and their log-probabilities: the compiled op or the reference, by
    `_ext.use_kernels(kernels, x.device)`. `weight` may be the tensor or the projection module itself (nn.Linear,
    or an int8 linear with `weight` int8 and `weight_scale`), whose bias is then used."""
    if not isinstance(weight, torch.Tensor):
        if bias is not None or weight_scale is not None:
            raise ValueError("out_proj_argmax: pass bias / weight_scale only with a weight tensor, not a module")
        weight, bias, weight_scale = _weights_of(weight)
    fn = out_proj_argmax_fn if use_kernels(kernels, x.device) else out_proj_argmax_ref
    return fn(x, weight, bias, weight_scale, chunk)
