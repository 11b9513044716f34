#pragma once
// Output projection + log_softmax + argmax without the (M, V) logits: shared argument checks, the tiling
// plan, and the running (max, argmax, sum of exp) state that both backends update chunk by chunk.
#include <cmath>
#include <limits>

#include "common.h"

namespace paraformer_ext {

struct OutProjShape {
  int64_t M, D, V;
  bool int8;  // int8 weight with a per-output-channel float32 scale
};

inline OutProjShape check_out_proj_args(const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        const c10::optional<at::Tensor>& weight_scale, int64_t chunk,
                                        const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be (M, D), got shape ", x.sizes(),
              "; flatten the leading dimensions first (out_proj_argmax_fn does)");
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt == at::kFloat || xt == at::kHalf || xt == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16, got ", xt);
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be (V, D) (nn.Linear's layout), got shape ", weight.sizes());
  check_same_device(weight, x, op, "weight", "x");
  const bool int8 = weight.scalar_type() == at::kChar;
  if (int8) {
    TORCH_CHECK(weight_scale.has_value(), op,
                ": an int8 weight needs weight_scale, its (V,) float32 per-output-channel scale");
  } else {
    TORCH_CHECK(weight.scalar_type() == xt, op, ": weight dtype ", weight.scalar_type(), " differs from x dtype ",
                xt, "; cast the weight with .to(x.dtype), or pass int8 weights with weight_scale");
    TORCH_CHECK(!weight_scale.has_value(), op, ": weight_scale is only for int8 weights, but weight is ",
                weight.scalar_type(), "; drop weight_scale or pass the int8 weight");
  }
  const OutProjShape s{x.size(0), x.size(1), weight.size(0), int8};
  TORCH_CHECK(weight.size(1) == s.D, op, ": weight has ", weight.size(1), " input features but x has D = ", s.D);
  TORCH_CHECK(s.D >= 1, op, ": x has no features (D = 0)");
  TORCH_CHECK(s.V >= 1, op, ": weight has no rows (V = 0); the argmax needs at least one class");
  if (int8) {
    const at::Tensor& ws = *weight_scale;
    TORCH_CHECK(ws.dim() == 1 && ws.size(0) == s.V, op, ": weight_scale must be (V,) = (", s.V, ",), got ",
                ws.sizes());
    TORCH_CHECK(ws.scalar_type() == at::kFloat, op, ": weight_scale must be float32, got ", ws.scalar_type(),
                "; cast it with .float()");
    check_same_device(ws, x, op, "weight_scale", "x");
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.V, op, ": bias must be (V,) = (", s.V, ",), got ",
                bias->sizes());
    check_float_tensor(*bias, op, "bias");
    check_same_device(*bias, x, op, "bias", "x");
  }
  TORCH_CHECK(chunk >= 0, op, ": chunk must be >= 0 (0 picks the size automatically), got ", chunk);
  return s;
}

// Rows x columns of one logits tile. The tile is sized for the cache the reduction reads it back from, never
// for V: `budget_bytes` of float32 (whatever the tile's dtype), at least `min_rows` rows, at most M.
struct OutProjPlan {
  int64_t rows, cols;
};

inline OutProjPlan plan_out_proj(const OutProjShape& s, int64_t chunk, int64_t auto_cols, int64_t budget_bytes,
                                 int64_t min_rows, int64_t max_rows) {
  const int64_t cols = std::min(s.V, chunk > 0 ? chunk : auto_cols);
  int64_t rows = budget_bytes / (cols * static_cast<int64_t>(sizeof(float)));
  rows = std::max(min_rows, std::min(rows, max_rows));
  return {std::min(rows, s.M), cols};
}

// The (c,) slice [v0, v0 + c) of a vector as a contiguous tensor of buf's dtype: in place when it already is
// one, else converted into the reusable buffer.
inline at::Tensor vector_chunk(const at::Tensor& t, int64_t v0, int64_t c, const at::Tensor& buf) {
  at::Tensor part = t.narrow(0, v0, c);
  if (part.scalar_type() == buf.scalar_type() && (part.stride(0) == 1 || c == 1)) return part;
  at::Tensor dst = buf.narrow(0, 0, c);
  dst.copy_(part);
  return dst;
}

// Rows [v0, v0 + c) of the weight with unit column stride, as BLAS reads them (transposed) without a copy.
inline at::Tensor weight_chunk(const at::Tensor& w, int64_t v0, int64_t c) {
  at::Tensor part = w.narrow(0, v0, c);
  const bool rows_ok = part.stride(1) == 1 && (c == 1 || part.stride(0) >= part.size(1));
  return rows_ok ? part : part.contiguous();
}

// Per row: the running max m (NaN once a NaN was seen), its first column i (-1: nothing seen yet) and
// s = sum over the columns seen of exp(l - m), where a column equal to m counts exactly 1 (so +inf maxima and
// all -inf rows need no inf - inf). The log-probability of the argmax is then -log(s). S is float within a
// tile and double across tiles, so many small chunks do not accumulate float rounding in the sum.
template <typename S>
struct LseState {
  float m;
  S s;
  int64_t i;
};

PFX_HD bool lse_is_nan(float v) { return v != v; }

PFX_HD float lse_exp(float v) {
#ifdef __CUDA_ARCH__
  return __expf(v);
#else
  return std::exp(v);
#endif
}

// exp(v - m) for v <= m, with v == m giving exactly 1 (also for m = +-inf).
PFX_HD float lse_rescale(float v, float m) { return v == m ? 1.0f : lse_exp(v - m); }

// Does (am, ai) rank before (bm, bi)? NaN ranks first (torch.argmax's rule), then the larger value, then
// the lower column: ties go to the lowest index.
PFX_HD bool lse_ranks_before(float am, int64_t ai, float bm, int64_t bi) {
  const bool an = lse_is_nan(am), bn = lse_is_nan(bm);
  if (an != bn) return an;
  if (!an && am != bm) return am > bm;
  return ai < bi;
}

// Merge the states of two disjoint column sets (in any order; the result does not depend on it).
template <typename S, typename T>
PFX_HD LseState<S> lse_combine(const LseState<S>& a, const LseState<T>& b) {
  if (b.i < 0) return a;
  if (a.i < 0) return {b.m, static_cast<S>(b.s), b.i};
  const bool a_first = lse_ranks_before(a.m, a.i, b.m, b.i);
  const float m = a_first ? a.m : b.m;
  const S s = a.s * static_cast<S>(lse_rescale(a.m, m)) + static_cast<S>(b.s) * static_cast<S>(lse_rescale(b.m, m));
  return {m, s, a_first ? a.i : b.i};
}

template <typename S>
PFX_HD float lse_logp(const LseState<S>& st) {
  if (lse_is_nan(st.m)) return st.m;
#ifdef __CUDA_ARCH__
  return static_cast<float>(-log(static_cast<double>(st.s)));
#else
  return static_cast<float>(-std::log(static_cast<double>(st.s)));
#endif
}

}  // namespace paraformer_ext
