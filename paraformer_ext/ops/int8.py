"""Int8 (W8A8) linear building blocks: per-channel int8 weights, per-row (per-token) int8 activations, an
int8 x int8 -> int32 GEMM (`torch._int_mm`) and a fused float32 epilogue. Inference only: no op here has
an autograd formula (rounding to int8 is not differentiable); run them under torch.inference_mode().
The `_ref` functions are plain PyTorch and work without the compiled extension.

Conventions (the compiled ops and the `_ref` twins below follow them bit for bit):

* Weights W (N, K), per output channel, symmetric (`quantize_weight_ref`):
  w_scale[n] = max_k |W[n, k]| / 127 (float32), Wq = clamp(round(W / w_scale), -127, 127) int8;
  a row of zeros has scale 0 and q 0.
* Activations x (M, K), per row, the same rule in float32 (`quantize_rows`):
  s[m] = max_k |x[m, k]| / 127 computed from x converted to float32,
  q = clamp(round_half_to_even(x / s[m]), -127, 127), with an IEEE division (no reciprocal); s[m] == 0 gives
  an all-zero row. A NaN quotient clamps to +127 (a row holding NaN gets a NaN scale and q = 127), so
  non-finite inputs give defined, backend-independent results rather than undefined int conversions.
* GEMM: acc = torch._int_mm(q, Wq.t()) -> int32 (M, N), exact. On CUDA `_int_mm` needs M > 16 and K, N
  multiples of 8: `int8_linear_fn` pads M up to 17 zero rows and raises a ValueError for other K, N (keep
  such a layer in float).
* Epilogue (`int8_linear_epilogue`): y = act(float(acc) * s[m] * w_scale[n] + bias[n]) + residual[m, n],
  act = ReLU or identity, each operation rounded in float32 in exactly that order, then cast to out_dtype
  (float32 / float16 / bfloat16). The reference computes the same float32 expression, so float32 outputs
  are bit-identical and 16-bit outputs are the same single rounding of the same float32 value.
* Fused variants: `int8_linear_epilogue_quantize` quantizes the epilogue's float32 row h directly (after an
  optional LayerNorm over N), and `layer_norm_quantize_rows` is LayerNorm + `quantize_rows`; both feed the
  next int8 GEMM (`int8_linear_from_quantized_fn`) without writing h. LayerNorm is
  (h - mean) / sqrt(var + eps) * weight + bias with the biased variance over the row, as
  F.layer_norm; the kernels accumulate the statistics in another order (CPU: double, CUDA: a float tree)
  than F.layer_norm, so their normalised values can differ from the reference in the last float bits and a
  q value can then move by one level where x / s falls next to a rounding tie (rare: tests allow one level
  on at most 0.1% of the elements, and scales to 1e-6 relative). Without LayerNorm the fused ops are exact.

Caveat (CUDA only): the CUDA build uses --use_fast_math, which flushes float32 subnormals to zero. Rows
whose absmax is below ~1.5e-36 (a subnormal scale) therefore quantize to zero on CUDA but not on the CPU or
in the reference; products in the epilogue that land in the subnormal range likewise flush to zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._ext import has_kernels, use_kernels
from ..model.config import LAYER_NORM_EPS
_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --- plain-PyTorch references ---------------------------------------------------------------------------------


def _row_scale(xf: torch.Tensor) -> torch.Tensor:
    """absmax / 127 per row of a float32 (M, K) tensor; 0 for K = 0 (amax rejects an empty dimension)."""
    if xf.shape[1] == 0:
        return xf.new_zeros((xf.shape[0],))
    return xf.abs().amax(dim=1) / 127


def _quantize_with_scale(xf: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    zero = s == 0
    v = xf / torch.where(zero, torch.ones_like(s), s)[:, None]
    v = torch.where(v < 127, v, 127.0)  # NaN -> 127, as the kernels' comparisons do
    v = torch.where(v > -127, v, -127.0)
    q = torch.round(v).to(torch.int8)  # torch.round is round-half-to-even
    return torch.where(zero[:, None], torch.zeros_like(q), q)


def _check_2d_float(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (M, K), got shape {tuple(x.shape)}")
    if x.dtype not in _ACT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")


def quantize_weight_ref(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 weight: weight (N, K) float -> (wq (N, K) int8, w_scale (N,) float32).

    The same rule as `quantize_rows_ref` applied to the rows of the weight (an nn.Linear weight is (N, K)).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K) like nn.Linear.weight, got shape {tuple(weight.shape)}")
    wf = weight.detach().float()
    s = _row_scale(wf)
    return _quantize_with_scale(wf, s).contiguous(), s


def quantize_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 quantization. x: (M, K) float32/float16/bfloat16, any strides.

    Returns (q (M, K) int8 contiguous, scale (M,) float32) with scale = absmax(x_f32) / 127 and
    q = clamp(round_half_even(x_f32 / scale), -127, 127); all-zero rows give scale 0, q 0.
    """
    _check_2d_float(x, "x")
    xf = x.float()
    s = _row_scale(xf)
    return _quantize_with_scale(xf, s).contiguous(), s


def int8_linear_epilogue_ref(
    acc: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """y = act(float(acc) * row_scale[:, None] * col_scale[None, :] + bias) + residual, float32, then out_dtype.

    acc: (M, N) int32; row_scale: (M,) float32; col_scale: (N,) float32; bias: (N,) any float dtype or None;
    residual: (M, N) of out_dtype or None; returns (M, N) out_dtype.
    """
    y = acc.float() * row_scale[:, None] * col_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    if relu:
        y = torch.relu(y)
    if residual is not None:
        y = y + residual.float()
    return y.to(out_dtype)


def int8_linear_epilogue_quantize_ref(
    acc: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = LAYER_NORM_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = act(float(acc) * row_scale * col_scale + bias) (float32), LayerNorm(h) over N when ln_weight is given,
    then `quantize_rows_ref(h)`. acc: (M, N) int32; ln_weight, ln_bias: (N,) or None.
    Returns (q (M, N) int8, scale (M,) float32).
    """
    h = int8_linear_epilogue_ref(acc, row_scale, col_scale, bias, None, relu, torch.float32)
    if ln_weight is not None:
        h = F.layer_norm(h, (h.shape[1],), ln_weight.float(), None if ln_bias is None else ln_bias.float(), eps)
    return quantize_rows_ref(h)


def layer_norm_quantize_rows_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = LAYER_NORM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm over K in float32 (F.layer_norm), then `quantize_rows_ref`. x: (M, K); weight, bias: (K,).
    Returns (q (M, K) int8, scale (M,) float32).
    """
    _check_2d_float(x, "x")
    h = F.layer_norm(x.float(), (x.shape[1],), weight.float(), bias.float(), eps)
    return quantize_rows_ref(h)


def quantize_rows_split_ref(
    x: torch.Tensor, ln_weight: torch.Tensor | None = None, ln_bias: torch.Tensor | None = None,
    eps: float = LAYER_NORM_EPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split activations: x (M, K) float (LayerNorm'ed first when ln_weight is given) quantized per row as
    `quantize_rows_ref`, then its rounding error r = x_f32 - float(q) * scale quantized again the same way.

    Returns (q (2M, K) int8: the M rows, then the M error rows; scale (M,), scale_lo (M,) float32), so that
    x ≈ q[:M] * scale + q[M:] * scale_lo keeps about 15 bits, and one integer GEMM covers both parts.
    """
    _check_2d_float(x, "x")
    xf = x.float()
    if ln_weight is not None:
        xf = F.layer_norm(xf, (xf.shape[-1],), ln_weight.float(), None if ln_bias is None else ln_bias.float(), eps)
    s = _row_scale(xf)
    q = _quantize_with_scale(xf, s)
    r = xf - q.float() * s[:, None]
    s_lo = _row_scale(r)
    return torch.cat([q, _quantize_with_scale(r, s_lo)]).contiguous(), s, s_lo


def _check_weight(wq: torch.Tensor, w_scale: torch.Tensor, K: int) -> int:
    if wq.dim() != 2 or wq.dtype != torch.int8:
        raise ValueError(f"wq must be a 2-D int8 (N, K) tensor (from quantize_weight_ref), got {wq.dtype} "
                         f"{tuple(wq.shape)}")
    if wq.shape[1] != K:
        raise ValueError(f"wq is (N, K) = {tuple(wq.shape)} but the input has K = {K} features")
    if w_scale.shape != (wq.shape[0],):
        raise ValueError(f"w_scale must have shape (N,) = ({wq.shape[0]},), got {tuple(w_scale.shape)}")
    return wq.shape[0]


def _int_gemm_exact(q: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """q (M, K) int8 @ wq (N, K)ᵀ in float64 on the integer values (exact while K * 127 * 127 < 2^53), as int32:
    what torch._int_mm returns."""
    return (q.double() @ wq.double().t()).to(torch.int32)


def int8_linear_from_quantized_ref(
    q: torch.Tensor,
    s: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The int8 linear on already quantized activations: q (..., K) int8, s (...) float32 -> (..., N) out_dtype.

    The GEMM is done in float64 on the integer values (exact while K * 127 * 127 < 2^53) and cast to int32, so
    it equals torch._int_mm; then `int8_linear_epilogue_ref`. residual: (..., N) of out_dtype or None.
    """
    return _from_quantized(_int_gemm_exact, int8_linear_epilogue_ref, q, s, wq, w_scale, bias, residual, relu, out_dtype)


def _from_quantized(gemm, epilogue, q, s, wq, w_scale, bias, residual, relu, out_dtype):
    """(..., K) int8 rows through `gemm` and `epilogue`: the shared body of the _ref and _fn twins."""
    K = q.shape[-1]
    N = _check_weight(wq, w_scale, K)
    acc = gemm(q.reshape(-1, K), wq)
    res = None if residual is None else residual.reshape(-1, N)
    return epilogue(acc, s.reshape(-1), w_scale, bias, res, relu, out_dtype).reshape(*q.shape[:-1], N)


def int8_linear_ref(
    x: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """W8A8 linear: x (..., K) float -> (..., N) in out_dtype (default x.dtype).

    `quantize_rows_ref` on the flattened rows, the exact integer GEMM, `int8_linear_epilogue_ref`
    (act(acc * s * w_scale + bias) + residual). wq, w_scale: from `quantize_weight_ref`; bias (N,) or None;
    residual (..., N) of out_dtype or None.
    """
    return _linear(quantize_rows_ref, int8_linear_from_quantized_ref, x, wq, w_scale, bias, residual, relu, out_dtype)


def _linear(quantize, from_quantized, x, wq, w_scale, bias, residual, relu, out_dtype):
    """(..., K) float rows through `quantize` and `from_quantized`: the shared body of the int8_linear twins."""
    K = x.shape[-1]
    N = _check_weight(wq, w_scale, K)
    q, s = quantize(x.reshape(-1, K))
    out_dtype = x.dtype if out_dtype is None else out_dtype
    y = from_quantized(q, s, wq, w_scale, bias, None if residual is None else residual.reshape(-1, N), relu, out_dtype)
    return y.reshape(*x.shape[:-1], N)


# --- the compiled ops: fake impls (no autograd: inference only) --------------------------------------------------

if has_kernels():

    @torch.library.register_fake("paraformer_ext::quantize_rows")
    def _quantize_rows_fake(x):
        torch._check(x.dim() == 2, lambda: "x must be (M, K)")
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("paraformer_ext::quantize_rows_split")
    def _quantize_rows_split_fake(x, ln_weight, ln_bias, eps):
        torch._check(x.dim() == 2, lambda: "x must be (M, K)")
        M = x.shape[0]
        f32 = dict(dtype=torch.float32)
        return x.new_empty((2 * M, x.shape[1]), dtype=torch.int8), x.new_empty((M,), **f32), x.new_empty((M,), **f32)

    @torch.library.register_fake("paraformer_ext::int8_linear_epilogue")
    def _epilogue_fake(acc, row_scale, col_scale, bias, residual, relu, out_dtype):
        torch._check(acc.dim() == 2, lambda: "acc must be (M, N)")
        return acc.new_empty(acc.shape, dtype=out_dtype)

    @torch.library.register_fake("paraformer_ext::int8_linear_epilogue_quantize")
    def _epilogue_quantize_fake(acc, row_scale, col_scale, bias, relu, ln_weight, ln_bias, eps):
        torch._check(acc.dim() == 2, lambda: "acc must be (M, N)")
        return acc.new_empty(acc.shape, dtype=torch.int8), acc.new_empty((acc.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("paraformer_ext::layer_norm_quantize_rows")
    def _ln_quantize_fake(x, weight, bias, eps):
        torch._check(x.dim() == 2, lambda: "x must be (M, K)")
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)


def quantize_rows_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled `quantize_rows` op; same signature and result as `quantize_rows_ref` (bit-exact)."""
    return torch.ops.paraformer_ext.quantize_rows(x)


def quantize_rows_split_fn(x, ln_weight=None, ln_bias=None, eps: float = LAYER_NORM_EPS):
    """The compiled split quantization; same signature and result as `quantize_rows_split_ref` (bit-exact
    without LayerNorm; with it, within the LayerNorm tolerance of `layer_norm_quantize_rows_fn`)."""
    return torch.ops.paraformer_ext.quantize_rows_split(x, ln_weight, ln_bias, eps)


def int8_linear_epilogue_fn(
    acc: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The compiled epilogue, one pass over acc; same signature and result as `int8_linear_epilogue_ref`.
    residual rows may be strided (the last dimension should be contiguous, else it is copied)."""
    return torch.ops.paraformer_ext.int8_linear_epilogue(acc, row_scale, col_scale, bias, residual, relu, out_dtype)


def int8_linear_epilogue_quantize_fn(
    acc: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    eps: float = LAYER_NORM_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled fused epilogue + (LayerNorm) + row quantization; same signature as
    `int8_linear_epilogue_quantize_ref` (bit-exact without LayerNorm, see the module docstring with it)."""
    return torch.ops.paraformer_ext.int8_linear_epilogue_quantize(
        acc, row_scale, col_scale, bias, relu, ln_weight, ln_bias, eps
    )


def layer_norm_quantize_rows_fn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = LAYER_NORM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled LayerNorm + row quantization; same signature as `layer_norm_quantize_rows_ref`."""
    return torch.ops.paraformer_ext.layer_norm_quantize_rows(x, weight, bias, eps)


def int_mm(q: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """acc = q @ wq.t() in int32 via torch._int_mm: q (M, K) int8, wq (N, K) int8 -> (M, N) int32.

    On CUDA, _int_mm needs M > 16 and K, N multiples of 8: M <= 16 is padded with zero rows (the result's
    first M rows are returned, a contiguous view); other K, N raise a ValueError.
    """
    M, K = q.shape
    N = wq.shape[0]
    if q.device.type == "cuda":
        if K % 8 != 0 or N % 8 != 0 or K == 0 or N == 0:
            raise ValueError(
                f"int8 linear on CUDA needs K (in features) and N (out features) to be positive multiples of 8 "
                f"(torch._int_mm), got K = {K}, N = {N}; keep this layer in float"
            )
        if M <= 16:
            padded = q.new_zeros((17, K))
            padded[:M] = q
            return torch._int_mm(padded, wq.t())[:M]
    return torch._int_mm(q, wq.t())


def int8_linear_from_quantized_fn(
    q: torch.Tensor,
    s: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`int_mm` + the compiled epilogue on activations already quantized (by `layer_norm_quantize_rows_fn` or
    `int8_linear_epilogue_quantize_fn`); same signature and result as `int8_linear_from_quantized_ref`."""
    return _from_quantized(int_mm, int8_linear_epilogue_fn, q, s, wq, w_scale, bias, residual, relu, out_dtype)


def int8_linear_fn(
    x: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """W8A8 linear with the compiled ops: x (..., K) -> (..., N) in out_dtype (default x.dtype).
    `quantize_rows_fn` -> `int_mm` -> `int8_linear_epilogue_fn`; same signature and result as `int8_linear_ref`.
    """
    return _linear(quantize_rows_fn, int8_linear_from_quantized_fn, x, wq, w_scale, bias, residual, relu, out_dtype)


# --- dispatch: the compiled op where built for the device, else the reference ----------------------------------


def _pick(fn, ref, t: torch.Tensor, kernels: bool | None):
    """`fn` or its reference `ref` for tensors on t's device, by `_ext.use_kernels` (kernels=None: compiled
    where built, else the reference with a warning; True: compiled or KernelsUnavailableError; False: ref)."""
    return fn if use_kernels(kernels, t.device) else ref


def quantize_rows(x, *, kernels: bool | None = None):
    """`quantize_rows_fn` or `quantize_rows_ref` (see `_pick`)."""
    return _pick(quantize_rows_fn, quantize_rows_ref, x, kernels)(x)


def int8_linear_epilogue(acc, row_scale, col_scale, bias=None, residual=None, relu=False,
                         out_dtype=torch.float32, *, kernels: bool | None = None):
    """`int8_linear_epilogue_fn` or `int8_linear_epilogue_ref`."""
    fn = _pick(int8_linear_epilogue_fn, int8_linear_epilogue_ref, acc, kernels)
    return fn(acc, row_scale, col_scale, bias, residual, relu, out_dtype)


def int8_linear_epilogue_quantize(acc, row_scale, col_scale, bias=None, relu=False, ln_weight=None, ln_bias=None,
                                  eps=LAYER_NORM_EPS, *, kernels: bool | None = None):
    """`int8_linear_epilogue_quantize_fn` or `int8_linear_epilogue_quantize_ref`."""
    fn = _pick(int8_linear_epilogue_quantize_fn, int8_linear_epilogue_quantize_ref, acc, kernels)
    return fn(acc, row_scale, col_scale, bias, relu, ln_weight, ln_bias, eps)


def layer_norm_quantize_rows(x, weight, bias, eps=LAYER_NORM_EPS, *, kernels: bool | None = None):
    """`layer_norm_quantize_rows_fn` or `layer_norm_quantize_rows_ref`."""
    return _pick(layer_norm_quantize_rows_fn, layer_norm_quantize_rows_ref, x, kernels)(x, weight, bias, eps)


def int8_linear(x, wq, w_scale, bias=None, residual=None, relu=False, out_dtype=None, *,
                kernels: bool | None = None):
    """`int8_linear_fn` or `int8_linear_ref`."""
    return _pick(int8_linear_fn, int8_linear_ref, x, kernels)(x, wq, w_scale, bias, residual, relu, out_dtype)


def int8_linear_from_quantized(q, s, wq, w_scale, bias=None, residual=None, relu=False, out_dtype=torch.float32,
                               *, kernels: bool | None = None):
    """`int8_linear_from_quantized_fn` or `int8_linear_from_quantized_ref`."""
    fn = _pick(int8_linear_from_quantized_fn, int8_linear_from_quantized_ref, q, kernels)
    return fn(q, s, wq, w_scale, bias, residual, relu, out_dtype)


def quantize_rows_split(x, ln_weight=None, ln_bias=None, eps=LAYER_NORM_EPS, *, kernels: bool | None = None):
    """`quantize_rows_split_fn` or `quantize_rows_split_ref`."""
    return _pick(quantize_rows_split_fn, quantize_rows_split_ref, x, kernels)(x, ln_weight, ln_bias, eps)


def int8_gemm(q: torch.Tensor, wq: torch.Tensor, *, kernels: bool | None = None) -> torch.Tensor:
    """`int_mm` (torch._int_mm) or the reference's exact float64 product: both give the same int32 (M, N)."""
    return _pick(int_mm, _int_gemm_exact, q, kernels)(q, wq)


def int8_linear_split(x, wq, w_scale, bias=None, residual=None, relu=False, out_dtype=None, *, ln=None,
                      kernels: bool | None = None):
    """W8A8 with the activations carried in two int8 parts, for layers whose inputs need more than 8 bits.

    x ≈ q_hi * s_hi + q_lo * s_lo (`quantize_rows_split`: q_lo quantizes the rounding error of q_hi, so about
    15 bits survive); one integer GEMM runs over the 2M stacked rows, and the two products are combined in
    float32: y = act(acc_hi * s_hi * w_scale + bias + acc_lo * s_lo * w_scale) + residual. Weights stay int8.
    x (..., K) -> (..., N) in out_dtype (default x.dtype); ln: (weight, bias, eps) of a LayerNorm applied to x
    first (fused into the quantization), or None. `kernels`: as every dispatcher here (`_pick`).
    """
    K = x.shape[-1]
    N = _check_weight(wq, w_scale, K)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    q, s_hi, s_lo = quantize_rows_split(x2, *(ln or (None, None, LAYER_NORM_EPS)), kernels=kernels)
    acc = int8_gemm(q, wq, kernels=kernels)
    y = int8_linear_epilogue(acc[M:], s_lo, w_scale, None, None, False, torch.float32, kernels=kernels)
    y = int8_linear_epilogue(acc[:M], s_hi, w_scale, bias, y, False, torch.float32, kernels=kernels)
    if relu:
        y = torch.relu_(y)
    # The epilogue's rule: the residual joins in float32 and the sum is rounded to out_dtype once.
    if residual is not None:
        y = y + residual.reshape(M, N).float()
    return y.to(out_dtype).reshape(*x.shape[:-1], N)
