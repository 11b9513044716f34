#pragma once
// Int8 (W8A8) linear building blocks: argument checks shared by the CPU and CUDA kernels, and the one
// per-row quantization rule every int8 op quantizes with (out_proj's int8 path too). The conventions
// (paraformer_ext/ops/int8.py) are bit-exact with the plain-PyTorch references, so every rounding step here
// is spelled out.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "common.h"

namespace paraformer_ext {
namespace int8 {

// --- the per-row quantization rule: the one copy, used by int8_{cpu,cuda} and out_proj_{cpu,cuda} ----------
// scale = absmax / 127 (an IEEE division: --use_fast_math must not turn it into a reciprocal and move a
// rounding boundary), q = round_half_even(clamp(x / scale, -127, 127)), a zero scale gives q = 0. A NaN in
// the row makes absmax NaN (see abs_bits), so its scale is NaN and every quotient NaN; the clamp's
// comparisons send NaN to +127, so the float -> int conversion is always defined and both backends agree.

// |v| as an unsigned integer: non-negative floats order like their bit patterns, so an integer max finds
// absmax, vectorises on the CPU where a float max with its NaN rules does not, and lets a NaN (bits above
// +inf) win, as torch's amax does in the reference.
PFX_HD uint32_t abs_bits(float v) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(v) & 0x7fffffffu;
#else
  return std::bit_cast<uint32_t>(v) & 0x7fffffffu;
#endif
}

// The scale of a row from the max of its abs_bits.
PFX_HD float scale_from_abs_bits(uint32_t amax_bits) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(__uint_as_float(amax_bits), 127.f);
#else
  return std::bit_cast<float>(amax_bits) / 127.f;
#endif
}

// v = x / s clamped to [-127, 127] with comparisons that send NaN to +127 (a NaN never compares less than
// 127). Clamping before rounding gives the same result as after because the bounds are integers.
PFX_HD float clamp_q(float v) {
  v = v < 127.f ? v : 127.f;
  v = v > -127.f ? v : -127.f;
  return v;
}

// One value with its row's scale s; s == 0 (an all-zero row) gives 0.
PFX_HD int8_t quantize_value(float x, float s) {
  if (s == 0.f) return 0;
#ifdef __CUDA_ARCH__
  return static_cast<int8_t>(__float2int_rn(clamp_q(__fdiv_rn(x, s))));
#else
  return static_cast<int8_t>(static_cast<int32_t>(std::nearbyint(clamp_q(x / s))));  // half to even
#endif
}

// Host: the scale of a row of n values of any float type (read as float32).
template <typename T>
inline float row_scale(const T* x, int64_t n) {
  uint32_t r = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = abs_bits(static_cast<float>(x[i]));
    r = u > r ? u : r;
  }
  return scale_from_abs_bits(r);
}

// Host: q[0, n) of a row with its scale s (from row_scale).
template <typename T>
inline void quantize_row(const T* x, int64_t n, float s, int8_t* q) {
  if (s == 0.f) {  // hoisted, so the loop below stays branch-free
    std::memset(q, 0, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) q[i] = quantize_value(static_cast<float>(x[i]), s);
}

inline void check_activation(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D (M, K), got shape ", x.sizes(),
              "; flatten the leading dimensions with .reshape(-1, K)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": ", name, " must be float32, float16 or bfloat16, got ", x.scalar_type());
}

// The rows are read through their stride; only the last dimension has to be contiguous.
inline at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

// A (n,) vector of any float dtype (bias, LayerNorm weight), returned as a contiguous float32 copy (a no-op
// for a contiguous float32 tensor). Undefined when absent.
inline at::Tensor float_vector(const c10::optional<at::Tensor>& v, int64_t n, const at::Tensor& like,
                               const char* like_name, const char* op, const char* name, const char* n_name) {
  if (!v.has_value()) return at::Tensor();
  TORCH_CHECK(v->dim() == 1 && v->size(0) == n, op, ": ", name, " must have shape (", n_name, ",) = (", n, ",), got ",
              v->sizes());
  check_float_tensor(*v, op, name);
  check_same_device(*v, like, op, name, like_name);
  return v->to(at::kFloat).contiguous();
}

inline at::Tensor scale_vector(const at::Tensor& v, int64_t n, const at::Tensor& like, const char* op,
                               const char* name, const char* n_name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, op, ": ", name, " must have shape (", n_name, ",) = (", n, ",), got ",
              v.sizes());
  TORCH_CHECK(v.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", v.scalar_type(),
              "; pass the scale returned by quantize_rows / quantize_weight_ref or cast it with .float()");
  check_same_device(v, like, op, name, "acc");
  return v.contiguous();
}

inline void check_out_dtype(at::ScalarType t, const char* op) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": out_dtype must be torch.float32, torch.float16 or torch.bfloat16, got ", t);
}

// Everything the epilogue reads, checked and in the layout the kernels expect.
struct EpilogueArgs {
  at::Tensor acc;        // (M, N) int32, contiguous
  at::Tensor row_scale;  // (M,) float32, contiguous
  at::Tensor col_scale;  // (N,) float32, contiguous
  at::Tensor bias;       // (N,) float32 contiguous, or undefined
  int64_t M, N;
};

inline EpilogueArgs check_epilogue_args(const at::Tensor& acc, const at::Tensor& row_scale,
                                        const at::Tensor& col_scale, const c10::optional<at::Tensor>& bias,
                                        const char* op) {
  TORCH_CHECK(acc.dim() == 2, op, ": acc must be 2-D (M, N) (the int32 result of torch._int_mm), got shape ",
              acc.sizes());
  TORCH_CHECK(acc.scalar_type() == at::kInt, op, ": acc must be int32 (the result of torch._int_mm), got ",
              acc.scalar_type());
  EpilogueArgs a;
  a.M = acc.size(0);
  a.N = acc.size(1);
  a.acc = acc.contiguous();
  a.row_scale = scale_vector(row_scale, a.M, acc, op, "row_scale", "M");
  a.col_scale = scale_vector(col_scale, a.N, acc, op, "col_scale", "N");
  a.bias = float_vector(bias, a.N, acc, "acc", op, "bias", "N");
  return a;
}

// residual: (M, N) of out_dtype on acc's device; rows may be strided, the last dimension is made contiguous.
inline at::Tensor check_residual(const c10::optional<at::Tensor>& residual, const EpilogueArgs& a,
                                 at::ScalarType out_dtype, const char* op) {
  if (!residual.has_value()) return at::Tensor();
  const at::Tensor& r = *residual;
  TORCH_CHECK(r.dim() == 2 && r.size(0) == a.M && r.size(1) == a.N, op, ": residual must have acc's shape (M, N) = (",
              a.M, ", ", a.N, "), got ", r.sizes());
  TORCH_CHECK(r.scalar_type() == out_dtype, op, ": residual dtype ", r.scalar_type(), " differs from out_dtype ",
              out_dtype, "; cast it with .to(out_dtype)");
  check_same_device(r, a.acc, op, "residual", "acc");
  return last_dim_contiguous(r);
}

// LayerNorm parameters over a row of n values: weight (n,) and bias (n,) as float32, either may be absent.
struct LnArgs {
  at::Tensor weight, bias;
  float eps = 0.f;
  bool on() const { return weight.defined(); }
};

inline LnArgs check_ln_args(const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                            double eps, int64_t n, const at::Tensor& like, const char* like_name, const char* op,
                            const char* wname, const char* bname, const char* n_name) {
  LnArgs ln;
  TORCH_CHECK(weight.has_value() || !bias.has_value(), op, ": ", bname, " was given without ", wname,
              "; pass both, or neither to skip the LayerNorm");
  if (!weight.has_value()) return ln;
  TORCH_CHECK(n > 0, op, ": LayerNorm over an empty row (", n_name, " = 0) is undefined");
  TORCH_CHECK(eps >= 0.0 && eps < 1e30, op, ": eps must be a finite value >= 0, got ", eps);
  ln.weight = float_vector(weight, n, like, like_name, op, wname, n_name);
  ln.bias = float_vector(bias, n, like, like_name, op, bname, n_name);
  ln.eps = static_cast<float>(eps);
  return ln;
}

// The checks of every op that quantizes activations x (M, K), with an optional LayerNorm over K whose
// parameters are called wname / bname in the messages (as the op's schema names them).
inline LnArgs check_activation_ln(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                  const c10::optional<at::Tensor>& bias, double eps, const char* op,
                                  const char* wname = "weight", const char* bname = "bias") {
  check_activation(x, op, "x");
  return check_ln_args(weight, bias, eps, x.size(1), x, "x", op, wname, bname, "K");
}

// The checks of int8_linear_epilogue_quantize: the epilogue's inputs, then a LayerNorm over its N columns.
inline std::pair<EpilogueArgs, LnArgs> check_epilogue_quantize_args(
    const at::Tensor& acc, const at::Tensor& row_scale, const at::Tensor& col_scale,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& ln_weight,
    const c10::optional<at::Tensor>& ln_bias, double eps, const char* op) {
  EpilogueArgs a = check_epilogue_args(acc, row_scale, col_scale, bias, op);
  LnArgs ln = check_ln_args(ln_weight, ln_bias, eps, a.N, a.acc, "acc", op, "ln_weight", "ln_bias", "N");
  return {std::move(a), std::move(ln)};
}

// The kernels index rows and columns with 32-bit grid coordinates in places; refuse what cannot fit.
inline void check_row_length(int64_t n, const char* op, const char* n_name) {
  TORCH_CHECK(n < (int64_t(1) << 31), op, ": ", n_name, " = ", n, " is too large (must be < 2^31)");
}

// Runs f(scalar_t{}) for the activation dtypes the ops accept (float32, float16, bfloat16).
template <typename F>
void dispatch_activation(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(c10::Half{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t, " (expected float32, float16 or bfloat16)");
  }
}

}  // namespace int8
}  // namespace paraformer_ext
